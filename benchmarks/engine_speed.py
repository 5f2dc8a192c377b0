"""Engine speed matrix: timm vs patched r=0 vs ToMe vs PYRA at every level, into docs/PERFORMANCE.md.

    python benchmarks/engine_speed.py                            # 16 settings, about 15 minutes on 2 quiet cores
    python benchmarks/engine_speed.py --quick --out /tmp/speedq  # vit_tiny at 112 px, 1 thread (< 2 minutes)

For each backbone x image size x thread count, one interleaved run measures the uncompressed
model, the patched r=0 model, and ToMe and PYRA at every level of pyra.run.speed_bench.SWEEP_LEVELS
(`pyra.run.speed_bench.bench_sweep`). Writes <out>/PERFORMANCE.md, <out>/perf/engine_speed.json and
<out>/charts/{speed,latency}_vs_flops.{html,png} (<out> defaults to docs/); the training-step
section is read from <out>/perf/train_speed.json (benchmarks/train_speed.py).
Run it on a quiet machine: other processes on the same cores move every figure.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from benchmarks.charts import write_chart
from pyra.backbones.factory import BackboneError, backbone_structure
from pyra.method.patch import geometry
from pyra.method.schedule import forward_flops, resolve_schedule
from pyra.report.tables import machine_info, markdown_table, spread_text
from pyra.run.speed_bench import SWEEP_LEVELS, bench_sweep, level_label

REPO = Path(__file__).resolve().parents[1]

BACKBONES = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "default")
SIZES = (112, 224)
THREADS = (1, 2)
EFFICIENT = 0.9  # speed-up / FLOPs ratio below this is called out in the doc
THREAD_SCALING = 0.7  # assumed: t threads run t ** 0.7 times faster (for the ETA only)
CHARTS = {  # measure -> (file stem, title)
    "throughput": ("speed_vs_flops", "ToMe batch throughput speed-up vs FLOPs ratio"),
    "latency": ("latency_vs_flops", "ToMe batch-1 latency speed-up vs FLOPs ratio"),
}
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Setting:
    """One cell of the matrix: measured by one `bench_sweep` call."""

    backbone: str
    img_size: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.backbone} at {self.img_size} px, {self.threads} thread(s)"

    def command(self, batch: int, repeats: int, warmup: int) -> str:
        """The script command that measures this setting alone."""
        return (
            f"python benchmarks/engine_speed.py --backbones {self.backbone} --sizes {self.img_size} "
            f"--threads {self.threads} --batch {batch} --repeats {repeats} --warmup {warmup} --out /tmp/one"
        )


def plan(backbones: Sequence[str], sizes: Sequence[int], threads: Sequence[int]) -> list[Setting]:
    return [Setting(b, s, t) for b in backbones for s in sizes for t in threads]


def round_cost(setting: Setting, batch: int) -> float:
    """Relative time of one interleaved round: FLOPs of all its forwards, scaled by the threads."""
    geo = geometry(backbone_structure(setting.backbone, 1000, setting.img_size))  # meta device, no weights
    full = forward_flops([0] * geo.depth, geo, "none")
    merged = sum(forward_flops(resolve_schedule(level, geo), geo, m) for level in SWEEP_LEVELS for m in ("tome", "pyra"))
    return (1 + batch) * (2 * full + merged) / setting.threads ** THREAD_SCALING


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def run_matrix(settings: list[Setting], batch: int, repeats: int, warmup: int) -> dict[str, Any]:
    """Run every setting in turn (progress and ETA on stderr); return the report as a JSON-ready dict."""
    costs = [round_cost(s, batch) for s in settings]
    results, skipped, start = [], [], time.perf_counter()
    for index, setting in enumerate(settings):
        elapsed = time.perf_counter() - start
        done = sum(costs[:index])
        eta = f", ETA {_duration(elapsed / done * sum(costs[index:]))}" if done else ""
        print(f"[{index + 1}/{len(settings)}] {setting.name} (elapsed {_duration(elapsed)}{eta})", file=sys.stderr, flush=True)
        try:
            result = bench_sweep(setting.backbone, setting.img_size, SWEEP_LEVELS, batch, setting.threads, repeats, warmup)
        except BackboneError as error:
            if setting.backbone != "default":
                raise
            skipped.append({"setting": setting.name, "reason": str(error)})
            continue
        result["command"] = setting.command(batch, repeats, warmup)
        results.append(result)
        speedups = " ".join(f"{lv['methods']['tome']['speedup_throughput']:.2f}x" for lv in result["levels"])
        print(f"    ToMe throughput speed-up by level: {speedups}", file=sys.stderr, flush=True)
    print(f"done in {_duration(time.perf_counter() - start)}", file=sys.stderr)
    first = results[0] if results else {"torch": "?", "timm": "?"}
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "torch": first["torch"],
        "timm": first["timm"],
        "settings": {"batch_size": batch, "repeats": repeats, "warmup": warmup,
                     "levels": list(SWEEP_LEVELS)},
        "results": results,
        "skipped": skipped,
    }


# ---------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------


def _both(timing: dict[str, Any]) -> str:
    return f"{timing['speedup_throughput']:.2f}x / {timing['speedup_latency']:.2f}x"


def summary_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row per setting and level: FLOPs ratio, speed-ups, PYRA's overhead over ToMe."""
    rows = []
    for r in results:
        for lv in r["levels"]:
            tome, pyra_ = lv["methods"]["tome"], lv["methods"]["pyra"]
            rows.append([
                r["backbone"], str(r["img_size"]), str(r["tokens"]), str(r["threads"]), lv["label"],
                f"{lv['flops_ratio']['tome']:.2f}x", _both(tome), f"{tome['speedup_over_flops_ratio']:.2f}",
                _both(pyra_), f"{lv['overhead_pct']['pyra_vs_tome']['throughput']:+.1f}%",
            ])
    return rows


