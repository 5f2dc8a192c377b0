"""Latency and throughput of models measured side by side on this machine.

`measure_speed` times several models interleaved (A B C A B C ...), batch-1 latency separately
from batch throughput; `speedup` compares them to a baseline.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn


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


Device = Union[str, torch.device]
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
