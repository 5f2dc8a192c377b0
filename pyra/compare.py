"""The comparison the app shows: LoRA uncompressed vs ToMe + LoRA vs PYRA + LoRA on one dataset.

For each seed it trains the models, then sweeps compression levels (fractions of the target
schedule): accuracy of every model at every level, ToMe applied training-free to the
uncompressed model, and latency / throughput measured interleaved on this machine.

Every accuracy of ToMe + LoRA and PYRA + LoRA comes from a model trained for that level:
- protocol "elastic" (default): one model per method, trained for the whole range at once
  (`pyra.elastic`), evaluated at every level;
- protocol "per-level" (the paper's): one model per method and level, each evaluated at its own
  level (the uncompressed level is the uncompressed LoRA model).
"""
from __future__ import annotations

import csv
import functools
import io
import json
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from torch import nn

from pyra.backbone import backbone_structure
from pyra.checkpoint import RunConfig, load_run, write_atomic
from pyra.data import DatasetSplit
from pyra.elastic import scaled_schedule
from pyra.evaluate import evaluate, measure_speed
from pyra.lora import merge_lora
from pyra.patch import geometry, set_schedule
from pyra.pipeline import make_run_config, model_dataset, train_run
from pyra.predict import default_device
from pyra.recipes import DEFAULT_RECIPE
from pyra.schedule import ScheduleSpec, VitGeometry, flops_ratio, forward_flops, resolve_schedule
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
PROTOCOLS = ("elastic", "per-level")


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: the backbone, the target compression, and how to train and measure."""

    backbone: str = "default"  # "default", "random:NAME", a timm name, or an architecture with weights=
    weights: Optional[str] = None  # local weights file for a timm architecture
    img_size: Optional[int] = None  # None: the backbone's CPU/GPU default
    schedule: ScheduleSpec = "high"  # target compression PYRA and ToMe are trained at
    lora_rank: int = 4
    lora_dropout: float = DEFAULT_RECIPE.lora_dropout
    drop_path_rate: float = DEFAULT_RECIPE.drop_path_rate
    train: TrainConfig = DEFAULT_RECIPE.train
    seeds: tuple[int, ...] = (0,)
    levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # fractions of the target schedule
    protocol: str = "elastic"  # "elastic": one model for every level; "per-level": one model per level
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
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.protocol == "elastic" and self.train.elastic == "off":
            raise ValueError("the elastic protocol needs an elastic mode (uniform or sandwich); "
                             "for one model per level use protocol per-level")

    def training_label(self) -> str:
        """How the compressed models were trained, in words."""
        if self.protocol == "per-level":
            return "one model per compression level"
        return f"one elastic model for every level ({self.train.elastic})"


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
    protocol: str = "elastic"
    training: str = ""  # CompareConfig.training_label()

    def features(self) -> dict[str, np.ndarray]:
        """Validation features at the target level per method (for t-SNE), plus "labels"."""
        with np.load(self.out_dir / FEATURES_FILE, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}

    def rows_at(self, level: int) -> list[dict]:
        return [row for row in self.rows if row["level"] == level]

    def run_for(self, method: str, level: int, seed: Optional[int] = None) -> Path:
        """The run folder whose model gives `method`'s accuracy at level `level` (first seed by default)."""
        seed = int(next(iter(self.run_dirs)).partition("@")[2].partition(":")[0]) if seed is None else seed
        return self.run_dirs[model_key(method, seed, self.levels[level], self.levels[-1].index, self.protocol)]

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
            "protocol": self.protocol,
            "training": self.training,
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
        protocol=data["protocol"],
        training=data["training"],
    )