def detail_rows(result: dict[str, Any]) -> list[list[str]]:
    """Rows of one setting's table: timm, patched r=0, then ToMe and PYRA at each level."""
    full, tokens, patched = result["flops_uncompressed"], str(result["tokens"]), result["patched_r0"]
    rows = [
        _detail_row(result["uncompressed"], "", tokens, full, 1.0, ""),
        _detail_row(patched, "", tokens, full, 1.0, f"{patched['overhead_pct']['throughput']:+.1f}% vs timm"),
    ]
    for lv in result["levels"]:
        merged = f"{lv['tokens_per_layer'][0]} -> {lv['tokens_per_layer'][-1]}"
        for method in ("tome", "pyra"):
            overhead = f"{lv['overhead_pct']['pyra_vs_tome']['throughput']:+.1f}% vs ToMe" if method == "pyra" else ""
            rows.append(_detail_row(lv["methods"][method], lv["label"], merged, lv["flops"][method],
                                    lv["flops_ratio"][method], overhead))
    return rows


def _detail_row(timing: dict[str, Any], level: str, tokens: str, flops: int, ratio: float, overhead: str) -> list[str]:
    return [
        timing["label"], level, tokens, f"{flops / 1e9:.2f}", f"{ratio:.2f}x", spread_text(timing["latency_ms"], 1),
        spread_text(timing["throughput"], 1), _both(timing), f"{timing['speedup_over_flops_ratio']:.2f}", overhead,
    ]


