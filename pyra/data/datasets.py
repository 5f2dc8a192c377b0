"""Labelled image datasets from a zip, a folder or a built-in sample: validated, split, ready for torch.

    split = load_dataset("photos.zip", workdir)           # or a folder, or "sample:fashion"
    transform = make_transform(timm.data.resolve_model_data_config(model), img_size=112)
    train_ds = ImageDataset(split.train, transform)       # yields (tensor [3, S, S], label)

Layout of a zip or folder: one sub-folder per class (a single wrapping folder is fine).
Files are judged by opening them with PIL, not by extension; unusable files are skipped
with a reason (``DatasetSplit.skipped``), while unusable *datasets* raise `DataError`
with a message that names the file and the fix.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision import transforms

from pyra.data.images import image_problem, small_rgb, to_rgb
from pyra.data.limits import DataError, Limits, SkippedFile, WriteBudget
from pyra.data.safe_zip import extract_zip, ignored_reason
from pyra.data.samples import SampleArrays, list_samples, load_sample

__all__ = ["DatasetSplit", "ImageDataset", "ImageRecord", "load_dataset", "make_transform"]


SAMPLE_PREFIX = "sample:"


# ---------------------------------------------------------------- records and splits

@dataclass(frozen=True)
class ImageRecord:
    """One labelled image: a file on disk (zip / folder) or a small in-memory array (samples)."""

    label: int
    name: str                                   # relative path or sample id, for messages and the UI
    path: Path | None = None
    array: np.ndarray | None = field(default=None, compare=False, repr=False)  # [H, W] or [H, W, 3] uint8

    def thumbnail(self, max_side: int) -> Image.Image:
        """The image as RGB, at most `max_side` px a side (never a full-size RGB copy of a large file)."""
        if self.array is not None or self.path is None:
            image = self.load()
            image.thumbnail((max_side, max_side))
            return image
        with Image.open(self.path) as opened:
            return small_rgb(opened, max_side)

    def load(self) -> Image.Image:
        """The image as RGB, EXIF orientation applied."""
        if self.array is not None:
            return to_rgb(Image.fromarray(self.array))
        if self.path is None:
            raise ValueError(f"record {self.name!r} has neither a path nor an array")
        with Image.open(self.path) as image:
            return to_rgb(image)


@dataclass(frozen=True)
class DatasetSplit:
    """Classes, a stratified train/val split, and everything that was left out and why."""

    classes: list[str]
    train: list[ImageRecord]
    val: list[ImageRecord]
    skipped: list[SkippedFile]
    source: str                                  # zip/folder name or "sample:NAME"
    warnings: list[str] = field(default_factory=list)
    split_seed: int = 0                          # how the split was made, so a run can redo it
    val_fraction: float = 0.25
    max_per_class: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> dict[str, tuple[int, int]]:
        """Per class: (train images, val images)."""
        train, val = Counter(r.label for r in self.train), Counter(r.label for r in self.val)
        return {name: (train[i], val[i]) for i, name in enumerate(self.classes)}

    def summary(self) -> str:
        """A few lines for humans: classes, counts, split, skipped files by reason, warnings."""
        lines = [f"{self.source}: {self.num_classes} classes, {len(self.train) + len(self.val)} images "
                 f"({len(self.train)} train / {len(self.val)} val)"]
        lines += [f"  {name}: {n_train} train / {n_val} val" for name, (n_train, n_val) in self.class_counts().items()]
        if self.skipped:
            by_reason: dict[str, list[str]] = {}
            for item in self.skipped:
                by_reason.setdefault(item.reason.split(":")[0], []).append(item.path)
            parts = [f"{len(paths)} {reason}: {', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''}"
                     for reason, paths in by_reason.items()]
            lines.append(f"Skipped {len(self.skipped)} files: " + "; ".join(parts))
        lines += [f"Warning: {text}" for text in self.warnings]
        return "\n".join(lines)


# ---------------------------------------------------------------- folders

def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and ignored_reason((p.name,)) is None)


def _unwrap(root: Path) -> Path:
    """Descend through single wrapping folders (root/data/<class>/... -> root/data)."""
    while len(dirs := _visible_dirs(root)) == 1 and _visible_dirs(dirs[0]):
        root = dirs[0]
    return root


def _scan(root: Path, data_root: Path, classes: list[str]) -> tuple[dict[str, list[Path]], list[SkippedFile]]:
    """Candidate files per class (sorted) and files ignored without opening them."""
    candidates: dict[str, list[Path]] = {name: [] for name in classes}
    skipped: list[SkippedFile] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for file_name in sorted(files):
            path = Path(folder) / file_name
            rel = path.relative_to(root)
            reason = ignored_reason(rel.parts)
            in_class = path.parent != data_root and path.is_relative_to(data_root)
            if reason is None and not in_class:
                reason = "not inside a class folder"
            if reason is None:
                candidates[path.relative_to(data_root).parts[0]].append(path)
            else:
                skipped.append(SkippedFile(rel.as_posix(), reason))
    return candidates, skipped


def _usable_images(paths: list[Path], root: Path, limit: int | None, seed: int,
                   max_pixels: int) -> tuple[list[Path], list[SkippedFile]]:
    """Open candidates (in a seeded order when capped) until `limit` usable ones are found."""
    order = np.random.default_rng(seed).permutation(len(paths)) if limit else np.arange(len(paths))
    usable: list[Path] = []
    skipped: list[SkippedFile] = []
    for index in order:
        if limit and len(usable) >= limit:
            break
        problem = image_problem(paths[index], max_pixels)
        if problem is None:
            usable.append(paths[index])
        else:
            skipped.append(SkippedFile(paths[index].relative_to(root).as_posix(), problem))
    return sorted(usable), skipped


def _from_folder(root: Path, source: str, skipped: list[SkippedFile], val_fraction: float, seed: int,
                 max_per_class: int | None, limits: Limits) -> DatasetSplit:
    data_root = _unwrap(root)
    classes = [p.name for p in _visible_dirs(data_root)]
    if len(classes) < 2:
        raise DataError(f"{source}: need at least 2 class folders, found {classes or 'none'}. "
                        "Put each class's images in its own folder.")
    _check_class_count(source, classes, limits)
    candidates, ignored = _scan(root, data_root, classes)
    _check_files_per_class(source, candidates, max_per_class, limits)
    skipped = skipped + ignored
    records: list[ImageRecord] = []
    warnings: list[str] = []
    for label, name in enumerate(classes):
        paths, bad = _usable_images(candidates[name], root, max_per_class, seed, limits.max_image_pixels)
        skipped += bad
        _check_class_size(source, name, len(paths), len(bad))
        if max_per_class and len(candidates[name]) > max_per_class:
            warnings.append(f"class {name!r}: using {len(paths)} of {len(candidates[name])} files (max_per_class)")
        records += [ImageRecord(label, p.relative_to(root).as_posix(), path=p) for p in paths]
    warnings += _duplicate_warnings(records, classes)
    labels = np.array([r.label for r in records])
    train_idx, val_idx = _split_indices(labels, val_fraction, seed)
    return DatasetSplit(classes, [records[i] for i in train_idx], [records[i] for i in val_idx],
                        skipped, source, warnings)


def _check_class_count(source: str, classes: list[str], limits: Limits) -> None:
    if len(classes) > limits.max_classes:
        raise DataError(
            f"{source}: {len(classes)} class folders ({', '.join(classes[:3])}, ...), more than the limit of "
            f"{limits.max_classes}. Keep one folder per class, not one per image or per photo session; "
            "merge or remove classes (or raise PYRA_MAX_CLASSES)."
        )


def _check_files_per_class(source: str, candidates: dict[str, list[Path]], max_per_class: int | None,
                           limits: Limits) -> None:
    """Refuse, before any image is opened, a class that would use more files than the limit."""
    limit = limits.max_images_per_class
    over = {name: len(paths) for name, paths in candidates.items()
            if min(len(paths), max_per_class or len(paths)) > limit}
    if over:
        listed = ", ".join(f"{name!r} has {count}" for name, count in list(over.items())[:3])
        raise DataError(
            f"{source}: too many files per class ({listed}; the limit is {limit} images per class). "
            f"Use max_per_class={limit} or less to train on a random subset, upload fewer images per class "
            "(or raise PYRA_MAX_IMAGES_PER_CLASS)."
        )


def _duplicate_warnings(records: list[ImageRecord], classes: list[str]) -> list[str]:
    """A warning naming files whose bytes are identical but whose classes differ (one image, two labels)."""
    first_seen: dict[bytes, ImageRecord] = {}
    pairs: list[tuple[ImageRecord, ImageRecord]] = []
    for record in records:
        if record.path is None:
            continue
        seen = first_seen.setdefault(hashlib.sha256(record.path.read_bytes()).digest(), record)
        if seen.label != record.label:
            pairs.append((seen, record))
    if not pairs:
        return []
    listed = "; ".join(f"'{a.name}' ({classes[a.label]}) = '{b.name}' ({classes[b.label]})" for a, b in pairs[:5])
    more = f"; and {len(pairs) - 5} more" if len(pairs) > 5 else ""
    return [f"{len(pairs)} image(s) appear in more than one class: {listed}{more}. "
            "An image with two labels confuses training and validation: keep each in its right class only."]


def _check_class_size(source: str, name: str, count: int, num_bad: int) -> None:
    if count == 0:
        extra = f" ({num_bad} files could not be read as images)" if num_bad else ""
        raise DataError(f"{source}: class folder {name!r} has no usable images{extra}. "
                        f"Add images (JPEG, PNG, ...) to '{name}/' or remove the folder.")
    if count < 2:
        raise DataError(f"{source}: class {name!r} has only 1 usable image; need at least 2 "
                        f"(one to train on, one to validate). Add more images to '{name}/'.")


# ---------------------------------------------------------------- splitting

def _split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split with at least one train and one val index per class; sorted."""
    train, val = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        members_train, members_val = train_test_split(members, test_size=n_val, random_state=seed)
        train.append(members_train)
        val.append(members_val)
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _cap_per_class(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices keeping at most `limit` per class (seeded choice), sorted."""
    if not limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    kept = [rng.permutation(np.flatnonzero(labels == label))[:limit] for label in np.unique(labels)]
    return np.sort(np.concatenate(kept))


# ---------------------------------------------------------------- samples

def _array_records(sample: str, part: str, images: np.ndarray, labels: np.ndarray,
                   indices: np.ndarray) -> list[ImageRecord]:
    return [ImageRecord(int(labels[i]), f"{sample}/{part}/{i:05d}", array=images[i]) for i in indices]


def _from_sample(name: str, val_fraction: float, seed: int, max_per_class: int | None) -> DatasetSplit:
    source = SAMPLE_PREFIX + name
    try:
        arrays: SampleArrays = load_sample(name)
    except KeyError:
        names = ", ".join(SAMPLE_PREFIX + info.name for info in list_samples())
        raise DataError(f"{source}: unknown sample. Choose one of {names}.") from None
    if arrays.val_images is None or arrays.val_labels is None:
        kept = _cap_per_class(arrays.labels, max_per_class, seed)
        train_pos, val_pos = _split_indices(arrays.labels[kept], val_fraction, seed)
        train = _array_records(name, "all", arrays.images, arrays.labels, kept[train_pos])
        val = _array_records(name, "all", arrays.images, arrays.labels, kept[val_pos])
    else:  # shipped split, used as-is; a cap keeps the val share given by val_fraction
        val_cap = max(1, round(max_per_class * val_fraction)) if max_per_class else None
        train_cap = max(1, max_per_class - val_cap) if max_per_class and val_cap else None
        train = _array_records(name, "train", arrays.images, arrays.labels,
                               _cap_per_class(arrays.labels, train_cap, seed))
        val = _array_records(name, "val", arrays.val_images, arrays.val_labels,
                             _cap_per_class(arrays.val_labels, val_cap, seed))
    warnings = [f"using at most {max_per_class} images per class (max_per_class)"] if max_per_class else []
    return DatasetSplit(list(arrays.classes), train, val, [], source, warnings)


# ---------------------------------------------------------------- entry point

def load_dataset(source: str | Path, workdir: Path, *, val_fraction: float = 0.25, seed: int = 0,
                 max_per_class: int | None = None, limits: Limits | None = None,
                 budget: WriteBudget | None = None) -> DatasetSplit:
    """Load, validate and split a labelled image set.

    Args:
        source: a ``.zip`` file, a folder (one sub-folder per class), or ``"sample:NAME"``
            (see `list_samples`).
        workdir: the only place anything is written (a zip is extracted into a new folder here).
        val_fraction: share of each class held out for validation (at least 1 image per class).
        seed: fixes the split and any per-class cap; same seed, same files -> same split.
        max_per_class: use at most this many images per class (train + val), chosen by seed.
        limits: caps on untrusted input; default `Limits.from_env()` (``PYRA_MAX_*`` variables).
        budget: at most this many bytes may be extracted from a zip (e.g. a session's disk budget).
            Files of a zip that are not used (skipped, or beyond `max_per_class`) are deleted at once.

    Raises:
        DataError: the data cannot be used; the message names the file and the fix.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if max_per_class is not None and max_per_class < 2:
        raise DataError(f"max_per_class must be at least 2 (one train + one val image), got {max_per_class}")
    split = _load_split(str(source), Path(workdir), val_fraction, seed, max_per_class, limits or Limits.from_env(),
                        budget)
    return replace(split, split_seed=seed, val_fraction=val_fraction, max_per_class=max_per_class)


def _load_split(text: str, workdir: Path, val_fraction: float, seed: int, max_per_class: int | None,
                limits: Limits, budget: WriteBudget | None) -> DatasetSplit:
    if text.startswith(SAMPLE_PREFIX):
        return _from_sample(text[len(SAMPLE_PREFIX):], val_fraction, seed, max_per_class)
    path = Path(text)
    if path.is_dir():
        return _from_folder(path, path.name, [], val_fraction, seed, max_per_class, limits)
    if not path.exists():
        raise DataError(f"{text}: not found. Give a .zip file, a folder with one sub-folder per class, "
                        f"or one of {[SAMPLE_PREFIX + s.name for s in list_samples()]}.")
    root, skipped = extract_zip(path, workdir, limits, budget)
    try:
        split = _from_folder(root, path.name, skipped, val_fraction, seed, max_per_class, limits)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)  # a refused upload leaves nothing behind
        raise
    _keep_only(root, split.train + split.val)
    return split


def _keep_only(root: Path, records: Sequence[ImageRecord]) -> None:
    """Delete every file under `root` that is not one of `records` (skipped or unused files)."""
    used = {Path(record.path) for record in records}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path not in used:
                path.unlink(missing_ok=True)


# ---------------------------------------------------------------- torch side

class ImageDataset(Dataset):
    """Records -> (transform(RGB image), label)."""

    def __init__(self, records: Sequence[ImageRecord], transform: Callable[[Image.Image], torch.Tensor]):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        record = self.records[index]
        return self.transform(record.load()), record.label


def make_transform(data_config: Mapping[str, Any], img_size: int) -> transforms.Compose:
    """Direct resize to (img_size, img_size), no crop or augmentation, the backbone's mean/std.

    `data_config` is what ``timm.data.resolve_model_data_config(model)`` returns.
    """
    missing = [key for key in ("mean", "std") if key not in data_config]
    if missing:
        raise ValueError(f"data_config lacks {missing}; pass timm.data.resolve_model_data_config(model)")
    interpolation = transforms.InterpolationMode(data_config.get("interpolation", "bicubic"))
    return transforms.Compose([
        transforms.Resize((img_size, img_size), interpolation=interpolation, antialias=True),
        transforms.ToTensor(),  # [3, S, S] float in [0, 1]
        transforms.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"])),
    ])
