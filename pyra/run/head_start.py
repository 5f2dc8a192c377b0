"""Head start (LP-FT, Kumar et al., ICLR 2022): fit the classifier head by multinomial logistic
regression on the frozen model's pre-logit features before fine-tuning.

With LoRA B = 0 at the start these are the backbone's own features, so fine-tuning begins at
the linear-probe optimum instead of a random head.

    result = fit_head(model, train_set, [[0] * 12, target], inverse_l2=0.05)   # features at both levels
    result.train_accuracy, result.seconds
"""
from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import Dataset

from pyra.method.patch import set_schedule
from pyra.run.predict import predict

__all__ = ["HeadStart", "PROBE_C", "probe_features", "fit_probe", "fit_head", "probe_correct"]


PROBE_C = 1.0  # the frozen-feature probe as a baseline classifier: scikit-learn's default
PROBE_MAX_ITER = 2000


@dataclass(frozen=True)
class HeadStart:
    """What the head start did."""

    seconds: float
    images: int  # training images
    levels: int  # schedules whose features were pooled
    train_accuracy: float  # the probe's accuracy on the features it was fitted on

    def to_dict(self) -> dict:
        return asdict(self)


def probe_features(model: nn.Module, dataset: Dataset, schedule: Sequence[int], batch_size: int = 64,
                   cancel: Optional[threading.Event] = None) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logit features [n, D] and labels [n] of `dataset` with `model` merging at `schedule`.

    The model is left at the schedule it had before the call.
    """
    trained = list(model.merge_config.schedule)
    set_schedule(model, list(schedule))
    try:
        predictions = predict(model, dataset, batch_size=batch_size, with_features=True, cancel=cancel)
    finally:
        set_schedule(model, trained)
    return predictions.features, predictions.labels


def fit_probe(features: np.ndarray, labels: np.ndarray, num_classes: int,
              inverse_l2: float = PROBE_C) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (scikit-learn, C = `inverse_l2`) -> (weight [C, D], bias [C])
    of softmax logits.

    Two classes: scikit-learn fits one logit difference w.x + b; split as -/+ half of it so
    that softmax over the two logits gives the same probabilities.
    """
    present = np.unique(labels)
    if len(present) != num_classes or not np.array_equal(present, np.arange(num_classes)):
        raise ValueError(f"the head start needs training images of all {num_classes} classes; "
                         f"found labels {present.tolist()}. Give every class at least one training image.")
    probe = LogisticRegression(C=inverse_l2, max_iter=PROBE_MAX_ITER)
    probe.fit(features.astype(np.float64), labels)
    weight, bias = probe.coef_, probe.intercept_
    if num_classes == 2:
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    return weight.astype(np.float32), bias.astype(np.float32)


def _plain_head(model: nn.Module) -> nn.Linear:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or getattr(model, "head_dist", None) is not None:
        raise ValueError(f"the head start fits a single linear classifier head; {type(model).__name__} has "
                         f"{type(head).__name__}{' and a distillation head' if hasattr(model, 'head_dist') else ''}. "
                         "Turn it off (--no-head-start / head_start=False).")
    return head


def fit_head(model: nn.Module, train_set: Dataset, schedules: Sequence[Sequence[int]],
             inverse_l2: float, batch_size: int = 64, cancel: Optional[threading.Event] = None) -> HeadStart:
    """Fit `model.head` on the pooled features of `train_set` at every schedule in `schedules`, with
    L2 strength 1 / `inverse_l2` (TrainConfig.head_start_c); `cancel` set: `Cancelled` before the next batch."""
    head = _plain_head(model)
    start = time.perf_counter()
    parts = [probe_features(model, train_set, schedule, batch_size, cancel) for schedule in schedules]
    features = np.concatenate([f for f, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    weight, bias = fit_probe(features, labels, head.out_features, inverse_l2)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    train_accuracy = float(((features @ weight.T + bias).argmax(1) == labels).mean())
    return HeadStart(time.perf_counter() - start, len(parts[0][1]), len(parts), train_accuracy)


def probe_correct(model: nn.Module, train_set: Dataset, val_set: Dataset, schedule: Sequence[int],
                  batch_size: int = 64, inverse_l2: float = PROBE_C) -> np.ndarray:
    """The frozen-feature probe as a classifier of its own: fit on `train_set`'s features at
    `schedule`, then [n_val] bool, whether each validation image is classified correctly.

    `model` must be untrained (LoRA B = 0), so the features are the backbone's own.
    """
    train_features, train_labels = probe_features(model, train_set, schedule, batch_size)
    weight, bias = fit_probe(train_features, train_labels, int(model.num_classes), inverse_l2)
    val_features, val_labels = probe_features(model, val_set, schedule, batch_size)
    return (val_features @ weight.T + bias).argmax(1) == val_labels
