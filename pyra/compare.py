"""The comparison the app shows: LoRA uncompressed vs ToMe + LoRA vs PYRA + LoRA on one dataset.

For each seed it trains the three models at one target schedule, then sweeps compression
levels (fractions of the target schedule, so a PYRA model never merges more than it was
trained to): accuracy of every model at every level, ToMe applied training-free to the
uncompressed model, and latency / throughput measured interleaved on this machine.
"""
from __future__ import annotations

import csv
import json
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from pyra.backbone import default_img_size
from pyra.checkpoint import RunConfig, build_model, load_run, run_config_for, save_run
from pyra.data import DatasetSplit
from pyra.evaluate import evaluate, measure_speed
from pyra.lora import merge_lora
from pyra.patch import geometry, set_schedule
from pyra.schedule import ScheduleSpec, flops_ratio, forward_flops, resolve_schedule
from pyra.stats import accuracy_interval, paired_difference, paired_seed_difference, seed_summary
from pyra.train import Progress, TrainConfig, train

TRAINED_METHODS = {"uncompressed": "none", "tome": "tome", "pyra": "pyra"}
"""Row name -> merge method the model is trained with."""
METHOD_LABELS = {
    "uncompressed": "LoRA, uncompressed",
    "tome_free": "ToMe training-free",
    "tome": "ToMe + LoRA",
    "pyra": "PYRA + LoRA",
}
PAIRS = [("pyra", "tome"), ("pyra", "tome_free"), ("pyra", "uncompressed"), ("tome", "uncompressed")]


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: the backbone, the target compression, and how to train and measure."""

    backbone: str = "default"  # "default", "random:NAME", a timm name, or an architecture with weights=
    weights: Optional[str] = None  # local weights file for a timm architecture
    img_size: Optional[int] = None  # None: the backbone's CPU/GPU default
    schedule: ScheduleSpec = "high"  # target compression PYRA and ToMe are trained at
    lora_rank: int = 4
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: tuple[int, ...] = (0,)
    levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # fractions of the target schedule
    bench_batch: int = 8
    bench_repeats: int = 5
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("give at least one seed")
        if not self.levels or any(not 0.0 <= f <= 1.0 for f in self.levels):
            raise ValueError(f"levels are fractions of the target schedule in [0, 1], got {self.levels}")
        if self.bench_repeats < 1 or self.bench_batch < 1:
            raise ValueError("bench_repeats and bench_batch must be >= 1")


@dataclass(frozen=True)
class Level:
    """One point of the sweep."""

    index: int
    fraction: float
    schedule: list[int]
    label: str
    flops_ratio: float
    gflops: float


@dataclass(frozen=True)
class CompareProgress:
    stage: str
    fraction: float  # of the whole job, in [0, 1]
    message: str
    step: Optional[int] = None
    total_steps: Optional[int] = None
    eta_s: Optional[float] = None
    loss: Optional[float] = None
    val_accuracy: Optional[float] = None


@dataclass
class CompareResult:
    out_dir: Path
    classes: list[str]
    levels: list[Level]
    rows: list[dict]
    comparisons: dict[int, list[dict]]
    histories: dict[str, list[dict]]
    run_dirs: dict[str, Path]
    status: str = "completed"
    message: str = ""
    reports: dict[str, dict] = field(default_factory=dict)  # method -> classification report at the target

    def rows_at(self, level: int) -> list[dict]:
        return [row for row in self.rows if row["level"] == level]

    def to_dict(self) -> dict:
        return {
            "classes": self.classes,
            "levels": [asdict(level) for level in self.levels],
            "rows": self.rows,
            "comparisons": {str(k): v for k, v in self.comparisons.items()},
            "histories": self.histories,
            "run_dirs": {k: str(v.relative_to(self.out_dir)) for k, v in self.run_dirs.items()},
            "status": self.status,
            "message": self.message,
            "reports": self.reports,
        }

    def save(self) -> None:
        """Write compare.json and compare.csv into out_dir (atomically)."""
        _write_atomic(self.out_dir / "compare.json", json.dumps(self.to_dict(), indent=1))
        columns = list(self.rows[0]) if self.rows else []
        lines: list[str] = []
        writer = csv.DictWriter(_LineSink(lines), fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        _write_atomic(self.out_dir / "compare.csv", "".join(lines))


class _LineSink:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> None:
        self.lines.append(text)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def load_compare(out_dir: Path) -> CompareResult:
    """Read a comparison written by `CompareResult.save`."""
    out_dir = Path(out_dir)
    path = out_dir / "compare.json"
    if not path.is_file():
        raise ValueError(f"{path}: no comparison here; run `python -m pyra compare --out {out_dir}` first")
    data = json.loads(path.read_text(encoding="utf-8"))
    return CompareResult(
        out_dir=out_dir,
        classes=data["classes"],
        levels=[Level(**level) for level in data["levels"]],
        rows=data["rows"],
        comparisons={int(k): v for k, v in data["comparisons"].items()},
        histories=data["histories"],
        run_dirs={k: out_dir / v for k, v in data["run_dirs"].items()},
        status=data["status"],
        message=data["message"],
        reports=data.get("reports", {}),
    )


def sweep_levels(target: list[int], fractions: tuple[float, ...], model) -> list[Level]:
    """Levels as fractions of the target schedule, with their FLOPs (PYRA's included)."""
    geo = geometry(model)
    base = forward_flops([0] * geo.depth, geo, "none")
    levels = []
    for index, fraction in enumerate(sorted(set(fractions))):
        schedule = resolve_schedule([int(round(fraction * r)) for r in target], geo)
        ratio = flops_ratio(schedule, geo, "tome")
        label = "uncompressed" if not any(schedule) else f"{sum(schedule)} tokens merged, {ratio:.2f}x fewer FLOPs"
        gflops = forward_flops(schedule, geo, "pyra" if any(schedule) else "none") / 1e9
        levels.append(Level(index, fraction, schedule, label, ratio, gflops))
    assert base > 0
    return levels


def run_compare(
    data: DatasetSplit,
    config: CompareConfig,
    out_dir: Path,
    *,
    on_progress: Optional[Callable[[CompareProgress], None]] = None,
    cancel: Optional[threading.Event] = None,
) -> CompareResult:
    """Train the three models for every seed, then sweep levels; results saved in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = on_progress or (lambda progress: None)
    run_dirs: dict[str, Path] = {}
    histories: dict[str, list[dict]] = {}
    jobs = [(seed, name) for seed in config.seeds for name in TRAINED_METHODS]
    for job_index, (seed, name) in enumerate(jobs):
        run_config = _run_config(data, config, name, seed)
        run_dir = out_dir / f"seed{seed}" / name
        result = _train_one(data, run_config, run_dir, job_index, len(jobs), report, cancel)
        run_dirs[f"{name}@{seed}"] = run_dir
        histories[f"{name}@{seed}"] = result.history
        if result.status != "completed":
            partial = CompareResult(out_dir, data.classes, [], [], {}, histories, run_dirs, result.status, result.message)
            partial.save()
            return partial
    report(CompareProgress("sweep", 0.9, "measuring accuracy and speed at every level"))
    result = _sweep(data, config, out_dir, run_dirs, histories, report)
    result.save()
    report(CompareProgress("done", 1.0, "comparison complete"))
    return result


def _run_config(data: DatasetSplit, config: CompareConfig, name: str, seed: int) -> RunConfig:
    img_size = config.img_size or default_img_size(config.backbone, config.device)
    method = TRAINED_METHODS[name]
    return run_config_for(
        backbone=config.backbone,
        weights=config.weights,
        classes=data.classes,
        img_size=img_size,
        method=method,
        schedule=config.schedule if method != "none" else 0,
        lora_rank=config.lora_rank,
        train=replace(config.train, seed=seed),
        data_source=data.source,
        seed=seed,
    )


def _train_one(data, run_config: RunConfig, run_dir: Path, job: int, jobs: int, report, cancel):
    from pyra.predict import dataset_for

    model = build_model(run_config)
    train_set = dataset_for(model, data.train, run_config.img_size)
    val_set = dataset_for(model, data.val, run_config.img_size)
    label = METHOD_LABELS[{v: k for k, v in TRAINED_METHODS.items()}[run_config.method]]
    share = 0.9 / jobs

    def forward(progress: Progress) -> None:
        report(CompareProgress(
            stage=f"train {label} (seed {run_config.seed})",
            fraction=share * (job + progress.fraction),
            message=f"{label}, seed {run_config.seed}: step {progress.step}/{progress.total_steps}, "
            f"loss {progress.loss:.3f}",
            step=progress.step, total_steps=progress.total_steps, eta_s=progress.eta_s,
            loss=progress.loss, val_accuracy=progress.val_accuracy,
        ))

    result = train(model, train_set, run_config.train_config, val_set=val_set, on_progress=forward, cancel=cancel)
    save_run(run_dir, model, run_config, {"status": result.status, "message": result.message,
                                           "history": result.history, "seconds": result.seconds})
    return result


def _sweep(data, config, out_dir, run_dirs, histories, report) -> CompareResult:
    models, run_config = {}, None
    for key, run_dir in run_dirs.items():
        models[key], run_config = load_run(run_dir)
    from pyra.predict import dataset_for

    first_seed = config.seeds[0]
    some_model = models[f"pyra@{first_seed}"]
    target = list(models[f"pyra@{first_seed}"].merge_config.schedule)
    levels = sweep_levels(target, config.levels, some_model)
    val_set = dataset_for(some_model, data.val, run_config.img_size)
    rows, comparisons, reports = [], {}, {}
    for level in levels:
        correct: dict[str, list[np.ndarray]] = {}
        for seed in config.seeds:
            for name, model, method in _models_at_level(models, seed):
                schedule = level.schedule if name != "uncompressed" else [0] * len(level.schedule)
                evaluation, predictions = evaluate(model, val_set, data.classes, schedule=schedule, method=method)
                correct.setdefault(name, []).append(predictions.correct)
                if level.index == len(levels) - 1 and seed == first_seed:
                    reports[name] = evaluation.to_dict()
        speed = _measure_level(models, first_seed, level, config)
        rows += [_row(name, level, correct[name], speed, config) for name in METHOD_LABELS]
        comparisons[level.index] = _comparisons(correct)
        report(CompareProgress("sweep", 0.9 + 0.1 * (level.index + 1) / len(levels), f"level {level.label}"))
    return CompareResult(out_dir, data.classes, levels, rows, comparisons, histories, run_dirs, reports=reports)


def _models_at_level(models: dict, seed: int):
    yield "uncompressed", models[f"uncompressed@{seed}"], "none"
    yield "tome_free", models[f"uncompressed@{seed}"], "tome"
    yield "tome", models[f"tome@{seed}"], "tome"
    yield "pyra", models[f"pyra@{seed}"], "pyra"


def _measure_level(models: dict, seed: int, level: Level, config: CompareConfig) -> dict:
    chosen = {"uncompressed": models[f"uncompressed@{seed}"], "tome": models[f"tome@{seed}"], "pyra": models[f"pyra@{seed}"]}
    set_schedule(chosen["uncompressed"], 0, method="none")
    set_schedule(chosen["tome"], level.schedule, method="tome")
    set_schedule(chosen["pyra"], level.schedule, method="pyra")
    for model in chosen.values():
        merge_lora(model)
    img_size = chosen["pyra"].patch_embed.img_size[0]
    stats = measure_speed(chosen, img_size=img_size, batch_size=config.bench_batch, repeats=config.bench_repeats)
    stats["tome_free"] = stats["tome"]  # same computation as trained ToMe at this schedule
    return stats


def _row(name: str, level: Level, correct: list[np.ndarray], speed: dict, config: CompareConfig) -> dict:
    accuracies = [float(c.mean()) for c in correct]
    if len(correct) == 1:
        interval = accuracy_interval(correct[0])
        mean, low, high, interval_kind = interval.estimate, interval.low, interval.high, "wilson95"
    else:
        summary = seed_summary(accuracies)
        mean, low, high, interval_kind = summary.mean, summary.low, summary.high, "seeds_t95"
    stats = speed[name].to_dict()
    schedule = level.schedule if name != "uncompressed" else [0] * len(level.schedule)
    return {
        "method": name,
        "method_label": METHOD_LABELS[name],
        "level": level.index,
        "schedule_label": level.label if name != "uncompressed" else "uncompressed",
        "schedule": " ".join(map(str, schedule)),
        "accuracy": mean,
        "accuracy_low": low,
        "accuracy_high": high,
        "interval": interval_kind,
        "seed_accuracies": " ".join(f"{a:.4f}" for a in accuracies),
        "n_val": int(len(correct[0])),
        "latency_ms": stats["latency_ms"]["median"],
        "latency_p25": stats["latency_ms"]["p25"],
        "latency_p75": stats["latency_ms"]["p75"],
        "throughput": stats["throughput"]["median"],
        "throughput_p25": stats["throughput"]["p25"],
        "throughput_p75": stats["throughput"]["p75"],
        "gflops": level.gflops if name != "uncompressed" else None,
        "flops_ratio": level.flops_ratio if name != "uncompressed" else 1.0,
        "threads": stats["threads"],
    }


def _comparisons(correct: dict[str, list[np.ndarray]]) -> list[dict]:
    out = []
    for a, b in PAIRS:
        paired = paired_difference(correct[a][0], correct[b][0], name_a=METHOD_LABELS[a], name_b=METHOD_LABELS[b])
        entry = paired.to_dict() | {"sentence": paired.sentence(), "method_a": a, "method_b": b}
        if len(correct[a]) > 1:
            across = paired_seed_difference([c.mean() for c in correct[a]], [c.mean() for c in correct[b]])
            entry["seeds"] = across.to_dict()
        out.append(entry)
    return out
