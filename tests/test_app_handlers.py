"""App handlers as plain functions: no server, no model (fast)."""
from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from pyra.run.recipes import DEFAULT_RECIPE
from pyra_app import image_picker, tab_compare, tab_data, tab_train, views
from pyra_app.session import (
    MARKER,
    Session,
    end_session,
    end_session_by_hash,
    open_session,
    session_dir_name,
    sweep_idle_sessions,
)
from pyra_app.settings import TRAIN_FIELDS, compare_config, train_settings


@pytest.fixture(autouse=True)
def work_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "work"
    monkeypatch.setenv("PYRA_WORK_ROOT", str(root))
    return root


def fake_request(session_hash: str = "test-session") -> SimpleNamespace:
    return SimpleNamespace(session_hash=session_hash)


def make_zip(path: Path, classes=("cat", "dog", "fox"), per_class: int = 4, junk: bool = True) -> Path:
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for index, name in enumerate(classes):
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
                pixels[..., index] = 255
                image_path = path.parent / f"{name}_{i}.png"
                Image.fromarray(pixels).save(image_path)
                archive.write(image_path, f"data/{name}/{i}.png")
        if junk:
            archive.writestr("data/cat/notes.txt", "not an image")
    return path


# ---------------------------------------------------------------- data tab

def test_data_preview_from_zip(tmp_path):
    outputs = tab_data.load_zip(None, str(make_zip(tmp_path / "three.zip")), 0, 0.25, fake_request())
    session, summary, gallery, counts, skipped, warnings = outputs
    val_dropdown = image_picker.validation_choices(session)  # what the pickers show after the load
    assert isinstance(session, Session) and session.workdir.is_dir()
    assert "3 classes" in summary and "12 images" in summary and "1 files skipped" in summary
    assert len(gallery) == 12 and {caption for _, caption in gallery} == {"cat", "dog", "fox"}
    assert counts.values.tolist() == [["cat", 3, 1], ["dog", 3, 1], ["fox", 3, 1]]
    assert skipped["file"].tolist() == ["data/cat/notes.txt"]
    assert "not an image" in skipped["reason"].iloc[0]
    assert len(val_dropdown.choices) == 3
    assert all(session.workdir in Path(r.path).parents for r in session.data.train)  # extracted into the session


def test_bad_zip_gives_a_readable_error_not_a_traceback(tmp_path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"this is not a zip file at all")
    with pytest.raises(gr.Error) as caught:
        tab_data.load_zip(None, str(bad), 0, 0.25, fake_request())
    message = caught.value.message
    assert "broken.zip" in message and "Traceback" not in message


def test_zip_with_one_class_names_the_fix(tmp_path):
    path = make_zip(tmp_path / "one.zip", classes=("only",), junk=False)
    with pytest.raises(gr.Error) as caught:
        tab_data.load_zip(None, str(path), 0, 0.25, fake_request())
    assert "class folder" in caught.value.message


def test_missing_inputs_are_explained():
    with pytest.raises(gr.Error, match="Upload a .zip"):
        tab_data.load_zip(None, None, 0, 0.25, fake_request())
    with pytest.raises(gr.Error, match="No comparison yet"):
        tab_compare.select_level(None, 0)


def test_sample_preview_upscales_tiny_images():
    session, summary, gallery, counts, *_ = tab_data.load_sample(None, "textures", 6, 0.25, fake_request())
    assert "sample:textures" in summary and len(counts) == 3
    assert all(min(image.size) >= 64 for image, _ in gallery)


# ---------------------------------------------------------------- train settings

