"""Telling a full disk apart from other write errors."""
from __future__ import annotations

import errno

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # no space, quota, file size limit


def is_disk_full(error: BaseException) -> bool:
    """The error is a write refused for lack of space (disk, quota or file size limit)."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS
