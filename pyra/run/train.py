"""Training loop for LoRA + PYRA: optimiser groups, warm-up + cosine lr, progress and cancel callbacks.

    model = build_model(run_config)                         # pyra.run.checkpoint: the one construction
    result = train(model, ImageDataset(split.train, tf), TrainConfig(epochs=5),
                   val_set=ImageDataset(split.val, tf), on_progress=print, cancel=threading.Event())
    result.status  # "completed" | "cancelled" | "diverged"

Before the first step the head is fitted by logistic regression on frozen features
(`pyra.run.head_start`); a merging model then trains at the levels `pyra.method.elastic` draws for each
step (sandwich by default), and is left at its target schedule.

The loop never raises on a diverging run: it stops before the bad update, restores the last
good trainable weights and reports why. The model is always returned in eval mode.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pyra.method.elastic import (
    ElasticMode,
    LevelSampler,
    check_elastic,
    distils,
    head_start_fractions,
    scaled_schedule,
)
from pyra.method.patch import set_schedule
from pyra.rng import RNG_LOCK
from pyra.run.devices import model_device
from pyra.run.head_start import HeadStart, fit_head
from pyra.run.optimizer import build_optimizer, lr_at
from pyra.run.predict import Cancelled, Predictions, predict

__all__ = ["MAX_SEED", "TrainConfig", "Progress", "TrainResult", "lr_at", "build_optimizer", "train"]


TrainStatus = Literal["completed", "cancelled", "diverged"]
MAX_SEED = 2**32 - 1  # the largest seed every random generator used here accepts


@dataclass(frozen=True)
class TrainConfig:
    """The small-data recipe every entry point defaults to (chosen by benchmarks/recipe_search.py);
    the paper's GPU recipe is `pyra.run.recipes.RECIPES["paper"]`."""

    epochs: int = 3  # paper: 100 on VTAB-1k; 3 keeps a CPU demo to minutes
    batch_size: int = 16  # paper: 32; more steps per epoch on a few hundred images
    micro_batch: Optional[int] = None  # images per forward + backward; a step's gradient is the same (None: the batch)
    lr: float = 3e-3  # LoRA + classifier head (paper: 1e-3)
    pyra_lr: float = 5e-4  # PYRA modulators, their own optimiser group (paper sweeps 1e-5..3e-3)
    weight_decay: float = 1e-4  # on LoRA/head weights with ndim >= 2 only; never on biases or PYRA
    warmup_fraction: float = 0.1  # share of all steps spent warming up linearly from 0
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    label_smoothing: float = 0.0  # paper: plain cross-entropy
    grad_clip: Optional[float] = 1.0  # max global norm of the trainable gradients; None = off
    seed: int = 0  # model RNG (dropout, drop-path), batch order and elastic levels
    eval_every_epoch: bool = True  # validate after every epoch (False: only after the last)
    elastic: ElasticMode = "sandwich-labels"  # levels per step of a merging model (pyra.method.elastic); "off" = target only
    head_start: bool = True  # fit the head by logistic regression on frozen features first (pyra.run.head_start)
    head_start_c: float = 0.05  # its inverse L2 strength: a probe that fits 100% of a few hundred training
    # images (scikit-learn's C = 1) leaves fine-tuning almost no loss to learn from (benchmarks/recipe_search.py)

    def __post_init__(self) -> None:
        problems = [
            (_is_int(self.epochs) and self.epochs >= 1, f"epochs must be a whole number >= 1, got {self.epochs!r}"),
            (_is_int(self.batch_size) and self.batch_size >= 1,
             f"batch_size must be a whole number >= 1, got {self.batch_size!r}"),
            (self.micro_batch is None or (_is_int(self.micro_batch) and self.micro_batch >= 1),
             f"micro_batch must be a whole number >= 1, or None for the whole batch; got {self.micro_batch!r}"),
            (_positive(self.lr), f"lr must be a finite number > 0 (e.g. 1e-3), got {self.lr!r}"),
            (_positive(self.pyra_lr), f"pyra_lr must be a finite number > 0 (e.g. 1e-3), got {self.pyra_lr!r}"),
            (_in_range(self.weight_decay, 0.0, math.inf), f"weight_decay must be >= 0, got {self.weight_decay!r}"),
            (_in_range(self.warmup_fraction, 0.0, 1.0, closed=False),
             f"warmup_fraction must be in [0, 1) (e.g. 0.1), got {self.warmup_fraction!r}"),
            (_in_range(self.min_lr_ratio, 0.0, 1.0), f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}"),
            (_in_range(self.label_smoothing, 0.0, 1.0, closed=False),
             f"label_smoothing must be in [0, 1) (0 = plain cross-entropy), got {self.label_smoothing!r}"),
            (self.grad_clip is None or _positive(self.grad_clip),
             f"grad_clip must be > 0, or None to turn clipping off; got {self.grad_clip!r}"),
            (_is_int(self.seed) and 0 <= self.seed <= MAX_SEED,
             f"seed must be a whole number from 0 to {MAX_SEED}, got {self.seed!r}"),
            (isinstance(self.head_start, bool), f"head_start must be True or False, got {self.head_start!r}"),
            (_positive(self.head_start_c), f"head_start_c must be a finite number > 0, got {self.head_start_c!r}"),
        ]
        check_elastic(self.elastic)
        for ok, message in problems:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def forward_batch(self) -> int:
        """Images in one forward pass, in training and in every inference pass around it (head start, validation)."""
        return min(self.micro_batch or self.batch_size, self.batch_size)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _in_range(value: object, low: float, high: float, closed: bool = True) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return False
    return low <= value <= high if closed else low <= value < high


def _positive(value: object) -> bool:
    return _in_range(value, 0.0, math.inf) and 0 < value < math.inf


@dataclass(frozen=True)
class Progress:
    """Reported after every optimiser step, and once more after each epoch's validation."""

    step: int  # optimiser steps done, 1-based
    total_steps: int
    epoch: int  # 1-based
    loss: float  # training loss of this step (mean over its passes: labels first, then distillation or labels)
    lr: float  # LoRA + head learning rate used at this step
    fraction: float  # step / total_steps
    images_per_s: float  # training throughput so far (validation excluded)
    eta_s: float  # estimated seconds of training left
    val_accuracy: Optional[float] = None  # set only on the report that follows an epoch's validation


@dataclass(frozen=True)
class TrainResult:
    """How a run ended, with its curves."""

    status: TrainStatus
    message: str
    seconds: float
    steps: int  # optimiser steps applied
    history: list[dict] = field(default_factory=list)  # per step: step, epoch, loss, lr, pyra_lr, grad_norm, levels
    epochs: list[dict] = field(default_factory=list)  # per epoch: epoch, step, train_loss, val_accuracy
    elastic: ElasticMode = "off"  # the mode applied: "off" for a model that does not merge
    head_start: Optional[HeadStart] = None  # None when turned off (or the run was cancelled before it)
    validation: Optional[Predictions] = None  # the last validation's predictions and features [n, D], at the
    # target (None: never ran); a comparison's sweep uses them instead of predicting the same images again

    @property
    def val_accuracy(self) -> Optional[float]:
        """Validation accuracy after the last validated epoch (None if never validated)."""
        scores = [e["val_accuracy"] for e in self.epochs if e["val_accuracy"] is not None]
        return scores[-1] if scores else None


ProgressFn = Callable[[Progress], None]


def train(
    model: nn.Module,
    train_set: Dataset,
    config: TrainConfig,
    *,
    val_set: Optional[Dataset] = None,
    on_progress: Optional[ProgressFn] = None,
    cancel: Optional[threading.Event] = None,
    device: Optional[torch.device | str] = None,
) -> TrainResult:
    """Train the trainable parameters of `model` (LoRA, PYRA, head) on `train_set`, in place.

    Args:
        model: built by `pyra.run.run_config.build_model` (or add_lora + patch by hand).
        train_set: yields (image [3, H, W], int label).
        config: the recipe.
        val_set: if given, accuracy is measured after every epoch (see `eval_every_epoch`).
        on_progress: called after every step (and after each validation) with a `Progress`.
        cancel: when set (from any thread), the run stops before its next step: status "cancelled".
        device: where to train; None keeps the model where it is.

    A non-finite loss or gradient norm stops the run before the optimiser step (status
    "diverged") and restores the trainable weights of the last good step.
    Returns a `TrainResult`; the model is left in eval mode in every case.
    """
    device = model_device(model) if device is None else torch.device(device)
    model.to(device)
    with RNG_LOCK:
        torch.manual_seed(config.seed)
    loop = _Loop(model, train_set, config, val_set, on_progress, cancel, device)
    try:
        return loop.run(train_set)
    finally:
        set_schedule(model, loop.target)
        model.eval()


