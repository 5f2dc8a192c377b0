"""Batch-1 latency of timm, our ToMe and our PYRA: eager torch, torch.compile, and onnxruntime on their ONNX exports.

    python benchmarks/batch1_latency.py             # DINOv2-S/14 arch at 112 px, 1 thread, 200 rounds
    python benchmarks/batch1_latency.py --quick --no-compile --out /tmp/b1   # 20 rounds, files under /tmp/b1
    python benchmarks/batch1_latency.py --threads 2              # the app's thread count on 2 cores

One process, one thread (or --threads N) for torch and for onnxruntime. Models: the random-init DINOv2 ViT-S/14
architecture at 112 px (65 tokens) with a 10-class head, built by `pyra.run.speed_bench.bench_models`
(PYRA's gates get small random values so it does its full work); schedules low = [5] * 11 + [4]
and high = [13, 11, 10, 8, 6, 5, 3, 3, 1, 1, 1, 1]. "drop low" / "drop high" is timm discarding the
last r tokens of each layer where the merge would run: the same token counts with nothing spent on
choosing or averaging tokens, so the speed-up no merging model can exceed (in eager torch, and in
onnxruntime on its plain ONNX export). The same eager models run again with their linear weights
stored column-major (`pyra.run.cpu_layout`, as `compare` and `eval` time them), timm and the bound
included. With --compile (the default), torch.compile'd copies of timm, ToMe and PYRA too, each
checked against its eager logits (1e-4). Each round times one batch-1 forward of every model after
warm-up rounds: the runtimes in turn, and each runtime's models one after another (as a deployment
runs only its own runtime: right after torch models, the merged ONNX graphs' speed-ups were 6-9%
lower), both orders shuffled anew each round (seeded); reported: median latency [p25-p75] in ms, the
speed-up of the median over timm in the same runtime (for onnxruntime: the unmerged export), and over
eager torch timm (stock weights). Writes OUT/perf/batch1_latency.json and the table into OUT/PERFORMANCE.md
between the batch1_latency markers (default OUT: docs/); with --threads N > 1,
batch1_latency_threadsN.json and markers.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import random
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from pyra.backbones.factory import create_backbone
from pyra.report.tables import machine_info, markdown_table, write_section
from pyra.run.cpu_layout import column_major_linears
from pyra.run.onnx_export import OPSET, export_model
from pyra.run.onnx_speed import runtime_session
from pyra.run.speed import Spread
from pyra.run.speed_bench import bench_models

REPO = Path(__file__).resolve().parents[1]
IMG_SIZE = 112
SCHEDULES = {"low": [5] * 11 + [4], "high": [13, 11, 10, 8, 6, 5, 3, 3, 1, 1, 1, 1]}
ARCH = "random:vit_small_patch14_dinov2"
COLUMN_MAJOR = "torch, column-major weights"  # eager torch with `column_major_linears` (what `compare` and `eval` time)


class TokenDropping(torch.nn.Module):
    """A timm ViT that discards the last r_l tokens after block l's attention residual, where the merge
    would run: x [B, N, D] -> [B, N - r_l, D]. The reference bound, not a method (it throws patches away)."""

    def __init__(self, model: torch.nn.Module, schedule: list[int]) -> None:
        super().__init__()
        self.model, self.schedule = model, schedule

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.norm_pre(m._pos_embed(m.patch_embed(image)))
        for block, r in zip(m.blocks, self.schedule):
            x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
            x = x[:, : x.shape[1] - r]
            x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return m.forward_head(m.norm(x))


def build_models() -> dict[str, torch.nn.Module]:
    """name -> model: timm, then ToMe and PYRA at each schedule (copies of the same weights)."""
    built = bench_models(create_backbone(ARCH, 10, IMG_SIZE).eval(), list(SCHEDULES.values()))
    models = {"timm": built["uncompressed"]}
    for index, level in enumerate(SCHEDULES):
        models |= {f"{method} {level}": built[f"{method}@{index}"] for method in ("tome", "pyra")}
    return models


def dropping_models(timm_model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """"drop LEVEL" -> timm discarding as many tokens per layer as the merge at LEVEL (torch only)."""
    return {f"drop {level}": TokenDropping(timm_model, schedule) for level, schedule in SCHEDULES.items()}


def export_plain(model: torch.nn.Module, image: torch.Tensor, path: Path) -> None:
    """Write `model` (a token-dropping bound, not a `pyra` model) to `path` as ONNX, traced on `image`."""
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its steps
        torch.onnx.export(model.eval(), (image,), str(path), dynamo=True, opset_version=OPSET, input_names=["image"],
                          output_names=["logits"], external_data=False)


def compiled_models(models: dict[str, torch.nn.Module], image: torch.Tensor) -> tuple[dict, dict[str, float]]:
    """name -> torch.compile(model), each compiled by one call on `image` [1, 3, H, W], and the seconds that
    call took. Raises ValueError when a compiled model's logits differ from its eager ones by more than 1e-4."""
    compiled, seconds = {}, {}
    with torch.inference_mode():
        for name, model in models.items():
            fast, eager = torch.compile(model), model(image)
            tic = time.perf_counter()
            logits = fast(image)  # compiles
            seconds[name] = round(time.perf_counter() - tic, 1)
            difference = float((logits - eager).abs().max())
            if difference > 1e-4:
                raise ValueError(f"torch.compile changed the logits of {name} by {difference:.2e}")
            compiled[name] = fast
    return compiled, seconds


