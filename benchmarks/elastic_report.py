"""The elastic matrix (benchmarks/elastic_matrix.py) as markdown tables.

Cells are pooled over every elastic_matrix*.json in a results folder (a full run, or the same
work split over processes). Pooled over (dataset, seed) pairs: accuracy per level and variant,
each elastic variant minus the model trained for that level (95% t-interval over the pairs),
every method against the frozen-feature probe, and the training time of each variant; then one
table per dataset.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from benchmarks.accuracy_report import verdict
from pyra.report.methods import method_label
from pyra.report.stats import SeedSummary, paired_seed_difference, seed_summary
from pyra.report.tables import markdown_table

METHOD_LABELS = {key: method_label(key) for key in ("tome", "pyra")}
VARIANT_LABELS = {"per-level": "one model per level", "target-only": "target-only, off-target",
                  "uniform": "elastic uniform", "sandwich": "elastic sandwich",
                  "sandwich-labels": "elastic sandwich, labels only"}
ELASTIC = ("uniform", "sandwich", "sandwich-labels")
Pair = tuple[str, int]  # (dataset, seed)


def load_elastic(results_dir: Path, quick: bool = False) -> list[dict[str, Any]]:
    """Every elastic_matrix*.json in `results_dir` from full runs (or from --quick runs)."""
    paths = sorted(p for p in results_dir.glob("elastic_matrix*.json") if p.stem.endswith("_quick") == quick)
    return [json.loads(p.read_text()) for p in paths]


class Cells:
    """(method, variant, level) -> (dataset, seed) -> cell, over every matrix file."""

    def __init__(self, matrices: Sequence[dict[str, Any]]):
        self.by_key: dict[tuple[str, str, int], dict[Pair, dict[str, Any]]] = defaultdict(dict)
        self.levels: dict[int, dict[str, Any]] = {}
        for matrix in matrices:
            for cell in matrix["cells"]:
                self.by_key[(cell["method"], cell["variant"], cell["level"])][(cell["dataset"], cell["seed"])] = cell
                self.levels.setdefault(cell["level"], {"fraction": cell["fraction"], "schedule": cell["schedule"],
                                                       "flops_ratio": cell["flops_ratio"]})
        self.pairs = sorted({pair for cells in self.by_key.values() for pair in cells})
        self.elastic = tuple(v for v in ELASTIC if any(key[1] == v for key in self.by_key))  # variants measured

    def accuracy(self, method: str, variant: str, level: int, pairs: Sequence[Pair]) -> Optional[list[float]]:
        cells = self.by_key.get((method, variant, level), {})
        return [cells[p]["accuracy"] for p in pairs] if all(p in cells for p in pairs) else None

    def baseline(self, name: str, level: int, pairs: Sequence[Pair]) -> Optional[list[float]]:
        """probe / tome_free / uncompressed at `level` (the uncompressed model at level 0 only)."""
        variant = {"probe": "probe", "tome_free": "training-free", "uncompressed": "uncompressed"}[name]
        if name == "tome_free" and level == 0:
            return self.accuracy("uncompressed", "uncompressed", 0, pairs)
        return self.accuracy(name, variant, level, pairs)


def _mean(values: Optional[list[float]], spread: bool = False) -> str:
    if not values:
        return ""
    summary = seed_summary(values)
    return f"{100 * summary.mean:.1f}" + (f" ± {100 * summary.std:.1f}" if spread and len(values) > 1 else "")


def _difference(a: Optional[list[float]], b: Optional[list[float]], names: tuple[str, str]) -> str:
    if not a or not b or len(a) < 2:
        return "n/a"
    diff: SeedSummary = paired_seed_difference(a, b)
    return f"{100 * diff.mean:+.1f} [{100 * diff.low:+.1f}, {100 * diff.high:+.1f}] {verdict(diff, names)}"


def _level_name(cells: Cells, level: int) -> str:
    info = cells.levels[level]
    return f"{info['fraction']:g} ({info['flops_ratio']:.2f}x)"


def accuracy_table(cells: Cells, pairs: Sequence[Pair], spread: bool) -> str:
    header = ["level (FLOPs ratio)", "probe", "ToMe training-free"]
    shown = ("per-level", "target-only", *cells.elastic)
    header += [f"{METHOD_LABELS[m]}, {VARIANT_LABELS[v]}" for m in METHOD_LABELS for v in shown]
    rows = []
    for level in sorted(cells.levels):
        row = [_level_name(cells, level), _mean(cells.baseline("probe", level, pairs), spread),
               _mean(cells.baseline("tome_free", level, pairs), spread)]
        row += [_mean(cells.accuracy(m, v, level, pairs), spread) for m in METHOD_LABELS for v in shown]
        rows.append(row)
    return markdown_table(header, rows)


def difference_table(cells: Cells, pairs: Sequence[Pair]) -> str:
    """Each elastic variant minus the per-level model, per level and method."""
    header = ["level (FLOPs ratio)"] + [f"{METHOD_LABELS[m]}: {v} - per level" for m in METHOD_LABELS
                                        for v in cells.elastic]
    rows = []
    for level in sorted(cells.levels):
        row = [_level_name(cells, level)]
        for method in METHOD_LABELS:
            per_level = cells.accuracy(method, "per-level", level, pairs)
            for variant in cells.elastic:
                row.append(_difference(cells.accuracy(method, variant, level, pairs), per_level, (variant, "per level")))
        rows.append(row)
    return markdown_table(header, rows)


def probe_table(cells: Cells, pairs: Sequence[Pair]) -> str:
    """Every trained variant minus the frozen-feature probe at the same level."""
    header = ["level (FLOPs ratio)", "LoRA uncompressed - probe"] + [
        f"{METHOD_LABELS[m]}, {v} - probe" for m in METHOD_LABELS for v in ("per-level", *cells.elastic)]
    rows = []
    for level in sorted(cells.levels):
        probe = cells.baseline("probe", level, pairs)
        uncompressed = cells.baseline("uncompressed", 0, pairs) if level == 0 else None
        row = [_level_name(cells, level), _difference(uncompressed, probe, ("LoRA", "probe")) if uncompressed else ""]
        row += [_difference(cells.accuracy(m, v, level, pairs), probe, (v, "probe"))
                for m in METHOD_LABELS for v in ("per-level", *cells.elastic)]
        rows.append(row)
    return markdown_table(header, rows)


def choice_lines(cells: Cells, pairs: Sequence[Pair]) -> list[str]:
    """Which elastic variant falls least behind one model per level, at its worst level and method."""
    worst: dict[str, tuple[float, str]] = {}
    for variant in cells.elastic:
        for method, label in METHOD_LABELS.items():
            for level in sorted(cells.levels):
                elastic = cells.accuracy(method, variant, level, pairs)
                per_level = cells.accuracy(method, "per-level", level, pairs)
                if not elastic or not per_level:
                    continue
                gap = seed_summary(elastic).mean - seed_summary(per_level).mean
                if variant not in worst or gap < worst[variant][0]:
                    worst[variant] = (gap, f"{label} at level {_level_name(cells, level)}")
    if len(worst) < 2:
        return []
    lines = [f"- elastic {variant}: at worst {100 * gap:+.1f} points against one model per level ({where})."
             for variant, (gap, where) in worst.items()]
    best = max(worst, key=lambda variant: worst[variant][0])
    within = "within" if worst[best][0] >= -0.02 else "not within"
    return lines + [f"- The smaller worst-case shortfall is elastic {best}'s: {within} 2 points of one model per "
                    "level at every level and for both methods (pooled means)."]


def off_target_lines(cells: Cells, pairs: Sequence[Pair]) -> list[str]:
    """At the uncompressed level: each elastic model against the model trained only for the target."""
    lines = []
    for method, label in METHOD_LABELS.items():
        target_only = cells.accuracy(method, "target-only", 0, pairs)
        for variant in cells.elastic:
            elastic = cells.accuracy(method, variant, 0, pairs)
            lines.append(f"- {label}, elastic {variant} - target-only, both uncompressed: "
                         f"{_difference(elastic, target_only, (variant, 'target-only'))} points.")
    return lines


def time_table(cells: Cells, pairs: Sequence[Pair]) -> str:
    """Training seconds per (dataset, seed): the per-level protocol is the sum of its models."""
    target = max(cells.levels)

    def seconds(method: str, variant: str, levels: Sequence[int]) -> Optional[float]:
        values = []
        for pair in pairs:
            total = 0.0
            for level in levels:
                cell = cells.by_key.get((method, variant, level), {}).get(pair)
                if cell is None or cell["seconds"] is None:
                    return None
                total += cell["seconds"]
            values.append(total)
        return sum(values) / len(values) if values else None

    rows = []
    uncompressed = seconds("uncompressed", "uncompressed", [0])
    for method, label in METHOD_LABELS.items():
        per_level = seconds(method, "per-level", [level for level in cells.levels if level > 0])
        for name, value in (("one model per level (all compressed levels)", per_level),
                            ("one model at the target", seconds(method, "per-level", [target])),
                            *((VARIANT_LABELS[v], seconds(method, v, [target])) for v in cells.elastic)):
            rows.append([label, name, "n/a" if value is None else f"{value:.0f}"])
    rows.append(["LoRA", "uncompressed", "n/a" if uncompressed is None else f"{uncompressed:.0f}"])
    return markdown_table(["method", "training", "mean seconds per (dataset, seed)"], rows)


def elastic_section(matrices: Sequence[dict[str, Any]]) -> list[str]:
    cells = Cells(matrices)
    first = matrices[0]
    settings, train = first["settings"], first["settings"]["train"]
    datasets = sorted({dataset for dataset, _ in cells.pairs})
    lines = ["## Every slider position a trained model: elastic training against one model per level", ""]
    lines += [f"    {m['command']}" for m in matrices] + [""]
    lines += [
        f"Backbone `{settings['backbone']}` at {settings['img_size']} px; levels are fractions "
        f"{settings['fractions']} of the `{settings['schedule']}` schedule; the default recipe: "
        f"{train['epochs']} epochs, batch {train['batch_size']}, lr {train['lr']:g}, PYRA lr {train['pyra_lr']:g}, "
        f"head start (C = {train['head_start_c']:g}), no dropout or drop-path. {len(cells.pairs)} (dataset, seed) "
        f"pairs: {', '.join(datasets)} x seeds {sorted({s for _, s in cells.pairs})}, each seed its own split "
        f"({100 * settings['val_fraction']:.0f}% validation; at most "
        + ", ".join(f"{n} for {d}" for d, n in settings["max_per_class"].items()) + " images per class). "
        f"{sum(m.get('minutes', 0) for m in matrices):.0f} process-minutes on {first['machine']['cpu']} "
        f"({first['machine']['cores']} cores, {first['threads']} torch thread per process, the processes side by "
        "side), so the training times below are comparable with each other, not with a quiet machine.", "",
        "Variants: *probe* = logistic regression (scikit-learn's default C = 1) on the frozen backbone's features at "
        "that level; *one model per level* = ToMe / PYRA + LoRA trained at that level only (the paper's protocol; "
        "at level 0 it is the uncompressed LoRA model); *target-only, off-target* = the model trained for the last "
        "level, evaluated at every level (what the app showed before elastic training); *elastic uniform* = one "
        "model, one random level per step; *elastic sandwich* = one model, each step uncompressed on the labels plus "
        "the target and one random level on the uncompressed pass's soft predictions.", "",
        "### Pooled over all pairs: mean validation accuracy (%)", "",
        accuracy_table(cells, cells.pairs, spread=False), "",
        "### Elastic minus one model per level (points, 95% t-interval over the pairs)", "",
        "A difference is called only when its interval excludes 0.", "",
        difference_table(cells, cells.pairs), "",
        "### Which variant is the default", "",
        "The default is the variant whose pooled mean falls least behind one model per level at its worst "
        "(level, method): the slider's weakest point is what a user meets.", "",
        *choice_lines(cells, cells.pairs), "",
        "### Against the frozen-feature probe (points, 95% t-interval over the pairs)", "",
        probe_table(cells, cells.pairs), "",
        "### The slider before and after: uncompressed accuracy of an elastic model vs a target-only model", "",
        *off_target_lines(cells, cells.pairs), "",
        "### Training time", "",
        time_table(cells, cells.pairs), "",
    ]
    for dataset in datasets:
        pairs = [p for p in cells.pairs if p[0] == dataset]
        split = next((m["splits"][f"{dataset}@{s}"] for m in matrices for d, s in pairs
                      if f"{dataset}@{s}" in m.get("splits", {})), None)
        size = f" ({split['train']} training / {split['val']} validation images, {len(split['classes'])} classes)" \
            if split else ""
        lines += [f"### `sample:{dataset}`{size}: mean ± sd over {len(pairs)} seeds (%)", "",
                  accuracy_table(cells, pairs, spread=True), ""]
    return lines
