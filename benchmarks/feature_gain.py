"""Does fine-tuning on the Quick demo's 100 images give the head better features than the frozen backbone's?

    python benchmarks/feature_gain.py            # 6 tuning splits, ~25 min on 2 cores
    python benchmarks/feature_gain.py --quick    # random ViT-Tiny, 1 split, 1 epoch (~1 min)

On the Quick demo's tuning splits (seeds 1-6 of its data, as benchmarks/quick_demo_recipe.py) and with
its training settings (QUICK_DEMO_TRAIN), per model (uncompressed LoRA; ToMe + LoRA and PYRA + LoRA
trained elastically), at every level it was trained for:
- *fine-tuned*: the model as trained;
- *re-probed*: the fine-tuned model with its head refitted by the probe's own logistic regression (C = 1)
  on the fine-tuned model's features of the training images, pooled at the levels the head start pooled.
  This measures the features alone: the head no longer carries what the optimiser did to it;
- *head kept*: a model trained with its head-start head frozen, so only LoRA (and PYRA) learn.
Each is compared with the frozen-feature probe (C = 1) at the same level: the mean of the paired
differences over the splits, with a 95% t-interval. Fine-tuning that improved the features for a
linear head would put *re-probed* above the probe. Writes <out>/results/feature_gain[_quick].json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.quick_demo_recipe import FULL, METHODS, QUICK, level_accuracies, probe, trained_levels
from pyra.data.datasets import load_dataset
from pyra.method.elastic import head_start_fractions, scaled_schedule
from pyra.report.stats import paired_seed_difference
from pyra.report.tables import machine_info
from pyra.run.head_start import PROBE_C, fit_head
from pyra.run.one_run import make_run_config, model_dataset
from pyra.run.run_config import build_model
from pyra.run.train import TrainConfig, train
from pyra_app.settings import compare_config
from pyra_app.tab_train import QUICK_DEMO_DATA, QUICK_DEMO_TRAIN

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("fine-tuned", "re-probed", "head kept")


def reprobe(model: torch.nn.Module, train_set, target: list[int], elastic: str) -> None:
    """Refit `model.head` (C = PROBE_C) on the model's own features of `train_set`, pooled at the levels
    the head start pooled (`elastic` "off", as for a model that does not merge: the target only)."""
    fit_head(model, train_set, [scaled_schedule(target, f) for f in head_start_fractions(elastic)], PROBE_C)


def cell(data, grid: dict, method: str, config: TrainConfig) -> dict[str, dict[str, float]]:
    """Variant -> accuracy (%) per trained level of one method on one split."""
    scores = {}
    for head_kept in (False, True):
        run = make_run_config(data, backbone=grid["backbone"], img_size=grid["img_size"], method=method,
                              schedule=QUICK_DEMO_TRAIN.schedule, train_config=config, device="cpu")
        model = build_model(run)
        target = list(run.schedule)
        train_set, val_set = model_dataset(model, data.train), model_dataset(model, data.val)
        if head_kept:  # the head start still fits it (in place); the optimiser never sees it
            model.head.requires_grad_(False)
        result = train(model, train_set, config)
        if head_kept:
            scores["head kept"] = level_accuracies(model, val_set, target, method, digits=2)
            continue
        scores["fine-tuned"] = level_accuracies(model, val_set, target, method, digits=2)
        reprobe(model, train_set, target, result.elastic)
        scores["re-probed"] = level_accuracies(model, val_set, target, method, digits=2)
    return scores


def summarise(cells: list[dict], probes: dict[str, dict[str, float]]) -> dict[str, dict]:
    """"method@level" -> variant -> the paired difference to the probe over the splits (mean, 95% t-interval)."""
    summary: dict[str, dict] = {}
    for method in METHODS:
        for fraction in trained_levels(method):
            level = str(fraction)
            summary[f"{method}@{level}"] = {}
            mine = [c for c in cells if c["method"] == method]
            for variant in VARIANTS:
                difference = paired_seed_difference([c[variant][level] for c in mine],
                                                    [probes[str(c["split_seed"])][level] for c in mine])
                summary[f"{method}@{level}"][variant] = {
                    "mean": round(difference.mean, 2),
                    "interval": [round(difference.low, 2), round(difference.high, 2)] if difference.n > 1 else None,
                    "n": difference.n}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = QUICK if args.quick else FULL
    config = compare_config(QUICK_DEMO_TRAIN).train
    if args.quick:
        config = replace(config, epochs=grid["epochs"])
    start, cells, probes = time.perf_counter(), [], {}
    for split in grid["splits"]:
        data = load_dataset(f"sample:{QUICK_DEMO_DATA['sample']}", Path(tempfile.mkdtemp()),
                            val_fraction=QUICK_DEMO_DATA["val_fraction"], seed=split,
                            max_per_class=QUICK_DEMO_DATA["max_per_class"])
        probes[str(split)] = probe(data, grid)
        for method in METHODS:
            row = {"split_seed": split, "method": method, "n_train": len(data.train), "n_val": len(data.val),
                   **cell(data, grid, method, config)}
            cells.append(row)
            print(json.dumps(row), flush=True)
    report = {"command": "python benchmarks/feature_gain.py" + (" --quick" if args.quick else ""),
              "machine": machine_info(), "threads": args.threads, "train": config.to_dict(),
              "backbone": grid["backbone"], "probe": probes, "cells": cells, "summary": summarise(cells, probes),
              "seconds": round(time.perf_counter() - start, 1)}
    path = args.out / "results" / f"feature_gain{'_quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1), f"wrote {path}", sep="\n")


if __name__ == "__main__":
    main()
