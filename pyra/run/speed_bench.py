"""The engine benchmark: timm vs ToMe vs PYRA on one backbone, measured side by side.

Copies of the same random-init model run interleaved in one process:
  uncompressed  the plain timm model
  patched_r0    patched with method "none" (what the patch itself costs)
  tome          ToMe at a schedule
  pyra          PYRA at a schedule, with non-zero token-gate weights so it does real work
`bench` measures these four at one schedule; `bench_sweep` measures ToMe and PYRA at several
levels against one uncompressed pair (2 + 2 x levels models). Results carry the exact FLOPs of
each model next to its measured latency and throughput. Random weights are enough: the work
per forward does not depend on their values.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn

from pyra.backbones.factory import create_backbone
from pyra.method.patch import geometry, patch
from pyra.method.schedule import ScheduleSpec, VitGeometry, forward_flops, resolve_schedule, tokens_per_layer
from pyra.report.tables import machine_info
from pyra.run.speed import SpeedReport, measure_speed, speedup

BENCH_MODELS: dict[str, str] = {  # key in the result -> label in tables
    "uncompressed": "timm (uncompressed)",
    "patched_r0": "patched r=0",
    "tome": "ToMe",
    "pyra": "PYRA",
}
_FLOPS_METHOD = {"uncompressed": "none", "patched_r0": "none", "tome": "tome", "pyra": "pyra"}
SWEEP_LEVELS: tuple[ScheduleSpec, ...] = ("low", 2.5, 3.0, "high")
"""Compression levels of the benchmarks: the paper's two schedules and two FLOPs-ratio targets between."""


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
        schedule: tokens merged per layer (see `pyra.method.schedule`).
        batch_size: images per forward for the throughput figure.
        threads: torch intra-op threads during the measurement.
        repeats: recorded interleaved rounds; warmup: discarded rounds before them.
    """
    base = _random_backbone(backbone, img_size)
    geo = geometry(base)
    resolved = resolve_schedule(schedule, geo)  # validates the schedule before building copies
    stats = measure_speed(
        bench_models(base, [resolved]), img_size=img_size, batch_size=batch_size, repeats=repeats,
        warmup=warmup, threads=threads,
    )
    stats = {name.removesuffix("@0"): s for name, s in stats.items()}  # one level: "tome@0" -> "tome"
    flops = {name: forward_flops(resolved, geo, _FLOPS_METHOD[name]) for name in stats}
    return {
        "machine": machine_info(),
        **_header(backbone, img_size, geo, stats["uncompressed"].threads, batch_size, repeats, warmup),
        "schedule_spec": _spec_json(schedule),
        "schedule": resolved,
        "tokens_per_layer": tokens_per_layer(resolved, geo),
        "flops": flops,
        "flops_ratio": {name: flops["uncompressed"] / f for name, f in flops.items()},
        "methods": {name: _timing(stats, name, flops["uncompressed"] / flops[name]) for name in stats},
        "overhead_pct": {
            "pyra_vs_tome": _overhead_pct(stats, "pyra", "tome"),
            "patched_r0_vs_uncompressed": _overhead_pct(stats, "patched_r0", "uncompressed"),
        },
    }


def bench_sweep(
    backbone: str,
    img_size: int,
    levels: Sequence[ScheduleSpec] = SWEEP_LEVELS,
    batch_size: int = 8,
    threads: int = 1,
    repeats: int = 7,
    warmup: int = 2,
) -> dict[str, Any]:
    """Measure timm, patched r=0, and ToMe and PYRA at every level, all in one interleaved run.

    Same arguments as `bench`, with `levels` (schedule specs) for its one schedule. The result
    has the uncompressed and patched-r0 timings once, then one entry per level under "levels".
    """
    base = _random_backbone(backbone, img_size)
    geo = geometry(base)
    schedules = [resolve_schedule(level, geo) for level in levels]
    stats = measure_speed(
        bench_models(base, schedules), img_size=img_size, batch_size=batch_size, repeats=repeats,
        warmup=warmup, threads=threads,
    )
    full = forward_flops([0] * geo.depth, geo, "none")
    return {
        **_header(backbone, img_size, geo, stats["uncompressed"].threads, batch_size, repeats, warmup),
        "flops_uncompressed": full,
        "uncompressed": _timing(stats, "uncompressed", 1.0),
        "patched_r0": {
            **_timing(stats, "patched_r0", 1.0),
            "overhead_pct": _overhead_pct(stats, "patched_r0", "uncompressed"),
        },
        "levels": [_level_result(stats, geo, full, i, level, schedule)
                   for i, (level, schedule) in enumerate(zip(levels, schedules))],
    }


def level_label(level: ScheduleSpec) -> str:
    """Short name of a level: "low", "high", "2.5x" for a FLOPs-ratio target, else the spec."""
    if isinstance(level, float):
        return f"{level:g}x"
    return str(_spec_json(level))


def _level_result(stats: SpeedReport, geo: VitGeometry, full: int, index: int, level: ScheduleSpec,
                  schedule: list[int]) -> dict[str, Any]:
    """One level of a sweep (`full`: the uncompressed FLOPs): its schedule, FLOPs, ToMe and PYRA
    timings and PYRA's overhead."""
    flops = {method: forward_flops(schedule, geo, method) for method in ("tome", "pyra")}
    named = {"uncompressed": stats["uncompressed"], **{m: stats[f"{m}@{index}"] for m in flops}}
    return {
        "level": _spec_json(level),
        "label": level_label(level),
        "schedule": schedule,
        "tokens_per_layer": tokens_per_layer(schedule, geo),
        "flops": flops,
        "flops_ratio": {method: full / f for method, f in flops.items()},
        "methods": {method: _timing(named, method, full / f) for method, f in flops.items()},
        "overhead_pct": {"pyra_vs_tome": _overhead_pct(named, "pyra", "tome")},
    }


