"""The accuracy matrix (benchmarks/accuracy_matrix.py) as markdown tables and charts.

Cells are pooled over every accuracy_matrix*.json in a results folder (a full run, or the
same work split over processes by dataset). Per dataset: accuracy mean +/- sd over seeds at
every level and method, the PYRA - ToMe difference per seed with a Student-t interval, and an
accuracy-vs-throughput chart; then the difference pooled over datasets and seeds.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import plotly.graph_objects as go

from pyra.backbones.factory import backbone_structure
from pyra.method.patch import geometry
from pyra.method.schedule import flops_ratio
from pyra.report.stats import paired_seed_difference, seed_summary
from pyra.report.tables import markdown_table

UNCOMPRESSED = "none"
LABELS = {"uncompressed": "LoRA, uncompressed", "tome_free": "ToMe training-free", "tome": "ToMe + LoRA",
          "pyra": "PYRA + LoRA"}


def load_matrices(results_dir: Path, quick: bool = False) -> list[dict[str, Any]]:
    """Every accuracy_matrix*.json in `results_dir` from full runs (or from --quick runs), by name."""
    paths = sorted(p for p in results_dir.glob("accuracy_matrix*.json") if p.stem.endswith("_quick") == quick)
    return [json.loads(p.read_text()) for p in paths]


def method_key(cell: dict[str, Any]) -> str:
    """'tome', 'tome_free', 'uncompressed', or 'pyra@<lr>' (one column per PYRA learning rate)."""
    return f"pyra@{cell['pyra_lr']:g}" if cell["method"] == "pyra" else cell["method"]


def method_label(key: str) -> str:
    method, _, lr = key.partition("@")
    return LABELS[method] + (f", PYRA lr {lr}" if lr else "")


def pooled_cells(matrices: Sequence[dict[str, Any]]) -> dict[str, dict[tuple[str, str], dict[int, float]]]:
    """dataset -> (level, method key) -> seed -> accuracy."""
    out: dict[str, dict[tuple[str, str], dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for matrix in matrices:
        for cell in matrix["cells"]:
            out[cell["dataset"]][(cell["level"], method_key(cell))][cell["seed"]] = cell["accuracy"]
    return out


def level_flops_ratios(matrix: dict[str, Any]) -> dict[str, float]:
    """Level -> uncompressed / ToMe FLOPs of one image, from the schedules the runs used."""
    settings = matrix["settings"]
    geo = geometry(backbone_structure(settings["backbone"], 2, settings["img_size"]))
    return {cell["level"]: flops_ratio(cell["schedule"], geo, "tome") for cell in matrix["cells"]}


def throughput_by_level(speed: Optional[dict[str, Any]], backbone: str, img_size: int,
                        threads: int = 2) -> Optional[dict[tuple[str, str], float]]:
    """(level, method) -> images/s from benchmarks/engine_speed.py's JSON, if it measured this setting.

    Method is "tome" or "pyra"; the uncompressed model's figure is under ("none", "uncompressed").
    """
    for result in (speed or {}).get("results", []):
        if (result["backbone"], result["img_size"], result["threads"]) == (backbone, img_size, threads):
            table = {(UNCOMPRESSED, "uncompressed"): result["uncompressed"]["throughput"]["median"]}
            for level in result["levels"]:
                for method, timing in level["methods"].items():
                    table[(str(level["level"]), method)] = timing["throughput"]["median"]
            return table
    return None


def _mean_sd(values: Sequence[float]) -> str:
    summary = seed_summary(values)
    spread = "" if math.isnan(summary.std) else f" ± {100 * summary.std:.1f}"
    return f"{100 * summary.mean:.1f}{spread}"


def _difference(a: dict[int, float], b: dict[int, float], names: tuple[str, str] = ("PYRA", "ToMe"),
                ) -> tuple[str, Optional[Any]]:
    """Mean of the per-seed differences a - b in points, its 95% t-interval and the verdict."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return ("n/a (one seed)" if seeds else "n/a"), None
    diff = paired_seed_difference([a[s] for s in seeds], [b[s] for s in seeds])
    return f"{100 * diff.mean:+.1f} [{100 * diff.low:+.1f}, {100 * diff.high:+.1f}] {verdict(diff, names)}", diff


def verdict(diff: Any, names: tuple[str, str]) -> str:
    """'(A better)' / '(B better)' when the 95% interval excludes 0, else '(unclear)'."""
    if diff.low > 0:
        return f"({names[0]} better)"
    if diff.high < 0:
        return f"({names[1]} better)"
    return "(unclear)"


