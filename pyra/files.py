"""Writing files safely: atomic writes (temp file, fsync, rename), telling a full disk apart from
other write errors, and byte sizes in words.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Optional

__all__ = ["DiskFullError", "write_atomic"]


def size_text(num_bytes: float) -> str:
    """Bytes for humans: '512 bytes', '3.4 KB', '201.0 MB'."""
    if num_bytes < 1024:
        return f"{num_bytes:.0f} bytes"
    if num_bytes < 2**20:
        return f"{num_bytes / 1024:.1f} KB"
    return f"{num_bytes / 2**20:.1f} MB"


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # no space, quota, file size limit


def is_disk_full(error: BaseException) -> bool:
    """The error is a write refused for lack of space (disk, quota or file size limit)."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


class DiskFullError(OSError):
    """A file could not be written: the disk is full, or a quota or file size limit was reached.

    The message names the file, its folder and the fix. The files already in the folder are unchanged.
    """

    def __init__(self, path: Path, cause: OSError):
        reason = os.strerror(cause.errno) if cause.errno else str(cause)
        super().__init__(cause.errno, f"not enough disk space to write {path.name} in {path.parent} ({reason}). "
                                      "Free some space on that disk, or write to a folder on another disk, then "
                                      f"try again; the files already in {path.parent.name} are unchanged.")

    def __str__(self) -> str:
        return self.strerror


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file next to `path`, fsync, then os.replace: readers never see half a file.

    DiskFullError (an OSError) when the disk is full; `path` is then unchanged.
    """
    temp = write_temp(path, data)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the files themselves are synced
    finally:
        os.close(fd)


def new_temp(path: Path) -> Path:
    """A new, empty temporary file next to `path`, named `.NAME.XXXX.tmp`."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def write_temp(path: Path, data: bytes) -> Path:
    """`data` in a new temporary file next to `path`, fsynced; nothing is left behind on failure."""
    temp: Optional[Path] = None
    try:
        temp = new_temp(path)
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return temp
    except BaseException as error:
        if temp is not None:
            temp.unlink(missing_ok=True)
        if is_disk_full(error):
            raise DiskFullError(path, error) from error
        raise
