"""Evaluate a model: classification metrics at any merge schedule, and latency/throughput.

- accuracy (with a Wilson interval), macro-F1, per-class accuracy, confusion matrix:
  `classification_report`, or `evaluate` to predict and report in one call;
- `evaluate(..., schedule=, method=)` runs one evaluation at another merge setting and puts
  the model's own setting back afterwards (ToMe training-free on any patched model, or a PYRA
  model at its trained schedule or smaller);
- speed: `measure_speed` times several models side by side, interleaved (A B C A B C ...),
  batch-1 latency separately from batch throughput; `speedup` compares them to a baseline.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score
from torch import Tensor, nn

from pyra.patch import MergeConfig, set_schedule
from pyra.schedule import Method, ScheduleSpec
from pyra.stats import accuracy_interval

if TYPE_CHECKING:  # imported inside evaluate(), so the speed tools do not depend on pyra.predict
    from pyra.predict import Predictions

Device = Union[str, torch.device]

# ---------------------------------------------------------------------------------------
# Classification metrics
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassificationReport:
    """Metrics of one evaluation; accuracies are fractions in [0, 1]."""

    accuracy: float
    low: float  # Wilson 95% interval of the accuracy
    high: float
    macro_f1: float  # unweighted mean F1 over the classes that occur in labels or predictions
    per_class_accuracy: dict[str, float]  # class -> recall; nan for a class without images
    confusion: list[list[int]]  # [C, C]: row = true class, column = predicted class
    n: int  # images evaluated
    classes: tuple[str, ...] = ()  # class names, in label order (rows of `confusion`)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: nan becomes None, tuples become lists."""
        out = asdict(self)
        out["per_class_accuracy"] = {k: _finite_or_none(v) for k, v in self.per_class_accuracy.items()}
        out["classes"] = list(self.classes)
        return out


def _finite_or_none(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


def classification_report(predictions: "Predictions", classes: Sequence[str]) -> ClassificationReport:
    """Metrics from `predictions` (uses its `labels` and `predicted`, both [n] class indices).

    Args:
        predictions: output of `pyra.predict.predict` (or anything with `labels`, `predicted`).
        classes: class names, index i naming label i.
    """
    labels = np.asarray(predictions.labels).astype(np.int64).reshape(-1)
    predicted = np.asarray(predictions.predicted).astype(np.int64).reshape(-1)
    num_classes = len(classes)
    if labels.size == 0 or labels.shape != predicted.shape:
        raise ValueError(f"need the same non-zero number of labels and predictions, got {labels.size} and {predicted.size}")
    if num_classes < 1:
        raise ValueError("classes is empty; pass the class names in label order")
    highest = int(max(labels.max(), predicted.max()))
    if highest >= num_classes or min(labels.min(), predicted.min()) < 0:
        raise ValueError(
            f"class index {highest} is out of range for {num_classes} classes; "
            "pass the class names the model was trained with, in label order"
        )
    confusion = confusion_matrix(labels, predicted, labels=list(range(num_classes)))  # [C, C]
    images_per_class = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(confusion) / images_per_class  # nan where a class has no images
    interval = accuracy_interval(labels == predicted)
    return ClassificationReport(
        accuracy=interval.estimate,
        low=interval.low,
        high=interval.high,
        macro_f1=float(f1_score(labels, predicted, average="macro", zero_division=0.0)),
        per_class_accuracy={name: float(value) for name, value in zip(classes, recall)},
        confusion=confusion.astype(int).tolist(),
        n=int(labels.size),
        classes=tuple(classes),
    )


@contextmanager
def merge_setting(
    model: nn.Module, schedule: Optional[ScheduleSpec] = None, method: Optional[Method] = None
) -> Iterator[nn.Module]:
    """Run a block with `model` merging at `schedule` / `method`, then restore its own setting.

    Nothing changes when both are None. A method alone keeps the current schedule; a
    schedule alone keeps the current method. The model must already be patched.
    """
    if schedule is None and method is None:
        yield model
        return
    previous: Optional[MergeConfig] = getattr(model, "merge_config", None)
    if previous is None:
        raise ValueError("evaluating at a schedule or method needs a patched model; call pyra.patch(model, ...) first")
    try:
        set_schedule(model, list(previous.schedule) if schedule is None else schedule, method=method)
        yield model
    finally:
        model.merge_config = previous


def evaluate(
    model: nn.Module,
    dataset: Any,
    classes: Sequence[str],
    *,
    schedule: Optional[ScheduleSpec] = None,
    method: Optional[Method] = None,
    batch_size: int = 64,
    with_features: bool = False,
    device: Optional[Device] = None,
) -> tuple[ClassificationReport, "Predictions"]:
    """Predict `dataset` and report metrics, optionally at another merge schedule / method.

    Works at any schedule on any trained, patched model without retraining: method="tome"
    merges training-free (also on a model patched with "none"); a PYRA model runs at its
    trained schedule or a smaller one. The model's own merge setting is restored afterwards.

    Args:
        model: a classifier (patched when `schedule` or `method` is given).
        dataset: (image, label) dataset accepted by `pyra.predict.predict`.
        classes: class names in label order.
        schedule: tokens merged per layer for this evaluation (see `pyra.schedule`).
        method: "pyra", "tome" or "none" for this evaluation.
        batch_size: images per forward.
        with_features: also keep the pooled features (for t-SNE).
        device: where to run; None lets `predict` choose.
    """
    from pyra.predict import predict

    with merge_setting(model, schedule, method):
        predictions = predict(model, dataset, batch_size=batch_size, device=device, with_features=with_features)
    return classification_report(predictions, classes), predictions


# ---------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Summary of repeated timings."""

    median: float
    p25: float
    p75: float
    min: float
    max: float

    @property
    def iqr(self) -> float:
        return self.p75 - self.p25

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Spread":
        p25, median, p75 = np.percentile(np.asarray(samples, dtype=float), [25, 50, 75])
        return cls(float(median), float(p25), float(p75), float(min(samples)), float(max(samples)))

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "iqr": self.iqr}


