"""Elastic merging training against one model per level, on several built-in datasets and seeds.

    python benchmarks/elastic_matrix.py                     # fashion, digits, faces x seeds 0,1,2 (~1.7 h on 2 cores)
    python benchmarks/elastic_matrix.py --quick --out /tmp/e  # one tiny dataset, random ViT-Tiny (< 3 min)
    python benchmarks/elastic_matrix.py --only fashion@0,fashion@1,fashion@2,faces@0 --threads 1 &
    python benchmarks/elastic_matrix.py --only digits@0,digits@1,digits@2,faces@1,faces@2 --threads 1

For every dataset and seed (the seed draws the train/validation split, half of each class held
out so that every accuracy rests on as many images as the training had, and seeds the training),
at five levels (fractions 0, 1/4, 1/2, 3/4, 1 of the "high" schedule), all with the default
recipe (head start, pyra.run.recipes.DEFAULT_RECIPE):
- probe: logistic regression on the frozen backbone's features at that level (the head start alone);
- uncompressed: LoRA without merging; tome_free: that model merged training-free at each level;
- for ToMe + LoRA and PYRA + LoRA, variant
  per-level: one model trained at each level (the level-0 model is the uncompressed one),
  target-only: the per-level model of the last level evaluated at every level (off-target),
  uniform / sandwich: one elastic model (pyra.method.elastic) evaluated at every level.
Nothing is selected on the validation split. Writes <out>/results/elastic_matrix*.json, rewritten
after every (dataset, seed); benchmarks/results_report.py renders docs/RESULTS.md from it.
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
from pyra.backbones.factory import backbone_structure
from pyra.data.datasets import load_dataset
from pyra.method.patch import geometry
from pyra.report.tables import machine_info
from pyra.run.comparison import Level, sweep_levels
from pyra.run.head_start import probe_correct
from pyra.run.metrics import evaluate
from pyra.run.one_run import make_run_config, model_dataset, train_run
from pyra.run.recipes import DEFAULT_RECIPE
from pyra.run.run_config import build_model
from pyra.run.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]

ELASTIC_VARIANTS = ("uniform", "sandwich", "sandwich-labels")  # pyra.method.elastic modes
VARIANTS = ("per-level", "target-only", *ELASTIC_VARIANTS)


@dataclass(frozen=True)
class MatrixConfig:
    datasets: dict[str, int]  # sample -> images per class (train + val)
    seeds: tuple[int, ...]
    fractions: tuple[float, ...]
    backbone: str
    img_size: int
    train: TrainConfig
    schedule: str = "high"
    val_fraction: float = 0.25


FULL = MatrixConfig(datasets={"fashion": 30, "digits": 30, "faces": 60}, seeds=(0, 1, 2),
                    fractions=(0.0, 0.25, 0.5, 0.75, 1.0), backbone="default", img_size=112,
                    train=replace(DEFAULT_RECIPE.train, eval_every_epoch=False), val_fraction=0.5)
QUICK = replace(FULL, datasets={"textures": 12}, seeds=(0,), fractions=(0.0, 0.5, 1.0),
                backbone="random:vit_tiny_patch16_224", img_size=64, train=replace(FULL.train, epochs=1, batch_size=8))


def outcome(correct: np.ndarray) -> dict[str, Any]:
    """Accuracy, n and the per-image outcome (a string of 0/1, validation order) for paired tests."""
    return {"accuracy": float(correct.mean()), "n": int(correct.size),
            "correct": "".join("1" if c else "0" for c in correct)}


class SeedRun:
    """Every cell of one dataset and seed."""

    def __init__(self, dataset: str, seed: int, config: MatrixConfig, workdir: Path, log: Callable[[str], None],
                 elastic_only: tuple[str, ...] = ()):
        self.dataset, self.seed, self.config, self.workdir, self.log = dataset, seed, config, workdir, log
        self.elastic_only = elastic_only  # train only these elastic variants (the other cells exist already)
        self.data = load_dataset(f"sample:{dataset}", workdir / "data", val_fraction=config.val_fraction, seed=seed,
                                 max_per_class=config.datasets[dataset])
        self.cells: list[dict[str, Any]] = []

    def run_config(self, method: str, schedule: Any, elastic: str):
        return make_run_config(self.data, backbone=self.config.backbone, img_size=self.config.img_size,
                               method=method, schedule=schedule,
                               train_config=replace(self.config.train, seed=self.seed, elastic=elastic),
                               seed=self.seed, device="cpu")

    def add(self, method: str, variant: str, level: Level, result: dict[str, Any], seconds: float | None) -> None:
        self.cells.append({"dataset": self.dataset, "seed": self.seed, "method": method, "variant": variant,
                           "level": level.index, "fraction": level.fraction, "schedule": level.schedule,
                           "flops_ratio": level.flops_ratio, "seconds": seconds, **result})
        self.log(f"{self.dataset} seed {self.seed} {method:>12} {variant:>11} level {level.index}: "
                 f"{100 * result['accuracy']:.1f}%" + (f" ({seconds:.0f} s)" if seconds is not None else ""))

    def train(self, method: str, schedule: Any, elastic: str, name: str) -> tuple[nn.Module, float, dict]:
        """Train one model; (model, training seconds with the head start, head_start_* fields)."""
        config = self.run_config(method, schedule, elastic)
        model, result, report = train_run(self.data, config, self.workdir / name, device="cpu")
        if report is None:
            raise RuntimeError(f"{name}: training ended with {result.status}: {result.message}")
        head = {f"head_start_{key}": value for key, value in result.head_start.to_dict().items()} \
            if result.head_start else {}
        return model, result.seconds, head

    def accuracy(self, model: nn.Module, level: Level, method: str) -> dict[str, Any]:
        merge = method if any(level.schedule) else "none"
        _, predictions = evaluate(model, model_dataset(model, self.data.val), self.data.classes,
                                  schedule=list(level.schedule), method=merge)
        return outcome(predictions.correct)

    def run(self) -> list[dict[str, Any]]:
        target = self.run_config("pyra", self.config.schedule, "off")
        geo = geometry(backbone_structure(self.config.backbone, len(self.data.classes), self.config.img_size))
        levels = sweep_levels(list(target.schedule), self.config.fractions, geo)
        if self.elastic_only:
            return self.elastic_cells(list(target.schedule), levels, self.elastic_only)
        fresh = build_model(self.run_config("tome", list(target.schedule), "off"))
        for level in levels:
            correct = probe_correct(fresh, model_dataset(fresh, self.data.train), model_dataset(fresh, self.data.val),
                                    level.schedule)
            self.add("probe", "probe", level, outcome(correct), None)
        del fresh
        base, seconds, head = self.train("none", 0, "off", "uncompressed")
        self.add("uncompressed", "uncompressed", levels[0], self.accuracy(base, levels[0], "none") | head, seconds)
        for level in levels[1:]:
            self.add("tome_free", "training-free", level, self.accuracy(base, level, "tome"), None)
        for method in ("tome", "pyra"):
            self.add(method, "per-level", levels[0], self.accuracy(base, levels[0], "none"), seconds)
            for level in levels[1:]:
                model, seconds_level, head = self.train(method, list(level.schedule), "off", f"{method}-{level.index}")
                self.add(method, "per-level", level, self.accuracy(model, level, method) | head, seconds_level)
            for level in levels[:-1]:  # the last per-level model, off its trained level
                self.add(method, "target-only", level, self.accuracy(model, level, method), None)
            self.elastic_cells(list(target.schedule), levels, ELASTIC_VARIANTS, methods=(method,))
        return self.cells

    def elastic_cells(self, target: list[int], levels: list[Level], variants: tuple[str, ...],
                      methods: tuple[str, ...] = ("tome", "pyra")) -> list[dict[str, Any]]:
        """One elastic model per method and variant, evaluated at every level."""
        for method in methods:
            for elastic in variants:
                model, seconds_elastic, head = self.train(method, target, elastic, f"{method}-{elastic}")
                for level in levels:
                    self.add(method, elastic, level, self.accuracy(model, level, method) | head,
                             seconds_elastic if level is levels[-1] else None)
        return self.cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny dataset, one seed, random ViT-Tiny")
    parser.add_argument("--only", default=None, help="comma-separated dataset@seed pairs to run (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--elastic-only", default=None,
                        help=f"comma-separated elastic variants to train alone (of {', '.join(ELASTIC_VARIANTS)}), "
                             "beside a matrix whose other cells exist")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="writes <out>/results/ (default docs/)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    pairs = [(d, s) for d in config.datasets for s in config.seeds]
    if args.only:
        wanted = [tuple(p.split("@")) for p in args.only.split(",")]
        pairs = [(d, int(s)) for d, s in wanted]
        unknown = [d for d, _ in pairs if d not in config.datasets]
        if unknown:
            parser.error(f"--only: unknown datasets {unknown}; choose among {list(config.datasets)}")
    elastic_only = tuple(args.elastic_only.split(",")) if args.elastic_only else ()
    if set(elastic_only) - set(ELASTIC_VARIANTS):
        parser.error(f"--elastic-only: choose among {', '.join(ELASTIC_VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/elastic_matrix.py" + "".join(
        f" {flag}" for flag, given in (("--quick", args.quick), (f"--only {args.only}", args.only),
                                       (f"--threads {args.threads}", args.threads),
                                       (f"--elastic-only {args.elastic_only}", args.elastic_only)) if given)
    suffix = "" if args.quick or not args.only else f"-{args.only.replace(',', '-').replace('@', '')}"
    suffix += "".join(f"-{variant}" for variant in elastic_only) + ("_quick" if args.quick else "")
    path = args.out / "results" / f"elastic_matrix{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {message}", file=sys.stderr, flush=True)

    report: dict[str, Any] = {
        "command": command, "machine": machine_info(), "threads": torch.get_num_threads(), "complete": False,
        "settings": {"backbone": config.backbone, "img_size": config.img_size, "schedule": config.schedule,
                     "fractions": list(config.fractions), "train": config.train.to_dict(),
                     "lora_dropout": DEFAULT_RECIPE.lora_dropout, "drop_path_rate": DEFAULT_RECIPE.drop_path_rate,
                     "val_fraction": config.val_fraction, "max_per_class": config.datasets},
        "splits": {}, "cells": [],
    }
    def run_pair(dataset: str, seed: int, workdir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        run = SeedRun(dataset, seed, config, workdir, log, elastic_only)
        cells = run.run()
        return cells, {"train": len(run.data.train), "val": len(run.data.val), "classes": list(run.data.classes)}

    run_pairs(pairs, run_pair, report, path, lambda: (time.perf_counter() - start) / 60, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