def dataset_table(cells: dict[tuple[str, str], dict[int, float]], levels: Sequence[str],
                  ratios: dict[str, float], lrs: Sequence[float]) -> list[list[str]]:
    """One row per level: FLOPs ratio, each method's accuracy, PYRA - ToMe per learning rate."""
    rows = [["none", "1.00x", _mean_sd(list(cells[(UNCOMPRESSED, "uncompressed")].values())), "", "",
             *["" for _ in lrs], *["" for _ in lrs]]]
    for level in levels:
        pyra_keys = [f"pyra@{lr:g}" for lr in lrs]
        rows.append([
            level, f"{ratios[level]:.2f}x", "",
            _mean_sd(list(cells[(level, "tome_free")].values())),
            _mean_sd(list(cells[(level, "tome")].values())),
            *[_mean_sd(list(cells[(level, key)].values())) for key in pyra_keys],
            *[_difference(cells[(level, key)], cells[(level, "tome")])[0] for key in pyra_keys],
        ])
    return rows


def pooled_rows(pooled: dict[str, dict[tuple[str, str], dict[int, float]]], levels: Sequence[str],
                lrs: Sequence[float]) -> list[list[str]]:
    """PYRA - ToMe over every (dataset, seed) pair, per level and PYRA learning rate."""
    rows = []
    for level in levels:
        for lr in lrs:
            pairs = sum(len(set(c[(level, f"pyra@{lr:g}")]) & set(c[(level, "tome")])) for c in pooled.values())
            text = pooled_difference(pooled, (level, f"pyra@{lr:g}"), (level, "tome"))[0]
            rows.append([level, f"{lr:g}", str(pairs), text])
    return rows


def pooled_difference(pooled: dict[str, dict[tuple[str, str], dict[int, float]]], a: tuple[str, str],
                      b: tuple[str, str], names: tuple[str, str] = ("PYRA", "ToMe")) -> tuple[str, Optional[Any]]:
    """Cell a - cell b over every (dataset, seed) pair that has both: text and summary."""
    first, second = [], []
    for cells in pooled.values():
        for seed in sorted(set(cells[a]) & set(cells[b])):
            first.append(cells[a][seed])
            second.append(cells[b][seed])
    return _difference(dict(enumerate(first)), dict(enumerate(second)), names)


def claims_lines(pooled: dict[str, dict[tuple[str, str], dict[int, float]]], levels: Sequence[str],
                 lrs: Sequence[float]) -> list[str]:
    """The paper's two claims (PYRA matches uncompressed LoRA at low compression and beats ToMe + LoRA at
    high compression), tested on the pooled pairs, one line per PYRA lr."""
    low, high = levels[0], levels[-1]
    lines = ["### The paper's claims on this data", "",
             "The paper (VTAB-1k, ViT-B/16) reports PYRA within 0.1 points of uncompressed LoRA at `low` and "
             "1.6 points above ToMe + LoRA at `high`. Here, over every (dataset, seed) pair:", ""]
    for lr in lrs:
        key = f"pyra@{lr:g}"
        vs_full = pooled_difference(pooled, (low, key), (UNCOMPRESSED, "uncompressed"), ("PYRA", "uncompressed"))[0]
        vs_tome = pooled_difference(pooled, (high, key), (high, "tome"))[0]
        lines.append(f"- PYRA lr {lr:g}: PYRA at `{low}` - uncompressed LoRA {vs_full} points; "
                     f"PYRA - ToMe + LoRA at `{high}` {vs_tome} points.")
    return lines + [""]


def accuracy_chart(dataset: str, cells: dict[tuple[str, str], dict[int, float]], levels: Sequence[str],
                   x_of: dict[tuple[str, str], float], x_title: str, lrs: Sequence[float]) -> go.Figure:
    """Accuracy (mean +/- sd over seeds) against throughput (or FLOPs ratio), one line per method."""
    figure = go.Figure()
    series = [("tome_free", "tome"), ("tome", "tome")] + [(f"pyra@{lr:g}", "pyra") for lr in lrs]
    base = list(cells[(UNCOMPRESSED, "uncompressed")].values())
    for key, speed_method in series:
        points = [(x_of[(UNCOMPRESSED, "uncompressed")], base)] + [
            (x_of[(level, speed_method)], list(cells[(level, key)].values())) for level in levels]
        summaries = [seed_summary(values) for _, values in points]
        figure.add_trace(go.Scatter(
            x=[x for x, _ in points], y=[100 * s.mean for s in summaries], mode="lines+markers",
            name=method_label(key), text=["none", *levels],
            error_y={"type": "data", "array": [0 if math.isnan(s.std) else 100 * s.std for s in summaries]},
            hovertemplate="%{text}: %{y:.1f}%<extra>" + method_label(key) + "</extra>",
        ))
    figure.update_layout(title=f"{dataset}: accuracy vs speed (mean ± sd over seeds)", xaxis_title=x_title,
                         yaxis_title="validation accuracy %", template="plotly_white", width=900, height=550)
    return figure


