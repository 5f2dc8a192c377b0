"""Hostile and broken uploads: each gets a clear message (which file, what to do) and nothing is
written outside the session's work folder.

Every test goes through the `sandbox` fixture: inputs live in `sandbox.inputs`, the only
writable place is `sandbox.work`, and `sandbox.run` / `sandbox.refused` compare a snapshot of
the whole pytest temp tree (cwd, $HOME, $TMPDIR and the cache dirs point into it) before and
after the call. A refusal must also leave the work folder empty.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import pyra
from benchmarks.zips import zip_bytes
from pyra.backbones.factory import BackboneError, backbone_structure, create_backbone
from pyra.data.datasets import ImageDataset, load_dataset, make_transform
from pyra.data.limits import DataError, Limits
from pyra.method.merge import max_merge
from pyra.run.checkpoint import load_run, save_run
from pyra.run.run_config import CheckpointError, RunConfig, build_model
from pyra.run.train import TrainConfig

TINY = "vit_tiny_patch16_224"  # at 32 px: 4 patches + 1 class token, 12 blocks


# ---------------------------------------------------------------- the sandbox


def _tree(root: Path) -> dict[Path, Any]:
    """Every path under `root`: 'dir' for folders, (size, mtime) for files and links."""
    snapshot: dict[Path, Any] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            snapshot[Path(folder, name)] = "dir"
        for name in files:
            stat = os.lstat(Path(folder, name))
            snapshot[Path(folder, name)] = (stat.st_size, stat.st_mtime_ns)
    return snapshot


class Sandbox:
    """inputs/ (what a stranger uploaded), work/ (the only writable place) inside a watched tree."""

    def __init__(self, root: Path):
        self.root, self.watched = root, root.parent  # the parent: this session's pytest temp tree
        self.inputs, self.work = root / "inputs", root / "work"

    def changes_outside_work(self, before: dict[Path, Any]) -> list[str]:
        after = _tree(self.watched)
        changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
        return sorted(str(path) for path in changed if not path.is_relative_to(self.work))

    def run(self, fn: Callable, *args, **kwargs) -> Any:
        """fn(*args, **kwargs), asserting it wrote, changed and deleted nothing outside work/."""
        before = _tree(self.watched)
        try:
            return fn(*args, **kwargs)
        finally:
            assert self.changes_outside_work(before) == []

    def refused(self, error_type: type[Exception], fn: Callable, *args, **kwargs) -> str:
        """The message of the error `fn` must raise; the work folder must be left empty."""
        with pytest.raises(error_type) as info:
            self.run(fn, *args, **kwargs)
        assert not self.work.exists() or list(self.work.iterdir()) == []
        return str(info.value)

    def upload(self, name: str, data: bytes) -> Path:
        path = self.inputs / name
        path.write_bytes(data)
        return path

    def upload_zip(self, files: dict[str, bytes], name: str = "photos.zip",
                   compression: int = zipfile.ZIP_DEFLATED) -> Path:
        return self.upload(name, zip_bytes(files, compression))

    def load(self, archive: Path, **kwargs):
        return self.run(load_dataset, archive, self.work, **kwargs)

    def refuse_load(self, archive: Path, error_type: type[Exception] = DataError, **kwargs) -> str:
        return self.refused(error_type, load_dataset, archive, self.work, **kwargs)


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Sandbox:
    """Points cwd, $HOME, temp files and caches into the watched tree, so a stray write is seen."""
    box = Sandbox(tmp_path)
    for name in ("inputs", "work", "cwd", "home", "tmp", "cache"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    for variable, folder in [("HOME", "home"), ("TMPDIR", "tmp"), ("PYRA_CACHE_DIR", "cache"),
                             ("HF_HOME", "cache"), ("TORCH_HOME", "cache")]:
        monkeypatch.setenv(variable, str(tmp_path / folder))
    for variable in [v for v in os.environ if v.startswith("PYRA_MAX_")]:
        monkeypatch.delenv(variable)  # the documented defaults, whatever the shell says
    before = _tree(box.watched)
    yield box
    changed = [p for p in box.changes_outside_work(before) if not p.startswith(str(box.inputs))]
    assert changed == [], "written outside the work and input folders"


# ---------------------------------------------------------------- tiny inputs


def png(value: int, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    colour = (value % 256, (3 * value + 40) % 256, 7) if mode == "RGB" else value % 256
    return encode(Image.new(mode, size, colour), "PNG")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def two_classes(per_class: int = 3, names: tuple[str, str] = ("ant", "bee")) -> dict[str, bytes]:
    """Distinct tiny PNGs: per_class in each of two class folders."""
    return {f"{name}/img{i}.png": png(50 * c + i) for c, name in enumerate(names) for i in range(per_class)}


def skipped_reasons(split) -> dict[str, str]:
    return {item.path: item.reason for item in split.skipped}


# ---------------------------------------------------------------- the container


def test_not_a_zip_renamed_text_file(sandbox):
    archive = sandbox.upload("photos.zip", b"name,label\ncat.jpg,cat\n")
    message = sandbox.refuse_load(archive)
    assert "photos.zip: not a zip archive" in message and "Upload a .zip with one folder per class" in message


def test_truncated_zip(sandbox):
    data = zip_bytes(two_classes())
    archive = sandbox.upload("photos.zip", data[: len(data) // 2])  # the central directory is gone
    message = sandbox.refuse_load(archive)
    assert "photos.zip: not a zip archive, or truncated" in message and "Upload a .zip" in message


def test_corrupt_entry_midway_removes_what_was_extracted(sandbox):
    files = two_classes()
    victim = files["bee/img2.png"]
    data = zip_bytes(files, zipfile.ZIP_STORED)
    at = data.index(victim) + len(victim) // 2
    archive = sandbox.upload("photos.zip", data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    message = sandbox.refuse_load(archive)  # five entries were written before the bad one: all removed
    assert "photos.zip: corrupt or truncated zip" in message and "bee/img2.png" in message
    assert "Re-create and upload it again" in message


def test_upload_size_is_checked_before_the_zip_is_opened(sandbox):
    archive = sandbox.upload_zip(two_classes())
    message = sandbox.refuse_load(archive, limits=Limits(max_upload_bytes=1024))
    assert "photos.zip: the upload is" in message and "more than the limit of 1.0 KB" in message
    assert "PYRA_MAX_UPLOAD_MB" in message
    not_even_a_zip = sandbox.upload("big.zip", b"x" * 4096)  # size first: no parsing of a too-large file
    assert "big.zip: the upload is 4.0 KB" in sandbox.refuse_load(not_even_a_zip, limits=Limits(max_upload_bytes=1024))


@pytest.mark.parametrize("evil", ["../evil.png", "ant/../../evil.png", "../../../../evil.png",
                                  "ant\\..\\..\\evil.png"])
def test_parent_folder_entry(sandbox, evil):
    archive = sandbox.upload_zip(two_classes() | {evil: png(1)})
    message = sandbox.refuse_load(archive)
    assert f"photos.zip: unsafe entry {evil!r}" in message and "relative paths only" in message
    assert not list(sandbox.root.parent.rglob("evil.png"))


@pytest.mark.parametrize("evil", ["/tmp/pyra-evil-{}.png", "C:/Windows/evil.png"])
def test_absolute_path_entry(sandbox, evil):
    evil = evil.format(uuid.uuid4().hex)
    archive = sandbox.upload_zip(two_classes() | {evil: png(1)})
    message = sandbox.refuse_load(archive)
    assert "photos.zip: unsafe entry" in message and "absolute path" in message and "relative paths only" in message
    assert not Path(evil).exists()


def test_symlink_entry(sandbox):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in two_classes().items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("ant/passwords.png")
        link.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(link, "/etc/passwd")
    message = sandbox.refuse_load(sandbox.upload("photos.zip", buffer.getvalue()))
    assert "photos.zip: entry 'ant/passwords.png' is a symbolic link" in message
    assert "Replace links with the real files" in message


def test_password_protected_entry(sandbox):
    data = bytearray(zip_bytes(two_classes()))
    for signature, flag_offset in [(b"PK\x03\x04", 6), (b"PK\x01\x02", 8)]:  # local and central headers
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + flag_offset] |= 0x1
            start += 4
    message = sandbox.refuse_load(sandbox.upload("photos.zip", bytes(data)))
    assert "photos.zip: entry 'ant/img0.png' is password-protected" in message and "without a password" in message


def test_zip_bomb_by_compression_ratio(sandbox):
    archive = sandbox.upload_zip(two_classes() | {"ant/flat.bmp": bytes(3 * 2**20)})  # 3 MB of zeros -> ~3 KB
    assert archive.stat().st_size < 50_000
    message = sandbox.refuse_load(archive)
    assert "photos.zip: entry 'ant/flat.bmp' expands" in message and "zip bomb" in message
    assert "more than the limit of 200:1" in message and "PYRA_MAX_COMPRESSION_RATIO" in message


def test_small_entries_are_never_refused_for_their_ratio(sandbox):
    split = sandbox.load(sandbox.upload_zip(two_classes() | {"ant/zeros.txt": bytes(500_000)}))
    assert skipped_reasons(split) == {"ant/zeros.txt": "not an image"}


def test_too_many_entries(sandbox):
    archive = sandbox.upload_zip(two_classes())
    message = sandbox.refuse_load(archive, limits=Limits(max_zip_entries=5))
    assert "photos.zip: 6 entries, more than the limit of 5" in message
    assert "Use fewer images" in message and "PYRA_MAX_ZIP_ENTRIES" in message


def test_too_large_in_total(sandbox):
    archive = sandbox.upload_zip(two_classes())
    message = sandbox.refuse_load(archive, limits=Limits(max_unzipped_bytes=300))
    assert "photos.zip:" in message and "uncompressed, more than the limit of 300 bytes" in message
    assert "Use fewer or smaller images" in message and "PYRA_MAX_UNZIPPED_MB" in message


def test_nested_zip_is_skipped_and_counted(sandbox):
    inner = zip_bytes({f"dog/img{i}.png": png(200 + i) for i in range(3)})
    split = sandbox.load(sandbox.upload_zip(two_classes() | {"more.zip": inner, "bee/old.zip": inner}))
    assert split.classes == ["ant", "bee"]
    reasons = skipped_reasons(split)
    assert set(reasons) == {"more.zip", "bee/old.zip"}
    assert all(r.startswith("nested zip archive (not extracted); put its images in the main zip") for r in reasons.values())
    assert "Skipped 2 files: 2 nested zip archive" in split.summary()
    assert not list(sandbox.work.rglob("*.zip")) and not list(sandbox.work.rglob("dog"))


# ---------------------------------------------------------------- the layout


def test_no_class_folders(sandbox):
    archive = sandbox.upload_zip({f"img{i}.png": png(i) for i in range(6)})
    message = sandbox.refuse_load(archive)
    assert "photos.zip: need at least 2 class folders, found none" in message
    assert "Put each class's images in its own folder" in message


def test_one_class_only(sandbox):
    archive = sandbox.upload_zip({f"holiday/cats/img{i}.png": png(i) for i in range(6)})
    message = sandbox.refuse_load(archive)
    assert "photos.zip: need at least 2 class folders, found ['cats']" in message and "its own folder" in message


def test_class_with_no_images(sandbox):
    archive = sandbox.upload_zip(two_classes() | {"dog/readme.txt": b"woof", "dog/labels.csv": b"a,b"})
    message = sandbox.refuse_load(archive)
    assert "photos.zip: class folder 'dog' has no usable images (2 files could not be read as images)" in message
    assert "Add images (JPEG, PNG, ...) to 'dog/' or remove the folder" in message


def test_class_with_a_single_image(sandbox):
    archive = sandbox.upload_zip(two_classes() | {"dog/only.png": png(99)})
    message = sandbox.refuse_load(archive)
    assert "photos.zip: class 'dog' has only 1 usable image" in message and "Add more images to 'dog/'" in message


def test_non_image_files_are_skipped_and_counted(sandbox):
    junk = {"ant/notes.txt": b"hello", "bee/run.py": b"import os", "ant/fake.jpg": b"<html>not a jpeg</html>",
            "bee/table.csv": b"x,y"}
    split = sandbox.load(sandbox.upload_zip(two_classes() | junk))
    assert skipped_reasons(split) == {name: "not an image" for name in junk}
    assert split.class_counts() == {"ant": (2, 1), "bee": (2, 1)}
    assert "Skipped 4 files: 4 not an image" in split.summary()


def _noise_jpeg() -> bytes:
    return encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)), "JPEG")


@pytest.mark.parametrize("name, data", [
    ("bee/cut.jpg", _noise_jpeg()[: len(_noise_jpeg()) * 6 // 10]),
    ("bee/cut.png", png(7, (40, 40))[:60]),
], ids=["jpeg", "png"])
def test_truncated_image_is_skipped_with_reason(sandbox, name, data):
    split = sandbox.load(sandbox.upload_zip(two_classes() | {name: data}))
    (item,) = split.skipped
    assert item.path == name and item.reason.startswith("corrupt image:")
    assert name not in [r.name for r in split.train + split.val]


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming width x height pixels, with almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(20_000, 20_000), (8_000, 6_000)])  # over Pillow's cap / over ours
def test_decompression_bomb_dimensions_are_skipped(sandbox, width, height):
    split = sandbox.load(sandbox.upload_zip(two_classes() | {"ant/huge.png": _png_header_only(width, height)}))
    reason = skipped_reasons(split)["ant/huge.png"]
    assert reason.startswith("too large:") and "resize it" in reason
    assert split.class_counts() == {"ant": (2, 1), "bee": (2, 1)}


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 8), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _exif_rotated() -> bytes:
    image = Image.new("RGB", (16, 8), (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display
    return encode(image, "JPEG", exif=exif.tobytes())


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (16, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return encode(image, "PNG", transparency=0)


FORMATS = {  # file -> (bytes, size once loaded, pixel (0, 0) once loaded)
    "animated.gif": (_animated_gif(), (16, 8), (255, 0, 0)),  # the first frame
    "deep16.png": (encode(Image.fromarray(np.full((8, 16), 257 * 100, np.uint16)), "PNG"), (16, 8), (100, 100, 100)),
    "cmyk.jpg": (encode(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG"), (16, 8), (255, 0, 0)),
    "grey.png": (encode(Image.new("L", (16, 8), 90), "PNG"), (16, 8), (90, 90, 90)),
    "grey_alpha.png": (encode(Image.new("LA", (16, 8), (90, 0)), "PNG"), (16, 8), (255, 255, 255)),
    "rgba.png": (encode(Image.new("RGBA", (16, 8), (255, 0, 0, 0)), "PNG"), (16, 8), (255, 255, 255)),
    "palette.png": (_palette_with_transparency(), (16, 8), (255, 255, 255)),
    "rotated.jpg": (_exif_rotated(), (8, 16), None),
}


@pytest.mark.parametrize("file_name", sorted(FORMATS))
def test_unusual_image_formats_load_as_rgb(sandbox, file_name):
    data, size, pixel = FORMATS[file_name]
    split = sandbox.load(sandbox.upload_zip(two_classes(2) | {f"ant/{file_name}": data}))
    assert split.skipped == []
    (record,) = [r for r in split.train + split.val if r.name.endswith(file_name)]
    image = sandbox.run(record.load)
    assert image.mode == "RGB" and image.size == size
    if pixel is not None:
        assert image.getpixel((0, 0)) == pixel


def test_unicode_and_spaced_names_work(sandbox):
    names = ("café crème", "猫 und Hund")
    files = {f"Mes photos/{name}/ été {i} (copie).png": png(10 * c + i)
             for c, name in enumerate(names) for i in range(3)}
    split = sandbox.load(sandbox.upload_zip(files, name="mes données.zip"))
    assert split.classes == sorted(names) and split.source == "mes données.zip"
    assert split.skipped == [] and split.warnings == []
    assert all(r.load().mode == "RGB" and r.path.resolve().is_relative_to(sandbox.work.resolve())
               for r in split.train + split.val)


def test_duplicate_images_across_classes_are_warned(sandbox):
    files = two_classes() | {"bee/copy of img0.png": two_classes()["ant/img0.png"]}
    split = sandbox.load(sandbox.upload_zip(files))
    (warning,) = split.warnings
    assert "1 image(s) appear in more than one class" in warning
    assert "'ant/img0.png' (ant) = 'bee/copy of img0.png' (bee)" in warning
    assert "keep each in its right class only" in warning
    assert f"Warning: {warning}" in split.summary()
    assert split.class_counts() == {"ant": (2, 1), "bee": (3, 1)}  # warned, not dropped


def test_far_too_many_classes(sandbox):
    image = png(1)
    archive = sandbox.upload_zip({f"class{c:03d}/img{i}.png": image for c in range(101) for i in range(2)})
    message = sandbox.refuse_load(archive)  # the documented default limit of 100
    assert "photos.zip: 101 class folders (class000, class001, class002, ...), more than the limit of 100" in message
    assert "one folder per class, not one per image" in message and "PYRA_MAX_CLASSES" in message


def test_too_many_images_per_class(sandbox):
    archive = sandbox.upload_zip(two_classes(per_class=5))
    message = sandbox.refuse_load(archive, limits=Limits(max_images_per_class=4))
    assert "photos.zip: too many files per class ('ant' has 5, 'bee' has 5; the limit is 4 images per class)" in message
    assert "Use max_per_class=4 or less" in message and "PYRA_MAX_IMAGES_PER_CLASS" in message
    split = sandbox.load(archive, limits=Limits(max_images_per_class=4), max_per_class=4)  # the fix works
    assert split.class_counts() == {"ant": (3, 1), "bee": (3, 1)}


def test_one_pixel_images_work(sandbox):
    files = {f"{name}/dot{i}.png": png(40 * c + i, size=(1, 1)) for c, name in enumerate(["ant", "bee"])
             for i in range(3)}
    split = sandbox.load(sandbox.upload_zip(files))
    assert split.skipped == [] and split.class_counts() == {"ant": (2, 1), "bee": (2, 1)}
    dataset = ImageDataset(split.train, make_transform({"mean": (0.5,) * 3, "std": (0.5,) * 3}, 32))
    tensor, label = sandbox.run(dataset.__getitem__, 0)
    assert tensor.shape == (3, 32, 32) and torch.isfinite(tensor).all() and label == 0


# ---------------------------------------------------------------- limits from the environment


def test_limits_from_env(monkeypatch, sandbox):
    values = {"PYRA_MAX_UPLOAD_MB": "3", "PYRA_MAX_ZIP_ENTRIES": "7", "PYRA_MAX_UNZIPPED_MB": "2",
              "PYRA_MAX_COMPRESSION_RATIO": "50", "PYRA_MAX_IMAGE_PIXELS": "1000",
              "PYRA_MAX_IMAGES_PER_CLASS": "9", "PYRA_MAX_CLASSES": "4"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    assert Limits.from_env() == Limits(max_upload_bytes=3 * 2**20, max_zip_entries=7, max_unzipped_bytes=2 * 2**20,
                                       max_compression_ratio=50, max_image_pixels=1000, max_images_per_class=9,
                                       max_classes=4)
    archive = sandbox.upload_zip(two_classes(per_class=10))
    assert "more than the limit of 7" in sandbox.refuse_load(archive)  # load_dataset reads them by default


def test_defaults_are_documented():
    assert Limits() == Limits(max_upload_bytes=200 * 2**20, max_zip_entries=20_000, max_unzipped_bytes=1024 * 2**20,
                              max_compression_ratio=200, max_image_pixels=40_000_000, max_images_per_class=5_000,
                              max_classes=100)


@pytest.mark.parametrize("raw", ["lots", "-5", "0", "2.5"])
def test_bad_env_value_names_the_variable(monkeypatch, sandbox, raw):
    monkeypatch.setenv("PYRA_MAX_CLASSES", raw)
    archive = sandbox.upload_zip(two_classes())
    message = sandbox.refuse_load(archive, error_type=ValueError)
    assert f"environment variable PYRA_MAX_CLASSES={raw!r} must be a positive whole number" in message
    assert "unset it to use the default 100" in message


# ---------------------------------------------------------------- uploaded checkpoints


class CreatesFile:
    """Unpickling this calls open(path, 'w'): proof of code execution if the file appears."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _payloads(marker: Path) -> dict[str, Callable[[Path], None]]:
    return {
        "raw_pickle": lambda path: path.write_bytes(pickle.dumps({"weight": CreatesFile(marker)}, protocol=2)),
        "torch_save": lambda path: torch.save({"weight": CreatesFile(marker)}, path),
    }


