"""Command line: `python -m pyra <command> ...`.

One `_add_<command>` function declares each subcommand's arguments and one `run_<command>`
function runs it. Every command takes --json, which prints only JSON to stdout. Input errors
print one line to stderr and exit with code 2; no traceback unless --traceback is given.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from pyra.cli.bench import add_bench
from pyra.cli.runs import COMMANDS
from pyra.cli.sweep import add_sweep

USER_ERRORS = (ValueError, TypeError, OSError)  # bad input: exit code 2
Runner = Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------

SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (*COMMANDS, add_sweep, add_bench)


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
