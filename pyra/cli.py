"""Command line: `python -m pyra <command> ...`.

One `_add_<command>` function declares each subcommand's arguments and one `run_<command>`
function runs it. Every command takes --json, which prints only JSON to stdout. Input errors
print one line to stderr and exit with code 2; no traceback unless --traceback is given.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from pyra.bench import bench, format_bench
from pyra.cli_runs import COMMANDS, emit
from pyra.schedule import parse_schedule

USER_ERRORS = (ValueError, TypeError, OSError)  # bad input: exit code 2
Runner = Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------


def _add_bench(commands: argparse._SubParsersAction) -> None:
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


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------

SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (*COMMANDS, _add_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pyra", description="LoRA + PYRA token merging for timm ViTs.")
    parser.add_argument("--traceback", action="store_true", help="on error, show the full traceback (for debugging)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    return parser


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; return the process exit code (0 ok, 1 unexpected error, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    run: Runner = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"pyra {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the CLI shows one line, never a traceback
        if args.traceback:
            raise
        if isinstance(error, USER_ERRORS):
            print(f"pyra {args.command}: error: {_one_line(error)}", file=sys.stderr)
            return 2
        message = f"unexpected {type(error).__name__}: {_one_line(error)} (rerun with --traceback for details)"
        print(f"pyra {args.command}: {message}", file=sys.stderr)
        return 1