def test_the_pickle_payload_is_live(tmp_path):
    """Control: unpickling the payload does create the marker, so its absence below means something."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(CreatesFile(marker))).close()
    assert marker.exists()


def _run_config(**overrides) -> RunConfig:
    values = dict(backbone=f"random:{TINY}", img_size=32, num_classes=2, classes=("ant", "bee"),
                  schedule=(0,) * 12, method="none", lora_rank=2)
    return RunConfig(**(values | overrides))


@pytest.mark.parametrize("kind", ["raw_pickle", "torch_save"])
def test_pickled_adapter_is_refused_without_unpickling(sandbox, kind):
    marker = sandbox.root / "pwned"
    run_dir = sandbox.inputs / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(_run_config().to_dict()))
    _payloads(marker)[kind](run_dir / "adapter.safetensors")
    message = sandbox.refused(CheckpointError, load_run, run_dir)
    assert f"{run_dir / 'adapter.safetensors'}: not a valid safetensors file" in message
    assert "only adapters written by save_run can be loaded" in message
    assert not marker.exists()


@pytest.mark.parametrize("kind, suffix", [("torch_save", ".pth"), ("raw_pickle", ".bin"),
                                          ("torch_save", ".safetensors")])
def test_pickled_backbone_weights_are_refused_without_unpickling(sandbox, kind, suffix):
    marker = sandbox.root / "pwned"
    weights = sandbox.inputs / f"backbone{suffix}"
    _payloads(marker)[kind](weights)
    message = sandbox.refused(BackboneError, create_backbone, TINY, num_classes=2, img_size=32, weights=weights)
    assert f"{weights.name}: cannot read a state dict" in message and str(weights.parent) not in message
    assert "save one with safetensors.torch.save_file" in message
    assert not marker.exists()


def _random_weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_file(timm.create_model(TINY, pretrained=False, num_classes=0, img_size=32).state_dict(), str(path))
    return path


def test_adapter_for_another_backbone_is_refused(sandbox):
    weights = _random_weights(sandbox.inputs / "backbone.safetensors", seed=1)
    config = _run_config(backbone=TINY, backbone_weights=str(weights))
    run_dir = sandbox.inputs / "run"
    save_run(run_dir, build_model(config), config)
    _random_weights(weights, seed=2)  # same architecture and shapes, other weights
    message = sandbox.refused(CheckpointError, load_run, run_dir)
    assert f"{run_dir / 'config.json'}: this adapter was trained on a different backbone" in message
    assert "use the same backbone weights and img_size" in message


# ---------------------------------------------------------------- impossible settings


@pytest.mark.parametrize("name, img_size", [(TINY, 32), ("vit_small_patch14_reg4_dinov2", 56)])
def test_r_beyond_the_tokens_is_capped_and_reported(name, img_size):
    geometry = pyra.geometry(backbone_structure(name, img_size=img_size))
    schedule = pyra.resolve_schedule(10_000, geometry)  # the returned schedule is the capped, used one
    assert schedule[0] == max_merge(geometry.num_tokens, geometry.num_protected) < 10_000
    tokens = pyra.tokens_per_layer(schedule, geometry)
    assert min(tokens) >= geometry.num_protected + 1 and tokens == pyra.tokens_per_layer([10_000] * 12, geometry)
    assert tokens[-1] == geometry.num_protected + 1


def test_pyra_model_refuses_more_r_than_it_was_trained_for():
    model = build_model(_run_config(schedule=(1, 1, 1) + (0,) * 9, method="pyra"), pretrained=False)
    with pytest.raises(ValueError) as info:
        pyra.set_schedule(model, 2)
    message = str(info.value)
    assert "layer 0: PYRA was trained to merge at most 1 tokens, asked for 2" in message
    assert "use a smaller schedule, or method='tome' for training-free merging" in message
    pyra.set_schedule(model, 2, method="tome")  # the suggested fix works
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize("field, value", [("epochs", 0), ("lr", -1e-3), ("batch_size", 0), ("lr", float("nan")),
                                          ("pyra_lr", 0.0), ("epochs", 2.5)])
def test_impossible_training_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be .*got {value!r}"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("val_fraction", [0.0, 1.0])
def test_val_fraction_zero_or_one(sandbox, val_fraction):
    archive = sandbox.upload_zip(two_classes())
    message = sandbox.refuse_load(archive, val_fraction=val_fraction)
    assert message == f"val_fraction must be between 0 and 1, got {val_fraction}"
    with pytest.raises(ValueError, match="val_fraction must be between 0 and 1"):
        _run_config(val_fraction=val_fraction)
