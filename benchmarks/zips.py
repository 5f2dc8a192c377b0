"""Zips for benchmarks and tests: tinted image classes (`colour_zip`) and archives from a name -> bytes
mapping (`zip_bytes`)."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def colour_zip(folder: Path, classes: tuple[str, ...] = ("red", "green", "blue"), per_class: int = 8,
               name: str = "") -> tuple[Path, Path]:
    """A zip with one folder of 24x24 images per class, each class tinted by its own channel and strength
    (three classes are learnable in one epoch); returns (the zip, one of its images). The zip is `folder/name`
    (default: the class names joined by '-')."""
    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(len(classes))
    if len(classes) > 9:
        raise ValueError(f"at most 9 classes have a tint of their own, got {len(classes)}")
    path = folder / (name or f"{'-'.join(classes)}.zip")
    with zipfile.ZipFile(path, "w") as archive:
        for index, name in enumerate(classes):
            for i in range(per_class):
                pixels = rng.integers(0, 120, size=(24, 24, 3), dtype=np.uint8)
                pixels[..., index % 3] += 120 - 40 * (index // 3)
                image = images / f"{name}{i}.png"
                Image.fromarray(pixels).save(image)
                archive.write(image, f"{name}/{i}.png")
    return path, images / f"{classes[0]}0.png"


def zip_bytes(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive holding `files` (entry name -> content), in order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()
