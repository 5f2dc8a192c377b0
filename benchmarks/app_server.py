"""The app as a subprocess for benchmarks and tests: `serve_app` starts `python app.py` on a free port of
127.0.0.1 with its own work folders and stops it afterwards; `TINY_TRAIN` is the smallest training
the /train API takes (a random-init ViT-Tiny at 32 px, one epoch, two levels, one speed repeat), as the
Train tab's control values; `TINY_SETTINGS` the same as settings, to vary with `dataclasses.replace`."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pyra_app.settings import TrainSettings, control_values

REPO = Path(__file__).resolve().parents[1]
TINY_BACKBONE = "random:vit_tiny_patch16_224"
TINY_SETTINGS = TrainSettings(backbone=TINY_BACKBONE, img_size=32, lora_rank=2, epochs=1, batch_size=8, lr=1e-3,
                              pyra_lr=1e-3, schedule="high", seeds=(0,), num_levels=2, bench_repeats=1)
TINY_TRAIN = control_values(TINY_SETTINGS)


@dataclass(frozen=True)
class App:
    url: str
    pid: int
    work_root: Path  # PYRA_WORK_ROOT: the session folders
    gradio_temp: Path  # GRADIO_TEMP_DIR: uploads and generated images, kept by Gradio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_app(folder: Path, threads: int = 1, heartbeat_s: Optional[float] = None,
              timeout_s: float = 180.0, limits: Optional[dict[str, str]] = None) -> Iterator[App]:
    """`python app.py` on a free port of 127.0.0.1, its files under `folder`; stopped on exit.

    `threads` sets OMP_NUM_THREADS: torch's intra-op threads per job (several jobs share the cores).
    `heartbeat_s` sets GRADIO_HEARTBEAT_INTERVAL (default 15 s): a closed client is noticed, and its
    session ended, within about one interval. `limits`: PYRA_* variables for the app (see pyra_app.budget).
    """
    port = free_port()
    app = App(f"http://127.0.0.1:{port}/", 0, folder / "work", folder / "gradio")
    env = os.environ | {
        "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
        "PYRA_WORK_ROOT": str(app.work_root), "GRADIO_TEMP_DIR": str(app.gradio_temp), "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(threads),
    } | ({"GRADIO_HEARTBEAT_INTERVAL": str(heartbeat_s)} if heartbeat_s else {}) | (limits or {})
    log_path = folder / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(app.url, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"app.py did not answer within {timeout_s} s:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield App(app.url, process.pid, app.work_root, app.gradio_temp)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
