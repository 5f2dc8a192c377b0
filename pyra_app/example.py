"""The worked example every new session opens on: the Quick demo's comparison, shipped in
assets/example/ (adapters only; `python benchmarks/worked_example.py` re-creates it).

A session starts with the example's result (no data is loaded for it: that stays the visitor's
choice), so every tab works before anything is trained; training its own comparison replaces the
example for that session. Its
accuracies are the recorded ones; its latency and throughput are measured again on this server
the first time the session looks at them (`with_speed_measured_here`).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

from pyra.data.samples import ASSETS_DIR
from pyra.run.compare import measure_result_speed
from pyra.run.comparison import CompareResult, load_compare

EXAMPLE_DIR = ASSETS_DIR / "example"
RECORD_FILE = "example.json"  # how the example was made: command, machine, time, accuracies
SPEED_REPEATS = 3  # speed measurement repeats on this server (as the Quick demo)


@functools.lru_cache(maxsize=1)
def _shipped(folder: Path) -> Optional[CompareResult]:
    if not (folder / RECORD_FILE).is_file():
        return None
    return load_compare(folder)


def shipped_example() -> Optional[CompareResult]:
    """The shipped comparison (read once, shared by every session; never changed), or None if not shipped."""
    return _shipped(EXAMPLE_DIR)


def is_example(result: Any) -> bool:
    """`result` is the shipped example (or its copy with the speed measured here)."""
    folder = getattr(result, "out_dir", None)
    return folder is not None and Path(folder) == EXAMPLE_DIR


def record() -> dict:
    """The example's record (example.json)."""
    return json.loads((EXAMPLE_DIR / RECORD_FILE).read_text(encoding="utf-8"))


def with_speed_measured_here(result: CompareResult) -> CompareResult:
    """A copy of the example whose latency and throughput were measured on this server (accuracies unchanged)."""
    return measure_result_speed(result, repeats=SPEED_REPEATS, device="cpu")


def speed_measured_here(result: Any) -> bool:
    """`result` is the example with its speed measured on this server (a copy, not the shipped one)."""
    return is_example(result) and result is not shipped_example()
