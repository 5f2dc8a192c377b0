"""Build the worked example every new app session opens on: the Quick demo's comparison, adapters only.

    python benchmarks/worked_example.py                 # about 3 minutes on 2 cores; writes assets/example/
    python benchmarks/worked_example.py --out /tmp/ex   # somewhere else

Trains exactly what the Quick demo trains (the Fashion-MNIST sample, 10 training and 30 validation
images per class, the shipped DINOv2 ViT-S/14 at 112 px, the Quick demo's settings: see
pyra_app.tab_train) with `pyra.run.compare.run_compare`, then keeps what the app needs to show it:
each run's config.json, adapter.safetensors (LoRA, PYRA and head tensors) and metrics.json, the
comparison's compare.json / compare.csv and the validation features for t-SNE. example.json
records the command, the machine, the time it took and the accuracies at every level, which
tests/test_worked_example.py checks the shipped files still give.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pyra.data.datasets import load_dataset
from pyra.report.tables import machine_info
from pyra.run.checkpoint import RUN_FILES
from pyra.run.compare import run_compare
from pyra.run.comparison import COMPARE_CSV, COMPARE_JSON, FEATURES_FILE, load_compare
from pyra_app.example import EXAMPLE_DIR, RECORD_FILE
from pyra_app.settings import compare_config
from pyra_app.tab_train import QUICK_DEMO_DATA, QUICK_DEMO_TRAIN


def build(out: Path, threads: int) -> dict:
    """Train the Quick demo into a temporary folder and copy what the app shows into `out`."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        data = load_dataset(f"sample:{QUICK_DEMO_DATA['sample']}", work / "data",
                            val_fraction=QUICK_DEMO_DATA["val_fraction"], max_per_class=QUICK_DEMO_DATA["max_per_class"])
        config = replace(compare_config(QUICK_DEMO_TRAIN), device="cpu")
        started = time.perf_counter()
        result = run_compare(data, config, work / "compare")
        seconds = time.perf_counter() - started
        if result.status != "completed":
            raise SystemExit(f"the comparison ended with {result.status}: {result.message}")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for name in (COMPARE_JSON, COMPARE_CSV, FEATURES_FILE):
            shutil.copy2(result.out_dir / name, out / name)
        for run_dir in result.run_dirs.values():
            target = out / run_dir.relative_to(result.out_dir)
            target.mkdir(parents=True, exist_ok=True)
            for name in RUN_FILES:
                shutil.copy2(run_dir / name, target / name)
    shipped = load_compare(out)
    record = {
        "command": "python benchmarks/worked_example.py",
        "machine": machine_info(), "threads": threads, "seconds": round(seconds, 1),
        "data": {"sample": QUICK_DEMO_DATA["sample"], "max_per_class": QUICK_DEMO_DATA["max_per_class"],
                 "val_fraction": QUICK_DEMO_DATA["val_fraction"], "train": len(data.train), "val": len(data.val)},
        "accuracy": {f"{row['method']}@{row['level']}": row["accuracy"] for row in shipped.rows},
        "bytes": sum(path.stat().st_size for path in out.rglob("*") if path.is_file()),
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLE_DIR, help=f"where the example goes (default {EXAMPLE_DIR})")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as on a 2-vCPU Space)")
    args = parser.parse_args(argv)
    record = build(args.out, args.threads)
    print(json.dumps({key: record[key] for key in ("seconds", "bytes", "accuracy")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
