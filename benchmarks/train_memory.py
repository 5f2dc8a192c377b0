"""Peak memory one training adds, measured, next to the estimate `pyra.run.plan` checks before training.

    python benchmarks/train_memory.py            # default backbone, 13 sizes x batches (about 6 minutes)
    python benchmarks/train_memory.py --quick    # 3 configurations

Each configuration runs in a fresh process at the app's thread count (2) and measures what one
training of a comparison costs the app: reset the peak resident memory (Linux
/proc/self/clear_refs), build the model from the shipped weights, fit the head start on
max(2 x batch, 64) images (at the training batch, as the app does), train two steps
(elastic sandwich: three passes each), validate `batch` images, read the peak (VmHWM). Rows with a
micro-batch are what the app runs when the whole batch would not fit its memory limit
(`pyra.run.plan.within_memory` at 600 MB): the same steps in passes of that many images.
Writes docs/perf/train_memory.json and the table into docs/RELIABILITY.md.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
from pathlib import Path

from pyra.report.tables import machine_info, markdown_table, write_section

REPO = Path(__file__).resolve().parents[1]

FULL = [(112, 1, 0), (112, 16, 0), (112, 32, 0), (112, 64, 0), (168, 16, 0), (224, 8, 0), (224, 16, 0), (280, 8, 0),
        (448, 1, 0), (112, 16, 8), (112, 64, 8), (224, 16, 1), (266, 4, 1)]  # (px, batch, micro-batch or 0)
QUICK = [(112, 1, 0), (112, 16, 8), (168, 8, 0)]
TRAIN_STEPS = 2
HEAD_START_IMAGES = 64  # at least this many training images: the head start sees several batches
THREADS = 2  # the app's: torch uses every core of the 2-core machine


def _status_kb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def measure_one(img_size: int, batch: int, micro_batch: int, method: str) -> dict:
    """In this process: the peak memory (MB) one training of `batch` images (in passes of `micro_batch`,
    0 = the whole batch) adds, and the estimate."""
    import torch

    from pyra.backbones.factory import backbone_structure
    from pyra.method.patch import geometry
    from pyra.method.schedule import resolve_schedule
    from pyra.run.plan import training_memory_bytes
    from pyra.run.predict import predict
    from pyra.run.recipes import DEFAULT_RECIPE
    from pyra.run.run_config import RunConfig, build_model
    from pyra.run.train import TrainConfig, train

    torch.set_num_threads(THREADS)
    classes = ("a", "b", "c", "d")
    structure = backbone_structure("default", len(classes), img_size)
    schedule = resolve_schedule("high" if method != "none" else 0, geometry(structure))
    config = TrainConfig(epochs=1, batch_size=batch, micro_batch=micro_batch or None)

    class Images(torch.utils.data.Dataset):
        def __init__(self, count: int) -> None:
            self.count = count

        def __len__(self) -> int:
            return self.count

        def __getitem__(self, index: int):
            return torch.randn(3, img_size, img_size), index % len(classes)

    Path("/proc/self/clear_refs").write_text("5")  # the peak so far (imports) no longer counts
    before = _status_kb("VmRSS")
    model = build_model(RunConfig(backbone="default", img_size=img_size, num_classes=len(classes), classes=classes,
                                  schedule=tuple(schedule), method=method, train=config,
                                  lora_dropout=DEFAULT_RECIPE.lora_dropout, drop_path_rate=DEFAULT_RECIPE.drop_path_rate))
    stop = threading.Event()  # after TRAIN_STEPS steps: the head start needs 64 images, the steps fewer

    def after_step(progress) -> None:
        if progress.step is not None and progress.step >= TRAIN_STEPS:
            stop.set()

    train(model, Images(max(TRAIN_STEPS * batch, HEAD_START_IMAGES)), config, on_progress=after_step, cancel=stop)
    predict(model, Images(batch), batch_size=config.forward_batch)  # validation, as at the end of every epoch
    added = (_status_kb("VmHWM") - before) / 1024
    tokens = structure.patch_embed.num_patches + structure.num_prefix_tokens
    return {"img_size": img_size, "batch": batch, "forward_batch": config.forward_batch, "method": method,
            "tokens": tokens, "measured_mb": round(added, 1),
            "estimate_mb": round(training_memory_bytes(structure, config.forward_batch) / 2**20, 1)}


def markdown(report: dict) -> str:
    """The rows as a table: measured peak next to the estimate."""
    table = markdown_table(
        ["image size", "batch", "images per pass", "tokens", "measured peak added", "estimate", "estimate / measured"],
        [[f"{r['img_size']} px", str(r["batch"]), str(r["forward_batch"]), str(r["tokens"]), f"{r['measured_mb']:.0f} MB",
          f"{r['estimate_mb']:.0f} MB", f"{r['estimate_mb'] / r['measured_mb']:.2f}"] for r in report["rows"]])
    return (f"`{report['command']}` ({report['machine']['cores']} cores, {report['threads']} threads, "
            f"{report['method']} + LoRA on the {report['backbone']} backbone):\n\n{table}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--method", default="pyra", choices=["none", "tome", "pyra"])
    parser.add_argument("--one", nargs=3, type=int, help=argparse.SUPPRESS)  # child process: IMG BATCH MICRO
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(*args.one, args.method)))
        return
    def child(img_size: int, batch: int, micro_batch: int) -> dict:
        done = subprocess.run([sys.executable, __file__, "--one", str(img_size), str(batch), str(micro_batch),
                               "--method", args.method],
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    child(*QUICK[0])  # unmeasured warm-up: on a fresh machine the very first run measured 300 MB more, once
    rows = []
    for img_size, batch, micro_batch in QUICK if args.quick else FULL:
        rows.append(child(img_size, batch, micro_batch))
        row = rows[-1]
        print(f"{row['img_size']:>4} px  batch {row['batch']:>3} in passes of {row['forward_batch']:>3}  "
              f"{row['tokens']:>5} tokens  "
              f"measured {row['measured_mb']:>7.1f} MB  estimate {row['estimate_mb']:>7.1f} MB", flush=True)
    command = "python benchmarks/train_memory.py" + (" --quick" if args.quick else "")
    report = {"command": command, "machine": machine_info(), "threads": THREADS, "backbone": "default",
              "method": args.method, "rows": rows,
              "estimate_covers_measured": all(r["estimate_mb"] >= r["measured_mb"] for r in rows)}
    path = args.out / "perf" / "train_memory.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    doc = args.out / "RELIABILITY.md"
    if doc.exists():
        write_section(doc, "train_memory", markdown(report))
    print(f"wrote {path}  ({shlex.join(sys.argv)})")


if __name__ == "__main__":
    main()
