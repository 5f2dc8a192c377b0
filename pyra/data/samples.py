"""Built-in sample datasets and example photos that load offline.

Every sample comes from a file shipped with this repository or with an installed
package (scikit-learn, scikit-image); nothing is downloaded. Samples are returned as
uint8 arrays; `pyra.data` turns them into records and splits them.
Licences and sources are listed in ``assets/ATTRIBUTION.md``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
FASHION_FILE = ASSETS_DIR / "fashion_mnist_subset.npz"
TEXTURE_PATCH = 64  # pixels; each 512x512 texture gives (512 // 64) ** 2 = 64 patches


@dataclass(frozen=True)
class SampleInfo:
    """What the UI shows about a built-in sample."""

    name: str             # used as ``sample:NAME``
    description: str
    num_classes: int
    licence: str
    num_images: int       # train + val


@dataclass(frozen=True)
class SampleArrays:
    """A sample as arrays. If ``val_images`` is set, the shipped split is used as-is."""

    classes: list[str]
    images: np.ndarray                    # [N, H, W] or [N, H, W, 3] uint8
    labels: np.ndarray                    # [N] int64, index into classes
    val_images: np.ndarray | None = None  # a fixed validation split, same layout
    val_labels: np.ndarray | None = None


def _to_uint8(values: np.ndarray, max_value: float) -> np.ndarray:
    """Scale [0, max_value] to [0, 255] uint8."""
    return np.clip(np.rint(values * (255.0 / max_value)), 0, 255).astype(np.uint8)


def _fashion() -> SampleArrays:
    with np.load(FASHION_FILE, allow_pickle=False) as z:
        return SampleArrays(
            classes=[str(c) for c in z["classes"]],
            images=z["train_images"], labels=z["train_labels"].astype(np.int64),
            val_images=z["val_images"], val_labels=z["val_labels"].astype(np.int64),
        )


def _digits() -> SampleArrays:
    from sklearn.datasets import load_digits

    digits = load_digits()  # images [1797, 8, 8] with values 0..16
    return SampleArrays(
        classes=[str(d) for d in digits.target_names],
        images=_to_uint8(digits.images, 16.0), labels=digits.target.astype(np.int64),
    )


def _faces() -> SampleArrays:
    from skimage.data import lfw_subset

    images = np.asarray(lfw_subset())  # [200, 25, 25]: 100 faces, then 100 non-faces
    if images.dtype != np.uint8:
        images = _to_uint8(images, 1.0)
    labels = np.repeat(np.arange(2, dtype=np.int64), len(images) // 2)
    return SampleArrays(classes=["face", "non-face"], images=images, labels=labels)


def _textures() -> SampleArrays:
    from skimage import data

    classes = ["brick", "grass", "gravel"]
    patches, labels = [], []
    for label, name in enumerate(classes):
        image = getattr(data, name)()  # [512, 512] uint8
        rows, cols = image.shape[0] // TEXTURE_PATCH, image.shape[1] // TEXTURE_PATCH
        tiles = image[: rows * TEXTURE_PATCH, : cols * TEXTURE_PATCH]
        tiles = tiles.reshape(rows, TEXTURE_PATCH, cols, TEXTURE_PATCH).swapaxes(1, 2)
        patches.append(tiles.reshape(-1, TEXTURE_PATCH, TEXTURE_PATCH))  # [rows*cols, P, P]
        labels.append(np.full(rows * cols, label, dtype=np.int64))
    return SampleArrays(classes=classes, images=np.concatenate(patches), labels=np.concatenate(labels))


_SAMPLES: dict[str, tuple[SampleInfo, Callable[[], SampleArrays]]] = {
    "fashion": (SampleInfo(
        "fashion", "Fashion-MNIST subset: 28x28 greyscale clothing, 60 train + 40 val per class (fixed split)",
        10, "MIT (Zalando Research)", 1000), _fashion),
    "digits": (SampleInfo(
        "digits", "scikit-learn handwritten digits: 8x8 greyscale, 0-9",
        10, "BSD-3-Clause (scikit-learn); data from UCI optdigits, CC BY 4.0", 1797), _digits),
    "faces": (SampleInfo(
        "faces", "scikit-image LFW subset: 25x25 greyscale, face vs non-face",
        2, "scikit-image sample data (BSD-3-Clause package); images from Labeled Faces in the Wild", 200),
        _faces),
    "textures": (SampleInfo(
        "textures", "scikit-image textures: 64x64 greyscale patches of brick, grass, gravel",
        3, "CC0 (scikit-image sample data)", 192), _textures),
}

_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # all bundled with scikit-image, public domain / CC0


def list_samples() -> list[SampleInfo]:
    """The built-in samples, in display order."""
    return [info for info, _ in _SAMPLES.values()]


def load_sample(name: str) -> SampleArrays:
    """Arrays of one built-in sample; KeyError lists the valid names."""
    if name not in _SAMPLES:
        raise KeyError(f"unknown sample {name!r}; choose one of {sorted(_SAMPLES)}")
    return _SAMPLES[name][1]()


def example_photos() -> dict[str, Image.Image]:
    """A few colour photos bundled with scikit-image, for token-map demos (RGB, offline)."""
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in _PHOTOS}
