"""What one visitor may ask of a shared server: disk, trainings, sizes, memory and time.

Every limit has an environment variable (a bad value stops the launch with a message naming it)
and a default a free 2-core CPU Space can live with. Checks run before work starts; a refusal
names the limit, the value asked and the variable that raises it.

===========================  ========  ============================  ======================================
limit                        default   environment variable          checked
===========================  ========  ============================  ======================================
disk per session             500 MB    PYRA_SESSION_DISK_MB          before and while a zip is extracted;
                                                                     before and while a comparison runs
disk of all sessions         5000 MB   PYRA_TOTAL_DISK_MB            before a zip is extracted or a job starts
trainings per request        15        PYRA_MAX_TRAININGS            seeds x methods (x levels, per-level)
image size                   448 px    PYRA_MAX_IMG_SIZE             before training
batch size                   64        PYRA_MAX_BATCH                before training
training memory (estimate)   600 MB    PYRA_MAX_TRAIN_MEMORY_MB      before training (pyra.run.plan): a
                                                                     batch over it trains in micro-batches
wall time per job            15 min    PYRA_JOB_MINUTES              while training: the job stops there
idle time of a session       60 min    PYRA_SESSION_IDLE_MINUTES     its folder is removed after it
uploaded weights file        400 MB    PYRA_MAX_WEIGHTS_MB           before the file is read
image sent to token maps     20 MB     PYRA_MAX_INPUT_IMAGE_MB       before the image is decoded
                                                                     (and PYRA_MAX_IMAGE_PIXELS, as in zips)
===========================  ========  ============================  ======================================
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pyra.data.limits import Limits, WriteBudget, env_int
from pyra.files import size_text
from pyra.run.plan import ComparePlan

__all__ = ["Budget", "folder_bytes", "BudgetError"]

MB = 2**20


class BudgetError(ValueError):
    """A request asks for more than a limit allows; the message names the limit, the value and the fix."""


@dataclass(frozen=True)
class Budget:
    """The limits in force; `from_env` reads the variables in the module docstring."""

    session_disk_bytes: int = 500 * MB
    total_disk_bytes: int = 5000 * MB
    max_trainings: int = 15
    max_img_size: int = 448
    max_batch: int = 64
    max_train_memory_bytes: int = 600 * MB
    job_seconds: float = 15 * 60.0
    idle_seconds: float = 60 * 60.0
    max_weights_bytes: int = 400 * MB
    max_image_bytes: int = 20 * MB

    @classmethod
    def from_env(cls) -> Budget:
        d = cls()
        return cls(
            session_disk_bytes=env_int("PYRA_SESSION_DISK_MB", d.session_disk_bytes // MB) * MB,
            total_disk_bytes=env_int("PYRA_TOTAL_DISK_MB", d.total_disk_bytes // MB) * MB,
            max_trainings=env_int("PYRA_MAX_TRAININGS", d.max_trainings),
            max_img_size=env_int("PYRA_MAX_IMG_SIZE", d.max_img_size),
            max_batch=env_int("PYRA_MAX_BATCH", d.max_batch),
            max_train_memory_bytes=env_int("PYRA_MAX_TRAIN_MEMORY_MB", d.max_train_memory_bytes // MB) * MB,
            job_seconds=60.0 * env_int("PYRA_JOB_MINUTES", round(d.job_seconds / 60)),
            idle_seconds=60.0 * env_int("PYRA_SESSION_IDLE_MINUTES", round(d.idle_seconds / 60)),
            max_weights_bytes=env_int("PYRA_MAX_WEIGHTS_MB", d.max_weights_bytes // MB) * MB,
            max_image_bytes=env_int("PYRA_MAX_INPUT_IMAGE_MB", d.max_image_bytes // MB) * MB,
        )

    @property
    def max_upload_bytes(self) -> int:
        """The largest file any input can use (Gradio's max_file_size): a zip or a weights file."""
        return max(self.max_weights_bytes, Limits.from_env().max_upload_bytes)

    def write_budget(self, session_dir: Path, root: Path) -> WriteBudget:
        """What a zip extraction may still write: the session's budget or all sessions' budget, the smaller."""
        used, total = folder_bytes(session_dir), folder_bytes(root)
        session_left, total_left = self.session_disk_bytes - used, self.total_disk_bytes - total
        if total_left < session_left:
            return WriteBudget(max(total_left, 0), f"the disk left for all sessions ({size_text(max(total_left, 0))} "
                               f"of {size_text(self.total_disk_bytes)})", "PYRA_TOTAL_DISK_MB")
        return WriteBudget(max(session_left, 0), f"this session's disk budget ({size_text(max(session_left, 0))} "
                           f"left of {size_text(self.session_disk_bytes)})", "PYRA_SESSION_DISK_MB")

    def check_disk(self, session_dir: Path, root: Path) -> None:
        """Refuse new work when the session, or all sessions together, already use their disk budget."""
        used = folder_bytes(session_dir)
        if used >= self.session_disk_bytes:
            raise BudgetError(f"this session's files take {size_text(used)}, its disk budget is "
                              f"{size_text(self.session_disk_bytes)}: load a smaller dataset, or reload the page to "
                              "start a new session (or raise PYRA_SESSION_DISK_MB)")
        total = folder_bytes(root)
        if total >= self.total_disk_bytes:
            raise BudgetError(f"all sessions together take {size_text(total)} of the server's disk budget of "
                              f"{size_text(self.total_disk_bytes)}: try again later (or raise PYRA_TOTAL_DISK_MB)")

    def check_plan(self, plan: ComparePlan) -> None:
        """Refuse a comparison that asks for more trainings or memory than allowed (before it starts)."""
        if plan.trainings > self.max_trainings:
            raise BudgetError(f"this comparison would train {plan.trainings} models, more than the limit of "
                              f"{self.max_trainings} per request: use fewer seeds or compression levels, or the "
                              "elastic protocol (one model per method for every level) (or raise PYRA_MAX_TRAININGS)")
        if plan.training_memory_bytes > self.max_train_memory_bytes:
            smaller = "the image size" if plan.forward_batch == 1 else "the batch size or the image size"
            raise BudgetError(
                f"{plan.forward_batch} image(s) per training pass at {plan.img_size} px ({plan.tokens} tokens per "
                f"image) need about {size_text(plan.training_memory_bytes)}, more than the limit of "
                f"{size_text(self.max_train_memory_bytes)}: lower {smaller} (or raise PYRA_MAX_TRAIN_MEMORY_MB)")

    def check_weights(self, path: Path) -> None:
        size = path.stat().st_size
        if size > self.max_weights_bytes:
            raise BudgetError(f"weights file {path.name}: {size_text(size)}, more than the limit of "
                              f"{size_text(self.max_weights_bytes)} (or raise PYRA_MAX_WEIGHTS_MB)")

    def check_image_file(self, path: Path, name: str) -> None:
        size = path.stat().st_size
        if size > self.max_image_bytes:
            raise BudgetError(f"{name}: {size_text(size)}, more than the limit of {size_text(self.max_image_bytes)} "
                              "for an image: send a smaller PNG or JPEG (or raise PYRA_MAX_INPUT_IMAGE_MB)")


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (0 if it does not exist); symlinks are not followed."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed while walking
                continue
    return total
