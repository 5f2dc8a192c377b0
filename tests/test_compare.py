"""The comparison end to end on a tiny random-init model and generated images."""
from __future__ import annotations

import numpy as np
import pytest

from pyra.data.datasets import DatasetSplit, ImageRecord
from pyra.run.checkpoint import load_config, load_run
from pyra.run.compare import run_compare
from pyra.run.comparison import CompareConfig, load_compare
from pyra.run.metrics import evaluate
from pyra.run.one_run import model_dataset
from pyra.run.train import TrainConfig

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]


def colour_dataset(per_class: int = 6, size: int = 32) -> DatasetSplit:
    """Three classes of noisy solid colours: learnable in a few steps."""
    rng = np.random.default_rng(0)
    records = {"train": [], "val": []}
    for label, colour in enumerate(COLOURS):
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            part = "val" if i < per_class // 3 else "train"
            records[part].append(ImageRecord(label=label, name=f"{label}-{i}.png", array=pixels))
    return DatasetSplit(classes=["red", "green", "blue"], train=records["train"], val=records["val"],
                        skipped=[], source="colours")


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("compare")
    config = CompareConfig(
        backbone="random:vit_tiny_patch16_224", img_size=32, schedule=2, lora_rank=2,
        train=TrainConfig(epochs=1, batch_size=4), levels=(0.0, 0.5, 1.0), bench_batch=2, bench_repeats=1,
    )
    stages = []
    result = run_compare(colour_dataset(), config, out_dir, on_progress=lambda p: stages.append(p))
    return result, stages


def test_compare_table_has_every_method_at_every_level(comparison):
    result, _ = comparison
    assert result.status == "completed"
    assert [level.fraction for level in result.levels] == [0.0, 0.5, 1.0]
    assert result.levels[0].schedule == [0] * 12 and result.levels[-1].schedule[0] == 2
    for level in result.levels:
        rows = result.rows_at(level.index)
        assert sorted(row["method"] for row in rows) == ["pyra", "tome", "tome_free", "uncompressed"]
        for row in rows:
            assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
            assert row["throughput"] > 0 and row["latency_ms"] > 0 and row["n_val"] == 6
    target = {row["method"]: row for row in result.rows_at(result.levels[-1].index)}
    assert target["pyra"]["gflops"] < target["uncompressed"]["gflops"]
    assert target["tome"]["flops_ratio"] > 1.0
    # training-free ToMe at r = 0 is the uncompressed model itself
    start = {row["method"]: row for row in result.rows_at(0)}
    assert start["tome_free"]["accuracy"] == start["uncompressed"]["accuracy"]


