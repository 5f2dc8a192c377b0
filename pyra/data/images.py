"""One image file read safely: its size checked before decoding, high-bit and alpha images
converted to 8-bit RGB, large images shrunk before any copy is made.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pyra.data.limits import DataError

__all__ = ["read_image", "to_rgb"]


_SHRINK_FIRST_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA"})  # resized without changing their meaning
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


# ---------------------------------------------------------------- image decoding

def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB: first frame, EXIF orientation, 16-bit scaled, alpha on white."""
    if getattr(image, "is_animated", False):
        image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in _HIGH_BIT_MODES:
        image = _to_8bit(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit int / float greyscale -> 'L', keeping the full value range."""
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max(initial=0.0))
    if image.mode == "F":
        top = 1.0 if peak <= 1.0 else 255.0
    elif image.mode.startswith("I;16") or peak > 255:
        top = 65535.0 if peak <= 65535 else peak
    else:
        top = 255.0
    return Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8))


def image_problem(path: Path, max_pixels: int) -> str | None:
    """Why `path` is not a usable image (None if it is): PIL identify, size cap, verify, decode."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels or width == 0 or height == 0:
                return (f"too large: {width}x{height} pixels, more than {max_pixels} "
                        "(resize it, or raise PYRA_MAX_IMAGE_PIXELS)")
            image.verify()
        with Image.open(path) as image:
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # JPEG: cheap reduced decode
            image.load()
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError as error:
        return f"too large: {error} (resize it)"
    except Exception as error:  # PIL raises many types for broken files; the file is skipped, not fatal
        return f"corrupt image: {type(error).__name__}: {error}"
    return None


def read_image(path: Path, name: str, max_pixels: int, max_side: int | None = None) -> Image.Image:
    """One untrusted image file as RGB (optionally shrunk to `max_side` px), checked like a zip's images.

    `name` is how the user knows the file (messages never show `path`). DataError if it is not a
    decodable image or has more than `max_pixels` pixels.
    """
    problem = image_problem(Path(path), max_pixels)
    if problem is not None:
        raise DataError(f"{name}: {problem}. Use a PNG or JPEG image.")
    with Image.open(path) as image:
        return small_rgb(image, max_side) if max_side is not None else to_rgb(image)


def small_rgb(image: Image.Image, max_side: int) -> Image.Image:
    """An opened image as RGB, at most `max_side` px a side, shrunk before any converted copy is made
    (a 40 MP PNG then costs its one decode, not several full-size copies)."""
    image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
    if image.mode in _SHRINK_FIRST_MODES and not getattr(image, "is_animated", False):
        image.thumbnail((max_side, max_side))
    rgb = to_rgb(image)
    rgb.thumbnail((max_side, max_side))
    return rgb