def sweep_levels(target: list[int], fractions: tuple[float, ...], geo: VitGeometry) -> list[Level]:
    """Levels as fractions of the target schedule, with their FLOPs (PYRA's included)."""
    levels = []
    for index, fraction in enumerate(sorted(set(fractions))):
        schedule = resolve_schedule(scaled_schedule(target, fraction), geo)
        ratio = flops_ratio(schedule, geo, "tome")
        label = "uncompressed" if not any(schedule) else f"{sum(schedule)} tokens merged, {ratio:.2f}x fewer FLOPs"
        gflops = forward_flops(schedule, geo, "pyra" if any(schedule) else "none") / 1e9
        levels.append(Level(index, fraction, schedule, label, ratio, gflops))
    return levels


def model_key(method: str, seed: int, level: Level, target_index: int, protocol: str) -> str:
    """Key (into `CompareResult.run_dirs`) of the model that gives `method`'s row at `level`.

    The uncompressed LoRA model serves the uncompressed row, training-free ToMe, and (per-level
    protocol) the trained methods at a level that merges nothing. An elastic model serves its
    method at every level, the uncompressed one included.
    """
    if method in ("uncompressed", "tome_free"):
        return f"uncompressed@{seed}"
    if protocol == "elastic" or level.index == target_index:
        return f"{method}@{seed}"
    if not any(level.schedule):
        return f"uncompressed@{seed}"
    return f"{method}@{seed}:L{level.index}"


def _jobs(config: CompareConfig, levels: list[Level]) -> list[tuple[int, str, Level]]:
    """(seed, trained method, level trained for) of every training, target-level runs of each seed first."""
    target = levels[-1]
    jobs = []
    for seed in config.seeds:
        jobs += [(seed, name, target) for name in TRAINED_METHODS]
        if config.protocol == "per-level":
            jobs += [(seed, name, level) for level in levels[:-1] if any(level.schedule)
                     for name in ("tome", "pyra")]
    return jobs


def _levels(data: DatasetSplit, config: CompareConfig) -> tuple[list[Level], VitGeometry, int]:
    """The sweep's levels, the backbone geometry at the run's input size, and that size in px."""
    target_config = _run_config(data, config, "pyra", config.seeds[0], config.schedule)
    geo = geometry(backbone_structure(config.backbone, len(data.classes), target_config.img_size))
    return sweep_levels(list(target_config.schedule), config.levels, geo), geo, target_config.img_size


def planned_jobs(data: DatasetSplit, config: CompareConfig) -> tuple[list[tuple[int, str, Level]], int]:
    """(the trainings `run_compare` will run, in order; the input size in px), without training anything."""
    levels, _, img_size = _levels(data, config)
    return _jobs(config, levels), img_size


