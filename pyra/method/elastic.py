"""Elastic merging: one model trained for every compression level between uncompressed and its target.

A *level* is a fraction f in [0, 1] of the target schedule: layer l merges round(f * r_l)
tokens (0 = uncompressed, 1 = the target). PYRA's modulators are sized by the target; a
smaller level uses their first rows (see `pyra.method.patch.set_schedule`).

Each optimiser step trains at the levels `LevelSampler.draw` returns, in order. The first
pass of a step learns from the labels; any later pass of the same step learns from the first
pass's soft predictions (in-place distillation).

- "off": the target only (the paper's protocol: one model per level).
- "uniform": one level drawn uniformly from [0, 1].
- "sandwich": uncompressed on the labels, then the target and one uniform level on the
  uncompressed pass's predictions (Yu & Huang, Universally Slimmable Networks, ICCV 2019).
- "sandwich-labels": the same three levels, every pass on the labels (no distillation).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal, get_args

__all__ = ["ElasticMode", "ELASTIC_MODES", "check_elastic", "distils", "scaled_schedule", "LevelSampler",
           "head_start_fractions"]


ElasticMode = Literal["off", "uniform", "sandwich", "sandwich-labels"]
ELASTIC_MODES: tuple[str, ...] = get_args(ElasticMode)


def check_elastic(mode: str) -> None:
    if mode not in ELASTIC_MODES:
        raise ValueError(f"elastic must be one of {', '.join(ELASTIC_MODES)}, got {mode!r}")


def distils(mode: ElasticMode) -> bool:
    """A step's later passes learn from its first pass's soft predictions (in-place distillation)."""
    return mode == "sandwich"


def scaled_schedule(target: Sequence[int], fraction: float) -> list[int]:
    """Tokens merged per layer at `fraction` of `target`: round(fraction * r) in every layer."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a level is a fraction of the target schedule in [0, 1], got {fraction}")
    return [int(round(fraction * r)) for r in target]


class LevelSampler:
    """Seeded draws of the levels each optimiser step trains at (same seed, same sequence)."""

    def __init__(self, mode: ElasticMode, seed: int):
        check_elastic(mode)
        self.mode = mode
        self._rng = random.Random(seed)

    def draw(self) -> tuple[float, ...]:
        """The levels of the next step, first one trained on the labels."""
        if self.mode == "off":
            return (1.0,)
        if self.mode == "uniform":
            return (self._rng.random(),)
        return (0.0, 1.0, self._rng.random())  # both sandwich modes


def head_start_fractions(mode: ElasticMode) -> tuple[float, ...]:
    """Levels whose frozen features the head start fits on: the ends of the trained range."""
    return (1.0,) if mode == "off" else (0.0, 1.0)
