"""`python -m pyra sweep CONFIG.json --out DIR`: one comparison per dataset and learning rate, resumable."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyra.cli.executor_args import add_executor_arguments, executor_from
from pyra.cli.runs import ProgressLine
from pyra.run.sweep import OPTIONS, SWEEP_FILE, SweepConfig, run_sweep


def add_sweep(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "sweep", help="one comparison per dataset x lr x PYRA lr over the same seeds; run again to resume",
        description='CONFIG is JSON: {"datasets": [...], "lr": [...], "pyra_lr": [...], "seeds": [...], '
                    f'"options": {{...}}}} with options among {", ".join(OPTIONS)}. Runs that completed are '
                    "kept: after an interruption the same command trains only what is missing.")
    parser.add_argument("config", type=Path, help="the sweep's JSON file")
    parser.add_argument("--out", required=True, type=Path, help=f"folder for every comparison and {SWEEP_FILE}")
    add_executor_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print only JSON")
    parser.set_defaults(run=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    try:
        raw = json.loads(args.config.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{args.config}: not valid JSON ({error.msg}, line {error.lineno})") from None
    config = SweepConfig.from_dict(raw)
    progress = ProgressLine(not args.json)
    cells = run_sweep(config, args.out, executor=executor_from(args), on_progress=lambda cell, p: progress(p))
    progress.close()
    if args.json:
        print(json.dumps({"out_dir": str(args.out), "cells": cells}))
    else:
        for cell in cells:
            accuracies = ", ".join(f"{row['method']} {row['accuracy']:.1%}" for row in cell["at_target"])
            print(f"{cell['status']}: {cell['folder']}  {accuracies}")
        print(f"wrote {args.out / SWEEP_FILE}")
    return 0 if all(cell["status"] == "completed" for cell in cells) else 1
