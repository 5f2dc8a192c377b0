"""Build ``assets/fashion_mnist_subset.npz`` from Debian's ``dataset-fashion-mnist``.

Run once (the result is shipped):

    apt-get install -y dataset-fashion-mnist
    python assets/build_fashion_subset.py

Takes 60 train + 40 validation images per class from the official Fashion-MNIST
*training* set, chosen with a seeded permutation, and stores uint8 arrays plus the
class names (no pickled objects, so ``np.load(allow_pickle=False)`` reads it).
Fashion-MNIST is by Zalando Research, MIT licence (see ATTRIBUTION.md).
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OUTPUT = Path(__file__).with_name("fashion_mnist_subset.npz")
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def build(source_dir: Path, n_train: int, n_val: int, seed: int) -> dict[str, np.ndarray]:
    """Pick n_train + n_val images per class, seeded; returns the arrays to save."""
    images = read_idx(source_dir / "train-images-idx3-ubyte.gz")  # [60000, 28, 28]
    labels = read_idx(source_dir / "train-labels-idx1-ubyte.gz")  # [60000]
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in range(len(CLASSES)):
        chosen = rng.permutation(np.flatnonzero(labels == label))[: n_train + n_val]
        train_idx.append(np.sort(chosen[:n_train]))
        val_idx.append(np.sort(chosen[n_train:]))
    train, val = np.concatenate(train_idx), np.concatenate(val_idx)
    return {
        "train_images": images[train], "train_labels": labels[train].astype(np.int64),
        "val_images": images[val], "val_labels": labels[val].astype(np.int64),
        "classes": np.array(CLASSES),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_DIR)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--train-per-class", type=int, default=60)
    parser.add_argument("--val-per-class", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arrays = build(args.source, args.train_per_class, args.val_per_class, args.seed)
    np.savez_compressed(args.output, **arrays)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB): "
          f"{len(arrays['train_labels'])} train, {len(arrays['val_labels'])} val")


if __name__ == "__main__":
    main()
