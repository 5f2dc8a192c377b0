"""Classification metrics of a model at any merge schedule.

- accuracy (with a Wilson interval), macro-F1, per-class accuracy, confusion matrix:
  `classification_report`, or `evaluate` to predict and report in one call;
- `evaluate(..., schedule=, method=)` runs one evaluation at another merge setting and puts
  the model's own setting back afterwards (ToMe training-free on any patched model, or a PYRA
  model at its trained schedule or smaller).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score
from torch import nn

from pyra.method.patch import MergeConfig, set_schedule
from pyra.method.schedule import Method, ScheduleSpec
from pyra.report.stats import accuracy_interval
from pyra.run.speed import Device

if TYPE_CHECKING:  # imported inside evaluate()
    from pyra.run.predict import Predictions

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
        predictions: output of `pyra.run.predict.predict` (or anything with `labels`, `predicted`).
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
    cancel: Optional[threading.Event] = None,
) -> tuple[ClassificationReport, "Predictions"]:
    """Predict `dataset` and report metrics, optionally at another merge schedule / method.

    Works at any schedule on any trained, patched model without retraining: method="tome"
    merges training-free (also on a model patched with "none"); a PYRA model runs at its
    trained schedule or a smaller one. The model's own merge setting is restored afterwards.

    Args:
        model: a classifier (patched when `schedule` or `method` is given).
        dataset: (image, label) dataset accepted by `pyra.run.predict.predict`.
        classes: class names in label order.
        schedule: tokens merged per layer for this evaluation (see `pyra.method.schedule`).
        method: "pyra", "tome" or "none" for this evaluation.
        batch_size: images per forward.
        with_features: also keep the pooled features (for t-SNE).
        device: where to run; None lets `predict` choose.
        cancel: when set, `pyra.run.predict.Cancelled` is raised before the next batch.
    """
    from pyra.run.predict import predict

    with merge_setting(model, schedule, method):
        predictions = predict(model, dataset, batch_size=batch_size, device=device, with_features=with_features,
                              cancel=cancel)
    return classification_report(predictions, classes), predictions

