"""The app's comparison at demo scale, over several seeds: LoRA vs ToMe vs PYRA on a sample.

    python benchmarks/demo_comparison.py                   # sample:fashion, "high", seeds 0,1,2
    python benchmarks/demo_comparison.py --quick --out /tmp/q  # 1 seed, 1 epoch, random-init ViT-Tiny

Writes docs/results/<dataset>_<schedule>.json (the comparison plus its settings and command);
benchmarks/results_report.py turns the JSON files into docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from pyra.data.datasets import load_dataset
from pyra.report.tables import machine_info
from pyra.run.compare import run_compare
from pyra.run.comparison import CompareConfig
from pyra.run.recipes import DEFAULT_RECIPE

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="sample:fashion")
    parser.add_argument("--schedule", default="high")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="writes <out>/results/ (default docs/)")
    args = parser.parse_args()
    seeds = (0,) if args.quick else tuple(int(s) for s in args.seeds.split(","))
    config = CompareConfig(
        backbone="random:vit_tiny_patch16_224" if args.quick else "default",
        img_size=64 if args.quick else 112,
        schedule=args.schedule, lora_rank=4,
        train=replace(DEFAULT_RECIPE.train, epochs=1 if args.quick else args.epochs),
        seeds=seeds, levels=(0.0, 0.5, 1.0) if args.quick else (0.0, 0.25, 0.5, 0.75, 1.0),
        bench_batch=8, bench_repeats=3 if args.quick else 5,
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        data = load_dataset(args.data, Path(workdir), max_per_class=20 if args.quick else None)
        result = run_compare(data, config, Path(workdir) / "compare",
                             on_progress=lambda p: print(f"\r{p.fraction:6.1%} {p.message[:80]:<80}", end="",
                                                         file=sys.stderr))
    print(file=sys.stderr)
    command = "python benchmarks/demo_comparison.py" + (" --quick" if args.quick else
                                                        f" --data {args.data} --schedule {args.schedule} "
                                                        f"--seeds {args.seeds} --epochs {args.epochs}")
    report = {
        "command": command,
        "machine": machine_info(),
        "minutes": round((time.perf_counter() - start) / 60, 1),
        "data": {"source": args.data, "train": len(data.train), "val": len(data.val), "classes": data.classes},
        "settings": {"backbone": config.backbone, "img_size": config.img_size, "schedule": args.schedule,
                     "lora_rank": config.lora_rank, "train": config.train.to_dict(), "seeds": list(seeds),
                     "lora_dropout": config.lora_dropout, "drop_path_rate": config.drop_path_rate},
        "result": result.to_dict(),
    }
    path = args.out / "results" / f"{args.data.removeprefix('sample:')}_{args.schedule}{'_quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
