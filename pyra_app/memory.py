"""The server's allocator, kept from hoarding memory between jobs (glibc on Linux; elsewhere a no-op).

Every training job runs in a thread of its own, and glibc gives new threads new malloc arenas: what a
finished job freed stays in its arena, unused, while the next job grows another. `share_arenas()`
caps the arenas at two (as MALLOC_ARENA_MAX=2 would), so jobs reuse what earlier ones freed; `trim()`
returns free heap pages to the system after a job.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Optional

M_ARENA_MAX = -8  # glibc's mallopt parameter
ARENAS = 2


@functools.cache  # find_library runs ldconfig: once per process, not after every job
def _libc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def share_arenas() -> bool:
    """Cap glibc's malloc arenas for threads started from now on; False where there is no glibc."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, ARENAS))


def trim() -> None:
    """Give the heap's free pages back to the system (glibc), after a job has ended."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