def run_compare(
    data: DatasetSplit,
    config: CompareConfig,
    out_dir: Path,
    *,
    on_progress: Optional[Callable[[CompareProgress], None]] = None,
    cancel: Optional[threading.Event] = None,
) -> CompareResult:
    """Train the models of every seed (see the protocols above), then sweep levels; results saved in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # the only folder created with its parents: if out_dir is
    # removed while the job runs (the app's session ended), later writes fail instead of re-creating it
    report = on_progress or (lambda progress: None)
    levels, geo, _ = _levels(data, config)
    run_dirs: dict[str, Path] = {}
    histories: dict[str, list[dict]] = {}
    jobs = _jobs(config, levels)
    for job_index, (seed, name, level) in enumerate(jobs):
        key = model_key(name, seed, level, levels[-1].index, config.protocol)
        level_part = key.partition(":")[2]  # "" or "L<index>" (per-level protocol, below the target)
        seed_dir = out_dir / f"seed{seed}"
        seed_dir.mkdir(exist_ok=True)
        run_dir = seed_dir / (key.partition("@")[0] + (f"-{level_part}" if level_part else ""))
        result = _train_one(data, config, name, seed, level, run_dir, job_index, len(jobs), report, cancel)
        run_dirs[key] = run_dir
        histories[key] = result.history + result.epochs  # steps, then per-epoch validation
        if result.status != "completed":  # the message says which training stopped
            message = f"{METHOD_LABELS[name]}, seed {seed}: {result.message}"
            partial = CompareResult(out_dir, data.classes, [], [], {}, histories, run_dirs, result.status, message,
                                    protocol=config.protocol, training=config.training_label())
            partial.save()
            return partial
    report(CompareProgress("accuracy", 0.9, "measuring accuracy and speed at every level"))
    result = _sweep(data, config, out_dir, levels, geo, run_dirs, histories, report)
    result.save()
    report(CompareProgress("done", 1.0, "comparison complete"))
    return result


def _run_config(data: DatasetSplit, config: CompareConfig, name: str, seed: int, schedule: ScheduleSpec,
                elastic: bool = True) -> RunConfig:
    train_config = replace(config.train, seed=seed)
    if not elastic:
        train_config = replace(train_config, elastic="off")
    return make_run_config(
        data, backbone=config.backbone, backbone_weights=config.weights, img_size=config.img_size,
        method=TRAINED_METHODS[name], schedule=schedule, lora_rank=config.lora_rank,
        lora_dropout=config.lora_dropout, drop_path_rate=config.drop_path_rate,
        train_config=train_config, seed=seed, device=config.device,
    )


def _train_one(data: DatasetSplit, config: CompareConfig, name: str, seed: int, level: Level, run_dir: Path,
               job: int, jobs: int, report: Callable[[CompareProgress], None],
               cancel: Optional[threading.Event]):
    run_config = _run_config(data, config, name, seed, list(level.schedule), elastic=config.protocol == "elastic")
    label, share = METHOD_LABELS[name], 0.9 / jobs
    if config.protocol == "per-level" and name != "uncompressed":
        label += f" at level {level.index + 1}"

    def forward(progress: Progress) -> None:
        report(CompareProgress(
            stage=f"train {label} (seed {seed})",
            fraction=share * (job + progress.fraction),
            message=f"{label}, seed {seed}: step {progress.step}/{progress.total_steps}, loss {progress.loss:.3f}",
            step=progress.step, total_steps=progress.total_steps, eta_s=progress.eta_s,
            loss=progress.loss, val_accuracy=progress.val_accuracy,
        ))

    _, result, _ = train_run(data, run_config, run_dir, on_progress=forward, cancel=cancel, device=config.device,
                             make_parents=False)
    return result


def _sweep(data: DatasetSplit, config: CompareConfig, out_dir: Path, levels: list[Level], geo: VitGeometry,
           run_dirs: dict[str, Path], histories: dict[str, list[dict]],
           report: Callable[[CompareProgress], None]) -> CompareResult:
    key_of = functools.partial(model_key, target_index=levels[-1].index, protocol=config.protocol)
    correct, reports, features = _accuracies(data, config, levels, run_dirs, key_of, report)
    stored = io.BytesIO()
    np.savez_compressed(stored, **features)
    write_atomic(out_dir / FEATURES_FILE, stored.getvalue())
    rows, comparisons = [], {}
    inference_models: dict[str, nn.Module] = {}  # key -> loaded once, LoRA merged, shared by every level it serves
    for level in levels:
        speed = _measure_level(run_dirs, inference_models, config.seeds[0], level, key_of, config)
        for name in METHOD_LABELS:
            rows.append(_row(name, level, correct[level.index][name], speed, _gflops(name, level, geo), config))
        comparisons[level.index] = _comparisons(correct[level.index])
        report(CompareProgress("speed", 0.95 + 0.05 * (level.index + 1) / len(levels),
                               f"measured speed at {level.label}"))
    return CompareResult(out_dir, list(data.classes), levels, rows, comparisons, histories, run_dirs,
                         reports=reports, protocol=config.protocol, training=config.training_label())


def _accuracies(data: DatasetSplit, config: CompareConfig, levels: list[Level], run_dirs: dict[str, Path],
                key_of: Callable, report: Callable[[CompareProgress], None]):
    """correct[level][method] = one boolean array per seed; reports and features at the target level, first seed.

    Each model is loaded once, evaluated at every level it serves, and dropped (per-level
    comparisons hold many models).
    """
    plan: dict[str, list[tuple[Level, int, str, str]]] = {}  # model key -> (level, seed, row name, merge method)
    for level in levels:
        for seed in config.seeds:
            for name, method in _evaluations():
                plan.setdefault(key_of(name, seed, level), []).append((level, seed, name, method))
    correct: dict[int, dict[str, dict[int, np.ndarray]]] = {level.index: {} for level in levels}
    reports: dict[str, dict] = {}
    features: dict[str, np.ndarray] = {}
    target, first_seed = levels[-1], config.seeds[0]
    for done, (key, uses) in enumerate(plan.items()):
        model = load_run(run_dirs[key])[0].to(config.device)
        val_set = model_dataset(model, data.val)
        cache: dict[tuple, tuple] = {}  # one evaluation per (method, schedule): the uncompressed one runs once
        for level, seed, name, method in uses:
            schedule = tuple(level.schedule) if name != "uncompressed" else (0,) * len(level.schedule)
            merge_method = method if any(schedule) else "none"
            if (merge_method, schedule) not in cache:  # features come from the same forward: keep the first seed's
                cache[(merge_method, schedule)] = evaluate(model, val_set, data.classes, schedule=list(schedule),
                                                           method=merge_method, with_features=seed == first_seed)
            evaluation, predictions = cache[(merge_method, schedule)]
            at_target = level is target and seed == first_seed
            correct[level.index].setdefault(name, {})[seed] = predictions.correct
            if at_target:
                reports[name] = evaluation.to_dict()
                features[name] = predictions.features
                features["labels"] = predictions.labels
        del model
        report(CompareProgress("accuracy", 0.9 + 0.05 * (done + 1) / len(plan), "accuracy at every level"))
    ordered = {index: {name: [by_seed[seed] for seed in config.seeds] for name, by_seed in rows.items()}
               for index, rows in correct.items()}
    return ordered, reports, features


def _evaluations():
    """(row name, merge method) of every row of one level."""
    yield "uncompressed", "none"
    yield "tome_free", "tome"
    yield "tome", "tome"
    yield "pyra", "pyra"


def _gflops(name: str, level: Level, geo) -> float:
    if name == "uncompressed":
        return forward_flops([0] * geo.depth, geo, "none") / 1e9
    return forward_flops(level.schedule, geo, "pyra" if name == "pyra" else "tome") / 1e9


def _measure_level(run_dirs: dict[str, Path], loaded: dict[str, nn.Module], seed: int, level: Level,
                   key_of: Callable, config: CompareConfig) -> dict:
    """Latency and throughput at `level` of the three trained models that give its rows (LoRA merged in);
    `loaded` keeps each model across levels."""
    chosen = {}
    for name, method in (("uncompressed", "none"), ("tome", "tome"), ("pyra", "pyra")):
        key = key_of(name, seed, level)
        if key not in loaded:
            loaded[key] = merge_lora(load_run(run_dirs[key])[0].to(config.device))
        model = loaded[key]
        schedule = level.schedule if name != "uncompressed" and any(level.schedule) else [0] * len(level.schedule)
        chosen[name] = set_schedule(model, schedule, method=method if any(schedule) else "none")
    img_size = chosen["pyra"].patch_embed.img_size[0]
    stats = measure_speed(chosen, img_size=img_size, batch_size=config.bench_batch, repeats=config.bench_repeats,
                          device=config.device)
    stats["tome_free"] = stats["tome"]  # the same computation as trained ToMe at this schedule
    return stats


def _row(name: str, level: Level, correct: list[np.ndarray], speed: dict, gflops: float,
         config: CompareConfig) -> dict:
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
        "trained_for_level": name != "tome_free",  # training-free ToMe is the only row no model was trained for
        "training": _training(name, config),
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


def _training(name: str, config: CompareConfig) -> str:
    """How the model behind a row was trained."""
    if name == "uncompressed":
        return "uncompressed"
    if name == "tome_free":
        return "training-free"
    return "per-level" if config.protocol == "per-level" else f"elastic-{config.train.elastic}"


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
