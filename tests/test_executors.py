"""Where trainings run: a local Ray gives the in-process results, a sweep resumes, Ray stays optional."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from pyra.data.datasets import load_dataset
from pyra.run import executors
from pyra.run.compare import run_compare
from pyra.run.comparison import CompareConfig
from pyra.run.executors import InProcess
from pyra.run.sweep import SweepConfig, run_sweep
from pyra.run.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(backbone="random:vit_tiny_patch16_224", img_size=32, schedule=2, lora_rank=2, bench_batch=2,
            bench_repeats=1, levels=(0.0, 1.0), train=TrainConfig(epochs=1, batch_size=4))


@pytest.fixture
def one_thread():
    """Torch on one thread, as each Ray task of one CPU runs: the same arithmetic, the same results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tones_folder(folder: Path, per_class: int = 6) -> Path:
    """Two classes of grey squares, dark and light, as PNG files in class folders."""
    from PIL import Image

    for label, grey in (("dark", 60), ("light", 190)):
        (folder / label).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (32, 32), (grey + 3 * i,) * 3).save(folder / label / f"{i}.png")
    return folder


def test_compare_on_a_local_ray_gives_the_in_process_accuracies_and_losses(tmp_path, one_thread):
    """`python -m pyra compare --executor ray` (a local Ray on this machine's CPUs, one CPU and one torch
    thread per training; its evaluation on one thread too) against the same comparison run here on one thread."""
    folder = tones_folder(tmp_path / "tones", per_class=8)
    data = load_dataset(str(folder), tmp_path / "work", val_fraction=0.375, seed=0)
    config = CompareConfig(**TINY, seeds=(0, 1), device="cpu")
    here = run_compare(data, config, tmp_path / "here", executor=InProcess())
    command = [sys.executable, "-m", "pyra", "compare", "--data", str(folder), "--val-fraction", "0.375",
               "--backbone", TINY["backbone"], "--img-size", "32", "--schedule", "2", "--lora-rank", "2",
               "--epochs", "1", "--batch-size", "4", "--seeds", "0,1", "--levels", "0,1", "--bench-batch", "2",
               "--bench-repeats", "1", "--executor", "ray", "--cpus-per-run", "1", "--out", str(tmp_path / "ray"),
               "--json"]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=os.environ | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})  # its evaluation too
    assert out.returncode == 0, out.stderr[-3000:]
    ray_run = json.loads(out.stdout)
    assert here.status == ray_run["status"] == "completed"
    assert len(here.rows) == len(ray_run["rows"]) == 8  # 4 rows x 2 levels
    for a, b in zip(here.rows, ray_run["rows"]):
        assert (a["method"], a["level"]) == (b["method"], b["level"])
        assert a["seed_accuracies"] == b["seed_accuracies"] and a["accuracy"] == b["accuracy"]
    for key, run_dir in here.run_dirs.items():  # each Ray task wrote its own run folder, with the same losses
        ours = json.loads((run_dir / "metrics.json").read_text())
        theirs = json.loads((tmp_path / "ray" / run_dir.relative_to(tmp_path / "here") / "metrics.json").read_text())
        assert theirs["status"] == "completed", key
        assert [s["loss"] for s in theirs["history"]] == pytest.approx([s["loss"] for s in ours["history"]])


def test_an_interrupted_sweep_trains_only_what_is_missing(tmp_path, monkeypatch):
    folder = tones_folder(tmp_path / "tones")
    config = SweepConfig.from_dict({
        "datasets": [str(folder)], "lr": [1e-3, 3e-3], "seeds": [0],
        "options": {"backbone": "random:vit_tiny_patch16_224", "img_size": 32, "epochs": 1, "batch_size": 4,
                    "levels": [0, 1], "val_fraction": 0.34, "bench_repeats": 1}})
    trained: list[str] = []
    real = executors.train_run
    monkeypatch.setattr(executors, "train_run", lambda data, run_config, run_dir, **kw: trained.append(
        str(run_dir.relative_to(tmp_path))) or real(data, run_config, run_dir, **kw))
    cancel = threading.Event()

    def stop_in_the_second_cell(cell, progress) -> None:
        if cell.lr == 3e-3 and progress.stage.startswith("trained 1 of"):
            cancel.set()  # as Ctrl-C would, after the second cell's first training

    first = run_sweep(config, tmp_path / "sweep", cancel=cancel, on_progress=stop_in_the_second_cell)
    assert [c["status"] for c in first] == ["completed", "cancelled"]
    assert len(trained) == 3 + 2  # the first cell's three; the second's first, then one that saw the cancel
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").rglob("adapter.safetensors")}
    trained.clear()
    again = run_sweep(config, tmp_path / "sweep")
    assert [c["status"] for c in again] == ["completed", "completed"]
    assert len(trained) == 2 and all(path.startswith("sweep/tones/lr0.003-pyra") for path in trained)
    untouched = [p for p in kept if not any(str(p.parent).endswith(t) for t in trained)]
    assert len(untouched) == 4 and all(p.stat().st_mtime_ns == kept[p] for p in untouched)
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [c["folder"] for c in summary["cells"]] == ["tones/lr0.001-pyra0.0005", "tones/lr0.003-pyra0.0005"]
    assert all(len(c["at_target"]) == 4 for c in summary["cells"])


def test_a_sweep_config_names_what_is_wrong():
    with pytest.raises(ValueError, match="unknown key"):
        SweepConfig.from_dict({"datasets": ["sample:fashion"], "learning_rate": [1e-3]})
    with pytest.raises(ValueError, match="lr must be a non-empty list of float"):
        SweepConfig.from_dict({"datasets": ["sample:fashion"], "lr": "1e-3"})
    with pytest.raises(ValueError, match="options.epochs must be a int"):
        SweepConfig.from_dict({"datasets": ["sample:fashion"], "options": {"epochs": "three"}})
    with pytest.raises(ValueError, match="epochs must be a whole number >= 1"):  # refused before any data is read
        run_sweep(SweepConfig.from_dict({"datasets": ["no/such/folder"], "options": {"epochs": 0}}), Path("/nonexistent"))


def test_a_sweep_trains_as_its_recipe_implies_unless_told():
    def protocol(options: dict) -> str:
        config = SweepConfig.from_dict({"datasets": ["sample:fashion"], "options": options})
        return config.compare_config(config.cells(Path("out"))[0]).protocol

    assert protocol({}) == "elastic"  # the default recipe trains one elastic model
    assert protocol({"recipe": "paper"}) == "per-level"  # the paper's: one model per level, as `compare` does
    assert protocol({"recipe": "paper", "protocol": "per-level"}) == "per-level"


def test_the_app_and_the_default_commands_run_without_ray():
    """With `import ray` failing, the app builds, compare runs in process, and --executor ray says what to install."""
    script = (
        "import sys; sys.modules['ray'] = None\n"
        "import app\n"
        "from pyra.cli.main import main\n"
        "assert main(['compare', '--help']) == 0\n"
        "code = main(['compare', '--data', 'sample:textures', '--out', sys.argv[1], '--executor', 'ray'])\n"
        "assert code == 2, code\n"
        "assert not any(name == 'ray' or name.startswith('ray.') for name in sys.modules if sys.modules[name])\n"
    )
    out = subprocess.run([sys.executable, "-c", script, "/nonexistent/out"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Ray is not installed: pip install -r requirements-ray.txt" in out.stderr
