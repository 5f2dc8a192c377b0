"""Benchmark figures as text: markdown tables, median [p25-p75] spreads, the engine benchmark's
table, and a description of the machine that measured them.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


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


def spread_text(spread: dict[str, float], digits: int) -> str:
    """'median [p25-p75]' of a SpeedStats dict."""
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
            spread_text(m["latency_ms"], 1),
            spread_text(m["throughput"], 1),
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


def write_section(path: Path, name: str, markdown: str) -> None:
    """Replace the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` in the file at `path`."""
    begin, finish = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8")
    start, end = text.index(begin) + len(begin), text.index(finish)
    path.write_text(text[:start] + "\n" + markdown.strip("\n") + "\n" + text[end:], encoding="utf-8")
