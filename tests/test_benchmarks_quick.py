"""Every benchmark script's --quick mode runs end to end and writes what its full run writes.

Smoke tests: the scripts must keep working and their output must hold basic invariants; the
figures themselves belong to the full runs (docs/), not to these checks.
"""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.charts import PngRendererMissing, chromium_path
from benchmarks.elastic_matrix import ELASTIC_VARIANTS

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run_script(name: str, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """`python benchmarks/<name> <args>` from the checkout; fails with the script's stderr."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, f"{name} {' '.join(args)} failed:\n{done.stderr[-4000:]}"
    return done


def png_wanted() -> bool:
    """Render PNGs when Chromium is here (always in CI, where PYRA_REQUIRE_BROWSER=1)."""
    if os.environ.get("PYRA_REQUIRE_BROWSER") == "1":
        return True
    try:
        chromium_path()
    except PngRendererMissing:
        return False
    return True


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (fails on anything that is not a PNG)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder with the outputs of the accuracy, backbone-quality and comparison quick runs."""
    out = tmp_path_factory.mktemp("bench")
    run_script("accuracy_matrix.py", "--quick", "--out", str(out))
    run_script("backbone_quality.py", "--quick", "--out", str(out))
    run_script("demo_comparison.py", "--quick", "--out", str(out))
    run_script("elastic_matrix.py", "--quick", "--out", str(out))
    run_script("recipe_search.py", "--quick", "--out", str(out))
    return out


def test_elastic_matrix_quick_has_every_variant_at_every_level(quick_out: Path) -> None:
    report = json.loads((quick_out / "results" / "elastic_matrix_quick.json").read_text())
    assert report["complete"]
    levels = range(len(report["settings"]["fractions"]))
    cells = {(c["method"], c["variant"], c["level"]): c for c in report["cells"]}
    expected = {("probe", "probe", level) for level in levels} | {("uncompressed", "uncompressed", 0)}
    expected |= {("tome_free", "training-free", level) for level in levels if level > 0}
    for method in ("tome", "pyra"):
        expected |= {(method, variant, level) for level in levels for variant in ("per-level", *ELASTIC_VARIANTS)}
        expected |= {(method, "target-only", level) for level in levels[:-1]}
    assert set(cells) == expected
    for cell in report["cells"]:
        assert cell["accuracy"] == pytest.approx(cell["correct"].count("1") / cell["n"])
    # one model per level at level 0 is the uncompressed model; an elastic model is its own
    assert cells[("tome", "per-level", 0)]["correct"] == cells[("uncompressed", "uncompressed", 0)]["correct"]
    trained = cells[("tome", "per-level", levels[-1])]
    assert trained["seconds"] >= trained["head_start_seconds"] > 0  # training time includes its head start
    ratios = [cells[("probe", "probe", level)]["flops_ratio"] for level in levels]
    assert ratios == sorted(ratios) and ratios[0] == 1.0


def test_elastic_matrix_trains_one_variant_alone_beside_a_matrix(tmp_path: Path) -> None:
    run_script("elastic_matrix.py", "--quick", "--elastic-only", "sandwich-labels", "--out", str(tmp_path))
    report = json.loads((tmp_path / "results" / "elastic_matrix-sandwich-labels_quick.json").read_text())
    levels = range(len(report["settings"]["fractions"]))
    assert report["complete"] and "--elastic-only sandwich-labels" in report["command"]
    assert {(c["method"], c["variant"], c["level"]) for c in report["cells"]} == {
        (method, "sandwich-labels", level) for method in ("tome", "pyra") for level in levels}


def test_recipe_search_quick_covers_its_grid(quick_out: Path) -> None:
    report = json.loads((quick_out / "results" / "recipe_search_quick.json").read_text())
    settings = report["settings"]
    lr_cells = [c for c in report["cells"] if c["part"] == "lr"]
    c_cells = [c for c in report["cells"] if c["part"] == "head start"]
    assert len(lr_cells) == 2 * len(settings["lrs"]) * len(settings["datasets"]) * len(settings["seeds"])
    assert len(c_cells) == (len(settings["c_values"]) + 1) * len(settings["c_datasets"]) * len(settings["c_seeds"])
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in report["cells"])


