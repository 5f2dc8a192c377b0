"""Safe extraction of an untrusted zip archive into a work directory (limits: `pyra.data.limits`).

The whole archive is checked before anything is written: upload size (before the zip is
even opened), entry count, declared size, compression ratio, path traversal (``..``,
absolute paths, drive letters), symlinks and encryption. Bytes actually written are
counted too, so a zip whose headers lie about sizes still stops at the limit.
``__MACOSX`` metadata, hidden files and nested zips are not extracted; they are returned
as skipped files with a reason. A `WriteBudget` makes extraction refuse, before and while
writing, anything that would write more than it allows.

Messages name files as the archive names them, never by their path on this machine.
"""
from __future__ import annotations

import errno
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

from pyra.data.limits import RATIO_CHECK_MIN_BYTES, DataError, Limits, SkippedFile, WriteBudget
from pyra.files import is_disk_full, size_text

_CHUNK_BYTES = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


def ignored_reason(parts: tuple[str, ...]) -> str | None:
    """Why a relative path is ignored without being opened (macOS metadata, hidden), or None."""
    if "__MACOSX" in parts:
        return "macOS metadata (__MACOSX)"
    if any(part.startswith(".") for part in parts):
        return "hidden file"
    return None


def _entry_parts(info: zipfile.ZipInfo, archive: str) -> tuple[str, ...]:
    """Split an entry name into safe path parts, or raise DataError for an unsafe name."""
    name = info.filename.replace("\\", "/")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    unsafe = (
        name.startswith("/")
        or _DRIVE.match(name) is not None
        or ".." in parts
        or "\x00" in name
    )
    if unsafe:
        raise DataError(
            f"{archive}: unsafe entry {info.filename!r} (absolute path, drive letter or '..'). "
            "Re-create the zip from the folder itself, with relative paths only."
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(
            f"{archive}: entry {info.filename!r} is a symbolic link. "
            "Replace links with the real files and zip again."
        )
    if info.flag_bits & 0x1:
        raise DataError(f"{archive}: entry {info.filename!r} is password-protected. Zip it without a password.")
    return parts


def _check_archive(zf: zipfile.ZipFile, archive: str, limits: Limits,
                   budget: WriteBudget | None) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Validate every entry before extracting anything; returns (entry, parts) pairs."""
    infos = zf.infolist()
    if len(infos) > limits.max_zip_entries:
        raise DataError(
            f"{archive}: {len(infos)} entries, more than the limit of {limits.max_zip_entries}. "
            "Use fewer images (or raise PYRA_MAX_ZIP_ENTRIES)."
        )
    for info in infos:
        _check_ratio(info, archive, limits)
    total = sum(info.file_size for info in infos)
    if total > limits.max_unzipped_bytes:
        raise DataError(
            f"{archive}: {size_text(total)} uncompressed, more than the limit of "
            f"{size_text(limits.max_unzipped_bytes)}. Use fewer or smaller images "
            "(or raise PYRA_MAX_UNZIPPED_MB)."
        )
    packed = sum(info.compress_size for info in infos)
    if total > RATIO_CHECK_MIN_BYTES and total > limits.max_compression_ratio * max(packed, 1):
        raise DataError(
            f"{archive}: its entries expand {total / max(packed, 1):.0f}:1 in total ({size_text(packed)} -> "
            f"{size_text(total)}), more than the limit of {limits.max_compression_ratio}:1; this looks like a "
            "zip bomb. Zip ordinary image files (JPEG, PNG) (or raise PYRA_MAX_COMPRESSION_RATIO)."
        )
    if budget is not None and total > budget.bytes:
        raise DataError(
            f"{archive}: {size_text(total)} uncompressed, more than {budget.what}. Use fewer or smaller "
            f"images (or raise {budget.variable})."
        )
    return [(info, _entry_parts(info, archive)) for info in infos]


def _check_ratio(info: zipfile.ZipInfo, archive: str, limits: Limits) -> None:
    """Refuse an entry that declares it expands far more than images do (a zip bomb)."""
    if info.file_size <= RATIO_CHECK_MIN_BYTES:
        return
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > limits.max_compression_ratio:
        raise DataError(
            f"{archive}: entry {info.filename!r} expands {ratio:.0f}:1 ({size_text(info.compress_size)} -> "
            f"{size_text(info.file_size)}), more than the limit of {limits.max_compression_ratio}:1; "
            "this looks like a zip bomb. Zip ordinary image files (JPEG, PNG) "
            "(or raise PYRA_MAX_COMPRESSION_RATIO)."
        )


def _copy_capped(src, dst, budget: int, archive: str, name: str, variable: str) -> int:
    """Copy a stream in chunks; returns bytes written, raises once `budget` is exceeded."""
    written = 0
    while chunk := src.read(_CHUNK_BYTES):
        written += len(chunk)
        if written > budget:
            raise DataError(
                f"{archive}: {name!r} expands beyond the size limit (the zip's sizes are wrong). "
                f"Re-create the zip (or raise {variable})."
            )
        dst.write(chunk)
    return written


def extract_zip(zip_path: Path, workdir: Path, limits: Limits,
                budget: WriteBudget | None = None) -> tuple[Path, list[SkippedFile]]:
    """Extract `zip_path` into a new folder inside `workdir`; returns (folder, skipped files).

    Nothing is written unless every entry passes the checks; on any error the new
    folder is removed again. At most `budget.bytes` are written when a budget is given.
    """
    archive = zip_path.name
    if not zip_path.is_file():
        raise DataError(f"{archive}: file not found. Check the path.")
    upload_bytes = zip_path.stat().st_size
    if upload_bytes > limits.max_upload_bytes:
        raise DataError(
            f"{archive}: the upload is {size_text(upload_bytes)}, more than the limit of "
            f"{size_text(limits.max_upload_bytes)}. Upload fewer or smaller images, e.g. resized to "
            "at most 512 px a side (or raise PYRA_MAX_UPLOAD_MB)."
        )
    if not zipfile.is_zipfile(zip_path):
        raise DataError(f"{archive}: not a zip archive, or truncated. Upload a .zip with one folder per class.")
    workdir.mkdir(parents=True, exist_ok=True)
    root: Path | None = None
    try:
        with zipfile.ZipFile(zip_path) as zf:
            entries = _check_archive(zf, archive, limits, budget)
            root = Path(tempfile.mkdtemp(prefix="dataset-", dir=workdir)).resolve()
            return root, _extract_entries(zf, entries, root, archive, limits, budget)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        _remove(root)
        raise DataError(f"{archive}: corrupt or truncated zip ({error}). Re-create and upload it again.") from None
    except OSError as error:
        _remove(root)
        if is_disk_full(error):
            raise DataError(f"{archive}: not enough disk space to extract it ({error.strerror}). "
                            "Free some space on that disk, or upload fewer or smaller images.") from None
        raise DataError(f"{archive}: could not extract ({error.strerror or type(error).__name__}). "
                        "Check the zip's folder structure.") from None
    except BaseException:
        _remove(root)
        raise


def _extract_entries(zf: zipfile.ZipFile, entries: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
                     root: Path, archive: str, limits: Limits, budget: WriteBudget | None) -> list[SkippedFile]:
    """Write checked entries under `root`; returns the entries deliberately left out.

    An entry that cannot be written (a name too long for the file system, a file where the zip
    also has a folder) is refused by its name in the archive.
    """
    skipped: list[SkippedFile] = []
    left, variable = limits.max_unzipped_bytes, "PYRA_MAX_UNZIPPED_MB"
    if budget is not None and budget.bytes < left:
        left, variable = budget.bytes, budget.variable
    for info, parts in entries:
        if not parts:
            continue
        reason = ignored_reason(parts)
        if reason is None and not info.is_dir() and parts[-1].lower().endswith(".zip"):
            reason = "nested zip archive (not extracted); put its images in the main zip"
        if reason is not None:
            if not info.is_dir():
                skipped.append(SkippedFile("/".join(parts), reason))
            continue
        target = root.joinpath(*parts)
        assert target.resolve().is_relative_to(root), info.filename  # guaranteed by _entry_parts
        try:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                left -= _copy_capped(src, dst, left, archive, info.filename, variable)
        except OSError as error:
            if is_disk_full(error):
                raise
            raise DataError(f"{archive}: entry {info.filename!r} cannot be extracted "
                            f"({error.strerror or type(error).__name__}): {_write_hint(error)}") from None
    return skipped


def _write_hint(error: OSError) -> str:
    """How to fix an entry the file system refused."""
    if error.errno == errno.ENAMETOOLONG:
        return "shorten its file or folder names (at most 255 bytes each) and zip again."
    if error.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return "the zip has a file and a folder of the same name; rename one and zip again."
    return "re-create the zip from the folder itself and upload it again."


def _remove(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
