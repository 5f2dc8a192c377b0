"""The loop the accuracy benchmarks share: every (dataset, seed) pair in a temporary folder, the
JSON report rewritten after each pair so that an interrupted run keeps what it finished."""
from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PairRun = Callable[[str, int, Path], tuple[list[dict[str, Any]], dict[str, Any]]]  # -> (cells, split)


def run_pairs(pairs: Sequence[tuple[str, int]], run_pair: PairRun, report: dict[str, Any], path: Path,
              minutes: Callable[[], float], log: Callable[[str], None]) -> None:
    """Fill report["cells"] and report["splits"] pair by pair, writing `path` after each; then mark it complete."""
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, seed in pairs:
            cells, split = run_pair(dataset, seed, Path(tmp) / f"{dataset}-{seed}")
            report["cells"] += cells
            report["splits"][f"{dataset}@{seed}"] = split
            report["minutes"] = round(minutes(), 1)
            path.write_text(json.dumps(report, indent=1) + "\n")
    report["complete"] = True
    path.write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {path}")
