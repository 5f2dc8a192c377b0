"""Choose the small-data learning rate and the head start's regularisation on tuning splits that no
reported table uses.

    python benchmarks/recipe_search.py                        # ~30 min on one thread
    python benchmarks/recipe_search.py --quick --out /tmp/r   # random ViT-Tiny, one tiny sample (< 1 min)

Part "lr": the default recipe (head start, batch 16, 10% warm-up, cosine, 3 epochs, no dropout)
with the LoRA + head learning rate varied, for LoRA uncompressed and for ToMe + LoRA trained at
"high" only (elastic off, so the recipe is judged on its own), on fashion and digits (split seed 100).
Part "head start": ToMe + LoRA at "high", lr 3e-3, with the head start's C (inverse L2 strength)
varied and without a head start, on fashion and digits (split seed 102). The frozen-feature
probe (scikit-learn's default C = 1, and each C tried) is the bar a fine-tuned model must clear.
Reported tables use split seeds 0-2. Writes <out>/results/recipe_search.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pyra.data.datasets import load_dataset
from pyra.report.tables import machine_info
from pyra.run.head_start import PROBE_C, probe_correct
from pyra.run.one_run import make_run_config, model_dataset, train_run
from pyra.run.recipes import DEFAULT_RECIPE
from pyra.run.run_config import build_model

REPO = Path(__file__).resolve().parents[1]

FULL = {"datasets": {"fashion": 40, "digits": 40}, "seeds": (100,), "lrs": (1e-3, 3e-3, 1e-2),
        "backbone": "default", "img_size": 112, "epochs": 3,
        "c_datasets": {"fashion": 40, "digits": 40}, "c_seeds": (102,), "c_values": (1.0, 0.05, 0.01), "c_lr": 3e-3}
QUICK = {"datasets": {"textures": 12}, "seeds": (100,), "lrs": (1e-3, 1e-2),
         "backbone": "random:vit_tiny_patch16_224", "img_size": 64, "epochs": 1,
         "c_datasets": {"textures": 12}, "c_seeds": (101,), "c_values": (1.0, 0.05), "c_lr": 3e-3}


def train_cell(data, grid: dict, method: str, seed: int, workdir: Path, **train: Any) -> tuple[Any, dict[str, Any]]:
    """Train one model at "high" (elastic off) with `train` over the default recipe; its accuracy."""
    train_config = replace(DEFAULT_RECIPE.train, epochs=grid["epochs"], seed=seed, elastic="off",
                           eval_every_epoch=False, **train)
    config = make_run_config(data, backbone=grid["backbone"], img_size=grid["img_size"], method=method,
                             schedule="high", train_config=train_config, seed=seed, device="cpu")
    _, result, evaluation = train_run(data, config, workdir, device="cpu")
    return config, {"accuracy": evaluation.accuracy if evaluation else None, "n": len(data.val),
                    "seconds": round(result.seconds, 1)}


def probe(config, data, inverse_l2: float) -> float:
    fresh = build_model(config)
    return float(probe_correct(fresh, model_dataset(fresh, data.train), model_dataset(fresh, data.val),
                               list(config.schedule), inverse_l2=inverse_l2).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="writes <out>/results/ (default docs/)")
    args = parser.parse_args(argv)
    grid = QUICK if args.quick else FULL
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.out / "results" / ("recipe_search_quick.json" if args.quick else "recipe_search.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {"command": "python benchmarks/recipe_search.py" + (" --quick" if args.quick else ""),
                              "machine": machine_info(), "threads": torch.get_num_threads(),
                              "settings": {k: v for k, v in grid.items()} | {"recipe": DEFAULT_RECIPE.train.to_dict()},
                              "cells": []}
    def record(cell: dict[str, Any]) -> None:
        report["cells"].append(cell)
        print(f"[{(time.perf_counter() - start) / 60:4.1f} min] {cell}", file=sys.stderr, flush=True)
        path.write_text(json.dumps(report, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        for dataset, cap in grid["datasets"].items():
            for seed in grid["seeds"]:
                data = load_dataset(f"sample:{dataset}", Path(tmp) / "data", seed=seed, max_per_class=cap)
                for method in ("none", "tome"):
                    for lr in grid["lrs"]:
                        config, cell = train_cell(data, grid, method, seed, Path(tmp) / "run", lr=lr)
                        if lr == grid["lrs"][0]:  # the probe does not depend on lr
                            cell["probe_accuracy"] = probe(config, data, PROBE_C)
                        record({"part": "lr", "dataset": dataset, "seed": seed, "method": method, "lr": lr, **cell})
        for dataset, cap in grid["c_datasets"].items():
            for seed in grid["c_seeds"]:
                data = load_dataset(f"sample:{dataset}", Path(tmp) / "data", seed=seed, max_per_class=cap)
                for c in (*grid["c_values"], None):
                    train = {"head_start_c": c} if c is not None else {"head_start": False}
                    config, cell = train_cell(data, grid, "tome", seed, Path(tmp) / "run", lr=grid["c_lr"], **train)
                    if c is not None:
                        cell["probe_accuracy"] = probe(config, data, c)
                    record({"part": "head start", "dataset": dataset, "seed": seed, "method": "tome",
                            "lr": grid["c_lr"], "head_start_c": c, **cell})
    report["minutes"] = round((time.perf_counter() - start) / 60, 1)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