@dataclass(frozen=True)
class SpeedStats:
    """Timings of one model: batch-1 latency and batch-B throughput over `repeats` rounds."""

    latency_ms: Spread  # one image per forward, milliseconds
    throughput: Spread  # images per second at `batch_size`
    batch_size: int
    repeats: int
    warmup: int
    threads: int  # torch.get_num_threads() during the measurement
    img_size: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["latency_ms"], out["throughput"] = self.latency_ms.to_dict(), self.throughput.to_dict()
        return out


SpeedReport = dict[str, SpeedStats]  # model name -> its timings, all measured in one interleaved run


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_forward(model: nn.Module, x: Tensor, device: torch.device) -> float:
    """Seconds for one forward of `x` (device work included)."""
    _synchronize(device)
    start = time.perf_counter()
    model(x)
    _synchronize(device)
    return time.perf_counter() - start


@contextmanager
def _num_threads(threads: Optional[int]) -> Iterator[int]:
    """Use `threads` intra-op threads inside the block (None: leave as is); yields the count in use."""
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _eval_mode(models: Sequence[nn.Module]) -> Iterator[None]:
    """Put `models` in eval mode inside the block, restoring each one's training flag after."""
    was_training = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, flag in zip(models, was_training):
            m.train(flag)


def measure_speed(
    models: dict[str, nn.Module],
    *,
    img_size: int,
    batch_size: int = 8,
    repeats: int = 7,
    warmup: int = 2,
    threads: Optional[int] = None,
    device: Device = "cpu",
) -> SpeedReport:
    """Time every model on random input, interleaved, under torch.inference_mode.

    Each round runs a batch-1 forward of every model in order (A B C), then a batch-B
    forward of every model (A B C); `warmup` rounds are run first and discarded, then
    `repeats` rounds are recorded. Models must already be on `device`; each is put in eval
    mode for the measurement and its training flag restored after.

    Args:
        models: name -> model, e.g. {"uncompressed": m0, "tome": m1, "pyra": m2}.
        img_size: square input size in pixels.
        batch_size: images per forward for the throughput measurement.
        repeats: recorded rounds (median and quartiles are taken over these).
        warmup: discarded rounds before recording.
        threads: torch intra-op threads for the measurement (restored after); None keeps the current.
        device: where the input lives.
    """
    if not models:
        raise ValueError("measure_speed needs at least one model")
    if repeats < 1 or warmup < 0 or batch_size < 1 or img_size < 1:
        raise ValueError(
            f"need repeats >= 1, warmup >= 0, batch_size >= 1, img_size >= 1; "
            f"got {repeats}, {warmup}, {batch_size}, {img_size}"
        )
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    single = torch.randn(1, 3, img_size, img_size, generator=generator).to(device)
    batch = torch.randn(batch_size, 3, img_size, img_size, generator=generator).to(device)
    latency_s: dict[str, list[float]] = {name: [] for name in models}
    batch_s: dict[str, list[float]] = {name: [] for name in models}
    with _num_threads(threads) as used_threads, _eval_mode(list(models.values())), torch.inference_mode():
        for round_index in range(warmup + repeats):
            record = round_index >= warmup
            for name, model in models.items():  # A B C at batch 1
                seconds = _time_forward(model, single, device)
                if record:
                    latency_s[name].append(seconds)
            for name, model in models.items():  # A B C at batch B
                seconds = _time_forward(model, batch, device)
                if record:
                    batch_s[name].append(seconds)
    return {
        name: SpeedStats(
            latency_ms=Spread.of([1000.0 * s for s in latency_s[name]]),
            throughput=Spread.of([batch_size / s for s in batch_s[name]]),
            batch_size=batch_size,
            repeats=repeats,
            warmup=warmup,
            threads=used_threads,
            img_size=img_size,
            device=str(device),
        )
        for name in models
    }


def speedup(
    stats: SpeedReport,
    baseline: str = "uncompressed",
    *,
    measure: Literal["throughput", "latency"] = "throughput",
) -> dict[str, float]:
    """Speed-up of every model over `baseline`, from medians (> 1 means faster).

    measure="throughput": median images/s over the baseline's; "latency": the baseline's
    median batch-1 latency over the model's.
    """
    if baseline not in stats:
        raise ValueError(f"baseline {baseline!r} is not among the measured models {sorted(stats)}")
    if measure not in ("throughput", "latency"):
        raise ValueError(f"measure must be 'throughput' or 'latency', got {measure!r}")
    base = stats[baseline]
    if measure == "throughput":
        return {name: s.throughput.median / base.throughput.median for name, s in stats.items()}
    return {name: base.latency_ms.median / s.latency_ms.median for name, s in stats.items()}
