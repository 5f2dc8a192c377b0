"""Per-browser-session work directories.

Every browser session owns one directory under a work root (env ``PYRA_WORK_ROOT``, default
``<tmp>/pyra-studio``). It is created on first use and removed when the session ends (Gradio's
unload event, or the State's delete callback), or by the sweep once it has been idle longer
than the idle limit: a client that never opens a heartbeat never sends an unload. Its marker
file's modification time is the session's last activity (`touch`). A `Session` object lives in
the session's ``gr.State``: it holds the directory, the loaded dataset, the latest comparison
and the Stop event of a running job.
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

MARKER = ".pyra-session"  # the directory is a session's; its mtime is the last activity
PREFIX = "session-"
OWN_ENTRIES = re.compile(r"^(\.pyra-session|data|exports|compare-\d+)$")  # all a session directory holds
SWEEP_EVERY_S = 60.0  # the sweep runs at most this often (on requests)
_last_sweep = [0.0]  # time.monotonic() of the last sweep, shared by all sessions of this process
_sweep_lock = threading.Lock()


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
    data: Any = None  # pyra.data.datasets.DatasetSplit
    result: Any = None  # pyra.run.comparison.CompareResult of the latest comparison
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


def touch(session: Session) -> None:
    """Record activity: the session is not idle now."""
    try:
        os.utime(session.workdir / MARKER)
    except OSError:  # removed meanwhile; open_session re-creates it on the next request
        pass


def is_session_dir(path: Path) -> bool:
    """The directory is one of ours: named like a session and holding only what a session writes
    (the marker, data, exports, compare-NNN), so it may be removed."""
    path = Path(path)
    if not path.name.startswith(PREFIX) or path.is_symlink() or not path.is_dir():
        return False
    try:
        names = [child.name for child in path.iterdir()]
    except OSError:
        return False
    return MARKER in names or bool(names) and all(OWN_ENTRIES.match(name) for name in names)


def remove_session_dir(path: Path) -> bool:
    """Delete one session directory if it is ours (see `is_session_dir`). True if removed."""
    path = Path(path)
    if not is_session_dir(path):
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


def sweep_idle_sessions(idle_s: float, root: Optional[Path] = None) -> list[Path]:
    """Remove session directories under `root` with no activity for longer than `idle_s`.

    A directory's activity is its marker's mtime; without a marker (left by an older version, or
    a crash) the newest mtime of the directory and its direct children.
    """
    root = root or work_root()
    if not root.is_dir():
        return []
    now, removed = time.time(), []
    for path in root.glob(PREFIX + "*"):
        try:
            idle = now - _last_activity(path)
        except OSError:
            continue
        if idle > idle_s and remove_session_dir(path):
            removed.append(path)
    return removed


def sweep_now_and_then(idle_s: float, root: Optional[Path] = None) -> None:
    """`sweep_idle_sessions`, at most once per SWEEP_EVERY_S (called on requests)."""
    with _sweep_lock:
        if time.monotonic() - _last_sweep[0] < SWEEP_EVERY_S:
            return
        _last_sweep[0] = time.monotonic()
    sweep_idle_sessions(idle_s, root)


def _last_activity(path: Path) -> float:
    marker = path / MARKER
    if marker.is_file():
        return marker.stat().st_mtime
    times = [path.stat().st_mtime]
    times += [child.stat().st_mtime for child in path.iterdir()]
    return max(times)