def test_train_settings_validate_and_build_a_compare_config():
    settings = train_settings(dict(zip(TRAIN_FIELDS, ("random:vit_tiny_patch16_224", None, 32, 2, 1, 8, "1e-3", 3e-4,
                                                      "high", "0, 1", 3, 1))))
    config = compare_config(settings)
    assert config.seeds == (0, 1) and config.levels == (0.0, 0.5, 1.0)
    assert config.train.pyra_lr == pytest.approx(3e-4) and config.train.epochs == 1
    assert config.img_size == 32 and config.lora_rank == 2 and config.schedule == "high"
    assert compare_config(train_settings(dict(zip(TRAIN_FIELDS, ("default", None, 0, 4, 1, 8, 1e-3, 1e-3, "2.5", "0",
                                                                  2, 1))))).schedule == 2.5
    assert config.train.eval_every_epoch  # validated after every epoch unless told otherwise
    once = train_settings(dict(zip(TRAIN_FIELDS, ("default", None, 0, 4, 3, 8, 1e-3, 1e-3, "high", "0", 2, 1,
                                                  "elastic", False))))
    assert not compare_config(once).train.eval_every_epoch
    assert config.train.head_start_c == DEFAULT_RECIPE.train.head_start_c  # the recipe's unless told otherwise
    probe_like = train_settings(dict(zip(TRAIN_FIELDS, ("default", None, 0, 4, 3, 8, 1e-3, 1e-3, "high", "0", 2, 1,
                                                        "elastic", True, "1"))))
    assert compare_config(probe_like).train.head_start_c == 1.0


@pytest.mark.parametrize("field_name, kwargs, words", [
    ("seeds", {"seeds": "zero"}, "seeds"),
    ("seeds", {"seeds": "1, 1"}, "repeats"),
    ("lr", {"lr": -1}, "learning rate"),
    ("epochs", {"epochs": 1.5}, "epochs"),
    ("levels", {"num_levels": 1}, "compression levels"),
    ("schedule", {"schedule": "fast"}, "schedule"),
    ("validate", {"validate_every_epoch": "yes"}, "validate after every epoch: tick it"),
    ("head start C", {"head_start_c": 0}, "head start C: must be a positive number"),
    ("head start C", {"head_start_c": float("nan")}, "head start C: must be a finite number"),
])
def test_bad_settings_name_the_control(field_name, kwargs, words):
    values = dict(backbone="default", weights=None, img_size=0, lora_rank=4, epochs=1, batch_size=8, lr=1e-3,
                  pyra_lr=1e-3, schedule="high", seeds="0", num_levels=3, bench_repeats=1) | kwargs
    with pytest.raises(ValueError, match=words):
        compare_config(train_settings(values))


def test_train_without_data_is_a_readable_error():
    generator = tab_train.train(fake_request(), None, "default", None, 0, 4, 1, 8, 1e-3, 1e-3, "high", "0", 3, 1, "elastic", True)
    with pytest.raises(gr.Error, match="No dataset yet"):
        next(generator)


# ---------------------------------------------------------------- compare tab

@dataclass
class FakeLevel:
    index: int
    fraction: float
    schedule: list
    label: str
    flops_ratio: float
    gflops: float


def _row(method: str, level: int, accuracy: float, throughput: float, n_val: int = 40) -> dict:
    return {
        "method": method, "level": level, "schedule_label": "uncompressed" if level == 0 else "8 merged",
        "accuracy": accuracy, "accuracy_low": accuracy - 0.1, "accuracy_high": min(1.0, accuracy + 0.1),
        "latency_ms": 10.0 / throughput * 100, "latency_p25": 9.0, "latency_p75": 11.5, "throughput": throughput,
        "throughput_p25": throughput - 1, "throughput_p75": throughput + 1,
        "gflops": None if method == "uncompressed" else 1.5 - 0.5 * level,
        "flops_ratio": 1.0 if method == "uncompressed" or level == 0 else 2.0, "threads": 2, "n_val": n_val,
        "training": {"uncompressed": "uncompressed", "tome_free": "training-free"}.get(method, "elastic-sandwich"),
    }


@dataclass
class FakeResult:
    levels: list = field(default_factory=lambda: [FakeLevel(0, 0.0, [0, 0], "uncompressed", 1.0, 1.5),
                                                 FakeLevel(1, 1.0, [4, 4], "8 tokens merged, 2.00x fewer FLOPs",
                                                           2.0, 0.75)])
    rows: list = field(default_factory=lambda: [
        _row(m, level, acc, thr)
        for level, values in enumerate([[0.8, 0.8, 0.8, 0.8], [0.8, 0.6, 0.7, 0.75]])
        for m, acc, thr in zip(("pyra", "tome", "tome_free", "uncompressed"), values[::-1],
                               (50.0, 50.0, 50.0, 50.0) if level == 0 else (90.0, 95.0, 95.0, 50.0))
    ])
    comparisons: dict = field(default_factory=lambda: {1: [{
        "sentence": "PYRA + LoRA vs ToMe + LoRA: +5.0 points (95% CI -10.0 to +20.0, McNemar p = 0.5, n = 40): "
                    "no clear difference at this sample size."}]})
    classes: list = field(default_factory=lambda: ["a", "b"])
    histories: dict = field(default_factory=dict)
    run_dirs: dict = field(default_factory=dict)
    reports: dict = field(default_factory=dict)
    status: str = "completed"
    protocol: str = "elastic"
    training: str = "one elastic model for every level (sandwich)"

    def rows_at(self, level: int) -> list:
        return [row for row in self.rows if row["level"] == level]