def _elastic_mode(model: nn.Module, requested: ElasticMode) -> tuple[list[int], ElasticMode]:
    """The model's target schedule, and the elastic mode that applies to it ("off" if it never merges)."""
    config = getattr(model, "merge_config", None)
    if config is None:
        raise ValueError("train expects a patched model; call pyra.patch(model, method=...) (or build_model) first")
    target = list(config.schedule)
    merges = config.method != "none" and any(target)
    return target, requested if merges else "off"


class _Loop:
    """One training run's state: optimiser, clock, curves, last good weights."""

    def __init__(self, model: nn.Module, train_set: Dataset, config: TrainConfig, val_set: Optional[Dataset],
                 on_progress: Optional[ProgressFn], cancel: Optional[threading.Event], device: torch.device):
        if len(train_set) == 0:
            raise ValueError("the training set is empty; give it at least one image per class")
        self.model, self.config, self.val_set, self.device = model, config, val_set, device
        self.on_progress, self.cancel = on_progress or (lambda progress: None), cancel
        self.loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, num_workers=0,
                                 drop_last=False, generator=torch.Generator().manual_seed(config.seed))
        self.optimizer = build_optimizer(model, config)
        self.total_steps = config.epochs * len(self.loader)
        self.warmup_steps = round(config.warmup_fraction * self.total_steps)
        self.trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.good = _snapshot(self.trainable)
        self.target, self.elastic = _elastic_mode(model, config.elastic)
        self.levels = LevelSampler(self.elastic, config.seed)
        self.head_start: Optional[HeadStart] = None
        self.validation: Optional[Predictions] = None
        self.history: list[dict] = []
        self.epochs: list[dict] = []
        self.images = 0
        self.train_seconds = 0.0

    def run(self, train_set: Dataset) -> TrainResult:
        """The head start, then every epoch; a cancel is seen between steps and between inference batches."""
        start = time.perf_counter()
        status: TrainStatus = "completed"
        message = f"trained {self.total_steps} steps ({self.config.epochs} epochs)"
        try:
            if self.config.head_start and not self.cancelled():
                schedules = {tuple(scaled_schedule(self.target, f)) for f in head_start_fractions(self.elastic)}
                self.head_start = fit_head(self.model, train_set, sorted(schedules), self.config.head_start_c,
                                           batch_size=self.config.forward_batch, cancel=self.cancel)
                self.good = _snapshot(self.trainable)
            self.model.train()  # the frozen backbone still applies drop-path; LoRA applies dropout
            for epoch in range(1, self.config.epochs + 1):
                outcome = self._epoch(epoch)
                if outcome is not None:
                    status, message = outcome
                    break
        except Cancelled:  # during the head start or a validation: the weights of the last step stay
            status, message = self._stopped()
        return TrainResult(status, message, time.perf_counter() - start, len(self.history), self.history,
                           self.epochs, self.elastic, self.head_start, self.validation)

    def _stopped(self) -> tuple[TrainStatus, str]:
        return "cancelled", f"cancelled by the user after {len(self.history)} of {self.total_steps} steps"

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def _epoch(self, epoch: int) -> Optional[tuple[TrainStatus, str]]:
        """Train one epoch, then validate; (status, message) if the run must stop."""
        first = len(self.history)
        for images, labels in self.loader:
            if self.cancelled():
                return self._stopped()
            problem = self._step(epoch, images, labels)
            if problem is not None:
                return "diverged", problem
        losses = [record["loss"] for record in self.history[first:]]
        summary = {"epoch": epoch, "step": len(self.history), "train_loss": sum(losses) / len(losses),
                   "val_accuracy": None}
        self.epochs.append(summary)
        if self.cancelled():
            return self._stopped()
        if self.val_set is not None and (self.config.eval_every_epoch or epoch == self.config.epochs):
            set_schedule(self.model, self.target)  # validated at the target level
            self.validation = predict(self.model, self.val_set, batch_size=self.config.forward_batch,
                                      with_features=True, cancel=self.cancel)
            summary["val_accuracy"] = self.validation.accuracy
            self.on_progress(self._progress(epoch, val_accuracy=summary["val_accuracy"]))
        return None

    def _step(self, epoch: int, images: Tensor, labels: Tensor) -> Optional[str]:
        """One optimiser step over the levels the sampler draws; a message instead if the loss or
        gradients are not finite. Gradients of every pass (and of every micro-batch of a pass) add up
        before the one update, each weighted by its share of the batch."""
        tic = time.perf_counter()
        step = len(self.history)  # 0-based index of this step
        lrs = self._set_lr(step)
        chunks = list(zip(images.to(self.device).split(self.config.forward_batch),
                          labels.to(self.device).split(self.config.forward_batch)))
        levels = self.levels.draw()
        self.optimizer.zero_grad(set_to_none=True)
        teachers: list[Tensor] = []  # per micro-batch: [b, C] probabilities of the step's first pass
        losses = []
        for fraction in levels:
            if self.elastic != "off":
                set_schedule(self.model, scaled_schedule(self.target, fraction))
            distil = bool(teachers) and distils(self.elastic)
            pass_loss = 0.0
            for index, (x, y) in enumerate(chunks):
                with RNG_LOCK, torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda"):
                    logits = self.model(x).float()  # dropout and drop-path draw here: not while a model is built
                if distil:  # in-place distillation: cross-entropy against the first pass's soft predictions
                    loss = -(teachers[index] * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
                else:
                    loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
                    if len(teachers) < len(chunks):
                        teachers.append(logits.detach().softmax(dim=-1))
                if not torch.isfinite(loss):
                    return self._diverged(step + 1, f"the loss is {loss.item()}")
                (loss * len(y) / len(labels)).backward()
                pass_loss += loss.item() * len(y) / len(labels)
            losses.append(pass_loss)
        loss_value = sum(losses) / len(losses)
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.trainable.values()), max_norm)
        if not torch.isfinite(grad_norm):
            return self._diverged(step + 1, f"the gradient norm is {grad_norm.item()}")
        self.optimizer.step()
        self.good = _snapshot(self.trainable)
        self.images += len(labels)
        self.train_seconds += time.perf_counter() - tic
        self.history.append({"step": step + 1, "epoch": epoch, "loss": loss_value, "lr": lrs.get("lora_head"),
                             "pyra_lr": lrs.get("pyra"), "grad_norm": grad_norm.item(),
                             "levels": [round(f, 4) for f in levels] if self.elastic != "off" else None})
        self.on_progress(self._progress(epoch))
        return None

    def _set_lr(self, step: int) -> dict[str, float]:
        """Scale every group's base lr by the schedule; returns {"lora_head": lr, "pyra": lr}."""
        used = {}
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.total_steps, self.warmup_steps, group["base_lr"], self.config.min_lr_ratio)
            used["pyra" if group["name"] == "pyra" else "lora_head"] = group["lr"]
        return used

    def _diverged(self, step: int, what: str) -> str:
        _restore(self.trainable, self.good)
        self.optimizer.zero_grad(set_to_none=True)
        return (f"step {step} of {self.total_steps}: {what}, so training stopped before this update and the "
                f"trainable weights of step {step - 1} were restored. Lower lr (now {self.config.lr:g}) or "
                f"pyra_lr (now {self.config.pyra_lr:g}), or keep grad_clip on.")

    def _progress(self, epoch: int, val_accuracy: Optional[float] = None) -> Progress:
        step = len(self.history)
        per_step = self.train_seconds / step if step else 0.0
        last = self.history[-1] if self.history else {"loss": math.nan, "lr": math.nan}
        return Progress(
            step=step, total_steps=self.total_steps, epoch=epoch, loss=last["loss"],
            lr=last["lr"] if last["lr"] is not None else math.nan, fraction=step / self.total_steps,
            images_per_s=self.images / self.train_seconds if self.train_seconds > 0 else 0.0,
            eta_s=per_step * (self.total_steps - step), val_accuracy=val_accuracy,
        )


def _snapshot(params: dict[str, nn.Parameter]) -> dict[str, Tensor]:
    """CPU copies of the trainable tensors (small: LoRA, PYRA, head)."""
    return {name: p.detach().to("cpu", copy=True) for name, p in params.items()}


@torch.no_grad()
def _restore(params: dict[str, nn.Parameter], saved: dict[str, Tensor]) -> None:
    for name, param in params.items():
        param.copy_(saved[name])
