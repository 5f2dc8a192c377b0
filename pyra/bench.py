"""The engine benchmark: timm vs ToMe vs PYRA on one backbone, measured side by side.

Four copies of the same random-init model run interleaved in one process:
  uncompressed  the plain timm model
  patched_r0    patched with method "none" (what the patch itself costs)
  tome          ToMe at the schedule
  pyra          PYRA at the schedule, with non-zero token-gate weights so it does real work
and the result carries the exact FLOPs of each next to its measured latency and throughput.
Random weights are enough: the work per forward does not depend on their values.
"""
from __future__ import annotations

import copy
import os
import platform
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from pyra.backbone import create_backbone
from pyra.evaluate import SpeedReport, measure_speed, speedup
from pyra.patch import geometry, patch, schedule_flops
from pyra.schedule import ScheduleSpec, resolve_schedule, tokens_per_layer

BENCH_MODELS: dict[str, str] = {  # key in the result -> label in tables
    "uncompressed": "timm (uncompressed)",
    "patched_r0": "patched r=0",
    "tome": "ToMe",
    "pyra": "PYRA",
}
_FLOPS_METHOD = {"uncompressed": "none", "patched_r0": "none", "tome": "tome", "pyra": "pyra"}


def bench(
    backbone: str,
    img_size: int,
    schedule: ScheduleSpec,
    batch_size: int = 8,
    threads: int = 1,
    repeats: int = 7,
    warmup: int = 2,
) -> dict[str, Any]:
    """Measure timm, patched r=0, ToMe and PYRA at `schedule`; return a JSON-ready dict.

    Args:
        backbone: a timm VisionTransformer name, or "default" (the shipped DINOv2 ViT-S/14).
        img_size: input size in pixels.
        schedule: tokens merged per layer (see `pyra.schedule`).
        batch_size: images per forward for the throughput figure.
        threads: torch intra-op threads during the measurement.
        repeats: recorded interleaved rounds; warmup: discarded rounds before them.
    """
    base = _random_backbone(backbone, img_size)
    geo = geometry(base)
    resolved = resolve_schedule(schedule, geo)  # validates the schedule before building copies
    models = bench_models(base, resolved)
    stats = measure_speed(
        models, img_size=img_size, batch_size=batch_size, repeats=repeats, warmup=warmup, threads=threads
    )
    flops = {name: schedule_flops(model, resolved, _FLOPS_METHOD[name]) for name, model in models.items()}
    return {
        "machine": machine_info(),
        "threads": stats["uncompressed"].threads,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "backbone": backbone,
        "img_size": img_size,
        "tokens": geo.num_tokens,
        "depth": geo.depth,
        "schedule_spec": schedule if isinstance(schedule, (int, float, str)) else list(schedule),
        "schedule": resolved,
        "tokens_per_layer": tokens_per_layer(resolved, geo),
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "flops": flops,
        "flops_ratio": {name: flops["uncompressed"] / f for name, f in flops.items()},
        "methods": _method_results(stats, flops),
        "overhead_pct": {
            "pyra_vs_tome": _overhead_pct(stats, "pyra", "tome"),
            "patched_r0_vs_uncompressed": _overhead_pct(stats, "patched_r0", "uncompressed"),
        },
    }


def _random_backbone(backbone: str, img_size: int) -> nn.Module:
    """Seeded random-init timm model with a 1000-class head; "default" loads the shipped weights."""
    torch.manual_seed(0)
    if backbone == "default":
        return create_backbone("default", 1000, img_size).eval()
    return create_backbone(backbone, 1000, img_size, pretrained=False).eval()


def bench_models(base: nn.Module, schedule: list[int]) -> dict[str, nn.Module]:
    """The four models of the benchmark (see module docstring); `base` is used unchanged."""
    tome = patch(copy.deepcopy(base), "tome", schedule)
    pyra_model = patch(copy.deepcopy(base), "pyra", schedule)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # w_d = 0 would make PYRA's token gate exactly 0
        for block in pyra_model.blocks:
            if block.pyra is not None:
                block.pyra.w_d.copy_(0.02 * torch.randn(block.pyra.w_d.shape, generator=generator))
    return {
        "uncompressed": base,
        "patched_r0": patch(copy.deepcopy(base), "none", 0),
        "tome": tome,
        "pyra": pyra_model,
    }


