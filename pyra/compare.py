"""The comparison the app shows: LoRA uncompressed vs ToMe + LoRA vs PYRA + LoRA on one dataset.

For each seed it trains the three models at one target schedule, then sweeps compression
levels (fractions of the target schedule, so a PYRA model never merges more than it was
trained to): accuracy of every model at every level, ToMe applied training-free to the
uncompressed model, and latency / throughput measured interleaved on this machine.
"""
from __future__ import annotations

import csv
import io
import json
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from pyra.checkpoint import load_run, write_atomic
from pyra.data import DatasetSplit
from pyra.evaluate import evaluate, measure_speed
from pyra.lora import merge_lora
from pyra.patch import geometry, set_schedule
from pyra.pipeline import make_run_config, model_dataset, train_run
from pyra.predict import default_device
from pyra.schedule import ScheduleSpec, flops_ratio, forward_flops, resolve_schedule
from pyra.stats import accuracy_interval, paired_difference, paired_seed_difference, seed_summary
from pyra.train import Progress, TrainConfig

TRAINED_METHODS = {"uncompressed": "none", "tome": "tome", "pyra": "pyra"}
"""Row name -> merge method the model is trained with."""
METHOD_LABELS = {
    "uncompressed": "LoRA, uncompressed",
    "tome_free": "ToMe training-free",
    "tome": "ToMe + LoRA",
    "pyra": "PYRA + LoRA",
}
FEATURES_FILE = "features.npz"  # pre-logits features at the target level, per method, plus "labels"
PAIRS = [("pyra", "tome"), ("pyra", "tome_free"), ("pyra", "uncompressed"), ("tome", "uncompressed")]


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: the backbone, the target compression, and how to train and measure."""

    backbone: str = "default"  # "default", "random:NAME", a timm name, or an architecture with weights=
    weights: Optional[str] = None  # local weights file for a timm architecture
    img_size: Optional[int] = None  # None: the backbone's CPU/GPU default
    schedule: ScheduleSpec = "high"  # target compression PYRA and ToMe are trained at
    lora_rank: int = 4
    lora_dropout: float = 0.1  # paper recipe; 0 suits a few CPU epochs better
    drop_path_rate: float = 0.1
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: tuple[int, ...] = (0,)
    levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # fractions of the target schedule
    bench_batch: int = 8
    bench_repeats: int = 5
    device: str = field(default_factory=default_device)  # "cuda" when available

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

    def features(self) -> dict[str, np.ndarray]:
        """Validation features at the target level per method (for t-SNE), plus "labels"."""
        with np.load(self.out_dir / FEATURES_FILE, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}

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
        write_atomic(self.out_dir / "compare.json", json.dumps(self.to_dict(), indent=1).encode())
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(self.rows[0]) if self.rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.out_dir / "compare.csv", table.getvalue().encode())


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
    levels = []
    for index, fraction in enumerate(sorted(set(fractions))):
        schedule = resolve_schedule([int(round(fraction * r)) for r in target], geo)
        ratio = flops_ratio(schedule, geo, "tome")
        label = "uncompressed" if not any(schedule) else f"{sum(schedule)} tokens merged, {ratio:.2f}x fewer FLOPs"
        gflops = forward_flops(schedule, geo, "pyra" if any(schedule) else "none") / 1e9
        levels.append(Level(index, fraction, schedule, label, ratio, gflops))
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
        run_dir = out_dir / f"seed{seed}" / name
        result = _train_one(data, config, name, seed, run_dir, job_index, len(jobs), report, cancel)
        run_dirs[f"{name}@{seed}"] = run_dir
        histories[f"{name}@{seed}"] = result.history + result.epochs  # steps, then per-epoch validation
        if result.status != "completed":  # the message says which training stopped
            message = f"{METHOD_LABELS[name]}, seed {seed}: {result.message}"
            partial = CompareResult(out_dir, data.classes, [], [], {}, histories, run_dirs, result.status, message)
            partial.save()
            return partial
    report(CompareProgress("accuracy", 0.9, "measuring accuracy and speed at every level"))
    result = _sweep(data, config, out_dir, run_dirs, histories, report)
    result.save()
    report(CompareProgress("done", 1.0, "comparison complete"))
    return result


def _train_one(data: DatasetSplit, config: CompareConfig, name: str, seed: int, run_dir: Path,
               job: int, jobs: int, report: Callable[[CompareProgress], None],
               cancel: Optional[threading.Event]):
    run_config = make_run_config(
        data, backbone=config.backbone, backbone_weights=config.weights, img_size=config.img_size,
        method=TRAINED_METHODS[name], schedule=config.schedule, lora_rank=config.lora_rank,
        lora_dropout=config.lora_dropout, drop_path_rate=config.drop_path_rate,
        train_config=replace(config.train, seed=seed), seed=seed, device=config.device,
    )
    label, share = METHOD_LABELS[name], 0.9 / jobs

    def forward(progress: Progress) -> None:
        report(CompareProgress(
            stage=f"train {label} (seed {seed})",
            fraction=share * (job + progress.fraction),
            message=f"{label}, seed {seed}: step {progress.step}/{progress.total_steps}, loss {progress.loss:.3f}",
            step=progress.step, total_steps=progress.total_steps, eta_s=progress.eta_s,
            loss=progress.loss, val_accuracy=progress.val_accuracy,
        ))

    _, result, _ = train_run(data, run_config, run_dir, on_progress=forward, cancel=cancel, device=config.device)
    return result


def _sweep(data: DatasetSplit, config: CompareConfig, out_dir: Path, run_dirs: dict[str, Path],
           histories: dict[str, list[dict]], report: Callable[[CompareProgress], None]) -> CompareResult:
    models = {key: load_run(run_dir)[0].to(config.device) for key, run_dir in run_dirs.items()}
    first = models[f"pyra@{config.seeds[0]}"]
    levels = sweep_levels(list(first.merge_config.schedule), config.levels, first)
    val_set = model_dataset(first, data.val)
    correct, reports, features = _accuracies(models, levels, val_set, data.classes, config.seeds, report)
    stored = io.BytesIO()
    np.savez_compressed(stored, **features)
    write_atomic(out_dir / FEATURES_FILE, stored.getvalue())
    for model in models.values():
        merge_lora(model)  # inference form, measured after every accuracy is taken
    geo = geometry(first)
    rows, comparisons = [], {}
    for level in levels:
        speed = _measure_level(models, config.seeds[0], level, config)
        for name in METHOD_LABELS:
            rows.append(_row(name, level, correct[level.index][name], speed, _gflops(name, level, geo)))
        comparisons[level.index] = _comparisons(correct[level.index])
        report(CompareProgress("speed", 0.95 + 0.05 * (level.index + 1) / len(levels),
                               f"measured speed at {level.label}"))
    return CompareResult(out_dir, list(data.classes), levels, rows, comparisons, histories, run_dirs,
                         reports=reports)


def _accuracies(models: dict, levels: list[Level], val_set, classes, seeds, report):
    """correct[level][method] = one boolean array per seed; reports at the target level, first seed."""
    correct: dict[int, dict[str, list[np.ndarray]]] = {}
    reports: dict[str, dict] = {}
    features: dict[str, np.ndarray] = {}
    cache: dict[tuple, tuple] = {}  # one evaluation per (model, method, schedule): the uncompressed one runs once
    for level in levels:
        correct[level.index] = {}
        for seed in seeds:
            for name, key, method in _evaluations(seed):
                schedule = tuple(level.schedule) if name != "uncompressed" else (0,) * len(level.schedule)
                cache_key = (key, method if any(schedule) else "none", schedule)
                if cache_key not in cache:
                    cache[cache_key] = evaluate(models[key], val_set, classes, schedule=list(schedule),
                                                method=method, with_features=seed == seeds[0])
                evaluation, predictions = cache[cache_key]
                correct[level.index].setdefault(name, []).append(predictions.correct)
                if level is levels[-1] and seed == seeds[0]:  # reports and features at the target
                    reports[name] = evaluation.to_dict()
                    features[name] = predictions.features
                    features["labels"] = predictions.labels
        report(CompareProgress("accuracy", 0.9 + 0.05 * (level.index + 1) / len(levels),
                               f"accuracy at {level.label}"))
    return correct, reports, features


def _evaluations(seed: int):
    """(row name, model key, merge method) for every row of one level."""
    yield "uncompressed", f"uncompressed@{seed}", "none"
    yield "tome_free", f"uncompressed@{seed}", "tome"
    yield "tome", f"tome@{seed}", "tome"
    yield "pyra", f"pyra@{seed}", "pyra"


def _gflops(name: str, level: Level, geo) -> float:
    if name == "uncompressed":
        return forward_flops([0] * geo.depth, geo, "none") / 1e9
    return forward_flops(level.schedule, geo, "pyra" if name == "pyra" else "tome") / 1e9


def _measure_level(models: dict, seed: int, level: Level, config: CompareConfig) -> dict:
    chosen = {"uncompressed": models[f"uncompressed@{seed}"], "tome": models[f"tome@{seed}"],
              "pyra": models[f"pyra@{seed}"]}
    set_schedule(chosen["uncompressed"], 0, method="none")
    set_schedule(chosen["tome"], level.schedule, method="tome")
    set_schedule(chosen["pyra"], level.schedule, method="pyra")
    img_size = chosen["pyra"].patch_embed.img_size[0]
    stats = measure_speed(chosen, img_size=img_size, batch_size=config.bench_batch, repeats=config.bench_repeats,
                          device=config.device)
    stats["tome_free"] = stats["tome"]  # the same computation as trained ToMe at this schedule
    return stats


def _row(name: str, level: Level, correct: list[np.ndarray], speed: dict, gflops: float) -> dict:
    accuracies = [float(c.mean()) for c in correct]
    if len(correct) == 1:
        interval = accuracy_interval(correct[0])
        mean, low, high, interval_kind = interval.estimate, interval.low, interval.high, "wilson95"
    else:
        summary = seed_summary(accuracies)
        mean, low, high, interval_kind = summary.mean, summary.low, summary.high, "seeds_t95"
    stats = speed[name].to_dict()
    compressed = name != "uncompressed"
    return {
        "method": name,
        "method_label": METHOD_LABELS[name],
        "level": level.index,
        "schedule_label": level.label if compressed else "uncompressed",
        "schedule": " ".join(map(str, level.schedule if compressed else [0] * len(level.schedule))),
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
        "gflops": gflops,
        "flops_ratio": level.flops_ratio if compressed else 1.0,
        "threads": stats["threads"],
    }


def _comparisons(correct: dict[str, list[np.ndarray]]) -> list[dict]:
    """Paired differences on the first seed's predictions; across seeds when there are several."""
    out = []
    for a, b in PAIRS:
        paired = paired_difference(correct[a][0], correct[b][0], name_a=METHOD_LABELS[a], name_b=METHOD_LABELS[b])
        entry = paired.to_dict() | {"sentence": paired.sentence(), "method_a": a, "method_b": b}
        if len(correct[a]) > 1:
            across = paired_seed_difference([float(c.mean()) for c in correct[a]],
                                            [float(c.mean()) for c in correct[b]])
            entry["seeds"] = across.to_dict()
        out.append(entry)
    return out
