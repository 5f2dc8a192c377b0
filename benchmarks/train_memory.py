"""Peak memory one training adds, measured, next to the estimate `pyra.run.plan` checks before training.

    python benchmarks/train_memory.py            # default backbone, 9 sizes x batches (about 3 minutes)
    python benchmarks/train_memory.py --quick    # 3 configurations

Each configuration runs in a fresh process: build the model, reset the peak resident memory
(Linux /proc/self/clear_refs), train one epoch of one batch (elastic sandwich: three passes),
read the peak (VmHWM). Writes docs/perf/train_memory.json; the table is in docs/RELIABILITY.md.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FULL = [(112, 1), (112, 16), (112, 32), (112, 64), (168, 16), (224, 8), (224, 16), (280, 8), (448, 1)]
QUICK = [(112, 1), (112, 16), (168, 8)]


def _status_kb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def measure_one(img_size: int, batch: int, method: str) -> dict:
    """In this process: the peak memory (MB) one training of `batch` images adds, and the estimate."""
    import torch

    from pyra.backbones.factory import backbone_structure
    from pyra.method.patch import geometry
    from pyra.method.schedule import resolve_schedule
    from pyra.run.plan import training_memory_bytes
    from pyra.run.recipes import PAPER_RECIPE
    from pyra.run.run_config import RunConfig, build_model
    from pyra.run.train import TrainConfig, train

    torch.set_num_threads(1)
    classes = ("a", "b", "c", "d")
    structure = backbone_structure("default", len(classes), img_size)
    schedule = resolve_schedule("high" if method != "none" else 0, geometry(structure))
    config = TrainConfig(epochs=1, batch_size=batch, head_start=False, eval_every_epoch=False)
    model = build_model(RunConfig(backbone="default", img_size=img_size, num_classes=len(classes), classes=classes,
                                  schedule=tuple(schedule), method=method, train=config,
                                  lora_dropout=PAPER_RECIPE.lora_dropout, drop_path_rate=PAPER_RECIPE.drop_path_rate))

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return batch

        def __getitem__(self, index: int):
            return torch.randn(3, img_size, img_size), index % len(classes)

    Path("/proc/self/clear_refs").write_text("5")  # the peak so far (model building) no longer counts
    before = _status_kb("VmRSS")
    train(model, Images(), config)
    added = (_status_kb("VmHWM") - before) / 1024
    tokens = structure.patch_embed.num_patches + structure.num_prefix_tokens
    return {"img_size": img_size, "batch": batch, "method": method, "tokens": tokens, "measured_mb": round(added, 1),
            "estimate_mb": round(training_memory_bytes(structure, batch) / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--method", default="pyra", choices=["none", "tome", "pyra"])
    parser.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)  # child process: IMG BATCH
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], args.one[1], args.method)))
        return
    from pyra.report.tables import machine_info

    rows = []
    for img_size, batch in QUICK if args.quick else FULL:
        child = subprocess.run([sys.executable, __file__, "--one", str(img_size), str(batch), "--method", args.method],
                               capture_output=True, text=True, check=True)
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(f"{row['img_size']:>4} px  batch {row['batch']:>3}  {row['tokens']:>5} tokens  "
              f"measured {row['measured_mb']:>7.1f} MB  estimate {row['estimate_mb']:>7.1f} MB", flush=True)
    command = "python benchmarks/train_memory.py" + (" --quick" if args.quick else "")
    report = {"command": command, "machine": machine_info(), "threads": 1, "backbone": "default",
              "method": args.method, "rows": rows,
              "estimate_covers_measured": all(r["estimate_mb"] >= r["measured_mb"] for r in rows)}
    path = args.out / "perf" / "train_memory.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}  ({shlex.join(sys.argv)})")


if __name__ == "__main__":
    main()
