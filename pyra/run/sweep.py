"""A sweep: one comparison per (dataset, learning rate, PYRA learning rate), each over the same seeds;
resumable, so an interrupted sweep run again trains only what is missing.

    config = SweepConfig.from_dict(json.loads(Path("sweep.json").read_text()))
    cells = run_sweep(config, Path("sweeps/vtab"), executor=RayExecutor(gpus_per_run=1))

The config (JSON): {"datasets": ["sample:fashion", "data/dtd"], "lr": [1e-3, 3e-3], "pyra_lr": [5e-4],
"seeds": [0, 1, 2], "options": {"backbone": "default", "epochs": 3, "levels": [0, 0.5, 1], ...}}; every
option is listed in `OPTIONS` (protocol: the recipe's, as in `compare`). Each comparison goes to
OUT/<dataset>/lr<lr>-pyra<pyra_lr>/ with its run folders, compare.json and compare.csv; OUT/sweep.json
lists every cell and its accuracies at the target level.
"""
from __future__ import annotations

import json
import re
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from pyra.data.datasets import load_dataset
from pyra.files import write_atomic
from pyra.run.compare import run_compare
from pyra.run.comparison import CompareConfig, CompareProgress, protocol_for
from pyra.run.executors import Executor
from pyra.run.recipes import DEFAULT_RECIPE, recipe

__all__ = ["SweepConfig", "SweepCell", "run_sweep", "OPTIONS", "SWEEP_FILE"]

SWEEP_FILE = "sweep.json"
OPTIONS = {  # option -> (type, default): every setting a sweep shares across its cells
    "backbone": (str, "default"), "img_size": (int, None), "schedule": (str, "high"), "recipe": (str, DEFAULT_RECIPE.name),
    "epochs": (int, None), "batch_size": (int, None), "protocol": (str, None), "levels": (list, [0.0, 0.5, 1.0]),
    "max_per_class": (int, None), "val_fraction": (float, 0.25), "split_seed": (int, 0), "bench_repeats": (int, 3),
}


@dataclass(frozen=True)
class SweepCell:
    dataset: str
    lr: float
    pyra_lr: float
    folder: Path  # OUT/<dataset>/lr<lr>-pyra<pyra_lr>


@dataclass(frozen=True)
class SweepConfig:
    datasets: tuple[str, ...]
    lrs: tuple[float, ...]
    pyra_lrs: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> SweepConfig:
        """Read the JSON config; ValueError naming the key and what it takes."""
        if not isinstance(data, dict):
            raise ValueError("a sweep config is a JSON object with datasets, lr, pyra_lr, seeds and options")
        unknown = sorted(set(data) - {"datasets", "lr", "pyra_lr", "seeds", "options"})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; a sweep config has datasets, lr, pyra_lr, "
                             "seeds and options")
        options = data.get("options", {})
        if not isinstance(options, dict) or sorted(set(options) - set(OPTIONS)):
            raise ValueError(f"options must be an object with keys among {', '.join(OPTIONS)}")
        base = recipe(str(options.get("recipe", DEFAULT_RECIPE.name))).train
        checked = {}
        for key, (kind, default) in OPTIONS.items():
            value = options.get(key, default)
            if value is not None and not (isinstance(value, kind) or (kind is float and isinstance(value, int))):
                raise ValueError(f"options.{key} must be a {kind.__name__}, got {value!r}")
            checked[key] = value
        return cls(datasets=_listed(data, "datasets", str), lrs=_listed(data, "lr", float, [base.lr]),
                   pyra_lrs=_listed(data, "pyra_lr", float, [base.pyra_lr]), seeds=_listed(data, "seeds", int, [0]),
                   options=checked)

    def cells(self, out_dir: Path) -> list[SweepCell]:
        return [SweepCell(dataset, lr, pyra_lr, Path(out_dir) / _slug(dataset) / f"lr{lr:g}-pyra{pyra_lr:g}")
                for dataset in self.datasets for lr in self.lrs for pyra_lr in self.pyra_lrs]

    def compare_config(self, cell: SweepCell) -> CompareConfig:
        o = self.options
        chosen = recipe(o["recipe"])
        given = {"epochs": o["epochs"], "batch_size": o["batch_size"]}
        train = replace(chosen.train, lr=cell.lr, pyra_lr=cell.pyra_lr, **{k: v for k, v in given.items() if v is not None})
        return CompareConfig(backbone=o["backbone"], img_size=o["img_size"], schedule=o["schedule"],
                             lora_rank=chosen.lora_rank, lora_dropout=chosen.lora_dropout,
                             drop_path_rate=chosen.drop_path_rate, train=train, seeds=self.seeds,
                             levels=tuple(float(f) for f in o["levels"]), protocol=o["protocol"] or protocol_for(train),
                             bench_repeats=o["bench_repeats"])


def _listed(data: dict, key: str, kind: type, default: Optional[list] = None) -> tuple:
    values = data.get(key, default)
    if not isinstance(values, list) or not values or not all(
            isinstance(v, kind) or (kind is float and isinstance(v, int) and not isinstance(v, bool)) for v in values):
        raise ValueError(f"{key} must be a non-empty list of {kind.__name__} values, got {values!r}")
    return tuple(kind(v) for v in values)


def _slug(dataset: str) -> str:
    """A folder name for a dataset: "sample:fashion" -> "fashion", "data/dtd.zip" -> "dtd"."""
    name = dataset.partition("sample:")[2] or Path(dataset).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "dataset"


def run_sweep(config: SweepConfig, out_dir: Path, *, executor: Optional[Executor] = None,
              on_progress: Optional[Callable[[SweepCell, CompareProgress], None]] = None,
              cancel: Optional[threading.Event] = None) -> list[dict]:
    """Run every cell not finished before (its trainings resumed run by run); returns and writes OUT/sweep.json.

    Stops at the first cell that does not complete (cancelled or diverged); run again to go on.
    """
    out_dir = Path(out_dir)
    cells, summary = config.cells(out_dir), []
    compare_configs = [config.compare_config(cell) for cell in cells]  # every cell's settings checked before any work
    o = config.options
    for cell, compare_config in zip(cells, compare_configs):
        with tempfile.TemporaryDirectory(prefix="pyra-sweep-") as workdir:
            data = load_dataset(cell.dataset, Path(workdir), val_fraction=o["val_fraction"], seed=o["split_seed"],
                                max_per_class=o["max_per_class"])
            result = run_compare(data, compare_config, cell.folder, executor=executor, cancel=cancel,
                                 resume=True, on_progress=lambda p, c=cell: on_progress and on_progress(c, p))
        target = [row for row in result.rows if result.levels and row["level"] == result.levels[-1].index]
        summary.append({"dataset": cell.dataset, "lr": cell.lr, "pyra_lr": cell.pyra_lr,
                        "folder": str(cell.folder.relative_to(out_dir)), "status": result.status,
                        "message": result.message,
                        "at_target": [{k: row[k] for k in ("method", "accuracy", "accuracy_low", "accuracy_high",
                                                          "seed_accuracies")} for row in target]})
        if result.status != "completed":
            break
    write_atomic(out_dir / SWEEP_FILE, (json.dumps({"cells": summary}, indent=1) + "\n").encode())
    return summary
