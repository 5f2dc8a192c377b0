"""`python -m pyra bench`: the engine benchmark (timm vs ToMe vs PYRA) from the command line.
"""
from __future__ import annotations

import argparse

from pyra.cli.runs import emit
from pyra.method.schedule import parse_schedule
from pyra.report.tables import format_bench
from pyra.run.speed_bench import bench

# ---------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------


def add_bench(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="latency and throughput of timm vs ToMe vs PYRA, side by side",
        description="Time four copies of one random-init model (timm, patched r=0, ToMe, PYRA), "
        "interleaved, and report them next to their exact FLOPs.",
    )
    parser.add_argument(
        "--backbone", default="vit_base_patch16_224", help="timm ViT name, or 'default' (shipped DINOv2 ViT-S/14)"
    )
    parser.add_argument("--img-size", type=int, default=224, help="input size in pixels (default 224)")
    parser.add_argument(
        "--schedule", default="high", help="low, high, r, r1,r2,..., a FLOPs ratio like 2.5, or r@inflection"
    )
    parser.add_argument("--batch", type=int, default=8, help="images per forward for throughput (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=7, help="recorded interleaved rounds (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="discarded rounds first (default 2)")
    parser.add_argument("--json", action="store_true", help="print only JSON")
    parser.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    result = bench(
        args.backbone,
        args.img_size,
        parse_schedule(args.schedule),
        batch_size=args.batch,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
    )
    emit(result, format_bench(result), args.json)
    return 0
