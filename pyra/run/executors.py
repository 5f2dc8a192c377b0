"""Where a comparison's trainings run: in this process one after another (the default), or as Ray tasks.

    run_compare(data, config, out_dir)                                   # InProcess()
    run_compare(data, config, out_dir, executor=RayExecutor(cpus_per_run=1))   # a local Ray
    run_compare(data, config, out_dir, executor=RayExecutor("ray://head:10001", gpus_per_run=1))

An executor trains `TrainingJob`s and returns their `TrainResult`s in job order. Every training
writes its run folder itself, so a Ray cluster needs `out_dir` on storage all its machines share.
Evaluation and the speed measurement stay in the calling process (`pyra.run.compare`): speed is
measured in one process, interleaved, never across machines. Ray is imported only when a
`RayExecutor` starts (`pip install -r requirements-ray.txt`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from pyra.data.datasets import DatasetSplit
from pyra.run.one_run import train_run
from pyra.run.run_config import RunConfig
from pyra.run.train import Progress, TrainResult

__all__ = ["TrainingJob", "Executor", "InProcess", "RayExecutor", "RAY_MISSING"]

RAY_MISSING = "Ray is not installed: pip install -r requirements-ray.txt (or leave out --executor ray)"
POLL_S = 0.5  # how often a Ray run looks at its cancel event while it waits for trainings


@dataclass(frozen=True)
class TrainingJob:
    """One training of a comparison: what to train, where its run folder goes, and its name in progress lines."""

    run_config: RunConfig
    run_dir: Path
    label: str  # e.g. "PYRA + LoRA, seed 1"


JobProgress = Callable[[int, Progress], None]  # (job index, the training's progress)
JobDone = Callable[[int, TrainResult], None]  # (job index, its result), as each training ends


class Executor(Protocol):
    def train_all(self, data: DatasetSplit, jobs: list[TrainingJob], device: Optional[str], *,
                  on_progress: JobProgress, on_done: JobDone,
                  cancel: Optional[threading.Event]) -> list[TrainResult]:
        """Train every job; the results in job order. May stop early after a training that did not complete
        (the list is then shorter), and must stop when `cancel` is set (those results: "cancelled")."""


class InProcess:
    """One training after another in this process, with per-step progress."""

    def train_all(self, data: DatasetSplit, jobs: list[TrainingJob], device: Optional[str], *,
                  on_progress: JobProgress, on_done: JobDone,
                  cancel: Optional[threading.Event]) -> list[TrainResult]:
        results = []
        for index, job in enumerate(jobs):
            _, result, _ = train_run(data, job.run_config, job.run_dir, device=device, cancel=cancel,
                                     on_progress=lambda progress, i=index: on_progress(i, progress),
                                     make_parents=False)
            results.append(result)
            on_done(index, result)
            if result.status != "completed":
                break
        return results


@dataclass(frozen=True)
class RayExecutor:
    """Every training a Ray task asking for `cpus_per_run` CPUs (its torch threads) and `gpus_per_run` GPUs.

    `address` None starts a local Ray on this machine (`local_cpus` CPUs, default all) and stops it
    afterwards; an address ("auto", "ray://host:10001") joins a running cluster and leaves it running.
    """

    address: Optional[str] = None
    cpus_per_run: int = 1
    gpus_per_run: float = 0
    local_cpus: Optional[int] = None
    local_object_store_bytes: Optional[int] = None  # a local Ray's shared memory for the images (None: Ray's)

    def __post_init__(self) -> None:
        if not isinstance(self.cpus_per_run, int) or self.cpus_per_run < 1:
            raise ValueError(f"cpus per run must be a whole number >= 1, got {self.cpus_per_run!r}")
        if not isinstance(self.gpus_per_run, (int, float)) or not 0 <= self.gpus_per_run:
            raise ValueError(f"gpus per run must be >= 0, got {self.gpus_per_run!r}")
        _import_ray()  # missing: say so before any data is read

    def train_all(self, data: DatasetSplit, jobs: list[TrainingJob], device: Optional[str], *,
                  on_progress: JobProgress, on_done: JobDone,
                  cancel: Optional[threading.Event]) -> list[TrainResult]:
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            local = {"num_cpus": self.local_cpus, "object_store_memory": self.local_object_store_bytes}
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     **(local if self.address is None else {}))
        try:
            task = ray.remote(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0)(_train_task)
            if device is None and self.gpus_per_run > 0:
                device = "cuda"
            shared = ray.put(data)  # the images once into the object store, not once per task
            pending = {task.remote(shared, job.run_config, str(job.run_dir), device, self.cpus_per_run): index
                       for index, job in enumerate(jobs)}
            return self._collect(ray, pending, len(jobs), on_done, cancel)
        finally:
            if started_here and self.address is None:
                ray.shutdown()

    @staticmethod
    def _collect(ray: Any, pending: dict, count: int, on_done: JobDone,
                 cancel: Optional[threading.Event]) -> list[TrainResult]:
        results: dict[int, TrainResult] = {}
        while pending:
            if cancel is not None and cancel.is_set():
                for ref in pending:
                    ray.cancel(ref, force=True)
                for index in pending.values():
                    results[index] = TrainResult("cancelled", "cancelled by the user before it finished", 0.0, 0)
                break
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in done:
                index = pending.pop(ref)
                results[index] = ray.get(ref)
                on_done(index, results[index])
        return [results[index] for index in range(count)]


def _train_task(data: DatasetSplit, run_config: RunConfig, run_dir: str, device: Optional[str],
                threads: int) -> TrainResult:
    """One training inside a Ray worker, at the task's CPU count (as the in-process run uses its threads).

    Its validation predictions stay behind: the caller's sweep evaluates the run folder on its own machine."""
    import torch

    torch.set_num_threads(threads)
    _, result, _ = train_run(data, run_config, Path(run_dir), device=device, make_parents=False)
    return replace(result, validation=None)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError(RAY_MISSING) from None
    return ray