def test_accuracy_matrix_quick_trains_every_cell(quick_out: Path) -> None:
    report = json.loads((quick_out / "results" / "accuracy_matrix_quick.json").read_text())
    settings = report["settings"]
    assert report["complete"]
    per_seed = 1 + len(settings["levels"]) * (2 + len(settings["pyra_lrs"]))  # + training-free ToMe per level
    assert len(report["cells"]) == per_seed * len(settings["seeds"]) * len(settings["datasets"])
    schedules: dict[str, list[int]] = {}
    for cell in report["cells"]:
        assert len(cell["correct"]) == cell["n"] == report["splits"][f"{cell['dataset']}@{cell['seed']}"]["val"]
        assert cell["accuracy"] == pytest.approx(cell["correct"].count("1") / cell["n"])
        if cell["method"] == "uncompressed":
            assert not any(cell["schedule"])
        else:  # every method of a level merges the same tokens
            assert schedules.setdefault(cell["level"], cell["schedule"]) == cell["schedule"]
    merged = [sum(schedules[level]) for level in settings["levels"]]
    assert merged == sorted(merged) and merged[0] > 0  # levels go from light to heavy compression


def test_backbone_quality_quick_reports_both_backbones(quick_out: Path) -> None:
    report = json.loads((quick_out / "results" / "backbone_quality_quick.json").read_text())
    assert [r["backbone"] for r in report["results"]] == ["default", "random:vit_small_patch14_dinov2"]
    for result in report["results"]:
        assert result["accuracy_low"] <= result["accuracy"] <= result["accuracy_high"]
        assert result["n_val"] == 50  # 20 images per class, a quarter held out, 10 classes


def test_demo_comparison_quick_has_every_method_at_every_level(quick_out: Path) -> None:
    report = json.loads((quick_out / "results" / "fashion_high_quick.json").read_text())
    result = report["result"]
    assert result["status"] == "completed"
    methods = {(row["level"], row["method"]) for row in result["rows"]}
    assert methods == {(level["index"], m) for level in result["levels"]
                       for m in ("uncompressed", "tome_free", "tome", "pyra")}


def test_results_report_renders_the_quick_results_with_charts(quick_out: Path) -> None:
    png = png_wanted()
    run_script("results_report.py", "--quick", "--out", str(quick_out), *([] if png else ["--no-png"]))
    text = (quick_out / "RESULTS.md").read_text()
    assert "## The default backbone is really pretrained" in text
    assert "### `sample:textures`" in text and "## Comparison on `sample:fashion`" in text
    assert "## Every slider position a trained model" in text and "## How the default recipe was chosen" in text
    html = quick_out / "charts" / "accuracy_textures.html"
    assert html.is_file() and (quick_out / "charts" / "plotly.min.js").is_file()
    assert "cdn.plot.ly" not in html.read_text()  # opens offline
    if png:
        assert png_size(quick_out / "charts" / "accuracy_textures.png") == (900, 550)
        assert "](charts/accuracy_textures.png)" in text


def test_speed_benchmarks_quick_measure_every_level_and_render_performance_md(tmp_path: Path) -> None:
    png = png_wanted()
    run_script("train_speed.py", "--quick", "--out", str(tmp_path))
    batch1 = "## Batch 1: torch and onnxruntime\n\n<!-- batch1_latency:start -->\nkept\n<!-- batch1_latency:end -->\n"
    (tmp_path / "PERFORMANCE.md").write_text("# Engine speed\n\nan older matrix\n\n" + batch1)
    run_script("engine_speed.py", "--quick", "--out", str(tmp_path), *([] if png else ["--no-png"]))
    report = json.loads((tmp_path / "perf" / "engine_speed.json").read_text())
    assert report["results"], report.get("skipped")
    for result in report["results"]:
        ratios = [level["flops_ratio"]["tome"] for level in result["levels"]]
        assert ratios == sorted(ratios) and ratios[0] > 1.0  # every level saves FLOPs, more at each step
        for level in result["levels"]:
            assert level["flops_ratio"]["pyra"] <= level["flops_ratio"]["tome"]  # PYRA adds its gates' FLOPs
            for timing in level["methods"].values():
                assert timing["throughput"]["p25"] <= timing["throughput"]["median"] <= timing["throughput"]["p75"]
    text = (tmp_path / "PERFORMANCE.md").read_text()
    assert "## Training step time" in text and "Not measured yet" not in text  # train_speed.json was rendered
    assert "an older matrix" not in text and text.endswith(batch1)  # batch1_latency.py's section is kept as it was
    if png:
        assert png_size(tmp_path / "charts" / "speed_vs_flops.png") == (900, 550)