def _method_results(stats: SpeedReport, flops: dict[str, int]) -> dict[str, dict[str, Any]]:
    by_throughput = speedup(stats, "uncompressed", measure="throughput")
    by_latency = speedup(stats, "uncompressed", measure="latency")
    out = {}
    for name, s in stats.items():
        flops_ratio = flops["uncompressed"] / flops[name]
        out[name] = {
            "label": BENCH_MODELS[name],
            "latency_ms": s.latency_ms.to_dict(),  # batch 1
            "throughput": s.throughput.to_dict(),  # images/s at batch_size
            "speedup_throughput": by_throughput[name],
            "speedup_latency": by_latency[name],
            "speedup_over_flops_ratio": by_throughput[name] / flops_ratio,
        }
    return out


def _overhead_pct(stats: SpeedReport, name: str, reference: str) -> dict[str, float]:
    """Extra time of `name` over `reference`, in percent of the reference's time (medians)."""
    return {
        "throughput": 100.0 * (stats[reference].throughput.median / stats[name].throughput.median - 1.0),
        "latency": 100.0 * (stats[name].latency_ms.median / stats[reference].latency_ms.median - 1.0),
    }


def machine_info() -> dict[str, Any]:
    """CPU model, core counts and platform, for the record."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": available,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    "method", "tokens", "GFLOPs", "FLOPs ratio", "batch-1 latency ms, median [p25-p75]",
    "batch-{batch} images/s, median [p25-p75]", "speed-up (throughput / latency)",
    "speed-up / FLOPs ratio", "PYRA overhead vs ToMe", "patched-r0 overhead vs timm",
)


def _spread(spread: dict[str, float], digits: int) -> str:
    return f"{spread['median']:.{digits}f} [{spread['p25']:.{digits}f}-{spread['p75']:.{digits}f}]"


def bench_rows(result: dict[str, Any]) -> list[list[str]]:
    """One table row per model of a `bench` result (cells as in TABLE_COLUMNS)."""
    first, last = result["tokens_per_layer"][0], result["tokens_per_layer"][-1]
    overhead = result["overhead_pct"]
    rows = []
    for name, m in result["methods"].items():
        merges = name in ("tome", "pyra")
        rows.append([
            m["label"],
            f"{first} -> {last}" if merges else str(first),
            f"{result['flops'][name] / 1e9:.2f}",
            f"{result['flops_ratio'][name]:.2f}x",
            _spread(m["latency_ms"], 1),
            _spread(m["throughput"], 1),
            f"{m['speedup_throughput']:.2f}x / {m['speedup_latency']:.2f}x",
            f"{m['speedup_over_flops_ratio']:.2f}",
            f"{overhead['pyra_vs_tome']['throughput']:+.1f}%" if name == "pyra" else "",
            f"{overhead['patched_r0_vs_uncompressed']['throughput']:+.1f}%" if name == "patched_r0" else "",
        ])
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def bench_title(result: dict[str, Any]) -> str:
    """E.g. 'vit_base_patch16_224 at 224 px (197 tokens), schedule high = [40, 34, ...]'."""
    return (
        f"{result['backbone']} at {result['img_size']} px ({result['tokens']} tokens), "
        f"schedule {result['schedule_spec']} = {result['schedule']}"
    )


def format_bench(result: dict[str, Any]) -> str:
    """A `bench` result as a title, a settings line and a markdown table."""
    machine = result["machine"]
    settings = (
        f"batch {result['batch_size']}, {result['threads']} thread(s), {result['repeats']} interleaved repeats "
        f"after {result['warmup']} warm-up; {machine['cpu']}, {machine['cores']} cores; "
        f"torch {result['torch']}, timm {result['timm']}"
    )
    header = [c.format(batch=result["batch_size"]) for c in TABLE_COLUMNS]
    overhead_note = "Overheads are extra time per image at batch throughput (medians)."
    return "\n".join([bench_title(result), settings, "", markdown_table(header, bench_rows(result)), "", overhead_note])
