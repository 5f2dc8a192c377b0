"""`python -m pyra` train / eval / compare / tokens / samples on a tiny model and generated images."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyra.run.recipes import DEFAULT_RECIPE

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "random:vit_tiny_patch16_224", "--img-size", "64", "--epochs", "1", "--batch-size", "4",
        "--lora-rank", "2"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyra", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "colours"
    rng = np.random.default_rng(0)
    for name, colour in {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230)}.items():
        (root / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained_run(image_folder, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("runs") / "pyra"
    done = run_cli("train", "--data", str(image_folder), *TINY, "--method", "pyra", "--schedule", "2",
                   "--out", str(run_dir), "--json")
    assert done.returncode == 0, done.stderr
    return run_dir, json.loads(done.stdout)


def test_train_writes_a_run_folder_and_documented_fields(trained_run):
    run_dir, summary = trained_run
    assert {"run_dir", "status", "seconds", "method", "schedule", "tokens_per_layer", "flops", "flops_ratio",
            "parameters", "validation", "classes"} <= set(summary)
    assert summary["status"] == "completed" and summary["flops_ratio"] > 1
    assert summary["tokens_per_layer"][0] == 17 and summary["tokens_per_layer"][1] == 15
    assert {"accuracy", "low", "high", "macro_f1", "confusion", "n"} <= set(summary["validation"])
    assert sorted(p.name for p in run_dir.iterdir()) == ["adapter.safetensors", "config.json", "metrics.json"]


def test_eval_reproduces_the_recorded_accuracy(trained_run, image_folder):
    run_dir, summary = trained_run
    done = run_cli("eval", str(run_dir), "--data", str(image_folder), "--repeats", "1", "--batch", "2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["reproduces_recorded"] is True
    assert result["validation"]["accuracy"] == summary["validation"]["accuracy"]
    assert {"uncompressed", "compressed"} == set(result["speed"])
    tome = json.loads(run_cli("eval", str(run_dir), "--data", str(image_folder), "--method", "tome",
                              "--schedule", "4", "--repeats", "0", "--json").stdout)
    assert tome["method"] == "tome" and tome["schedule"][0] == 4 and tome["reproduces_recorded"] is None


def test_eval_refuses_more_merging_than_pyra_was_trained_for(trained_run, image_folder):
    run_dir, _ = trained_run
    done = run_cli("eval", str(run_dir), "--data", str(image_folder), "--schedule", "4", "--repeats", "0")
    assert done.returncode == 2 and "trained to merge at most 2" in done.stderr and "Traceback" not in done.stderr


def test_tokens_draws_maps(trained_run, image_folder, tmp_path):
    run_dir, _ = trained_run
    out = tmp_path / "maps.png"
    done = run_cli("tokens", str(run_dir), "--image", str(image_folder / "red" / "0.png"), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["tokens"][0] == 17 and Image.open(out).size[0] > 100
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    done = run_cli("tokens", str(run_dir), "--image", str(bad), "--out", str(out))
    assert done.returncode == 2 and "not a readable image" in done.stderr


def test_compare_command(image_folder, tmp_path):
    done = run_cli("compare", "--data", str(image_folder), *TINY, "--schedule", "2", "--levels", "0,1",
                   "--bench-repeats", "1", "--bench-batch", "2", "--out", str(tmp_path / "cmp"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {"out_dir", "status", "levels", "rows", "comparisons"} <= set(result)
    assert len(result["rows"]) == 2 * 4 and result["protocol"] == "elastic"
    assert (tmp_path / "cmp" / "compare.csv").is_file()


def test_samples_and_bad_data():
    listed = json.loads(run_cli("samples", "--json").stdout)
    assert {s["name"] for s in listed["samples"]} >= {"fashion", "digits", "faces", "textures"}
    done = run_cli("train", "--data", "sample:nope", "--out", "/tmp/never-written")
    assert done.returncode == 2 and "Traceback" not in done.stderr and not Path("/tmp/never-written").exists()


def test_default_train_is_elastic_with_a_head_start_and_records_it(trained_run):
    run_dir, summary = trained_run
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert config["train"]["elastic"] == "sandwich-labels" and config["train"]["head_start"] is True
    assert summary["elastic"] == metrics["elastic"] == "sandwich-labels"
    assert summary["head_start"]["levels"] == 2 and metrics["head_start"] == summary["head_start"]
    assert all(len(step["levels"]) == 3 for step in metrics["history"])


def test_train_flags_override_the_recipe(image_folder, tmp_path):
    run_dir = tmp_path / "tome-uniform"
    done = run_cli("train", "--data", str(image_folder), *TINY, "--method", "tome", "--schedule", "2",
                   "--elastic", "uniform", "--no-head-start", "--out", str(run_dir), "--json")
    assert done.returncode == 0, done.stderr
    config = json.loads((run_dir / "config.json").read_text())["train"]
    assert (config["elastic"], config["head_start"], config["lr"]) == ("uniform", False, DEFAULT_RECIPE.train.lr)
    paper = tmp_path / "paper"
    done = run_cli("train", "--data", str(image_folder), *TINY, "--recipe", "paper", "--out", str(paper), "--json")
    assert done.returncode == 0, done.stderr
    recorded = json.loads((paper / "config.json").read_text())
    assert recorded["train"]["elastic"] == "off" and recorded["train"]["head_start"] is False
    assert recorded["lora_dropout"] == 0.1 and recorded["drop_path_rate"] == 0.1
    assert recorded["train"]["epochs"] == 1  # --epochs given: it wins over the recipe's 100
    assert json.loads(done.stdout)["head_start"] is None


def test_eval_says_when_a_schedule_is_off_target(trained_run, image_folder, tmp_path):
    run_dir, summary = trained_run
    trained = summary["schedule"]
    half = ",".join(str(r // 2) for r in trained)
    for schedule, off in ((half, False), ("0", False), (",".join(map(str, trained)), False)):
        done = run_cli("eval", str(run_dir), "--data", str(image_folder), "--schedule", schedule, "--repeats", "0",
                       "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["off_target"] is off, schedule  # elastic: every level up to its target
    fixed = tmp_path / "fixed"
    assert run_cli("train", "--data", str(image_folder), *TINY, "--method", "tome", "--schedule", "2",
                   "--no-elastic", "--out", str(fixed)).returncode == 0
    done = run_cli("eval", str(fixed), "--data", str(image_folder), "--schedule", half, "--repeats", "0")
    assert done.returncode == 0 and "off-target" in done.stdout
    on = json.loads(run_cli("eval", str(fixed), "--data", str(image_folder), "--repeats", "0", "--json").stdout)
    assert on["off_target"] is False


def test_export_writes_an_onnx_file_that_gives_the_runs_logits(trained_run, image_folder, tmp_path):
    import onnxruntime
    import torch

    from pyra import load_run
    from pyra.method.lora import merge_lora

    run_dir, _ = trained_run
    path = tmp_path / "model.onnx"
    done = run_cli("export", str(run_dir), "--onnx", str(path), "--dynamic-batch", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    model, config = load_run(run_dir)
    assert info["schedule"] == list(config.schedule) and any(config.schedule) and info["method"] == "pyra"
    assert info["batch"] is None and info["max_abs_difference"] <= 1e-4
    speed = info["speed"]  # timed at batch 1, the dynamic file's smallest
    assert speed["batch"] == 1 and 3 <= speed["rounds"] <= 10 and speed["threads"] >= 1
    assert speed["torch_ms"]["median"] > 0 and speed["onnxruntime_ms"]["median"] > 0
    assert speed["speedup"] == pytest.approx(speed["torch_ms"]["median"] / speed["onnxruntime_ms"]["median"])
    model = merge_lora(model).eval()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(images).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"image": images.numpy()})[0] - expected).max() <= 1e-4
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["pyra.classes"]) == list(config.classes) and json.loads(meta["pyra.img_size"]) == 64
    done = run_cli("export", str(run_dir), "--onnx", str(tmp_path / "model.bin"))
    assert done.returncode == 2 and ".onnx extension" in done.stderr


@pytest.mark.slow
def test_eval_can_time_compiled_models(trained_run, image_folder):
    run_dir, summary = trained_run
    done = run_cli("eval", str(run_dir), "--data", str(image_folder), "--repeats", "1", "--batch", "1", "--compile",
                   "--json")  # batch 1 for the throughput too: one input shape, so each model compiles once
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["speed_compiled"] is True and {"uncompressed", "compressed"} == set(result["speed"])
    assert result["validation"]["accuracy"] == summary["validation"]["accuracy"]  # accuracy stays the eager model's
