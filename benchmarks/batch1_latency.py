"""Batch-1 latency of timm, our ToMe and our PYRA, in torch and in onnxruntime on their ONNX exports.

    python benchmarks/batch1_latency.py             # DINOv2-S/14 arch at 112 px, 1 thread, 200 rounds
    python benchmarks/batch1_latency.py --quick --out /tmp/b1   # 20 rounds, files under /tmp/b1
    python benchmarks/batch1_latency.py --threads 2              # the app's thread count on 2 cores

One process, one thread (or --threads N) for torch and for onnxruntime. Models: the random-init DINOv2 ViT-S/14
architecture at 112 px (65 tokens) with a 10-class head, built by `pyra.run.speed_bench.bench_models`
(PYRA's gates get small random values so it does its full work); schedules low = [5] * 11 + [4]
and high = [13, 11, 10, 8, 6, 5, 3, 3, 1, 1, 1, 1]. Each round times one batch-1 forward of every model in a fixed order (torch first,
then onnxruntime), after warm-up rounds; reported: median latency [p25-p75] in ms and the speed-up
of the median over timm's (torch) or over the unmerged export's (onnxruntime). Writes
OUT/perf/batch1_latency.json and the table into OUT/PERFORMANCE.md between the batch1_latency
markers (default OUT: docs/); with --threads N > 1, batch1_latency_threadsN.json and markers.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from pyra.backbones.factory import create_backbone
from pyra.report.tables import machine_info, markdown_table, write_section
from pyra.run.onnx_export import export_model
from pyra.run.speed import Spread
from pyra.run.speed_bench import bench_models

REPO = Path(__file__).resolve().parents[1]
IMG_SIZE = 112
SCHEDULES = {"low": [5] * 11 + [4], "high": [13, 11, 10, 8, 6, 5, 3, 3, 1, 1, 1, 1]}
ARCH = "random:vit_small_patch14_dinov2"


def build_models() -> dict[str, torch.nn.Module]:
    """name -> model: timm, then ToMe and PYRA at each schedule (copies of the same weights)."""
    built = bench_models(create_backbone(ARCH, 10, IMG_SIZE).eval(), list(SCHEDULES.values()))
    models = {"timm": built["uncompressed"]}
    for index, level in enumerate(SCHEDULES):
        models |= {f"{method} {level}": built[f"{method}@{index}"] for method in ("tome", "pyra")}
    return models


def runtime_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads would take the cores
    # from the torch model timed next
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(rounds: int, warmup: int, folder: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    models = build_models()
    sessions = {}
    for name, model in models.items():
        path = folder / f"{name.replace(' ', '-')}.onnx"
        export_model(model, path, classes=[str(i) for i in range(10)], batch=1)
        sessions[name] = runtime_session(path, threads)
    image = torch.randn(1, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(0))
    feed = image.numpy()
    times: dict[str, list[float]] = {f"torch {n}": [] for n in models} | {f"onnxruntime {n}": [] for n in sessions}
    with torch.inference_mode():
        for index in range(warmup + rounds):
            for name, model in models.items():
                tic = time.perf_counter()
                model(image)
                if index >= warmup:
                    times[f"torch {name}"].append(time.perf_counter() - tic)
            for name, session in sessions.items():
                tic = time.perf_counter()
                session.run(None, {"image": feed})
                if index >= warmup:
                    times[f"onnxruntime {name}"].append(time.perf_counter() - tic)
    rows = []
    for key, seconds in times.items():
        runtime, name = key.split(" ", 1)
        spread, base = Spread.of([1000 * s for s in seconds]), Spread.of(times[f"{runtime} timm"]).median * 1000
        rows.append({"runtime": runtime, "model": name, "median_ms": round(spread.median, 3),
                     "p25_ms": round(spread.p25, 3), "p75_ms": round(spread.p75, 3),
                     "speedup": round(base / spread.median, 3)})
    return {"rows": rows, "rounds": rounds, "warmup": warmup, "threads": threads, "img_size": IMG_SIZE,
            "arch": ARCH, "schedules": SCHEDULES}


def markdown(report: dict) -> str:
    table = markdown_table(
        ["runtime", "model", "batch-1 latency, median [p25-p75]", "speed-up over timm / unmerged export"],
        [[r["runtime"], r["model"], f"{r['median_ms']:.2f} ms [{r['p25_ms']:.2f}-{r['p75_ms']:.2f}]",
          f"{r['speedup']:.2f}x"] for r in report["rows"]])
    machine, threads = report["machine"], report["threads"]
    return (f"`{report['command']}` ({machine['cpu']}, {machine['cores']} cores, {threads} thread{'s' * (threads > 1)}; "
            f"{report['arch'].removeprefix('random:')} architecture at {report['img_size']} px, {report['rounds']} "
            f"interleaved rounds after {report['warmup']} warm-up rounds; onnxruntime runs each model's own "
            "`pyra export` file):\n\n" + table + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1)")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    rounds, warmup = (20, 3) if args.quick else (200, 20)
    with tempfile.TemporaryDirectory(prefix="pyra-onnx-") as folder:
        report = measure(rounds, warmup, Path(folder), args.threads)
    report["machine"] = machine_info()
    report["command"] = ("python benchmarks/batch1_latency.py" + (" --quick" if args.quick else "")
                         + (f" --threads {args.threads}" if args.threads > 1 else ""))
    name = "batch1_latency" + (f"_threads{args.threads}" if args.threads > 1 else "")
    (args.out / "perf").mkdir(parents=True, exist_ok=True)
    (args.out / "perf" / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    doc = args.out / "PERFORMANCE.md"
    if doc.exists() and f"<!-- {name}:start -->" in doc.read_text(encoding="utf-8"):
        write_section(doc, name, text)
    print(text)


if __name__ == "__main__":
    main()
