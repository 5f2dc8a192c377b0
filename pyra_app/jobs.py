"""A session's background job: the comparison runs in a worker thread, a handler follows it.

`start_job` runs `pyra.run.compare.run_compare` in a thread that reports to a queue, within
the job's limits (time, the session's disk budget, the session's life); `follow_job` turns that
queue into (status line, loss chart) updates for the browser and returns how the job ended.
Stop sets the session's cancel event, which the engine checks every step.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from pyra.files import size_text
from pyra.run.compare import run_compare
from pyra_app import memory, views
from pyra_app.budget import Budget, folder_bytes
from pyra_app.session import Session, touch

UPDATE_EVERY_S = 0.5  # the follower yields the status line at most this often
CHART_EVERY_S = 5.0  # ... and the loss chart at most this often (each a new figure, built and drawn)
JOB_CHECK_EVERY_S = 5.0  # a running job's disk use is measured (and its session touched) at most this often
STARTING = "**Starting**: building the models..."


@dataclass
class Job:
    thread: threading.Thread
    events: queue.Queue  # ("progress", CompareProgress) | ("limit", message) | ("result", CompareResult) | ("error", e)
    started: float  # time.monotonic()


@dataclass
class JobEnd:
    result: Any = None  # the CompareResult, when the engine returned one
    error: Optional[BaseException] = None  # what the worker raised instead
    limit: Optional[str] = None  # why a limit stopped the job
    losses: tuple = ()  # every loss point, for the final chart
    seconds: float = 0.0  # from start to end


def start_job(session: Session, config: Any, out_dir: Path, budget: Budget) -> Job:
    """Start the comparison in a worker thread. It stops (as if Stop were pressed) when the session ends,
    after `budget.job_seconds` (a timer: also inside a long head start or validation, which report no
    steps), or when the session's files outgrow its disk budget ("limit" comes first)."""
    data, cancel, events = session.data, session.cancel, queue.Queue()
    checked = [0.0]

    def stop_for(message: str) -> None:
        if not cancel.is_set():
            events.put(("limit", message))
        cancel.set()

    def on_progress(progress: Any) -> None:
        now = time.monotonic()
        if not session.alive:  # the session ended (tab closed, directory removed): stop the job
            cancel.set()
        elif now - checked[0] > JOB_CHECK_EVERY_S:
            checked[0] = now
            touch(session)
            used = folder_bytes(session.workdir)
            if used > budget.session_disk_bytes:
                stop_for(f"this session's files reached {size_text(used)}, more than its disk budget of "
                         f"{size_text(budget.session_disk_bytes)}, so training stopped "
                         "(or raise PYRA_SESSION_DISK_MB)")
        events.put(("progress", progress))

    deadline = threading.Timer(budget.job_seconds, stop_for, [
        f"the job reached its time limit of {budget.job_seconds / 60:g} min, so training stopped "
        "(shared server: use fewer epochs, seeds or images, or raise PYRA_JOB_MINUTES)"])
    deadline.daemon = True

    def work() -> None:
        try:
            events.put(("result", run_compare(data, config, out_dir, on_progress=on_progress, cancel=cancel)))
        except Exception as error:  # handed to the follower, which shows it
            events.put(("error", error))
        finally:
            deadline.cancel()
            memory.trim()

    session.cancel.clear()
    thread = session.job = threading.Thread(target=work, name=f"compare-{out_dir.name}", daemon=True)
    job = Job(thread, events, time.monotonic())
    deadline.start()
    thread.start()
    return job


def follow_job(session: Session, job: Job) -> Generator[tuple[Session, str, Any], None, JobEnd]:
    """Yield (session, status line, loss chart or gr.skip()) while the job runs; return how it ended.

    Closed early (the client went away, the server is stopping), it stops the worker too.
    """
    losses: list[dict] = []
    end: Optional[JobEnd] = None
    limit: Optional[str] = None
    status, last_yield, last_chart, charted = STARTING, 0.0, 0.0, 0
    try:
        while end is None:
            try:
                kind, payload = job.events.get(timeout=UPDATE_EVERY_S)
            except queue.Empty:
                kind, payload = "tick", None
            if kind == "progress":
                status = views.progress_status(payload, time.monotonic() - job.started)
                if payload.loss is not None and payload.step is not None and payload.stage.startswith("train"):
                    losses.append({"step": payload.step, "loss": payload.loss, "run": payload.stage})
            elif kind == "limit":
                limit = payload
            elif kind == "result":
                end = JobEnd(result=payload, limit=limit, losses=tuple(losses))
                break
            elif kind == "error":
                end = JobEnd(error=payload, limit=limit, losses=tuple(losses))
                break
            now = time.monotonic()
            if now - last_yield >= UPDATE_EVERY_S:
                chart = gr.skip()
                if len(losses) > charted and now - last_chart >= CHART_EVERY_S:
                    chart, charted, last_chart = views.loss_figure(losses), len(losses), now
                last_yield = now
                yield session, status, chart
    finally:
        if end is None:
            session.cancel.set()
    job.thread.join(timeout=5)
    end.seconds = time.monotonic() - job.started
    return end