def test_session_load_quick_holds_its_invariants(tmp_path: Path) -> None:
    run_script("session_load.py", "--quick", "--out", str(tmp_path))  # exits non-zero when an invariant fails
    report = json.loads((tmp_path / "session_load.json").read_text())
    assert report["failures"] == []
    assert len(report["sessions"]) == 2 and len(report["stops"]) == 3


def test_train_memory_quick_estimate_covers_what_it_measures(tmp_path: Path) -> None:
    run_script("train_memory.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "perf" / "train_memory.json").read_text())
    assert len(report["rows"]) == 3 and all(row["measured_mb"] > 0 for row in report["rows"])
    assert all(row["estimate_mb"] >= row["measured_mb"] for row in report["rows"]), report["rows"]


def test_quick_demo_recipe_quick_covers_its_grid(tmp_path: Path) -> None:
    run_script("quick_demo_recipe.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "results" / "quick_demo_recipe.json").read_text())
    assert [(cell["split_seed"], cell["epochs"], cell["batch_size"], cell["lr"], cell["head_start_c"])
            for cell in report["cells"]] == [(1, 1, 16, 1e-3, 0.05), (1, 1, 16, 1e-3, 1.0), (1, 1, 16, 3e-3, 0.05),
                                             (1, 1, 16, 3e-3, 1.0)]
    assert set(report["probe"]["1"]) == {"0.0", "0.5", "1.0"}
    for cell in report["cells"]:
        assert set(cell["tome"]) == set(cell["pyra"]) == {"0.0", "0.5", "1.0"} and set(cell["none"]) == {"0.0"}
    for summary in report["summary"].values():  # one split: each margin is that split's accuracy minus its probe's
        cell = next(c for c in report["cells"] if (c["lr"], c["head_start_c"]) == (summary["lr"], summary["head_start_c"]))
        expected = {f"{m}@{f}": round(cell[m][f] - report["probe"]["1"][f], 2) for m in cell if m in ("none", "tome", "pyra")
                    for f in cell[m]}
        assert summary["margin_over_probe"] == pytest.approx(expected)
        assert summary["worst_margin_over_probe"] == pytest.approx(min(expected.values()))
        assert set(summary["margin_interval"].values()) == {None}  # one split: no interval
        assert summary["steps"] == math.ceil(cell["n_train"] / 16) and summary["images_seen"] == cell["n_train"]


def _setting(mean: float, worst: float, images: int) -> dict:
    return {"mean_accuracy": mean, "worst_margin_over_probe": worst, "images_seen": images}


def test_quick_demo_recipe_chooses_among_the_settings_that_fit_the_demo_time() -> None:
    from benchmarks.quick_demo_recipe import choose

    summary = {"long": _setting(90.0, 3.0, 300), "clear": _setting(70.0, 0.1, 200), "better but below": _setting(80.0, -0.1, 200),
               "clear, worse": _setting(60.0, 1.0, 100)}
    assert choose(summary, 200) == "clear"  # "long" sees more images than the demo has time for
    assert choose(summary, 300) == "long"
    below = {"a": _setting(80.0, -2.0, 200), "b": _setting(60.0, -0.5, 200), "c": _setting(99.0, 0.0, 400)}
    assert choose(below, 200) == "b"  # nothing affordable is clear: the smallest shortfall


def test_quick_demo_recipe_pools_every_run_per_setting() -> None:
    """Three runs' files: a setting's margin is the mean over its splits of accuracy minus that split's probe, and its
    interval the t-interval of those differences (worked out here by hand); a run on other data (more training
    images) is a setting of its own, compared with its own probes."""
    from benchmarks.quick_demo_recipe import combined, summarise

    def cell(split: int, epochs: int, none: float, n_train: int = 100) -> dict:
        scores = {"0.0": none, "0.5": 50.0, "1.0": 40.0}
        return {"split_seed": split, "epochs": epochs, "batch_size": 16, "lr": 1e-3, "head_start_c": 1.0,
                "n_train": n_train, "n_val": 300, "none": {"0.0": none}, "tome": scores, "pyra": scores}

    probe = {"0.0": 60.0, "0.5": 50.0, "1.0": 40.0}
    stronger_probe = {"0.0": 64.0, "0.5": 50.0, "1.0": 40.0}  # split 1 with 200 training images
    runs = [{"cells": [cell(1, 2, 61.0), cell(2, 2, 63.0)], "probe": {"1": probe, "2": probe}},
            {"cells": [cell(1, 3, 59.0)], "probe": {"1": probe}},
            {"cells": [cell(1, 2, 62.0, n_train=200)], "probe": {"1": stronger_probe}}]
    summary = summarise(combined(runs))
    assert set(summary) == {"train=100 epochs=2 batch=16 lr=0.001 C=1", "train=100 epochs=3 batch=16 lr=0.001 C=1",
                            "train=200 epochs=2 batch=16 lr=0.001 C=1"}
    two = summary["train=100 epochs=2 batch=16 lr=0.001 C=1"]
    assert two["margin_over_probe"]["none@0.0"] == pytest.approx(2.0)  # (1 + 3) / 2
    half_width = 12.706205 * math.sqrt(2.0) / math.sqrt(2)  # t(0.975, 1) x sd / sqrt(n), sd of (1, 3) = sqrt(2)
    assert two["margin_interval"]["none@0.0"] == pytest.approx([2.0 - half_width, 2.0 + half_width], abs=0.01)
    assert two["steps"] == 14 and two["images_seen"] == 200
    three = summary["train=100 epochs=3 batch=16 lr=0.001 C=1"]
    assert three["margin_over_probe"]["none@0.0"] == pytest.approx(-1.0) and three["margin_interval"]["none@0.0"] is None
    assert three["worst_margin_over_probe"] == pytest.approx(-1.0) and three["images_seen"] == 300
    more = summary["train=200 epochs=2 batch=16 lr=0.001 C=1"]
    assert more["margin_over_probe"]["none@0.0"] == pytest.approx(-2.0)  # 62 - 64, not 62 - 60
    assert more["steps"] == 26 and more["images_seen"] == 400


def test_space_abuse_quick_holds_its_bounds(tmp_path: Path) -> None:
    run_script("space_abuse.py", "--quick", "--out", str(tmp_path), timeout_s=600)  # exits 1 if a bound breaks
    report = json.loads((tmp_path / "perf" / "space_abuse.json").read_text())
    assert report["failures"] == [] and report["preview"]["outcome"] == "complete"
    assert [h["forward_batch"] < h["batch"] for h in report["heavy_trainings"]] == [True, True]  # micro-batched
    assert all(h["status"].startswith("**Stopped**: the job reached its time limit") for h in report["heavy_trainings"])
    assert (tmp_path / "space_abuse.md").is_file()


def test_token_dropping_bound_keeps_timm_and_the_merged_token_counts() -> None:
    """batch1_latency's 'drop' models: with nothing dropped they are timm exactly; with a schedule, every
    MLP sees as many tokens as in the ToMe model at that schedule."""
    import copy

    import torch

    from benchmarks.batch1_latency import TokenDropping
    from pyra.backbones.factory import create_backbone
    from pyra.method.patch import patch

    torch.manual_seed(0)
    timm_model = create_backbone("random:vit_small_patch14_dinov2", 10, 56).eval()
    schedule = [3, 2, 2, 1, 1, 0, 1, 0, 0, 0, 0, 0]
    tome = patch(copy.deepcopy(timm_model), "tome", schedule)
    image = torch.randn(2, 3, 56, 56)

    def mlp_tokens(model: torch.nn.Module, blocks) -> list[int]:
        seen: list[int] = []
        hooks = [block.mlp.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1])) for block in blocks]
        with torch.no_grad():
            model(image)
        for hook in hooks:
            hook.remove()
        return seen

    with torch.no_grad():
        assert torch.equal(TokenDropping(timm_model, [0] * 12)(image), timm_model(image))
    dropped = mlp_tokens(TokenDropping(timm_model, schedule), timm_model.blocks)
    assert dropped == mlp_tokens(tome, tome.blocks)
    assert dropped[0] == 17 - 3 and dropped[-1] == 17 - sum(schedule)


