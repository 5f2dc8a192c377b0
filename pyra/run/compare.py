"""Run the comparison the app shows: LoRA uncompressed vs ToMe + LoRA vs PYRA + LoRA on one dataset.

For each seed it trains the models, then sweeps compression levels (fractions of the target
schedule): accuracy of every model at every level, ToMe applied training-free to the
uncompressed model, and latency / throughput measured interleaved on this machine. The
settings and the result are declared in `pyra.run.comparison`.
"""
from __future__ import annotations

import functools
import io
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from torch import nn

from pyra.backbones.factory import backbone_structure
from pyra.data.datasets import DatasetSplit
from pyra.files import write_atomic
from pyra.method.lora import merge_lora
from pyra.method.patch import geometry, set_schedule
from pyra.method.schedule import ScheduleSpec, VitGeometry, forward_flops
from pyra.report.methods import MERGE_METHODS, MERGING_METHODS, METHOD_LABELS, TRAINED_METHODS
from pyra.report.stats import accuracy_interval, paired_difference, paired_seed_difference, seed_summary
from pyra.run.checkpoint import ADAPTER_FILE, load_config, load_metrics, load_run
from pyra.run.comparison import (
    FEATURES_FILE,
    PAIRS,
    CompareConfig,
    CompareProgress,
    CompareResult,
    Level,
    model_key,
    sweep_levels,
)
from pyra.run.cpu_layout import column_major_linears
from pyra.run.executors import Executor, InProcess, TrainingJob
from pyra.run.metrics import classification_report, evaluate
from pyra.run.one_run import make_run_config, model_dataset
from pyra.run.predict import Cancelled, Predictions
from pyra.run.run_config import RunConfig
from pyra.run.speed import measure_speed
from pyra.run.train import Progress, TrainResult


