"""How fast one ViT block's linear layers multiply, by token count, with weights row-major (timm's) or column-major.

    python benchmarks/linear_layout.py            # ViT-S/14 block shapes, 1 and 2 threads, 30 rounds (~3 min)
    python benchmarks/linear_layout.py --quick --out /tmp/ll   # 5 rounds, files under /tmp/ll

The four linear layers of a DINOv2 ViT-S/14 block (qkv 384 -> 1152, proj 384 -> 384, fc1 384 -> 1536,
fc2 1536 -> 384, with biases) on [rows, in] float32 tokens; rows from 8 (a batch-1 forward after heavy
merging) to 520 (batch 8 without merging). Each round times 20 calls of the four `F.linear`s with the
weights as nn.Linear stores them ([out, in], row-major, so each product runs with a transposed operand)
and with the same weights column-major (`pyra.run.cpu_layout`), interleaved, at 1 then 2 threads.
Reported: the median µs per call of the four [p25-p75] and the ratio row-major / column-major
(above 1: column-major is faster). Writes OUT/perf/linear_layout.json and the table into
OUT/PERFORMANCE.md between the linear_layout markers (default OUT: docs/).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pyra.report.tables import machine_info, markdown_table, write_section
from pyra.run.cpu_layout import column_major_linears
from pyra.run.speed import Spread

REPO = Path(__file__).resolve().parents[1]
ROWS = (8, 12, 16, 24, 32, 40, 48, 56, 65, 130, 520)
THREADS = (1, 2)
CALLS = 20
SHAPES = {"qkv": (384, 1152), "proj": (384, 384), "fc1": (384, 1536), "fc2": (1536, 384)}  # in, out features


def measure(rounds: int) -> list[dict]:
    row_major = torch.nn.ModuleList(torch.nn.Linear(*shape) for shape in SHAPES.values())
    column_major = column_major_linears(torch.nn.ModuleList(torch.nn.Linear(*shape) for shape in SHAPES.values()))
    column_major.load_state_dict(row_major.state_dict())  # copies into the column-major storage: same values
    layouts = {"row-major": row_major, "column-major": column_major}
    generator = torch.Generator().manual_seed(0)
    inputs = {rows: [torch.randn(rows, features, generator=generator) for features, _ in SHAPES.values()]
              for rows in ROWS}
    times: dict[tuple[int, int, str], list[float]] = {}
    with torch.inference_mode():
        for index in range(rounds + 2):
            for threads in THREADS:
                torch.set_num_threads(threads)
                for rows, xs in inputs.items():
                    for name, layers in layouts.items():
                        tic = time.perf_counter()
                        for _ in range(CALLS):
                            for x, layer in zip(xs, layers):
                                F.linear(x, layer.weight, layer.bias)
                        if index >= 2:  # 2 warm-up rounds
                            times.setdefault((threads, rows, name), []).append(1e6 * (time.perf_counter() - tic) / CALLS)
    results = []
    for threads in THREADS:
        for rows in ROWS:
            spreads = {name: Spread.of(times[(threads, rows, name)]) for name in layouts}
            results.append({"threads": threads, "rows": rows,
                            **{f"{name}_us": [round(s.median, 1), round(s.p25, 1), round(s.p75, 1)]
                               for name, s in spreads.items()},
                            "ratio": round(spreads["row-major"].median / spreads["column-major"].median, 2)})
    return results


def markdown(report: dict) -> str:
    table = markdown_table(
        ["threads", "rows", "row-major (timm), µs per block", "column-major, µs per block", "row-major / column-major"],
        [[str(r["threads"]), str(r["rows"]), "{} [{}-{}]".format(*r["row-major_us"]), "{} [{}-{}]".format(*r["column-major_us"]),
          f"{r['ratio']:.2f}x"] for r in report["results"]])
    machine = report["machine"]
    return (f"`{report['command']}` ({machine['cpu']}, {machine['cores']} cores; the qkv, proj, fc1 and fc2 layers of "
            f"one ViT-S block, {report['rounds']} interleaved rounds of {CALLS} calls):\n\n" + table + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    rounds = 5 if args.quick else 30
    report = {"command": "python benchmarks/linear_layout.py" + (" --quick" if args.quick else ""),
              "rounds": rounds, "results": measure(rounds), "machine": machine_info()}
    (args.out / "perf").mkdir(parents=True, exist_ok=True)
    (args.out / "perf" / "linear_layout.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    doc = args.out / "PERFORMANCE.md"
    if doc.exists() and "<!-- linear_layout:start -->" in doc.read_text(encoding="utf-8"):
        write_section(doc, "linear_layout", text)
    print(text)


if __name__ == "__main__":
    main()
