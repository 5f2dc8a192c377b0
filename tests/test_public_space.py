"""What one stranger can do to a public Space: disk, memory, work and time per request are bounded,
and every bad value gets the app's own message.

The HTTP tests drive `python app.py` with raw requests that never open a heartbeat (as a script
calling /gradio_api/call/... would); the others call the handlers and the engine directly.
"""
from __future__ import annotations

import io
import os
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from benchmarks.app_server import serve_app
from benchmarks.http_client import RawClient
from benchmarks.zips import zip_bytes
from pyra.backbones.factory import backbone_structure
from pyra.data.datasets import DatasetSplit, ImageRecord
from pyra.run.compare import run_compare
from pyra.run.comparison import CompareConfig
from pyra.run.plan import plan_compare, training_memory_bytes, within_memory
from pyra.run.train import TrainConfig
from pyra_app import jobs, tab_data, tab_train
from pyra_app.budget import Budget, BudgetError, folder_bytes
from pyra_app.messages import public_text
from pyra_app.session import MARKER, open_session, sweep_idle_sessions
from pyra_app.settings import TRAIN_FIELDS, TrainSettings, control_values

MB = 2**20
LIMITS = {"PYRA_SESSION_DISK_MB": "8", "PYRA_MAX_TRAININGS": "6", "PYRA_MAX_IMG_SIZE": "128",
          "PYRA_MAX_BATCH": "32", "PYRA_MAX_INPUT_IMAGE_MB": "2"}
TRAIN = list(control_values(TrainSettings(lora_rank=4, epochs=1, batch_size=8, lr=1e-3, pyra_lr=1e-3, num_levels=2,
                                          bench_repeats=1)))


# ---------------------------------------------------------------- raw HTTP, no heartbeat

@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[SimpleNamespace]:
    with serve_app(tmp_path_factory.mktemp("space"), limits=LIMITS) as served:
        yield served


