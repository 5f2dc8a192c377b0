"""The limits on untrusted input (a zip and the images in it), each with an environment variable.

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
whatever PYRA_MAX_IMAGE_PIXELS says. A `WriteBudget` (e.g. what is left of a session's disk
budget) bounds what one extraction may write.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_MAX_UPLOAD_MB = 200            # size of the uploaded zip file itself
DEFAULT_MAX_ZIP_ENTRIES = 20_000        # files + folders in one archive
DEFAULT_MAX_UNZIPPED_MB = 1024          # total uncompressed size
DEFAULT_MAX_COMPRESSION_RATIO = 200     # uncompressed / compressed, per entry and in total (JPEG / PNG stay below 2)
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000   # width * height of one image
DEFAULT_MAX_IMAGES_PER_CLASS = 5_000    # files in one class folder
DEFAULT_MAX_CLASSES = 100               # class folders
RATIO_CHECK_MIN_BYTES = 2**20           # smaller entries (and archives) are never refused for their ratio


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