def _jobs(config: CompareConfig, levels: list[Level]) -> list[tuple[int, str, Level]]:
    """(seed, trained method, level trained for) of every training, target-level runs of each seed first."""
    target = levels[-1]
    jobs = []
    for seed in config.seeds:
        jobs += [(seed, name, target) for name in TRAINED_METHODS]
        if config.protocol == "per-level":
            jobs += [(seed, name, level) for level in levels[:-1] if any(level.schedule)
                     for name in MERGING_METHODS]
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
    executor: Optional[Executor] = None,
    resume: bool = False,
) -> CompareResult:
    """Train the models of every seed (see the protocols above), then sweep levels; results saved in out_dir.

    `executor` trains them (default `InProcess()`: one after another here; `pyra.run.executors.RayExecutor`
    spreads them over Ray). `resume` keeps each run folder an earlier call completed with the same settings
    instead of training it again.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # the only folder created with its parents: if out_dir is
    # removed while the job runs (the app's session ended), later writes fail instead of re-creating it
    report = on_progress or (lambda progress: None)
    levels, geo, _ = _levels(data, config)
    planned: dict[str, TrainingJob] = {}
    for seed, name, level in _jobs(config, levels):
        key = model_key(name, seed, level, levels[-1].index, config.protocol)
        level_part = key.partition(":")[2]  # "" or "L<index>" (per-level protocol, below the target)
        seed_dir = out_dir / f"seed{seed}"
        seed_dir.mkdir(exist_ok=True)
        run_dir = seed_dir / (key.partition("@")[0] + (f"-{level_part}" if level_part else ""))
        planned[key] = _training_job(data, config, name, seed, level, run_dir)
    results = {key: done for key, job in planned.items() if resume and (done := finished_run(job)) is not None}
    todo = [key for key in planned if key not in results]
    trained = _train(data, config, [planned[key] for key in todo], len(results), len(planned), report, cancel,
                     executor or InProcess())
    results |= dict(zip(todo, trained))
    run_dirs = {key: job.run_dir for key, job in planned.items() if key in results}
    histories = {key: results[key].history + results[key].epochs for key in run_dirs}  # steps, then validation
    for key in run_dirs:
        if results[key].status != "completed":  # the message says which training stopped
            message = f"{planned[key].label}: {results[key].message}"
            return _stopped(data, config, out_dir, histories, run_dirs, results[key].status, message)
    report(CompareProgress("accuracy", 0.9, "measuring accuracy and speed at every level"))
    validated = {key: (_validated_at(planned[key].run_config), results[key].validation) for key in todo
                 if results[key].validation is not None}
    try:
        result = _sweep(data, config, out_dir, levels, geo, run_dirs, histories, validated, report, cancel)
    except Cancelled:
        return _stopped(data, config, out_dir, histories, run_dirs, "cancelled",
                        "cancelled by the user while measuring accuracy at every level")
    result.save()
    report(CompareProgress("done", 1.0, "comparison complete"))
    return result


def finished_run(job: TrainingJob) -> Optional[TrainResult]:
    """The result an earlier call recorded in `job.run_dir`, if that training completed with the same settings."""
    try:
        saved, metrics = load_config(job.run_dir), load_metrics(job.run_dir)
    except (OSError, ValueError):  # no run there, or an unreadable one: train it
        return None
    same = replace(saved, backbone_fingerprint="").to_dict() == replace(job.run_config, backbone_fingerprint="").to_dict()
    if not same or metrics.get("status") != "completed" or not (job.run_dir / ADAPTER_FILE).is_file():
        return None
    return TrainResult("completed", str(metrics.get("message", "")), float(metrics.get("seconds", 0.0)),
                       int(metrics.get("steps", 0)), list(metrics.get("history", [])), list(metrics.get("epochs", [])),
                       metrics.get("elastic", "off"))


def _train(data: DatasetSplit, config: CompareConfig, jobs: list[TrainingJob], done_before: int, total: int,
           report: Callable[[CompareProgress], None], cancel: Optional[threading.Event],
           executor: Executor) -> list[TrainResult]:
    """Train `jobs` (the last of `total`, `done_before` kept from an earlier call), reporting 90% of the progress."""
    share = 0.9 / total
    finished = [done_before]

    def on_progress(index: int, progress: Progress) -> None:
        label = jobs[index].label
        report(CompareProgress(
            stage=f"train {label}", fraction=share * (done_before + index + progress.fraction),
            message=f"{label}: step {progress.step}/{progress.total_steps}, loss {progress.loss:.3f}",
            step=progress.step, total_steps=progress.total_steps, eta_s=progress.eta_s,
            loss=progress.loss, val_accuracy=progress.val_accuracy,
        ))

    def on_done(index: int, result: TrainResult) -> None:
        finished[0] += 1
        report(CompareProgress(f"trained {finished[0]} of {total}", share * finished[0],
                               f"{jobs[index].label}: {result.status}"))

    return executor.train_all(data, jobs, config.device, on_progress=on_progress, on_done=on_done, cancel=cancel)


def _stopped(data: DatasetSplit, config: CompareConfig, out_dir: Path, histories: dict[str, list[dict]],
             run_dirs: dict[str, Path], status: str, message: str) -> CompareResult:
    """The saved result of a comparison that stopped before its sweep finished: no levels, no rows."""
    partial = CompareResult(out_dir, data.classes, [], [], {}, histories, run_dirs, status, message,
                            protocol=config.protocol, training=config.training_label())
    partial.save()
    return partial


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


def _training_job(data: DatasetSplit, config: CompareConfig, name: str, seed: int, level: Level,
                  run_dir: Path) -> TrainingJob:
    run_config = _run_config(data, config, name, seed, list(level.schedule), elastic=config.protocol == "elastic")
    label = METHOD_LABELS[name] + (f" at level {level.index + 1}" if config.protocol == "per-level"
                                   and name != "uncompressed" else "")
    return TrainingJob(run_config, run_dir, f"{label}, seed {seed}")


def _evaluation_key(method: str, schedule: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """(merge method, schedule) of one evaluation: a schedule that merges nothing runs unmerged."""
    return (method if any(schedule) else "none"), schedule


def _validated_at(run_config: RunConfig) -> tuple[str, tuple[int, ...]]:
    """The evaluation a training's own validation is: its method, at its target."""
    return _evaluation_key(run_config.method, tuple(run_config.schedule))


def _sweep(data: DatasetSplit, config: CompareConfig, out_dir: Path, levels: list[Level], geo: VitGeometry,
           run_dirs: dict[str, Path], histories: dict[str, list[dict]], validated: dict[str, tuple[tuple, Predictions]],
           report: Callable[[CompareProgress], None], cancel: Optional[threading.Event]) -> CompareResult:
    key_of = functools.partial(model_key, target_index=levels[-1].index, protocol=config.protocol)
    correct, reports, features = _accuracies(data, config, levels, run_dirs, validated, key_of, report, cancel)
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