def test_compare_table_formatting():
    result = FakeResult()
    table = views.compare_table(result.rows_at(1))
    assert [row[0] for row in table] == ["LoRA, uncompressed", "ToMe training-free", "ToMe + LoRA", "PYRA + LoRA"]
    pyra = table[3]
    assert pyra[1] == "75.0% [65.0%-85.0%]" and pyra[2] == "yes: elastic"
    assert table[1][2].startswith("no") and table[0][2] == "yes"  # training-free ToMe: not trained for the level
    assert pyra[3] == "11.1 [9.0-11.5]" and pyra[4] == "90.0 [89.0-91.0]"
    assert pyra[5] == "1.000" and pyra[6] == "2.00x" and pyra[7] == "2"
    assert table[0][5] == "full" and table[0][6] == "1.00x"
    assert len(table[0]) == len(views.COMPARE_HEADERS)


def test_the_level_headline_explains_a_batch_of_one_only_where_it_gains_less_or_loses():
    from types import SimpleNamespace

    level = SimpleNamespace(index=1, fraction=1.0, label="8 tokens merged", schedule=[4, 4], flops_ratio=2.0)
    base = {"method": "uncompressed", "throughput": 100.0, "latency_ms": 20.0}

    def headline(pyra_throughput: float, pyra_latency_ms: float, schedule=(4, 4)) -> str:
        pyra = {"method": "pyra", "throughput": pyra_throughput, "latency_ms": pyra_latency_ms}
        return views.level_description(SimpleNamespace(**{**vars(level), "schedule": list(schedule)}), [base, pyra], 2)

    gains_less = headline(180.0, 16.0)
    assert "throughput speed-up 1.80x, batch-1 latency speed-up 1.25x" in gains_less
    assert views.BATCH1_NOTE in gains_less and views.BATCH1_SLOWER_NOTE not in gains_less
    slower = headline(180.0, 25.0)
    assert "batch-1 latency speed-up 0.80x" in slower and views.BATCH1_SLOWER_NOTE in slower
    assert views.BATCH1_NOTE not in slower
    for text in (headline(180.0, 20.0 / 1.8), headline(100.0, 25.0, schedule=(0, 0))):  # as much; no merging
        assert views.BATCH1_NOTE not in text and views.BATCH1_SLOWER_NOTE not in text


def test_select_level_uses_the_cached_result_and_changes_with_the_level(tmp_path):
    session = Session(workdir=tmp_path, result=FakeResult())
    text0, table0, verdicts0, hint0, chart0 = tab_compare.select_level(session, 0)
    text1, table1, verdicts1, hint1, chart1 = tab_compare.select_level(session, 1)
    assert "Level 1 of 2" in text0 and "Level 2 of 2" in text1 and "`4 4`" in text1
    assert "measured PYRA throughput speed-up 1.80x" in text1
    assert "batch-1 latency speed-up 1.80x" in text1  # the fake rows' latency is 1000 / throughput
    assert views.BATCH1_NOTE not in text1  # a batch of one gains as much as a batch here: nothing to explain
    assert table0.values.tolist() != table1.values.tolist()
    assert "no clear difference" in verdicts1 and "No paired comparisons" in verdicts0
    assert "40 validation images" in hint1 and hint1.startswith("⚠️")  # 40 images resolve only ~20 points
    assert len(chart1.data) == 4
    assert tab_compare.select_level(session, 7)[0] == text1  # clamped to the last level


def test_sample_size_hint_without_warning_for_many_images():
    rows = [_row("pyra", 0, 0.9, 10.0, n_val=20000)]
    assert not views.sample_size_hint(rows).startswith("⚠️")