def test_feature_gain_quick_compares_every_variant_with_the_probe(tmp_path: Path) -> None:
    run_script("feature_gain.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "results" / "feature_gain_quick.json").read_text())
    probe = report["probe"]["1"]
    assert [cell["method"] for cell in report["cells"]] == ["none", "tome", "pyra"]
    for cell in report["cells"]:
        levels = {"0.0"} if cell["method"] == "none" else {"0.0", "0.5", "1.0"}
        for variant in ("fine-tuned", "re-probed", "head kept"):
            assert set(cell[variant]) == levels
            for level in levels:  # one split: each difference is that split's accuracy minus its probe's
                difference = report["summary"][f"{cell['method']}@{level}"][variant]
                assert difference["mean"] == pytest.approx(cell[variant][level] - probe[level], abs=0.01)
                assert difference["interval"] is None and difference["n"] == 1


def test_reprobing_an_untrained_model_is_the_frozen_feature_probe() -> None:
    """LoRA B = 0: the model's features are the backbone's, so refitting its head with the probe's C must classify
    every validation image as the probe does (pyra.run.head_start.probe_correct)."""
    from test_train import coloured_squares, dataset_for, tiny_run_config

    from benchmarks.feature_gain import reprobe
    from pyra.data.datasets import ImageRecord
    from pyra.run.head_start import probe_correct
    from pyra.run.predict import predict
    from pyra.run.run_config import build_model

    model = build_model(tiny_run_config(method="none", schedule=(0,) * 12))
    noisy = [replace(r, label=(r.label + i) % 3) if i % 3 == 0 else r for i, r in enumerate(coloured_squares(8, seed=1))]
    rng = np.random.default_rng(2)  # noise images between the classes, so where the boundary lies decides them
    noise = [ImageRecord(i % 3, f"noise/{i}", array=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for i in range(60)]
    train_set, val_set = dataset_for(model, noisy), dataset_for(model, noise)
    expected = probe_correct(model, train_set, val_set, [0] * 12)
    other_c = probe_correct(model, train_set, val_set, [0] * 12, inverse_l2=1e-3)
    assert not np.array_equal(expected, other_c)  # the images tell the probe's C from another
    reprobe(model, train_set, [0] * 12, "off")
    assert np.array_equal(predict(model, val_set).correct, expected)


def test_feature_gain_verdict_calls_a_gain_only_when_its_interval_excludes_zero() -> None:
    from benchmarks.results_report import feature_gain_verdict

    def summary(low_at_zero: float, low_at_target: float) -> dict:
        def variants(low: float) -> dict:
            return {v: {"mean": low + 1, "interval": [low, low + 2], "n": 6} for v in ("fine-tuned", "re-probed")}
        return {"none@0.0": variants(low_at_zero), "tome@0.0": variants(-1.0), "tome@1.0": variants(low_at_target)}

    assert "no re-probed model is above the probe" in feature_gain_verdict(summary(-0.5, 2.0))
    assert "puts LoRA above the probe" in feature_gain_verdict(summary(0.5, 2.0))
    assert "every fine-tuned merging model is above the probe" in feature_gain_verdict(summary(-0.5, 2.0))
    assert "every fine-tuned merging model" not in feature_gain_verdict(summary(-0.5, -0.1))


def test_linear_layout_quick_times_every_row_count_both_ways(tmp_path: Path) -> None:
    from benchmarks.linear_layout import ROWS, THREADS

    run_script("linear_layout.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "perf" / "linear_layout.json").read_text())
    assert [(r["threads"], r["rows"]) for r in report["results"]] == [(t, n) for t in THREADS for n in ROWS]
    for r in report["results"]:
        assert r["ratio"] == pytest.approx(r["row-major_us"][0] / r["column-major_us"][0], abs=0.006)
        assert all(r[key][1] <= r[key][0] <= r[key][2] for key in ("row-major_us", "column-major_us"))