def png_bytes(size: tuple[int, int] = (24, 24), seed: int = 0, blank: str = "") -> bytes:
    """Random RGB pixels, or a blank image of mode `blank` (tiny as a file, however many pixels)."""
    image = (Image.new(blank, size) if blank else
             Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def small_classes(per_class: int = 3) -> dict[str, bytes]:
    return {f"{name}/{i}.png": png_bytes(seed=k * 10 + i) for k, name in enumerate(("cat", "dog"))
            for i in range(per_class)}


def assert_public(message: str, app: SimpleNamespace) -> None:
    """The app's own words: no Gradio fallback, no traceback, no server path or session id."""
    assert message and "upstream" not in message.lower() and "Traceback" not in message, message
    assert "session-" not in message and str(app.work_root) not in message and "/tmp/" not in message, message


def uploads_left(app: SimpleNamespace) -> list[Path]:
    return [p for p in app.gradio_temp.rglob("*.zip")] if app.gradio_temp.exists() else []


def test_a_sub_threshold_zip_bomb_is_refused_and_leaves_nothing(app):
    client = RawClient(app.url)
    bomb = small_classes() | {f"cat/padding{i}.bin": bytes(MB) for i in range(40)}  # each entry exactly 1 MiB
    kind, message = client.call("load_zip", client.upload("bomb.zip", zip_bytes(bomb)), 0, 0.25)
    assert kind == "error" and "zip bomb" in message and "bomb.zip" in message, message
    assert_public(message, app)
    assert folder_bytes(app.work_root) < 64 * 1024 and not uploads_left(app)


def test_files_that_are_not_used_are_not_kept_on_disk(app):
    client = RawClient(app.url)
    junk = {"cat/notes.bin": os.urandom(3 * MB), "dog/readme.txt": b"hello" * 1000}
    kind, outputs = client.call("load_zip", client.upload("mixed.zip", zip_bytes(small_classes() | junk)), 0, 0.34)
    assert kind == "complete", outputs
    skipped = [row[0] for row in outputs[4]["data"]]
    assert "cat/notes.bin" in skipped and "dog/readme.txt" in skipped
    assert folder_bytes(app.work_root) < MB and not uploads_left(app)  # 6 small PNGs; the 3 MB file is gone


def test_a_zip_larger_than_the_session_disk_budget_is_refused_before_extraction(app):
    client = RawClient(app.url)
    big = small_classes() | {f"dog/noise{i}.bin": os.urandom(3 * MB) for i in range(3)}  # 9 MB > 8 MB
    kind, message = client.call("load_zip", client.upload("big.zip", zip_bytes(big, zipfile.ZIP_STORED)), 0, 0.25)
    assert kind == "error" and "disk budget" in message and "PYRA_SESSION_DISK_MB" in message, message
    assert_public(message, app)
    assert folder_bytes(app.work_root) < MB


def _server_peak_reset(pid: int) -> int:
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _server_kb(pid, "VmRSS")


def _server_kb(pid: int, field: str) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def test_previews_are_thumbnails_and_big_images_do_not_cost_gigabytes(app):
    client = RawClient(app.url)
    blank = png_bytes((6000, 6000), blank="RGB")  # 36 MP each, tiny as a file
    entries = {f"{name}/{i}.png": blank for name in ("a", "b") for i in range(4)}
    before = _server_peak_reset(app.pid)
    kind, outputs = client.call("load_zip", client.upload("huge.zip", zip_bytes(entries)), 0, 0.25)
    added_mb = (_server_kb(app.pid, "VmHWM") - before) / 1024
    assert kind == "complete", outputs
    gallery = outputs[2]  # outputs: session (null over the API), summary, gallery, counts, skipped, ...
    assert len(gallery) == 8
    for item in gallery:
        with Image.open(item["image"]["path"]) as shown:
            assert max(shown.size) <= 256
    assert added_mb < 600, f"loading 8 images of 36 MP raised the server's peak memory by {added_mb:.0f} MB"


@pytest.mark.parametrize("field, value, expected", [
    ("seeds", ",".join(map(str, range(501))), "PYRA_MAX_TRAININGS"),
    ("img_size", 10**6, "PYRA_MAX_IMG_SIZE"),
    ("img_size", 1e300, "PYRA_MAX_IMG_SIZE"),
    ("img_size", 9, "too small"),
    ("batch_size", 10**6, "PYRA_MAX_BATCH"),
    ("epochs", "abc", "epochs: 'abc' is not a number"),
    ("epochs", 10**9, "epochs: 1000000000 is more than the limit of 50"),
    ("lr", float("nan"), "learning rate: must be a finite number"),
    ("pyra_lr", float("inf"), "PYRA learning rate: must be a finite number"),
    ("backbone", {"name": "x"}, "backbone: expected a text"),
    ("backbone", "random:resnet50", "not a timm VisionTransformer"),
    ("seeds", str(10**23), "seeds: each seed must be a whole number from 0 to"),
    ("protocol", ["elastic"], "training protocol: choose one of"),
])
def test_what_a_training_request_asks_for_is_checked_before_work_starts(app, field, value, expected):
    client = RawClient(app.url)
    assert client.call("load_sample", "textures", 6, 0.25)[0] == "complete"
    request = list(TRAIN)
    request[TRAIN_FIELDS.index(field)] = value
    started = time.monotonic()
    kind, message = client.call("train", *request)
    assert kind == "error" and expected in message, message
    assert_public(message, app)
    assert time.monotonic() - started < 30  # refused up front, nothing trained
    assert not list(app.work_root.glob("session-*/compare-*"))


@pytest.mark.parametrize("api, data, expected", [
    ("load_sample", ["textures", float("nan"), 0.25], "max images per class: must be a finite number"),
    ("load_sample", ["textures", 0, "abc"], "validation share: 'abc' is not a number"),
    ("load_sample", [{"x": 1}, 0, 0.25], "Choose a sample first"),
    ("select_level", ["abc"], "No comparison yet"),
    ("token_maps", ["not an image", 0, 1], "Image (or upload your own)"),
    ("token_maps", [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, 0, 1],
     "Image (or upload your own)"),
])
def test_bad_values_get_the_apps_own_message(app, api, data, expected):
    kind, message = RawClient(app.url).call(api, *data)
    assert kind == "error" and expected in message, message
    assert_public(message, app)


@pytest.mark.parametrize("name, data, expected", [
    ("fake.png", b"this is not a png" * 100, "fake.png: not an image"),
    ("huge.png", png_bytes((13000, 13000), blank="1"), "huge.png: too large: 13000x13000 pixels"),
    ("big.png", os.urandom(3 * MB), "more than the limit of 2.0 MB"),
])
def test_images_sent_to_token_maps_are_checked_like_zip_images(app, name, data, expected):
    client = RawClient(app.url)
    kind, message = client.call("token_maps", client.upload(name, data), 0, 1)
    assert kind == "error" and expected in message, message
    assert_public(message, app)
    assert not [p for p in app.gradio_temp.rglob(name)]  # a refused image does not keep its disk space


@pytest.mark.parametrize("entries, expected", [
    ({"cat/" + "x" * 300 + ".png": png_bytes()}, "shorten its file or folder names"),
    ({"cat/a.png": png_bytes(), "cat/a.png/b.png": png_bytes()}, "a file and a folder of the same name"),
])
def test_zip_entries_the_file_system_refuses_are_named_as_in_the_zip(app, entries, expected):
    client = RawClient(app.url)
    kind, message = client.call("load_zip", client.upload("odd.zip", zip_bytes(small_classes() | entries)), 0, 0.25)
    assert kind == "error" and expected in message and "odd.zip" in message, message
    assert_public(message, app)


# ---------------------------------------------------------------- in process

@pytest.fixture
def work_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "work"
    monkeypatch.setenv("PYRA_WORK_ROOT", str(root))
    return root


def test_idle_sessions_are_swept_and_only_what_is_provably_ours(work_root):
    idle, active = open_session(None, "idle"), open_session(None, "active")
    orphan = work_root / "session-orphan"  # a run folder left without its marker
    (orphan / "compare-001" / "seed0").mkdir(parents=True)
    foreign = work_root / "session-foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("not ours")
    past = time.time() - 2 * 3600
    for path in (idle.workdir / MARKER, orphan, orphan / "compare-001", foreign, foreign / "thesis.tex"):
        os.utime(path, (past, past))
    removed = sweep_idle_sessions(3600, work_root)
    assert sorted(p.name for p in removed) == ["session-idle", "session-orphan"]
    assert active.workdir.is_dir() and foreign.is_dir()


def tiny_split() -> DatasetSplit:
    rng = np.random.default_rng(0)
    records = {"train": [], "val": []}
    for label in range(2):
        for i in range(6):
            pixels = np.clip(rng.normal(60 + 120 * label, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            records["val" if i < 2 else "train"].append(ImageRecord(label=label, name=f"{label}-{i}", array=pixels))
    return DatasetSplit(classes=["dark", "light"], train=records["train"], val=records["val"], skipped=[],
                        source="tiny")


TINY = dict(backbone="random:vit_tiny_patch16_224", img_size=32, schedule=2, lora_rank=2, bench_batch=2,
            bench_repeats=1)


def test_a_job_never_recreates_the_folder_of_a_session_that_ended(tmp_path):
    session_dir = tmp_path / "session-gone"
    session_dir.mkdir()
    removed = threading.Event()

    def end_session_during_training(progress) -> None:
        if progress.step and not removed.is_set():
            import shutil

            shutil.rmtree(session_dir)
            removed.set()

    config = CompareConfig(**TINY, train=TrainConfig(epochs=1, batch_size=4), levels=(0.0, 1.0))
    with pytest.raises(FileNotFoundError):
        run_compare(tiny_split(), config, session_dir / "compare-001", on_progress=end_session_during_training)
    assert removed.is_set() and not session_dir.exists()


def test_a_job_stops_at_its_time_limit_and_says_so(work_root, monkeypatch):
    monkeypatch.setattr(Budget, "from_env", classmethod(lambda cls: Budget(job_seconds=1.0)))
    monkeypatch.setattr(jobs, "JOB_CHECK_EVERY_S", 0.0)
    request = SimpleNamespace(session_hash="slow")
    session = tab_data.load_sample(None, "textures", 40, 0.25, request)[0]
    updates = tab_train.train(request, session, "random:vit_tiny_patch16_224", None, 32, 2, 50, 4, 1e-3, 1e-3, "high", "0",
                             2, 1, "elastic", True)
    started = time.monotonic()
    statuses = [status for _, status, _ in updates]
    assert statuses[-1].startswith("**Stopped**: the job reached its time limit of") and "PYRA_JOB_MINUTES" in \
        statuses[-1], statuses[-1]
    assert time.monotonic() - started < 60 and not session.busy and session.result is None


def test_a_cancel_while_the_sweep_measures_accuracy_stops_the_comparison(tmp_path):
    cancel = threading.Event()

    def cancel_at_the_sweep(progress) -> None:
        if progress.stage == "accuracy":
            cancel.set()

    config = CompareConfig(**TINY, train=TrainConfig(epochs=1, batch_size=4), levels=(0.0, 1.0))
    result = run_compare(tiny_split(), config, tmp_path / "compare", on_progress=cancel_at_the_sweep, cancel=cancel)
    assert result.status == "cancelled" and "while measuring accuracy" in result.message
    assert result.rows == [] and len(result.run_dirs) == 3  # every model trained, nothing reported


def test_the_plan_counts_what_run_compare_trains():
    data = tiny_split()
    elastic = CompareConfig(**TINY, seeds=(0, 1), levels=(0.0, 0.5, 1.0))
    per_level = CompareConfig(**TINY, seeds=(0, 1), levels=(0.0, 0.5, 1.0), protocol="per-level")
    # elastic: 3 models per seed; per level: 3 at the target + ToMe and PYRA at 0.5 (0.0 is the LoRA model)
    assert plan_compare(data, elastic).trainings == 6 and plan_compare(data, per_level).trainings == 10
    steps = plan_compare(data, elastic).steps  # 8 training images, batch 16, 3 epochs: 1 step per epoch
    assert steps == 6 * 3


def test_the_memory_estimate_grows_with_batch_and_tokens():
    small, big = backbone_structure("default", 2, 112), backbone_structure("default", 2, 224)
    one, two = training_memory_bytes(small, 8), training_memory_bytes(small, 16)
    activations = two - one  # 8 more images: 12 layers x 65 tokens x (384 channels x 88 + 6 heads x 65 x 8) bytes
    assert activations == 8 * 12 * 65 * (384 * 88 + 6 * 65 * 8)
    per_image = {n: 12 * n * (384 * 88 + 6 * n * 8) for n in (65, 257)}
    more_tokens = 8 * (per_image[257] - per_image[65]) + 4 * (257 - 65) * 384  # activations + the larger pos_embed
    assert training_memory_bytes(big, 8) - training_memory_bytes(small, 8) == more_tokens


def test_a_batch_over_the_memory_limit_trains_in_the_fewest_even_micro_batches():
    data, limit = tiny_split(), 600 * MB
    config = CompareConfig(backbone="default", img_size=112, train=TrainConfig(batch_size=16))
    # per image 12 layers x 65 tokens x (384 channels x 88 + 6 heads x 65 tokens x 8) bytes = 27.5 MiB; weights
    # (82 MiB) + fixed 288 MiB: 16 images need 810 MiB, 8 images 590 MiB, 9 would need 617: two passes of 8
    assert plan_compare(data, config).training_memory_bytes > limit
    fitted = within_memory(data, config, limit)
    assert fitted.train.micro_batch == 8 and fitted.train.batch_size == 16
    assert fitted == CompareConfig(backbone="default", img_size=112, train=TrainConfig(batch_size=16, micro_batch=8))
    plan = plan_compare(data, fitted)
    assert plan.forward_batch == 8 and plan.training_memory_bytes <= limit and plan.batch_size == 16
    Budget(max_train_memory_bytes=limit).check_plan(plan)  # allowed
    assert within_memory(data, config, 2 * limit) == config  # fits already: unchanged
    big = within_memory(data, replace(config, img_size=448), limit)  # 1025 tokens: one image needs 1345 MiB
    assert big.train.micro_batch == 1
    with pytest.raises(BudgetError, match=r"1 image\(s\) per training pass at 448 px \(1025 tokens per image\) "
                                          r"need about .*: lower the image size \(or raise PYRA_MAX_TRAIN_MEMORY_MB"):
        Budget(max_train_memory_bytes=limit).check_plan(plan_compare(data, big))


def test_a_bad_limit_in_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("PYRA_MAX_TRAININGS", "lots")
    with pytest.raises(ValueError, match="PYRA_MAX_TRAININGS='lots' must be a positive whole number"):
        Budget.from_env()


def test_the_disk_budget_counts_what_is_already_there(tmp_path):
    session_dir, root = tmp_path / "root" / "session-a", tmp_path / "root"
    session_dir.mkdir(parents=True)
    (session_dir / "data").write_bytes(bytes(3 * MB))
    budget = Budget(session_disk_bytes=5 * MB, total_disk_bytes=100 * MB)
    left = budget.write_budget(session_dir, root)
    assert left.bytes == 2 * MB and left.variable == "PYRA_SESSION_DISK_MB"
    tight = Budget(session_disk_bytes=5 * MB, total_disk_bytes=4 * MB)
    assert tight.write_budget(session_dir, root).variable == "PYRA_TOTAL_DISK_MB"
    with pytest.raises(BudgetError, match="PYRA_SESSION_DISK_MB"):
        Budget(session_disk_bytes=2 * MB).check_disk(session_dir, root)


def test_public_text_keeps_file_names_and_drops_server_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRA_WORK_ROOT", str(tmp_path / "work"))
    path = tmp_path / "work" / "session-3f9a1c" / "compare-001" / "seed0" / "pyra" / "config.json"
    text = public_text(f"{path}: not found; check {tmp_path / 'work'}")
    assert "config.json: not found" in text and "session-" not in text and str(tmp_path) not in text


def test_the_server_caps_its_malloc_arenas_where_glibc_runs():
    """In a fresh process (as app.py starts): the cap is taken by glibc, and trimming after a job works."""
    import subprocess
    import sys

    script = ("import platform\nfrom pyra_app import memory\nok = memory.share_arenas()\nmemory.trim()\n"
              "assert ok == (platform.libc_ver()[0] == 'glibc'), ok\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