def test_progress_status_line():
    progress = SimpleNamespace(stage="train PYRA + LoRA (seed 0)", fraction=0.5, message="", step=3, total_steps=10,
                               eta_s=12.0, loss=1.2346, val_accuracy=None)
    line = views.progress_status(progress, elapsed_s=60.0)
    assert "train PYRA + LoRA" in line and "step 3/10" in line and "loss 1.235" in line
    assert "12 s left" in line and "~1 min 00 s left" in line
    sweep = SimpleNamespace(stage="accuracy", fraction=0.93, message="accuracy at 8 tokens merged", step=None,
                            total_steps=None, eta_s=None, loss=None, val_accuracy=None)
    assert "accuracy at 8 tokens merged" in views.progress_status(sweep, elapsed_s=90.0)


# ---------------------------------------------------------------- export

def test_export_run_zip(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in views.RUN_FILES:
        (run / name).write_text(name)
    uploaded = "/tmp/gradio/9f8e7d/vit_small.safetensors"  # where Gradio kept an uploaded weights file
    (run / "config.json").write_text(json.dumps({"backbone": "vit_small_patch16_224", "backbone_weights": uploaded}))
    path = views.export_run_zip(run, tmp_path / "out" / "run.zip")
    archive = zipfile.ZipFile(path)
    assert sorted(archive.namelist()) == sorted(views.RUN_FILES)
    assert json.loads(archive.read("config.json")) == {"backbone": "vit_small_patch16_224",
                                                        "backbone_weights": "vit_small.safetensors"}
    assert archive.read("metrics.json") == b"metrics.json"
    (run / "adapter.safetensors").unlink()
    with pytest.raises(ValueError, match="adapter.safetensors"):
        views.export_run_zip(run, tmp_path / "again.zip")


# ---------------------------------------------------------------- sessions

def test_session_directory_lifecycle(work_root):
    session = open_session(None, "abc/../123")
    assert session.workdir.parent == work_root and session.workdir.name == "session-abc123"
    assert (session.workdir / MARKER).is_file()
    assert open_session(session, "abc/../123") is session  # reused while it exists
    (session.workdir / "data").mkdir()
    assert end_session_by_hash("abc/../123") and not session.workdir.exists()
    again = open_session(session, "abc/../123")  # used after removal: recreated, results dropped
    assert again.workdir.is_dir() and again.result is None
    end_session(again)
    assert again.cancel.is_set() and not again.workdir.exists()


def test_sweep_removes_only_old_marked_session_dirs(work_root):
    old, fresh = open_session(None, "old"), open_session(None, "fresh")
    foreign = work_root / "session-not-ours"
    foreign.mkdir()
    past = time.time() - 10 * 3600
    for path in [old.workdir, *old.workdir.iterdir(), foreign]:
        os.utime(path, (past, past))
    assert sweep_idle_sessions(3600) == [old.workdir]
    assert fresh.workdir.is_dir() and foreign.is_dir()


def test_session_dir_name_is_safe():
    assert session_dir_name("../../etc") == "session-etc"
    assert session_dir_name(None).startswith("session-") and len(session_dir_name(None)) > 10


def test_stop_sets_the_session_event_of_a_running_job(tmp_path):
    import threading

    release = threading.Event()
    session = Session(workdir=tmp_path, job=threading.Thread(target=release.wait))
    assert tab_train.stop(session) == "Nothing is running."
    session.job.start()
    try:
        assert "Stopping" in tab_train.stop(session) and session.cancel.is_set()
        with pytest.raises(gr.Error, match="running"):  # no new data under a running job
            tab_data.load_sample(session, "textures", 6, 0.25, fake_request())
    finally:
        release.set()
        session.job.join()
    assert tab_train.stop(None) == "Nothing is running."


def test_engine_error_during_training_reaches_status_and_popup(monkeypatch):
    monkeypatch.setattr("pyra.backbones.factory._hub_unreachable", lambda timeout_s=3.0: True)  # no hub: fails at build
    session = tab_data.load_sample(None, "textures", 6, 0.25, fake_request())[0]
    updates = tab_train.train(fake_request(), session, "vit_tiny_patch16_224", None, 32, 2, 1, 8, 1e-3, 1e-3, "high", "0", 2, 1,
                             "elastic", True)
    statuses = []
    with pytest.raises(gr.Error) as caught:
        for _, status, _ in updates:
            statuses.append(status)
    assert "hub is unreachable" in caught.value.message and "Traceback" not in caught.value.message
    assert statuses[0].startswith("**Starting**") and statuses[-1].startswith("**Training failed**")
    assert not session.busy and session.result is None


def test_a_backbone_that_does_not_exist_is_refused_before_training_starts():
    session = tab_data.load_sample(None, "textures", 6, 0.25, fake_request())[0]
    updates = tab_train.train(fake_request(), session, "vit_does_not_exist", None, 32, 2, 1, 8, 1e-3, 1e-3, "high", "0", 2, 1,
                             "elastic", True)
    with pytest.raises(gr.Error) as caught:
        next(updates)
    assert "not a timm model name" in caught.value.message and not session.busy and session.runs == 0


def test_loss_figure_draws_one_line_per_run_in_order():
    losses = [{"step": 1, "loss": 2.0, "run": "uncompressed"}, {"step": 2, "loss": 1.5, "run": "uncompressed"},
              {"step": 1, "loss": 2.1, "run": "pyra"}]
    figure = views.loss_figure(losses)
    assert [trace.name for trace in figure.data] == ["uncompressed", "pyra"]
    assert list(figure.data[0].y) == [2.0, 1.5]


def test_quick_demo_validates_on_at_least_300_images():
    session = tab_data.load_sample(None, tab_train.QUICK_DEMO_DATA["sample"], tab_train.QUICK_DEMO_DATA["max_per_class"],
                                   tab_train.QUICK_DEMO_DATA["val_fraction"], fake_request())[0]
    assert len(session.data.val) >= 300 and len(session.data.train) >= 100
    settings = tab_train.QUICK_DEMO_TRAIN
    assert settings.protocol == "elastic" and compare_config(settings).train.head_start


def test_the_quick_demo_trains_what_its_settings_say_without_dropout():
    """The Quick demo fills the Train controls, and Train reads them back: the comparison it builds is the
    demo's own settings (lr, epochs, levels), with the recipe's regularisation (no dropout, no drop-path)."""
    shown = tab_train.settings.control_values(tab_train.QUICK_DEMO_TRAIN)
    read_back = train_settings(dict(zip(TRAIN_FIELDS, shown)))
    assert read_back == tab_train.QUICK_DEMO_TRAIN
    config = compare_config(read_back)
    assert config.lora_dropout == 0.0 and config.drop_path_rate == 0.0
    assert config.train.lr == 1e-3 and config.train.epochs == 2 and config.levels == (0.0, 0.5, 1.0)
    assert config.train.batch_size == 8
    assert not config.train.eval_every_epoch  # each model validated once, after its last epoch
    assert config.train.head_start_c == 0.2  # as benchmarks/quick_demo_recipe.py chose


@pytest.mark.parametrize("name, args", [("Number", ()), ("Slider", (0, 10)), ("Dropdown", (["a"],)),
                                         ("Radio", (["a"],)), ("Checkbox", ()), ("Image", ())])
def test_the_lenient_inputs_send_the_browser_every_property_of_their_gradio_component(name, args):
    """A property missing from a component's config breaks the page where it is drawn (an Image without
    `buttons` left the Token maps and Inside-a-layer tabs blank)."""
    from pyra_app import inputs

    with gr.Blocks():
        ours = getattr(inputs, name)(*args).get_config()
        theirs = getattr(gr, name)(*args).get_config()
    assert set(theirs) - set(ours) == set()


def test_the_examples_speed_waits_for_both_the_tab_and_the_example(tmp_path):
    """Nothing is measured before the visitor opens Compare, nor before the session holds the example
    (whichever comes second triggers the measurement)."""
    from pyra_app import example

    session = Session(tmp_path / "s")
    assert all(isinstance(v, type(gr.skip())) for v in tab_compare.measure_example_speed(None, True))
    session.result = example.shipped_example()
    skipped = tab_compare.measure_example_speed(session, False)
    assert len(skipped) == 7 and session.result is example.shipped_example()