def measure_result_speed(result: CompareResult, *, repeats: int = 3, batch: int = 8,
                         device: str = "cpu") -> CompareResult:
    """A copy of `result` whose latency and throughput were measured again, on this machine, for the first
    seed's models (accuracies, intervals and verdicts unchanged; nothing is written)."""
    protocol, target = result.protocol, result.levels[-1].index
    key_of = functools.partial(model_key, target_index=target, protocol=protocol)
    config = CompareConfig(protocol=protocol, bench_batch=batch, bench_repeats=repeats, device=device)
    loaded: dict[str, nn.Module] = {}
    rows = []
    for level in result.levels:
        speed = _measure_level(result.run_dirs, loaded, result.first_seed, level, key_of, config)
        for row in result.rows_at(level.index):
            stats = speed[row["method"]].to_dict()
            rows.append(row | _speed_fields(stats) | {"threads": stats["threads"]})
    return replace(result, rows=rows)


def _speed_fields(stats: dict) -> dict:
    """A row's latency and throughput columns from one model's SpeedStats dict."""
    return {
        "latency_ms": stats["latency_ms"]["median"],
        "latency_p25": stats["latency_ms"]["p25"],
        "latency_p75": stats["latency_ms"]["p75"],
        "throughput": stats["throughput"]["median"],
        "throughput_p25": stats["throughput"]["p25"],
        "throughput_p75": stats["throughput"]["p75"],
    }


def _accuracies(data: DatasetSplit, config: CompareConfig, levels: list[Level], run_dirs: dict[str, Path],
                validated: dict[str, tuple[tuple, Predictions]], key_of: Callable,
                report: Callable[[CompareProgress], None], cancel: Optional[threading.Event]):
    """correct[level][method] = one boolean array per seed; reports and features at the target level, first seed.

    Each model is loaded once, evaluated at every level it serves, and dropped (per-level
    comparisons hold many models). `validated[key]` = ((merge method, schedule), predictions with
    features) of a training that ran in this process: that evaluation is taken as it is, not run again.
    """
    plan: dict[str, list[tuple[Level, int, str, str]]] = {}  # model key -> (level, seed, row name, merge method)
    for level in levels:
        for seed in config.seeds:
            for name, method in MERGE_METHODS.items():
                plan.setdefault(key_of(name, seed, level), []).append((level, seed, name, method))
    correct: dict[int, dict[str, dict[int, np.ndarray]]] = {level.index: {} for level in levels}
    reports: dict[str, dict] = {}
    features: dict[str, np.ndarray] = {}
    target, first_seed = levels[-1], config.seeds[0]
    for done, (key, uses) in enumerate(plan.items()):
        model = val_set = None  # loaded when an evaluation is not in the cache
        cache: dict[tuple, tuple] = {}  # one evaluation per (method, schedule): the uncompressed one runs once
        if key in validated:
            at, predictions = validated[key]
            cache[at] = classification_report(predictions, data.classes), predictions
        for level, seed, name, method in uses:
            schedule = tuple(level.schedule) if name != "uncompressed" else (0,) * len(level.schedule)
            at = _evaluation_key(method, schedule)
            if at not in cache:  # features come from the same forward: keep the first seed's
                if model is None:
                    model = load_run(run_dirs[key])[0].to(config.device)
                    val_set = model_dataset(model, data.val)
                cache[at] = evaluate(  # at the training batch: within the memory estimate
                    model, val_set, data.classes, schedule=list(at[1]), method=at[0],
                    with_features=seed == first_seed, batch_size=config.train.forward_batch, cancel=cancel)
            evaluation, predictions = cache[at]
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


def _gflops(name: str, level: Level, geo) -> float:
    if name == "uncompressed":
        return forward_flops([0] * geo.depth, geo, "none") / 1e9
    return forward_flops(level.schedule, geo, "pyra" if name == "pyra" else "tome") / 1e9


def _measure_level(run_dirs: dict[str, Path], loaded: dict[str, nn.Module], seed: int, level: Level,
                   key_of: Callable, config: CompareConfig) -> dict:
    """Latency and throughput at `level` of the three trained models that give its rows (LoRA merged in, weights
    laid out for CPU inference); `loaded` keeps each model across levels."""
    chosen = {}
    for name, method in TRAINED_METHODS.items():
        key = key_of(name, seed, level)
        if key not in loaded:
            loaded[key] = column_major_linears(merge_lora(load_run(run_dirs[key])[0].to(config.device)))
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
        **_speed_fields(stats),
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
