"""Tests for pyra.data: zip/folder loading, safety, splitting, RGB conversion, samples, transforms."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.zips import zip_bytes
from pyra.data.datasets import ImageDataset, ImageRecord, load_dataset, make_transform
from pyra.data.images import to_rgb
from pyra.data.limits import DataError, Limits
from pyra.data.samples import example_photos, list_samples

CLASSES = ["ant", "bee", "cat"]


def _png_bytes(value: int, size: tuple[int, int] = (12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, 7)).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_tree(root: Path, per_class: int = 4) -> None:
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"img{i:02d}.png").write_bytes(_png_bytes(20 * c + i))


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    path.write_bytes(zip_bytes(files))
    return path


def _class_files(prefix: str = "", per_class: int = 4) -> dict[str, bytes]:
    return {f"{prefix}{name}/img{i:02d}.png": _png_bytes(20 * c + i)
            for c, name in enumerate(CLASSES) for i in range(per_class)}


def _names(records) -> list[str]:
    return [r.name for r in records]


# ---------------------------------------------------------------- round trips

def test_folder_round_trip(tmp_path):
    _write_tree(tmp_path / "data")
    split = load_dataset(tmp_path / "data", tmp_path / "work")
    assert split.classes == CLASSES
    assert split.class_counts() == {name: (3, 1) for name in CLASSES}
    image = split.train[0].load()
    assert image.mode == "RGB" and image.size == (12, 10)
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
    assert "3 classes" in split.summary()


@pytest.mark.parametrize("prefix", ["", "wrapper/"])
def test_zip_round_trip_with_optional_wrapping_folder(tmp_path, prefix):
    archive = _zip(tmp_path / "data.zip", _class_files(prefix))
    workdir = tmp_path / "work"
    split = load_dataset(archive, workdir, val_fraction=0.25, seed=1)
    assert split.classes == CLASSES
    assert split.class_counts() == {name: (3, 1) for name in CLASSES}
    assert split.source == "data.zip"
    for record in split.train + split.val:
        assert record.path.resolve().is_relative_to(workdir.resolve())
        assert CLASSES[record.label] in record.name
        assert record.load().size == (12, 10)


def test_junk_is_skipped_and_counted(tmp_path):
    files = _class_files()
    files |= {
        "__MACOSX/ant/._img00.png": b"\x00\x05\x16\x07 apple double",
        "ant/.DS_Store": b"junk",
        "bee/notes.txt": b"not an image, even though it sits in a class folder",
        "cat/fake.png": b"text pretending to be a png",
        "inner.zip": b"PK\x03\x04",
    }
    split = load_dataset(_zip(tmp_path / "data.zip", files), tmp_path / "work")
    reasons = {item.path: item.reason for item in split.skipped}
    assert reasons["__MACOSX/ant/._img00.png"].startswith("macOS metadata")
    assert reasons["ant/.DS_Store"] == "hidden file"
    assert reasons["bee/notes.txt"] == "not an image"
    assert reasons["cat/fake.png"] == "not an image"
    assert reasons["inner.zip"].startswith("nested zip")
    assert len(split.skipped) == 5
    assert split.class_counts() == {name: (3, 1) for name in CLASSES}
    assert "Skipped 5 files" in split.summary()


def test_corrupt_png_is_skipped_with_reason(tmp_path):
    _write_tree(tmp_path / "data")
    (tmp_path / "data" / "bee" / "broken.png").write_bytes(_png_bytes(1, (40, 40))[:60])
    split = load_dataset(tmp_path / "data", tmp_path / "work")
    (item,) = split.skipped
    assert item.path == "bee/broken.png" and item.reason.startswith("corrupt image")
    assert "broken.png" not in " ".join(_names(split.train + split.val))


def test_too_many_pixels_is_skipped(tmp_path):
    _write_tree(tmp_path / "data")
    Image.new("L", (50, 50)).save(tmp_path / "data" / "cat" / "huge.png")
    split = load_dataset(tmp_path / "data", tmp_path / "work", limits=Limits(max_image_pixels=2000))
    assert [s.reason.split(":")[0] for s in split.skipped] == ["too large"]


# ---------------------------------------------------------------- split

def test_split_is_seeded_stratified_and_covers_every_class(tmp_path):
    _write_tree(tmp_path / "data", per_class=10)
    (tmp_path / "data" / "dog").mkdir()
    for i in range(2):  # a tiny class still gets one val image
        (tmp_path / "data" / "dog" / f"d{i}.png").write_bytes(_png_bytes(i))
    first = load_dataset(tmp_path / "data", tmp_path / "w1", seed=3)
    again = load_dataset(tmp_path / "data", tmp_path / "w2", seed=3)
    other = load_dataset(tmp_path / "data", tmp_path / "w3", seed=4)
    assert _names(first.val) == _names(again.val) and _names(first.train) == _names(again.train)
    assert _names(first.val) != _names(other.val)
    counts = first.class_counts()
    assert counts == {"ant": (8, 2), "bee": (8, 2), "cat": (8, 2), "dog": (1, 1)}
    assert not set(_names(first.train)) & set(_names(first.val))


def test_max_per_class(tmp_path):
    _write_tree(tmp_path / "data", per_class=10)
    split = load_dataset(tmp_path / "data", tmp_path / "work", max_per_class=4)
    assert split.class_counts() == {name: (3, 1) for name in CLASSES}
    assert split.warnings


# ---------------------------------------------------------------- rejections

def test_one_class_names_the_fix(tmp_path):
    archive = _zip(tmp_path / "data.zip", {f"cats/{i}.png": _png_bytes(i) for i in range(3)})
    with pytest.raises(DataError, match=r"data\.zip: need at least 2 class folders, found \['cats'\].*own folder"):
        load_dataset(archive, tmp_path / "work")


def test_class_without_usable_images_is_named(tmp_path):
    files = _class_files() | {"dog/readme.txt": b"hello"}
    with pytest.raises(DataError, match="'dog' has no usable images"):
        load_dataset(_zip(tmp_path / "data.zip", files), tmp_path / "work")


def test_class_with_one_image_cannot_split(tmp_path):
    files = _class_files() | {"dog/only.png": _png_bytes(3)}
    with pytest.raises(DataError, match="'dog' has only 1 usable image"):
        load_dataset(_zip(tmp_path / "data.zip", files), tmp_path / "work")


def test_not_a_zip(tmp_path):
    fake = tmp_path / "data.zip"
    fake.write_bytes(b"this is not a zip file at all")
    with pytest.raises(DataError, match="data.zip: not a zip archive"):
        load_dataset(fake, tmp_path / "work")


def test_truncated_zip(tmp_path):
    archive = _zip(tmp_path / "data.zip", _class_files())
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(DataError, match="data.zip"):
        load_dataset(archive, tmp_path / "work")


@pytest.mark.parametrize("evil", ["../evil.png", "ant/../../evil.png", "/tmp/evil.png", "C:/evil.png",
                                  "ant\\..\\..\\evil.png"])
def test_unsafe_entry_writes_nothing(tmp_path, evil):
    workdir = tmp_path / "sandbox" / "work"
    archive = _zip(tmp_path / "data.zip", _class_files() | {evil: b"boom"})
    with pytest.raises(DataError, match="unsafe entry"):
        load_dataset(archive, workdir)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data.zip", "sandbox", "work"]
    assert not Path("/tmp/evil.png").exists()


def test_symlink_entry_is_rejected(tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in _class_files().items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("ant/link.png")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        load_dataset(archive, tmp_path / "work")


def test_size_limits(tmp_path):
    archive = _zip(tmp_path / "data.zip", _class_files())
    with pytest.raises(DataError, match="entries"):
        load_dataset(archive, tmp_path / "work", limits=Limits(max_zip_entries=5))
    with pytest.raises(DataError, match="uncompressed"):
        load_dataset(archive, tmp_path / "work", limits=Limits(max_unzipped_bytes=100))


def test_limits_from_env(monkeypatch):
    monkeypatch.setenv("PYRA_MAX_ZIP_ENTRIES", "7")
    monkeypatch.setenv("PYRA_MAX_UNZIPPED_MB", "2")
    assert Limits.from_env() == Limits(max_zip_entries=7, max_unzipped_bytes=2 * 2**20)


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope.zip", tmp_path / "work")
    with pytest.raises(DataError, match="unknown sample"):
        load_dataset("sample:nope", tmp_path / "work")


# ---------------------------------------------------------------- RGB conversion

def _exif_rotated(path: Path) -> None:
    image = Image.new("RGB", (20, 10), (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image.save(path, format="JPEG", exif=exif.tobytes())


def _palette_with_transparency(path: Path) -> None:
    image = Image.new("P", (20, 10), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.save(path, format="PNG", transparency=0)


def _animated_gif(path: Path) -> None:
    frames = [Image.new("P", (20, 10), i) for i in range(3)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])


WRITERS = {
    "grey.png": (lambda p: Image.new("L", (20, 10), 90).save(p), (20, 10), (90, 90, 90)),
    "grey_alpha.png": (lambda p: Image.new("LA", (20, 10), (90, 0)).save(p), (20, 10), (255, 255, 255)),
    "rgba.png": (lambda p: Image.new("RGBA", (20, 10), (255, 0, 0, 0)).save(p), (20, 10), (255, 255, 255)),
    "palette.png": (_palette_with_transparency, (20, 10), (255, 255, 255)),
    "deep.png": (lambda p: Image.fromarray(np.full((10, 20), 65535, np.uint16)).save(p), (20, 10), (255, 255, 255)),
    "cmyk.jpg": (lambda p: Image.new("CMYK", (20, 10), (0, 0, 0, 0)).save(p), (20, 10), None),
    "rotated.jpg": (_exif_rotated, (10, 20), None),
    "animated.gif": (_animated_gif, (20, 10), None),
}


@pytest.mark.parametrize("file_name", sorted(WRITERS))
def test_any_image_loads_as_rgb(tmp_path, file_name):
    write, size, pixel = WRITERS[file_name]
    path = tmp_path / file_name
    write(path)
    image = ImageRecord(0, file_name, path=path).load()
    assert image.mode == "RGB" and image.size == size
    if pixel is not None:
        assert image.getpixel((0, 0)) == pixel


def test_sixteen_bit_scales_to_eight(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16)).save(path)
    assert [v[0] for v in np.asarray(ImageRecord(0, "d", path=path).load())[0]] == [0, 100, 255]


def test_array_record_loads_as_rgb():
    image = ImageRecord(1, "a", array=np.full((5, 6), 77, np.uint8)).load()
    assert image.mode == "RGB" and image.size == (6, 5) and to_rgb(image).getpixel((0, 0)) == (77, 77, 77)


# ---------------------------------------------------------------- samples

@pytest.mark.parametrize("info", list_samples(), ids=lambda info: info.name)
def test_sample_loads_offline(tmp_path, info):
    split = load_dataset(f"sample:{info.name}", tmp_path)
    assert info.num_classes >= 2 and len(split.classes) == info.num_classes
    assert len(split.train) + len(split.val) == info.num_images
    assert all(n_train > 0 and n_val > 0 for n_train, n_val in split.class_counts().values())
    image = split.val[0].load()
    assert image.mode == "RGB"
    assert not any(tmp_path.iterdir())


def test_sample_counts():
    expected = {"fashion": (10, 1000), "digits": (10, 1797), "faces": (2, 200), "textures": (3, 192)}
    assert {i.name: (i.num_classes, i.num_images) for i in list_samples()} == expected


def test_fashion_uses_shipped_split(tmp_path):
    split = load_dataset("sample:fashion", tmp_path, seed=5)
    assert split.class_counts() == {name: (60, 40) for name in split.classes}
    assert split.val[0].load().size == (28, 28)
    capped = load_dataset("sample:fashion", tmp_path, max_per_class=8)
    assert set(capped.class_counts().values()) == {(6, 2)}


def test_example_photos_are_rgb():
    photos = example_photos()
    assert len(photos) >= 3
    assert all(p.mode == "RGB" and min(p.size) >= 224 for p in photos.values())


# ---------------------------------------------------------------- torch side

def test_transform_and_dataset_normalise_with_given_stats():
    mean, std, value, size = (0.2, 0.4, 0.6), (0.5, 0.25, 0.125), 200, 16
    config = {"mean": mean, "std": std, "interpolation": "bilinear", "input_size": (3, 224, 224)}
    records = [ImageRecord(3, "x", array=np.full((9, 13), value, np.uint8))]
    dataset = ImageDataset(records, make_transform(config, size))
    tensor, label = dataset[0]
    assert len(dataset) == 1 and label == 3
    assert tensor.shape == (3, size, size) and tensor.dtype == torch.float32
    expected = torch.tensor([(value / 255 - m) / s for m, s in zip(mean, std)]).view(3, 1, 1).expand(3, size, size)
    torch.testing.assert_close(tensor, expected)


def test_transform_needs_model_stats():
    with pytest.raises(ValueError, match="resolve_model_data_config"):
        make_transform({"interpolation": "bicubic"}, 32)
