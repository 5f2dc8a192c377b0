"""Per-browser-session work directories.

Every browser session owns one directory under a work root (env ``PYRA_WORK_ROOT``, default
``<tmp>/pyra-studio``). It is created on first use, removed when the session ends (Gradio's
unload event, or the State's delete callback) and swept at start when a crashed server left
it behind. A `Session` object lives in the session's ``gr.State``: it holds the directory,
the loaded dataset, the latest comparison and the Stop event of a running job; nothing here
is a module-level global.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

MARKER = ".pyra-session"  # only directories carrying this file are ever removed
PREFIX = "session-"
DEFAULT_MAX_AGE_S = 6 * 3600.0


def work_root() -> Path:
    """The root of all session directories: $PYRA_WORK_ROOT or <tmp>/pyra-studio."""
    configured = os.environ.get("PYRA_WORK_ROOT")
    return Path(configured).expanduser() if configured else Path(tempfile.gettempdir()) / "pyra-studio"


def session_dir_name(session_hash: Optional[str]) -> str:
    """A safe directory name for a Gradio session hash (random if there is none)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "", session_hash or "")[:64]
    return PREFIX + (cleaned or os.urandom(8).hex())


@dataclass(eq=False)
class Session:
    """What one browser session owns. Mutated only by that session's own events."""

    workdir: Path
    cancel: threading.Event = field(default_factory=threading.Event)  # set by the Stop button
    data: Any = None  # pyra.data.DatasetSplit
    result: Any = None  # pyra.compare.CompareResult of the latest comparison
    runs: int = 0  # comparisons started, for numbered output folders
    job: Optional[threading.Thread] = None  # the worker of the running comparison

    @property
    def busy(self) -> bool:
        """A comparison is running in this session."""
        return self.job is not None and self.job.is_alive()

    def new_run_dir(self) -> Path:
        self.runs += 1
        return self.workdir / f"compare-{self.runs:03d}"

    def data_dir(self) -> Path:
        """A fresh directory for one dataset upload (the previous one is removed)."""
        path = self.workdir / "data"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    @property
    def alive(self) -> bool:
        return self.workdir.is_dir()


def open_session(session: Optional[Session], session_hash: Optional[str], root: Optional[Path] = None) -> Session:
    """The session's state, creating its work directory on first use (or if it was removed)."""
    if session is not None and session.alive:
        return session
    workdir = (root or work_root()) / session_dir_name(session_hash)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text(f"{time.time():.0f}\n", encoding="utf-8")
    if session is not None:  # directory vanished (swept): keep the object, start over on disk
        session.workdir, session.data, session.result = workdir, None, None
        return session
    return Session(workdir=workdir)


def remove_session_dir(path: Path) -> bool:
    """Delete one session directory if it is ours (carries the marker). True if removed."""
    path = Path(path)
    if not (path / MARKER).is_file():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


def end_session(session: Optional[Session]) -> None:
    """Stop the session's job and remove its directory (State delete callback)."""
    if session is None:
        return
    session.cancel.set()
    remove_session_dir(session.workdir)


def end_session_by_hash(session_hash: Optional[str], root: Optional[Path] = None) -> bool:
    """Remove the directory of the session `session_hash` (unload event)."""
    if not session_hash:
        return False
    return remove_session_dir((root or work_root()) / session_dir_name(session_hash))


def sweep_old_sessions(root: Optional[Path] = None, max_age_s: float = DEFAULT_MAX_AGE_S) -> list[Path]:
    """Remove session directories under `root` untouched for longer than `max_age_s`."""
    root = root or work_root()
    if not root.is_dir():
        return []
    now, removed = time.time(), []
    for path in root.glob(PREFIX + "*"):
        try:
            age = now - _last_modified(path)
        except OSError:
            continue
        if age > max_age_s and remove_session_dir(path):
            removed.append(path)
    return removed


def _last_modified(path: Path) -> float:
    """Newest mtime of the directory and its direct children (cheap, no deep walk)."""
    times = [path.stat().st_mtime]
    times += [child.stat().st_mtime for child in path.iterdir()]
    return max(times)