def _header(backbone: str, img_size: int, geo: VitGeometry, threads: int, batch_size: int, repeats: int,
            warmup: int) -> dict[str, Any]:
    return {
        "threads": threads,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "backbone": backbone,
        "img_size": img_size,
        "tokens": geo.num_tokens,
        "depth": geo.depth,
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
    }


def _spec_json(spec: ScheduleSpec) -> Any:
    return spec if isinstance(spec, (int, float, str)) else list(spec)


def _random_backbone(backbone: str, img_size: int) -> nn.Module:
    """Seeded random-init timm model with a 1000-class head; "default" loads the shipped weights."""
    torch.manual_seed(0)
    if backbone == "default":
        return create_backbone("default", 1000, img_size).eval()
    return create_backbone(backbone, 1000, img_size, pretrained=False).eval()


def bench_models(base: nn.Module, schedules: Sequence[list[int]]) -> dict[str, nn.Module]:
    """`base` unchanged, patched r=0, then ToMe and PYRA at each schedule ("tome@0", "pyra@0", ...)."""
    models = {"uncompressed": base, "patched_r0": patch(copy.deepcopy(base), "none", 0)}
    for index, schedule in enumerate(schedules):
        models[f"tome@{index}"] = patch(copy.deepcopy(base), "tome", schedule)
        models[f"pyra@{index}"] = _working_pyra(patch(copy.deepcopy(base), "pyra", schedule))
    return models


def _working_pyra(model: nn.Module) -> nn.Module:
    """Give PYRA's token gates small random weights (w_d = 0 would make every gate exactly 0)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in model.blocks:
            if block.pyra is not None:
                block.pyra.w_d.copy_(0.02 * torch.randn(block.pyra.w_d.shape, generator=generator))
    return model


def _timing(stats: SpeedReport, name: str, flops_ratio: float) -> dict[str, Any]:
    """Spreads and speed-ups (over "uncompressed", medians) of one measured model."""
    by_throughput = speedup(stats, "uncompressed", measure="throughput")[name]
    return {
        "label": BENCH_MODELS[name],
        "latency_ms": stats[name].latency_ms.to_dict(),  # batch 1
        "throughput": stats[name].throughput.to_dict(),  # images/s at batch_size
        "speedup_throughput": by_throughput,
        "speedup_latency": speedup(stats, "uncompressed", measure="latency")[name],
        "speedup_over_flops_ratio": by_throughput / flops_ratio,
    }


def _overhead_pct(stats: SpeedReport, name: str, reference: str) -> dict[str, float]:
    """Extra time of `name` over `reference`, in percent of the reference's time (medians)."""
    return {
        "throughput": 100.0 * (stats[reference].throughput.median / stats[name].throughput.median - 1.0),
        "latency": 100.0 * (stats[name].latency_ms.median / stats[reference].latency_ms.median - 1.0),
    }
