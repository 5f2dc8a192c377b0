"""The --executor options `compare` and `sweep` share: where their trainings run."""
from __future__ import annotations

import argparse

from pyra.run.executors import Executor, InProcess, RayExecutor


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: every training in this process, one after another; ray: each training a Ray "
                             "task (pip install -r requirements-ray.txt)")
    parser.add_argument("--ray-address", help="a running Ray cluster ('auto', 'ray://HOST:10001'); default: start a "
                                              "local Ray on this machine")
    parser.add_argument("--cpus-per-run", type=int, default=1, help="CPUs (torch threads) per training with ray")
    parser.add_argument("--gpus-per-run", type=float, default=0, help="GPUs per training with ray (e.g. 1 or 0.5)")


def executor_from(args: argparse.Namespace) -> Executor:
    """The executor the arguments ask for."""
    if args.executor == "local":
        if args.ray_address:
            raise ValueError("--ray-address needs --executor ray")
        return InProcess()
    return RayExecutor(address=args.ray_address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)