def _range(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"


def efficiency_lines(results: list[dict[str, Any]], batch: int) -> list[str]:
    """Per setting, how much of the FLOPs saving ToMe turns into speed (from the data)."""
    lines = []
    for r in results:
        levels = r["levels"]
        throughput = [lv["methods"]["tome"]["speedup_over_flops_ratio"] for lv in levels]
        latency = [lv["methods"]["tome"]["speedup_latency"] / lv["flops_ratio"]["tome"] for lv in levels]
        verb = "reaches only" if max(throughput) < EFFICIENT else "reaches"
        lines.append(
            f"- {r['backbone']} at {r['img_size']} px ({r['tokens']} tokens), {r['threads']} thread(s): ToMe's "
            f"batch-{batch} throughput speed-up {verb} {_range(throughput)} of the FLOPs ratio; "
            f"its batch-1 latency speed-up {_range(latency)}."
        )
    return lines


def efficiency_markdown(results: list[dict[str, Any]], batch: int) -> list[str]:
    """The section on speed-up / FLOPs ratio: a general note, one line per setting, the settings below EFFICIENT."""
    low = [f"{r['backbone']} at {r['img_size']} px, {r['threads']} thread(s)" for r in results
           if max(lv["methods"]["tome"]["speedup_over_flops_ratio"] for lv in r["levels"]) < EFFICIENT]
    verdict = (f"Below {EFFICIENT} at every level: {'; '.join(low)}." if low
               else f"Every setting reaches {EFFICIENT} or more at one level at least.")
    return [
        "## How much of the FLOPs saving becomes speed", "",
        "FLOPs count only matmuls and convolutions. Norms, softmax, GELU, the merge's matching and "
        "gathers, and the fixed cost of each call do not shrink with the token count, so they take a "
        "larger share when the model is small, when few tokens are left, and most of all at batch 1. "
        f"Ranges are over the {len(SWEEP_LEVELS)} levels. {verdict}", "",
        *efficiency_lines(results, batch), "",
    ]


def overhead_markdown(results: list[dict[str, Any]]) -> list[str]:
    """PYRA's extra time over ToMe and the patch's over timm, summarised over all settings."""
    pyra_ = [lv["overhead_pct"]["pyra_vs_tome"]["throughput"] for r in results for lv in r["levels"]]
    patched = [r["patched_r0"]["overhead_pct"]["throughput"] for r in results]
    if not pyra_:
        return []
    return [
        f"Extra time per image at batch throughput: PYRA over ToMe {_percent_range(pyra_)} over all settings and "
        f"levels (median {statistics.median(pyra_):+.1f}%); patched r=0 over plain timm {_percent_range(patched)}. "
        "Differences of a few percent are within the run-to-run spread (compare the [p25-p75] ranges in the "
        "tables below).", "",
    ]


def _percent_range(values: list[float]) -> str:
    low, high = f"{min(values):+.1f}%", f"{max(values):+.1f}%"
    return low if low == high else f"{low} to {high}"


def charts_markdown(png: bool) -> list[str]:
    lines = []
    for stem, title in CHARTS.values():
        if png:
            lines.append(f"![{title}](charts/{stem}.png)")
        lines += [f"[{title}, interactive](charts/{stem}.html)", ""]
    return lines


BATCH1_SECTION = "## Batch 1: torch and onnxruntime"  # written by benchmarks/batch1_latency.py, kept as it is


def batch1_section(existing: Path) -> str:
    """The batch-1 section of an existing PERFORMANCE.md (from its heading to the end), or ''."""
    text = existing.read_text(encoding="utf-8") if existing.is_file() else ""
    return text[text.index(BATCH1_SECTION):] if BATCH1_SECTION in text else ""


def performance_markdown(report: dict[str, Any], script_command: str, png: bool,
                         train_report: dict[str, Any] | None = None, batch1: str = "") -> str:
    machine, settings = report["machine"], report["settings"]
    batch, results = settings["batch_size"], report["results"]
    levels = ", ".join(level_label(lv) for lv in settings["levels"])
    targets = " and ".join(level_label(lv) for lv in settings["levels"] if isinstance(lv, float))
    lines = [
        "# Engine speed", "",
        f"Generated by `{script_command}` on {report['generated']} (the batch-1 section at the end by "
        "`benchmarks/batch1_latency.py`). Do not edit by hand.", "",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores ({machine['cores_available']} available to the process), "
        f"{machine['platform']}, Python {machine['python']}, torch {report['torch']}, timm {report['timm']}.",
        f"- Batch-1 latency and batch-{batch} throughput, at the thread count of each table; {settings['warmup']} "
        f"warm-up round(s), then {settings['repeats']} recorded rounds per setting; median with [25th-75th percentile].",
        f"- Levels: {levels}. low and high are the paper's schedules (for other backbones and sizes, schedules "
        "of the same shape with the FLOPs ratio of ViT-B/16's); "
        f"{targets} are FLOPs-ratio targets, each solved into the schedule of high's shape (most merging in "
        "early layers) closest to it.",
        f"- Per setting, {2 + 2 * len(settings['levels'])} copies of the same random-init model run in one "
        "process, interleaved each round (timm, patched r=0, then ToMe and PYRA at every level, at batch 1, "
        "then the same at batch B), under `torch.inference_mode`. PYRA's token-gate weights are set to small "
        "random values so it does its full work. \"default\" is the shipped DINOv2 ViT-S/14 (patch 14).",
        "- GFLOPs are exact counts for one image (matmuls and convolutions, 2 per multiply-accumulate); "
        "the FLOPs ratio is uncompressed / merged. Speed-up is median batch throughput over timm's, then "
        "timm's median batch-1 latency over the model's, after the slash; speed-up / FLOPs ratio (of the "
        "throughput) is how much of the FLOPs saving turns into speed. Overheads are extra time per image "
        "at batch throughput.", "",
        "## Summary", "",
        markdown_table(
            ["backbone", "px", "tokens", "threads", "level", "FLOPs ratio", "ToMe speed-up (throughput / latency)",
             "ToMe speed-up / FLOPs ratio", "PYRA speed-up (throughput / latency)", "PYRA overhead vs ToMe"],
            summary_rows(results),
        ), "",
        *charts_markdown(png),
        *overhead_markdown(results),
        *efficiency_markdown(results, batch),
    ]
    header = ["method", "level", "tokens", "GFLOPs", "FLOPs ratio", "batch-1 latency ms, median [p25-p75]",
              f"batch-{batch} images/s, median [p25-p75]", "speed-up (throughput / latency)",
              "speed-up / FLOPs ratio", "overhead"]
    for r in results:
        schedules = "; ".join(f"{lv['label']} = {lv['schedule']}" for lv in r["levels"])
        lines += [
            f"## {r['backbone']} at {r['img_size']} px ({r['tokens']} tokens), {r['threads']} thread(s)", "",
            f"    {r['command']}", "",
            f"{machine['cpu']}, {machine['cores']} cores; batch {r['batch_size']}, {r['threads']} thread(s), "
            f"{r['warmup']} warm-up + {r['repeats']} recorded rounds. Tokens merged per layer: {schedules}.", "",
            markdown_table(header, detail_rows(r)), "",
        ]
    lines += [f"Skipped {skip['setting']}: {skip['reason']}\n" for skip in report["skipped"]]
    lines += ["Raw figures: [perf/engine_speed.json](perf/engine_speed.json).", ""]
    return "\n".join(lines + training_markdown(train_report)) + (("\n" + batch1) if batch1 else "")


def training_markdown(train_report: dict[str, Any] | None) -> list[str]:
    """The training-step section, from benchmarks/train_speed.py's JSON (if it has been run)."""
    if train_report is None:
        return ["## Training step time", "", "Not measured yet: run `python benchmarks/train_speed.py`.", ""]
    lines = [
        "## Training step time", "",
        f"Generated by `{train_report['command']}` on the same machine ({train_report['machine']['cpu']}, "
        f"{train_report['machine']['cores']} cores). One step = forward, cross-entropy, backward and an AdamW "
        "update of the trainable parameters (LoRA rank 4 on qkv + head, plus PYRA's gates for PYRA), "
        "drop-path 0.1, LoRA dropout 0.1; three models interleaved after two warm-up rounds; median "
        "[25th-75th percentile].", "",
    ]
    rows = []
    for result in train_report["results"]:
        for method, figures in result["methods"].items():
            step = figures["step_ms"]
            rows.append([
                result["backbone"], str(result["img_size"]), str(result["batch"]), str(result["threads"]),
                " ".join(map(str, result["schedule"])) if method != "none" else "uncompressed",
                {"none": "LoRA", "tome": "ToMe + LoRA", "pyra": "PYRA + LoRA"}[method],
                f"{step['median']:.0f} [{step['p25']:.0f}-{step['p75']:.0f}]",
                f"{figures['images_per_s']:.1f}", f"{figures['speedup_vs_uncompressed']:.2f}x",
                f"{result['flops_ratio']:.2f}x" if method != "none" else "1.00x",
            ])
    lines.append(markdown_table(
        ["backbone", "px", "batch", "threads", "schedule", "method", "ms / step", "img/s", "speed-up",
         "FLOPs ratio (forward)"], rows))
    lines += ["", "Raw figures: [perf/train_speed.json](perf/train_speed.json).", ""]
    return lines


# ---------------------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------------------

def speedup_figure(results: list[dict[str, Any]], measure: str) -> go.Figure:
    """ToMe speed-up (`measure`: "throughput" or "latency") against the FLOPs ratio, one line per setting."""
    fig = go.Figure()
    palette = {}
    for r in results:
        color = palette.setdefault((r["backbone"], r["img_size"]), COLORS[len(palette) % len(COLORS)])
        fig.add_trace(go.Scatter(
            x=[1.0] + [lv["flops_ratio"]["tome"] for lv in r["levels"]],
            y=[1.0] + [lv["methods"]["tome"][f"speedup_{measure}"] for lv in r["levels"]],
            text=["uncompressed"] + [lv["label"] for lv in r["levels"]],
            mode="lines+markers", name=f"{r['backbone']} {r['img_size']} px, {r['threads']} thread{'s' if r['threads'] > 1 else ''}",
            line={"color": color, "dash": "solid" if r["threads"] == 1 else "dot"},
            hovertemplate="%{text}: FLOPs ratio %{x:.2f}x, speed-up %{y:.2f}x",
        ))
    top = max([3.5] + [lv["flops_ratio"]["tome"] for r in results for lv in r["levels"]])
    fig.add_trace(go.Scatter(x=[1.0, top], y=[1.0, top], mode="lines", name="ideal (speed-up = FLOPs ratio)",
                             line={"color": "gray", "dash": "dash"}, hoverinfo="skip"))
    fig.update_layout(
        title=CHARTS[measure][1], template="plotly_white", xaxis_title="FLOPs ratio (uncompressed / ToMe)",
        yaxis_title=f"{measure} speed-up over timm (medians)", legend={"font": {"size": 10}},
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig


def write_charts(results: list[dict[str, Any]], folder: Path, png: bool) -> list[Path]:
    paths = []
    for measure, (stem, _) in CHARTS.items():
        paths += write_chart(speedup_figure(results, measure), folder / stem, png=png)
    return paths


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="vit_tiny at 112 px, 1 thread, 2 repeats (< 2 minutes)")
    parser.add_argument("--out", type=Path, default=REPO / "docs",
                        help="folder for PERFORMANCE.md, perf/ and charts/ (default docs/)")
    parser.add_argument("--no-png", action="store_true", help="write the HTML charts only (no Chromium needed)")
    parser.add_argument("--backbones", nargs="+", default=None, help=f"default: {' '.join(BACKBONES)}")
    parser.add_argument("--sizes", nargs="+", type=int, default=None, help="image sizes in px (default 112 224)")
    parser.add_argument("--threads", nargs="+", type=int, default=None, help="thread counts (default 1 2)")
    parser.add_argument("--batch", type=int, default=8, help="images per forward for throughput (default 8)")
    parser.add_argument("--repeats", type=int, default=None, help="recorded rounds (default 9, 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="discarded rounds first (default 2, 1 with --quick)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quick = {"backbones": ["vit_tiny_patch16_224"], "sizes": [112], "threads": [1], "repeats": 2, "warmup": 1}
    full = {"backbones": BACKBONES, "sizes": SIZES, "threads": THREADS, "repeats": 9, "warmup": 2}
    chosen = {key: getattr(args, key) if getattr(args, key) is not None else default
              for key, default in (quick if args.quick else full).items()}
    settings = plan(chosen["backbones"], chosen["sizes"], chosen["threads"])
    report = run_matrix(settings, args.batch, chosen["repeats"], chosen["warmup"])
    command = shlex.join(["python", "benchmarks/engine_speed.py", *(sys.argv[1:] if argv is None else argv)])
    report["command"] = command
    (args.out / "perf").mkdir(parents=True, exist_ok=True)
    (args.out / "perf" / "engine_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    written = write_charts(report["results"], args.out / "charts", png=not args.no_png)
    train_json = args.out / "perf" / "train_speed.json"
    train_report = json.loads(train_json.read_text()) if train_json.is_file() else None
    doc = args.out / "PERFORMANCE.md"
    doc.write_text(performance_markdown(report, command, not args.no_png, train_report, batch1_section(doc)))
    for path in (args.out / "PERFORMANCE.md", args.out / "perf" / "engine_speed.json", *written):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