def measure(rounds: int, warmup: int, folder: Path, threads: int, with_compile: bool) -> dict:
    torch.set_num_threads(threads)
    models = build_models()
    image = torch.randn(1, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(0))
    feed = image.numpy()
    runners: dict[tuple[str, str], Callable[[], object]] = {}  # (runtime, model) -> one batch-1 forward
    drops = dropping_models(models["timm"])
    eager = models | drops
    runners |= {("torch", name): partial(model, image) for name, model in eager.items()}
    laid_out = {name: column_major_linears(copy.deepcopy(model)) for name, model in eager.items()}
    runners |= {(COLUMN_MAJOR, name): partial(model, image) for name, model in laid_out.items()}
    compile_seconds: dict[str, float] = {}
    if with_compile:
        compiled, compile_seconds = compiled_models(models, image)
        runners |= {("torch.compile", name): partial(model, image) for name, model in compiled.items()}
    for name, model in eager.items():
        path = folder / f"{name.replace(' ', '-')}.onnx"
        if name in drops:
            export_plain(model, image, path)
        else:
            export_model(model, path, classes=[str(i) for i in range(10)], batch=1)
        runners[("onnxruntime", name)] = partial(runtime_session(path, threads).run, None, {"image": feed})
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    blocks: dict[str, list[tuple[str, str]]] = {}  # runtime -> its (runtime, model) keys
    for key in runners:
        blocks.setdefault(key[0], []).append(key)
    shuffler = random.Random(0)
    with torch.inference_mode():
        for index in range(warmup + rounds):
            for keys in shuffler.sample(list(blocks.values()), len(blocks)):
                for key in shuffler.sample(keys, len(keys)):
                    run = runners[key]
                    tic = time.perf_counter()
                    run()
                    if index >= warmup:
                        times[key].append(time.perf_counter() - tic)
    eager_timm = Spread.of(times[("torch", "timm")]).median * 1000
    rows = []
    for (runtime, name), seconds in times.items():
        spread, base = Spread.of([1000 * s for s in seconds]), Spread.of(times[(runtime, "timm")]).median * 1000
        rows.append({"runtime": runtime, "model": name, "median_ms": round(spread.median, 3),
                     "p25_ms": round(spread.p25, 3), "p75_ms": round(spread.p75, 3),
                     "speedup": round(base / spread.median, 3),
                     "speedup_over_eager_timm": round(eager_timm / spread.median, 3)})
    return {"rows": rows, "rounds": rounds, "warmup": warmup, "threads": threads, "img_size": IMG_SIZE,
            "arch": ARCH, "schedules": SCHEDULES, "compile_seconds": compile_seconds}


def markdown(report: dict) -> str:
    table = markdown_table(
        ["runtime", "model", "batch-1 latency, median [p25-p75]", "speed-up over timm in the same runtime",
         "speed-up over eager torch timm"],
        [[r["runtime"], r["model"], f"{r['median_ms']:.2f} ms [{r['p25_ms']:.2f}-{r['p75_ms']:.2f}]",
          f"{r['speedup']:.2f}x", f"{r['speedup_over_eager_timm']:.2f}x"] for r in report["rows"]])
    machine, threads = report["machine"], report["threads"]
    seconds = report["compile_seconds"].values()
    compiling = (f"; torch.compile took {min(seconds):.0f}-{max(seconds):.0f} s per model, less for kernels already "
                 "in its on-disk cache" if seconds else "")
    return (f"`{report['command']}` ({machine['cpu']}, {machine['cores']} cores, {threads} thread{'s' * (threads > 1)}; "
            f"{report['arch'].removeprefix('random:')} architecture at {report['img_size']} px, {report['rounds']} "
            f"interleaved rounds after {report['warmup']} warm-up rounds; onnxruntime runs each model's own "
            "`pyra export` file" + compiling + "):\n\n" + table + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time torch.compile'd copies of timm, ToMe and PYRA (about 45 s of compiling each)")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    rounds, warmup = (20, 3) if args.quick else (200, 20)
    with tempfile.TemporaryDirectory(prefix="pyra-onnx-") as folder:
        report = measure(rounds, warmup, Path(folder), args.threads, args.compile)
    report["machine"] = machine_info()
    report["command"] = ("python benchmarks/batch1_latency.py" + (" --quick" if args.quick else "")
                         + (f" --threads {args.threads}" if args.threads > 1 else "")
                         + ("" if args.compile else " --no-compile"))
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
