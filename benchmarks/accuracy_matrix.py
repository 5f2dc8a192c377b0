"""Accuracy at five compression levels on several built-in datasets and seeds.

    python benchmarks/accuracy_matrix.py                        # fashion, digits, faces; seeds 0,1,2 (about 1 h)
    python benchmarks/accuracy_matrix.py --quick --out /tmp/acc # one dataset, one seed, random ViT-Tiny (< 3 min)
    python benchmarks/accuracy_matrix.py --datasets fashion --threads 1 &   # the same work split over two
    python benchmarks/accuracy_matrix.py --datasets digits,faces --threads 1  # processes, one core each

For every dataset and seed (the seed fixes the train/validation split and the training):
LoRA is trained once uncompressed and evaluated as is and with training-free ToMe at every
level; ToMe + LoRA and PYRA + LoRA (one run per PYRA learning rate of the sweep) are trained
at each level and evaluated at the level they were trained for. Nothing is selected on the
validation split: every PYRA learning rate is reported. Throughput comes from the controlled
speed benchmark (benchmarks/engine_speed.py), not from this run.

Writes <out>/results/accuracy_matrix.json (accuracy_matrix-<datasets>.json with --datasets,
accuracy_matrix_quick.json with --quick), rewritten after every seed so an interrupted run
keeps what it finished; benchmarks/results_report.py turns them into docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.matrix_runner import run_pairs
from pyra.data.datasets import DatasetSplit, load_dataset
from pyra.method.schedule import Method, ScheduleSpec
from pyra.report.tables import machine_info
from pyra.run.metrics import evaluate
from pyra.run.one_run import make_run_config, model_dataset, train_run
from pyra.run.run_config import RunConfig
from pyra.run.speed_bench import SWEEP_LEVELS
from pyra.run.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class MatrixConfig:
    """What is trained: datasets x seeds x levels, and the training recipe."""

    datasets: tuple[str, ...]
    max_per_class: dict[str, int]
    seeds: tuple[int, ...]
    levels: tuple[ScheduleSpec, ...]
    pyra_lrs: tuple[float, ...]
    backbone: str
    img_size: int
    train: TrainConfig
    lora_rank: int = 4
    val_fraction: float = 0.25


FULL = MatrixConfig(
    datasets=("fashion", "digits", "faces"),
    max_per_class={"fashion": 40, "digits": 40, "faces": 100},
    seeds=(0, 1, 2),
    levels=SWEEP_LEVELS,
    pyra_lrs=(5e-4, 5e-3),
    backbone="default",
    img_size=112,
    train=TrainConfig(epochs=3, batch_size=16, lr=5e-3, eval_every_epoch=False, elastic="off", head_start=False),
)
QUICK = replace(
    FULL, datasets=("textures",), max_per_class={"textures": 12}, seeds=(0,), levels=("low", "high"),
    backbone="random:vit_tiny_patch16_224", img_size=64,
    train=replace(FULL.train, epochs=1, batch_size=8),
)


def run_cell(data: DatasetSplit, config: MatrixConfig, seed: int, method: Method, level: ScheduleSpec,
             pyra_lr: float, workdir: Path) -> tuple[RunConfig, nn.Module, dict[str, Any]]:
    """Train one model and evaluate it on the validation split at the level it was trained for."""
    run_config = make_run_config(
        data, backbone=config.backbone, img_size=config.img_size, method=method, schedule=level,
        lora_rank=config.lora_rank, lora_dropout=0.0, drop_path_rate=0.0,
        train_config=replace(config.train, seed=seed, pyra_lr=pyra_lr), seed=seed, device="cpu",
    )
    run_dir = workdir / f"{method}-{level}-{pyra_lr:g}"
    model, result, report = train_run(data, run_config, run_dir, device="cpu")
    if report is None:
        raise RuntimeError(f"{run_dir.name}: training ended with {result.status}: {result.message}")
    _, predictions = evaluate(model, model_dataset(model, data.val), data.classes)  # per-image outcomes
    return run_config, model, {"seconds": round(result.seconds, 1), **cell_result(predictions.correct)}


def cell_result(correct: np.ndarray) -> dict[str, Any]:
    """Accuracy, n and the per-image outcome (a string of 0/1, validation order) for paired tests."""
    return {"accuracy": float(correct.mean()), "n": int(correct.size),
            "correct": "".join("1" if c else "0" for c in correct)}


def run_seed(dataset: str, seed: int, config: MatrixConfig, workdir: Path,
             log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All cells of one dataset and seed, and the sizes of its split."""
    data = load_dataset(f"sample:{dataset}", workdir / "data", val_fraction=config.val_fraction, seed=seed,
                        max_per_class=config.max_per_class[dataset])
    cells: list[dict[str, Any]] = []

    def add(method: str, level: str, schedule: list[int], pyra_lr: float | None, result: dict[str, Any]) -> None:
        cells.append({"dataset": dataset, "seed": seed, "method": method, "level": level,
                      "schedule": schedule, "pyra_lr": pyra_lr, **result})
        log(f"{dataset} seed {seed} {method:>12} {level:>5} {'' if pyra_lr is None else f'lr {pyra_lr:g}':>9}: "
            f"{100 * result['accuracy']:.1f}%")

    base_config, base, result = run_cell(data, config, seed, "none", 0, config.train.lr, workdir)
    add("uncompressed", "none", list(base_config.schedule), None, result)
    base_val = model_dataset(base, data.val)
    for level in config.levels:
        tome_config, _, result = run_cell(data, config, seed, "tome", level, config.train.lr, workdir)
        schedule = list(tome_config.schedule)
        add("tome", str(level), schedule, None, result)
        _, free = evaluate(base, base_val, data.classes, schedule=schedule, method="tome")
        add("tome_free", str(level), schedule, None, cell_result(free.correct))
        for pyra_lr in config.pyra_lrs:
            _, _, result = run_cell(data, config, seed, "pyra", level, pyra_lr, workdir)
            add("pyra", str(level), schedule, pyra_lr, result)
    split = {"train": len(data.train), "val": len(data.val), "classes": list(data.classes)}
    return cells, split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny dataset, one seed, random ViT-Tiny (< 3 min)")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated built-in samples (default: fashion,digits,faces)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="writes <out>/results/ (default docs/)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.datasets:
        datasets = tuple(args.datasets.split(","))
        config = replace(config, datasets=datasets,
                         max_per_class={d: config.max_per_class.get(d, 40) for d in datasets})
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/accuracy_matrix.py" + "".join(
        f" {flag}" for flag, given in (("--quick", args.quick), (f"--datasets {args.datasets}", args.datasets),
                                       (f"--threads {args.threads}", args.threads)) if given)
    suffix = "_quick" if args.quick else f"-{args.datasets.replace(',', '-')}" if args.datasets else ""
    name = f"accuracy_matrix{suffix}"
    path = args.out / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {message}", file=sys.stderr, flush=True)

    report: dict[str, Any] = {
        "command": command, "machine": machine_info(), "threads": torch.get_num_threads(), "complete": False,
        "settings": {
            "backbone": config.backbone, "img_size": config.img_size, "lora_rank": config.lora_rank,
            "lora_dropout": 0.0, "drop_path_rate": 0.0, "train": config.train.to_dict(),
            "pyra_lrs": list(config.pyra_lrs), "seeds": list(config.seeds), "datasets": list(config.datasets),
            "levels": [str(level) for level in config.levels], "val_fraction": config.val_fraction,
            "max_per_class": config.max_per_class,
        },
        "splits": {}, "cells": [],
    }
    pairs = [(dataset, seed) for dataset in config.datasets for seed in config.seeds]
    run_pairs(pairs, lambda dataset, seed, workdir: run_seed(dataset, seed, config, workdir, log), report, path,
              lambda: (time.perf_counter() - start) / 60, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
