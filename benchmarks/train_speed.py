"""Training step time: uncompressed LoRA vs ToMe + LoRA vs PYRA + LoRA, interleaved.

    python benchmarks/train_speed.py                             # default backbone, 112 px, batch 16
    python benchmarks/train_speed.py --quick --out /tmp/speedq   # random-init ViT-Tiny at 64 px (< 1 minute)

Writes <out>/perf/train_speed.json (<out> defaults to docs/), which benchmarks/engine_speed.py
renders into <out>/PERFORMANCE.md.
One step = forward, cross-entropy, backward, AdamW update of LoRA + head (+ PYRA).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pyra.method.patch import geometry
from pyra.method.schedule import flops_ratio, resolve_schedule
from pyra.report.tables import machine_info
from pyra.run.recipes import PAPER_RECIPE
from pyra.run.run_config import RunConfig, build_model
from pyra.run.speed import Spread
from pyra.run.train import TrainConfig, build_optimizer

REPO = Path(__file__).resolve().parents[1]

METHODS = ("none", "tome", "pyra")


def build(backbone: str, img_size: int, method: str, schedule: list[int]) -> torch.nn.Module:
    config = RunConfig(backbone=backbone, img_size=img_size, num_classes=10, classes=tuple(map(str, range(10))),
                       schedule=tuple(schedule if method != "none" else [0] * len(schedule)), method=method,
                       lora_dropout=PAPER_RECIPE.lora_dropout, drop_path_rate=PAPER_RECIPE.drop_path_rate)
    return build_model(config)


def time_steps(backbone: str, img_size: int, schedule_spec: str, batch: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    probe = build(backbone, img_size, "none", [0] * 12)
    schedule = resolve_schedule(schedule_spec, geometry(probe))
    models = {method: build(backbone, img_size, method, schedule) for method in METHODS}
    optimizers = {method: build_optimizer(model, TrainConfig()) for method, model in models.items()}
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, img_size, img_size, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    seconds: dict[str, list[float]] = {method: [] for method in METHODS}
    for round_index in range(repeats + 2):  # two warm-up rounds, then interleaved A B C A B C ...
        for method, model in models.items():
            model.train()
            tic = time.perf_counter()
            loss = F.cross_entropy(model(images), labels)
            optimizers[method].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[method].step()
            if round_index >= 2:
                seconds[method].append(time.perf_counter() - tic)
    geo = geometry(models["tome"])
    base = statistics.median(seconds["none"])
    return {
        "backbone": backbone, "img_size": img_size, "batch": batch, "threads": threads, "repeats": repeats,
        "schedule": schedule, "flops_ratio": flops_ratio(schedule, geo, "tome"),
        "methods": {
            method: {
                "step_ms": Spread.of([1000 * t for t in s]).to_dict(),
                "images_per_s": batch / statistics.median(s),
                "speedup_vs_uncompressed": base / statistics.median(s),
            }
            for method, s in seconds.items()
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "docs",
                        help="folder; writes <out>/perf/train_speed.json (default docs/)")
    args = parser.parse_args(argv)
    if args.quick:
        settings = [("random:vit_tiny_patch16_224", 64, "high", 8, 2)]
        repeats = 2
    else:
        settings = [("default", 112, "high", 16, 2), ("default", 112, "high", 16, 1), ("default", 112, "low", 16, 2)]
        repeats = args.repeats
    results = []
    for backbone, img_size, schedule, batch, threads in settings:
        print(f"train steps: {backbone} {img_size} px {schedule} batch {batch}, {threads} threads", file=sys.stderr)
        results.append(time_steps(backbone, img_size, schedule, batch, repeats, threads))
        for method, figures in results[-1]["methods"].items():
            print(f"  {method:<5} {figures['step_ms']['median']:8.1f} ms/step  "
                  f"{figures['speedup_vs_uncompressed']:.2f}x", file=sys.stderr)
    command = shlex.join(["python", "benchmarks/train_speed.py", *(sys.argv[1:] if argv is None else argv)])
    path = args.out / "perf" / "train_speed.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command, "machine": machine_info(), "results": results}, indent=1))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
