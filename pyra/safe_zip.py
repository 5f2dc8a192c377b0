"""Safe extraction of an untrusted zip archive into a work directory, and the limits on untrusted input.

The whole archive is checked before anything is written: upload size (before the zip is
even opened), entry count, declared size, compression ratio, path traversal (``..``,
absolute paths, drive letters), symlinks and encryption. Bytes actually written are
counted too, so a zip whose headers lie about sizes still stops at the limit.
``__MACOSX`` metadata, hidden files and nested zips are not extracted; they are returned
as skipped files with a reason.

Limits (`Limits`; ``Limits.from_env()`` reads the environment, a bad value is an error naming it):

==========================  ==================  ===========================  =============================
limit                       default             environment variable         when it is checked
==========================  ==================  ===========================  =============================
upload size (zip file)      200 MB              PYRA_MAX_UPLOAD_MB           before the zip is opened
entries in the zip          20,000              PYRA_MAX_ZIP_ENTRIES         before extraction
total uncompressed size     1024 MB             PYRA_MAX_UNZIPPED_MB         before and during extraction
compression ratio           200:1 per entry     PYRA_MAX_COMPRESSION_RATIO   before extraction (zip bombs)
                            over 1 MB, and for
                            the whole archive
pixels per image            40,000,000          PYRA_MAX_IMAGE_PIXELS        per image, before decoding;
                                                                             larger images are skipped
images per class            5,000               PYRA_MAX_IMAGES_PER_CLASS    before any image is opened
                            (files; a                                        (``max_per_class`` at or below
                            max_per_class cap                                the limit makes a larger
                            counts instead)                                  class usable)
classes                     100                 PYRA_MAX_CLASSES             before any image is opened
==========================  ==================  ===========================  =============================

Pillow refuses images over ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about 179 million pixels)
whatever PYRA_MAX_IMAGE_PIXELS says. A caller may also pass a `WriteBudget` (e.g. what is left
of a session's disk budget): extraction then refuses, before and while writing, anything that
would write more than it allows.

Messages name files as the archive names them, never by their path on this machine.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from pyra.disk import is_disk_full

DEFAULT_MAX_UPLOAD_MB = 200            # size of the uploaded zip file itself
DEFAULT_MAX_ZIP_ENTRIES = 20_000        # files + folders in one archive
DEFAULT_MAX_UNZIPPED_MB = 1024          # total uncompressed size
DEFAULT_MAX_COMPRESSION_RATIO = 200     # uncompressed / compressed, per entry and in total (JPEG / PNG stay below 2)
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000   # width * height of one image
DEFAULT_MAX_IMAGES_PER_CLASS = 5_000    # files in one class folder
DEFAULT_MAX_CLASSES = 100               # class folders
RATIO_CHECK_MIN_BYTES = 2**20           # smaller entries (and archives) are never refused for their ratio
_CHUNK_BYTES = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


class DataError(ValueError):
    """The user's data cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Limits:
    """Caps on untrusted input, checked before work starts. ``from_env`` reads the ``PYRA_MAX_*`` overrides."""

    max_zip_entries: int = DEFAULT_MAX_ZIP_ENTRIES
    max_unzipped_bytes: int = DEFAULT_MAX_UNZIPPED_MB * 2**20
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 2**20
    max_compression_ratio: int = DEFAULT_MAX_COMPRESSION_RATIO  # for entries over RATIO_CHECK_MIN_BYTES
    max_images_per_class: int = DEFAULT_MAX_IMAGES_PER_CLASS
    max_classes: int = DEFAULT_MAX_CLASSES

    @classmethod
    def from_env(cls) -> Limits:
        """Defaults overridden by PYRA_MAX_* variables; ValueError naming a variable that is not a positive integer."""
        return cls(
            max_zip_entries=env_int("PYRA_MAX_ZIP_ENTRIES", DEFAULT_MAX_ZIP_ENTRIES),
            max_unzipped_bytes=env_int("PYRA_MAX_UNZIPPED_MB", DEFAULT_MAX_UNZIPPED_MB) * 2**20,
            max_image_pixels=env_int("PYRA_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS),
            max_upload_bytes=env_int("PYRA_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB) * 2**20,
            max_compression_ratio=env_int("PYRA_MAX_COMPRESSION_RATIO", DEFAULT_MAX_COMPRESSION_RATIO),
            max_images_per_class=env_int("PYRA_MAX_IMAGES_PER_CLASS", DEFAULT_MAX_IMAGES_PER_CLASS),
            max_classes=env_int("PYRA_MAX_CLASSES", DEFAULT_MAX_CLASSES),
        )


@dataclass(frozen=True)
class WriteBudget:
    """At most `bytes` may be written; the refusal names `what` and the `variable` that raises it."""

    bytes: int
    what: str  # e.g. "this session's disk budget (120.0 MB left of 500.0 MB)"
    variable: str  # e.g. "PYRA_SESSION_DISK_MB"


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not used, with a short reason ("hidden file", "not an image: ...")."""

    path: str     # relative to the dataset root, '/'-separated
    reason: str


def env_int(name: str, default: int) -> int:
    """A positive whole number from the environment variable `name`, else `default`; ValueError naming it."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r} must be a positive whole number; "
                         f"fix it or unset it to use the default {default}")
    return value


def size_text(num_bytes: float) -> str:
    """Bytes for humans: '512 bytes', '3.4 KB', '201.0 MB'."""
    if num_bytes < 1024:
        return f"{num_bytes:.0f} bytes"
    if num_bytes < 2**20:
        return f"{num_bytes / 1024:.1f} KB"
    return f"{num_bytes / 2**20:.1f} MB"


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