def test_compare_reports_paired_differences_and_progress(comparison):
    result, stages = comparison
    pairs = result.comparisons[result.levels[-1].index]
    assert {(p["method_a"], p["method_b"]) for p in pairs} >= {("pyra", "tome"), ("pyra", "uncompressed")}
    assert all(p["low"] <= p["difference"] <= p["high"] and "points" in p["sentence"] for p in pairs)
    fractions = [stage.fraction for stage in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_compare_round_trips_through_its_folder(comparison):
    result, _ = comparison
    loaded = load_compare(result.out_dir)
    assert loaded.rows == result.rows
    assert [level.schedule for level in loaded.levels] == [level.schedule for level in result.levels]
    features = loaded.features()
    assert features["pyra"].shape == (6, 192) and features["labels"].shape == (6,)
    assert (result.out_dir / "compare.csv").read_text().startswith("method,")
    assert set(loaded.run_dirs) == {"uncompressed@0", "tome@0", "pyra@0"}


def test_elastic_rows_come_from_one_model_per_method(comparison):
    result, _ = comparison
    assert result.protocol == "elastic" and "sandwich" in result.training
    for level in result.levels:
        for method in ("tome", "pyra"):
            assert result.run_for(method, level.index) == result.run_dirs[f"{method}@0"]
        rows = {row["method"]: row for row in result.rows_at(level.index)}
        assert rows["pyra"]["trained_for_level"] and rows["pyra"]["training"] == "elastic-sandwich-labels"
        assert not rows["tome_free"]["trained_for_level"] and rows["tome_free"]["training"] == "training-free"


def test_per_level_protocol_trains_and_uses_one_model_per_level(tmp_path):
    config = CompareConfig(
        backbone="random:vit_tiny_patch16_224", img_size=32, schedule=2, lora_rank=2, protocol="per-level",
        train=TrainConfig(epochs=1, batch_size=4, elastic="off"), levels=(0.0, 0.5, 1.0), bench_batch=2,
        bench_repeats=1,
    )
    data = colour_dataset()
    result = run_compare(data, config, tmp_path)
    assert result.status == "completed" and result.protocol == "per-level"
    assert set(result.run_dirs) == {"uncompressed@0", "tome@0", "pyra@0", "tome@0:L1", "pyra@0:L1"}
    for method in ("tome", "pyra"):
        assert result.run_for(method, 0) == result.run_dirs["uncompressed@0"]  # level 0 merges nothing
        assert result.run_for(method, 1) == result.run_dirs[f"{method}@0:L1"]
        assert result.run_for(method, 2) == result.run_dirs[f"{method}@0"]
        middle = load_config(result.run_dirs[f"{method}@0:L1"])
        assert list(middle.schedule) == result.levels[1].schedule and middle.train.elastic == "off"
        # the row at level 1 is that model's own accuracy at its own level
        model, _ = load_run(result.run_dirs[f"{method}@0:L1"])
        _, predictions = evaluate(model, model_dataset(model, data.val), data.classes)
        row = next(r for r in result.rows_at(1) if r["method"] == method)
        assert row["accuracy"] == pytest.approx(predictions.accuracy) and row["training"] == "per-level"
    assert load_compare(tmp_path).protocol == "per-level"


def test_elastic_protocol_needs_an_elastic_mode():
    with pytest.raises(ValueError, match="per-level"):
        CompareConfig(protocol="elastic", train=TrainConfig(elastic="off"))
    with pytest.raises(ValueError, match="protocol must be one of"):
        CompareConfig(protocol="sometimes")


def test_the_apps_chart_draws_trained_points_and_labels_the_training_free_one(comparison):
    from pyra.report.plots import accuracy_vs_throughput
    from pyra_app import views

    result, _ = comparison
    figure = accuracy_vs_throughput(views.chart_rows(result.rows))
    names = [trace.name for trace in figure.data]
    assert sorted(names) == ["LoRA, uncompressed", "PYRA + LoRA", "ToMe + LoRA", "ToMe training-free"]
    designed = {"LoRA, uncompressed": "#444444", "ToMe training-free": "#9aa6b2", "ToMe + LoRA": "#1f77b4",
                "PYRA + LoRA": "#d62728"}  # every chart draws each model in its own colour
    assert {trace.name: trace.line.color for trace in figure.data} == designed
    for trace in figure.data:
        method = {"PYRA + LoRA": "pyra", "ToMe + LoRA": "tome", "ToMe training-free": "tome_free",
                  "LoRA, uncompressed": "uncompressed"}[trace.name]
        rows = [row for row in result.rows if row["method"] == method]
        assert len(trace.x) == len(rows)
        assert all(row["trained_for_level"] for row in rows) == (method != "tome_free")
    # the elastic model's uncompressed point is its own accuracy, not the uncompressed LoRA model's
    level0 = {row["method"]: row for row in result.rows_at(0)}
    model, _ = load_run(result.run_dirs["pyra@0"])
    _, predictions = evaluate(model, model_dataset(model, colour_dataset().val), result.classes, schedule=[0] * 12)
    assert level0["pyra"]["accuracy"] == pytest.approx(predictions.accuracy)


def test_the_sweep_takes_each_trainings_last_validation_as_evaluating_its_folder_gives(tmp_path, monkeypatch):
    """A training in this process hands its last validation (at its target) to the sweep, which then skips that
    evaluation; resumed from the same folders (nothing trained, everything evaluated), the comparison is the same."""
    import shutil

    from pyra.run import compare

    calls = []
    real_evaluate = compare.evaluate
    monkeypatch.setattr(compare, "evaluate", lambda *args, **kwargs: calls.append(kwargs) or real_evaluate(*args, **kwargs))
    config = CompareConfig(
        backbone="random:vit_tiny_patch16_224", img_size=32, schedule=2, lora_rank=2,
        train=TrainConfig(epochs=2, batch_size=4, eval_every_epoch=False), levels=(0.0, 0.5, 1.0), bench_batch=2,
        bench_repeats=1,
    )
    data = colour_dataset(per_class=9)
    fresh = run_compare(data, config, tmp_path / "fresh")
    fresh_calls, calls[:] = len(calls), []
    shutil.copytree(tmp_path / "fresh", tmp_path / "again")
    again = run_compare(data, config, tmp_path / "again", resume=True)
    # every model at uncompressed, half and full merging, the uncompressed one's row once: 3 + 3 + 3 evaluations;
    # the fresh run took the three trainings' own (LoRA uncompressed, ToMe and PYRA at the target)
    assert (len(calls), fresh_calls) == (9, 6)
    assert list(again.histories.values()) == list(fresh.histories.values())  # nothing trained again
    assert [(r["method"], r["level"], r["accuracy"]) for r in again.rows] == \
        [(r["method"], r["level"], r["accuracy"]) for r in fresh.rows]
    fresh_features, again_features = load_compare(fresh.out_dir).features(), load_compare(again.out_dir).features()
    assert sorted(fresh_features) == sorted(again_features) == ["labels", "pyra", "tome", "tome_free", "uncompressed"]
    for name, values in fresh_features.items():
        np.testing.assert_allclose(again_features[name], values, rtol=0, atol=1e-6)
    assert load_compare(again.out_dir).reports == load_compare(fresh.out_dir).reports
