"""The comparison end to end on a tiny random-init model and generated images."""
from __future__ import annotations

import numpy as np
import pytest

from pyra.compare import CompareConfig, load_compare, run_compare
from pyra.data import DatasetSplit, ImageRecord
from pyra.train import TrainConfig

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
