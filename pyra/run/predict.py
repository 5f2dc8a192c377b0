"""Run a model over a dataset: labels, predictions, probabilities and (optionally) features.

    predictions = predict(model, ImageDataset(split.val, transform), with_features=True)
    predictions.accuracy, predictions.correct, predictions.features  # [n, D] for t-SNE
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pyra.run.devices import model_device

__all__ = ["Predictions", "predict", "Cancelled"]


class Cancelled(Exception):
    """The caller's cancel event was set while a dataset was being predicted (checked between batches)."""


@dataclass(frozen=True)
class Predictions:
    """What a model said about every item of a dataset, in dataset order."""

    labels: np.ndarray  # [n] int64, true labels
    predicted: np.ndarray  # [n] int64, argmax of the logits
    probabilities: np.ndarray  # [n, C] float32, softmax of the logits
    features: Optional[np.ndarray] = None  # [n, D] float32 pre-logits features (pooled class token)

    @property
    def correct(self) -> np.ndarray:
        """[n] bool: prediction equals label."""
        return self.predicted == self.labels

    @property
    def accuracy(self) -> float:
        """Share of correct predictions (nan for an empty dataset)."""
        return float(self.correct.mean()) if len(self.labels) else float("nan")


def predict(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: Optional[torch.device | str] = None,
    with_features: bool = False,
    cancel: Optional[threading.Event] = None,
) -> Predictions:
    """Evaluate `model` on `dataset` (items are (image [3, H, W], label)) without gradients.

    Args:
        model: a timm VisionTransformer (patched or not); put in eval mode for the call, its
            previous train/eval mode is restored afterwards.
        dataset: yields (image tensor, int label).
        batch_size: images per forward.
        device: where to run; None uses the model's parameters' device (the model is moved otherwise).
        with_features: also return the pre-logits features
            (`model.forward_head(model.forward_features(x), pre_logits=True)`).
        cancel: when set (from any thread), `Cancelled` is raised before the next batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model) if device is None else torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    labels, logits, features = [], [], []
    try:
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            # a generator of its own: a DataLoader without one draws its base seed from torch's global
            # generator, under the feet of a model being built in another thread (see pyra.rng)
            batches = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                                 generator=torch.Generator())
            for images, batch_labels in batches:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled while predicting")
                batch_logits, batch_features = _forward(model, images.to(device), with_features)
                labels.append(torch.as_tensor(batch_labels).to(torch.int64))
                logits.append(batch_logits.float().cpu())
                if batch_features is not None:
                    features.append(batch_features.float().cpu())
    finally:
        model.train(was_training)
    return _collect(model, labels, logits, features if with_features else None)


def _forward(model: nn.Module, images: Tensor, with_features: bool) -> tuple[Tensor, Optional[Tensor]]:
    """images: [B, 3, H, W] -> (logits [B, C], pre-logits features [B, D] or None)."""
    if not with_features:
        return model(images), None
    tokens = model.forward_features(images)  # [B, N, D]; a merging model keeps its sizes for pooling
    return model.forward_head(tokens), model.forward_head(tokens, pre_logits=True)


def _collect(model: nn.Module, labels: list[Tensor], logits: list[Tensor],
             features: Optional[list[Tensor]]) -> Predictions:
    if not labels:  # empty dataset
        num_classes = int(getattr(model, "num_classes", 0))
        empty_features = np.zeros((0, int(getattr(model, "num_features", 0))), np.float32)
        return Predictions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, num_classes), np.float32),
                           empty_features if features is not None else None)
    all_logits = torch.cat(logits)  # [n, C]
    return Predictions(
        labels=torch.cat(labels).numpy(),
        predicted=all_logits.argmax(dim=1).numpy().astype(np.int64),
        probabilities=all_logits.softmax(dim=1).numpy().astype(np.float32),
        features=torch.cat(features).numpy() if features is not None else None,
    )