def accuracy_section(matrices: Sequence[dict[str, Any]], speed: Optional[dict[str, Any]],
                     chart: Any, charts_dir: Path) -> list[str]:
    """Markdown for the matrix; `chart(figure, stem)` writes each chart and returns its files."""
    first = matrices[0]
    settings = first["settings"]
    levels, lrs = settings["levels"], settings["pyra_lrs"]
    pooled = pooled_cells(matrices)
    ratios = level_flops_ratios(first)
    speeds = throughput_by_level(speed, settings["backbone"], settings["img_size"])
    if speeds is not None:
        x_of, x_title = speeds, "throughput, images/s (batch 8, 2 threads; from PERFORMANCE.md)"
    else:  # the speed benchmark has not measured this backbone: place points by FLOPs instead
        x_of = {(UNCOMPRESSED, "uncompressed"): 1.0} | {
            (level, method): ratios[level] for level in levels for method in ("tome", "pyra")}
        x_title = "FLOPs ratio (uncompressed / compressed)"
    train = settings["train"]
    caps = {d: n for m in matrices for d, n in m["settings"]["max_per_class"].items() if d in pooled}
    lines = [
        f"## Accuracy at {len(levels) + 1} compression levels, {len(pooled)} datasets, "
        f"{len(settings['seeds'])} seed(s)", "",
        *[f"    {m['command']}" for m in matrices], "",
        f"Backbone `{settings['backbone']}` at {settings['img_size']} px, LoRA rank {settings['lora_rank']} on qkv, "
        f"{train['epochs']} epochs, batch {train['batch_size']}, lr {train['lr']:g}, no drop-path or LoRA dropout; "
        f"PYRA learning rates {', '.join(f'{lr:g}' for lr in lrs)} (each reported: nothing is picked on the "
        f"validation split); seeds {settings['seeds']}, each seed draws its own train/validation split "
        f"({int(100 * settings['val_fraction'])}% validation, images per class capped at "
        f"{', '.join(f'{n} for {d}' for d, n in sorted(caps.items()))}). "
        "Every compressed model is trained at the level it is evaluated at; "
        "training-free ToMe is the uncompressed LoRA model merged at that level. "
        f"{sum(m.get('minutes', 0) for m in matrices):.0f} process-minutes on {first['machine']['cpu']} "
        f"({first['machine']['cores']} cores, {first['threads']} torch thread(s) per process).", "",
        "Cells: mean ± sd of validation accuracy (%) over seeds. PYRA - ToMe: mean of the per-seed "
        "differences (points) with a 95% Student-t interval over seeds; a difference is called only when "
        "its interval excludes 0.", "",
    ]
    header = ["level", "FLOPs ratio", LABELS["uncompressed"], LABELS["tome_free"], LABELS["tome"],
              *[method_label(f"pyra@{lr:g}") for lr in lrs], *[f"PYRA (lr {lr:g}) - ToMe" for lr in lrs]]
    for dataset, cells in pooled.items():
        splits = [s for key, s in all_splits(matrices).items() if key.startswith(f"{dataset}@")]
        sizes = f"{splits[0]['train']} training / {splits[0]['val']} validation images, " \
                f"{len(splits[0]['classes'])} classes" if splits else ""
        files = chart(accuracy_chart(dataset, cells, levels, x_of, x_title, lrs), charts_dir / f"accuracy_{dataset}")
        png = next((f for f in files if f.suffix == ".png"), None)
        html = next(f for f in files if f.suffix == ".html")
        rows = dataset_table(cells, levels, ratios, lrs)
        lines += [f"### `sample:{dataset}` ({sizes})", "", markdown_table(header, rows), ""]
        if png is not None:
            lines.append(f"![accuracy vs speed on {dataset}](charts/{png.name})")
        lines += [f"Interactive chart: [charts/{html.name}](charts/{html.name}).", ""]
    lines += [
        "### PYRA - ToMe + LoRA pooled over datasets and seeds", "",
        "Each (dataset, seed) pair counts once; the interval is a Student-t interval over those pairs.", "",
        markdown_table(["level", "PYRA lr", "pairs", "PYRA - ToMe, points [95% CI]"], pooled_rows(pooled, levels, lrs)),
        "",
        *claims_lines(pooled, levels, lrs),
    ]
    return lines


def all_splits(matrices: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """'dataset@seed' -> split sizes, over all matrices."""
    return {key: split for matrix in matrices for key, split in matrix["splits"].items()}
