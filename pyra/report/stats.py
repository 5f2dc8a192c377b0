"""Uncertainty for accuracies measured on small validation sets.

Every accuracy gets an interval and every difference between two methods evaluated on the
same images gets an interval, a p-value and a plain-language verdict, so a 1-point gap on
40 images is not read as a win. Pure numpy/scipy; accuracies are fractions in [0, 1].

- one method, one run:        `accuracy_interval` (Wilson score interval)
- two methods, same images:   `paired_difference` (paired bootstrap + exact McNemar test)
- planning / UI hints:        `min_detectable_difference`
- one metric over seeds:      `seed_summary`, `paired_seed_difference` (Student-t)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

NO_CLEAR_DIFFERENCE = "no clear difference at this sample size"
_BOOTSTRAP_CHUNK_ELEMENTS = 2**22  # resampled indices held in memory at once (~16 MB int32)


def _json_ready(fields: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats -> None (strict JSON has no NaN), tuples -> lists."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        elif isinstance(value, tuple):
            value = [None if isinstance(v, float) and not math.isfinite(v) else v for v in value]
        out[key] = value
    return out


def _z_value(confidence: float) -> float:
    """Two-sided standard-normal quantile, e.g. 0.95 -> 1.96."""
    _check_confidence(confidence)
    return float(stats.norm.ppf(0.5 + confidence / 2))


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")


def _as_correct_array(correct: Any, name: str) -> np.ndarray:
    """Per-image correctness (bool or 0/1 values) -> 1-D bool array [n]."""
    array = np.asarray(correct)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array of per-image correctness, got shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name}: per-image correctness must be boolean or 0/1, found other values")
    return array.astype(bool)


# ---------------------------------------------------------------------------------------
# One accuracy
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    estimate: float    # accuracy as a fraction in [0, 1]
    low: float         # lower confidence bound, >= 0
    high: float        # upper confidence bound, <= 1
    n: int             # validation images
    confidence: float  # e.g. 0.95

    def to_dict(self) -> dict[str, Any]:
        return _json_ready(asdict(self))


def accuracy_interval(correct: np.ndarray | int, total: int | None = None, confidence: float = 0.95) -> Interval:
    """Wilson score interval for an accuracy.

    Pass either a per-image correctness array (bool or 0/1, `total` omitted) or a count of
    correct images plus `total`. Wilson, unlike the normal approximation, stays inside
    [0, 1] and does not collapse to zero width at 0/n or n/n.
    """
    if np.ndim(correct) == 0:
        if total is None:
            raise ValueError("accuracy_interval: pass total when correct is a count, or pass a per-image array")
        num_correct, num_images = int(correct), int(total)
    else:
        array = _as_correct_array(correct, "accuracy_interval")
        if total is not None and total != array.size:
            raise ValueError(f"accuracy_interval: total={total} but the array has {array.size} images; omit total")
        num_correct, num_images = int(array.sum()), int(array.size)
    if num_images <= 0 or not 0 <= num_correct <= num_images:
        raise ValueError(f"accuracy_interval: need 0 <= correct <= total and total > 0, got {num_correct} of {num_images}")

    z = _z_value(confidence)
    p, n = num_correct / num_images, num_images
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    # At 0/n and n/n the bound is exactly 0 or 1 analytically; pin it against rounding.
    low = 0.0 if num_correct == 0 else max(0.0, centre - half_width)
    high = 1.0 if num_correct == num_images else min(1.0, centre + half_width)
    return Interval(estimate=p, low=low, high=high, n=n, confidence=confidence)


# ---------------------------------------------------------------------------------------
# Two methods on the same images
# ---------------------------------------------------------------------------------------


def _format_p(p_value: float) -> str:
    if p_value < 0.001:
        return "p < 0.001"
    text = f"{p_value:.2g}"
    return f"p = {text}.0" if "." not in text and "e" not in text else f"p = {text}"


@dataclass(frozen=True)
class PairedComparison:
    name_a: str
    name_b: str
    n: int                 # validation images, each scored by both methods
    accuracy_a: float
    accuracy_b: float
    difference: float      # accuracy_a - accuracy_b, as a fraction
    low: float             # paired bootstrap percentile interval for the difference
    high: float
    only_a_correct: int    # discordant images: a right, b wrong
    only_b_correct: int    # discordant images: b right, a wrong
    mcnemar_p: float       # exact two-sided McNemar test on the discordant images
    verdict: str           # "{name_a} better", "{name_b} better" or NO_CLEAR_DIFFERENCE
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return _json_ready(asdict(self))

    def sentence(self) -> str:
        """E.g. 'PYRA vs ToMe: +1.2 points (95% CI -0.8 to +3.1, McNemar p = 0.31, n = 200): no clear ...'."""
        return (
            f"{self.name_a} vs {self.name_b}: {100 * self.difference:+.1f} points "
            f"({100 * self.confidence:g}% CI {100 * self.low:+.1f} to {100 * self.high:+.1f}, "
            f"McNemar {_format_p(self.mcnemar_p)}, n = {self.n}): {self.verdict}."
        )


def _bootstrap_means(per_image: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """per_image: [n] -> [resamples] means over images resampled with replacement.

    Indices are drawn in chunks of about _BOOTSTRAP_CHUNK_ELEMENTS so memory stays bounded
    while each chunk is one vectorised gather.
    """
    n = per_image.size
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    means = np.empty(resamples)
    for start in range(0, resamples, rows_per_chunk):
        rows = min(rows_per_chunk, resamples - start)
        indices = rng.integers(0, n, size=(rows, n), dtype=np.int32)  # [rows, n]
        means[start : start + rows] = per_image[indices].sum(axis=1, dtype=np.int64) / n
    return means


def paired_difference(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    *,
    name_a: str,
    name_b: str,
    confidence: float = 0.95,
    resamples: int = 10000,
    seed: int = 0,
) -> PairedComparison:
    """Compare two methods scored on the same validation images.

    correct_a, correct_b: [n] per-image correctness (bool or 0/1), same image order.
    The interval is a paired percentile bootstrap over images (seeded, so reproducible);
    the p-value is the exact McNemar test, a two-sided binomial test with p = 0.5 on the
    images where exactly one method is right (1.0 when there are none). Note that the
    bootstrap distribution lives on a grid of 1/n, so for n below ~500 an endpoint can
    move by one grid step (1/n) between seeds.
    """
    a = _as_correct_array(correct_a, name_a)
    b = _as_correct_array(correct_b, name_b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has {a.size} predictions but {name_b} has {b.size}; score both on the same images")
    _check_confidence(confidence)
    if resamples < 100:
        raise ValueError(f"resamples={resamples} is too few for a percentile interval; use at least 100 (default 10000)")

    per_image = a.astype(np.int8) - b.astype(np.int8)  # [n] in {-1, 0, +1}
    only_a, only_b = int((per_image == 1).sum()), int((per_image == -1).sum())
    discordant = only_a + only_b
    mcnemar_p = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)

    alpha = 1 - confidence
    low, high = np.quantile(_bootstrap_means(per_image, resamples, seed), [alpha / 2, 1 - alpha / 2])
    if low > 0:
        verdict = f"{name_a} better"
    elif high < 0:
        verdict = f"{name_b} better"
    else:
        verdict = NO_CLEAR_DIFFERENCE
    return PairedComparison(
        name_a=name_a,
        name_b=name_b,
        n=int(a.size),
        accuracy_a=float(a.mean()),
        accuracy_b=float(b.mean()),
        difference=float(per_image.mean()),
        low=float(low),
        high=float(high),
        only_a_correct=only_a,
        only_b_correct=only_b,
        mcnemar_p=mcnemar_p,
        verdict=verdict,
        confidence=confidence,
    )


def min_detectable_difference(n: int, accuracy: float, confidence: float = 0.95) -> float:
    """Rough half-width of the difference interval for two methods on n images.

    For hints like "with n = 40 validation images, differences under ~X points cannot be
    separated". Approximation (Agresti-Caffo): both methods at `accuracy`, treated as
    independent, with one success and one failure added to each so the width never
    collapses to 0 at accuracy 0 or 1:

        p~ = (accuracy * n + 1) / (n + 2),   half-width = z * sqrt(2 * p~ * (1 - p~) / (n + 2))

    Paired methods whose errors overlap (the usual case: same backbone, same images) have a
    smaller variance, Var(a - b) = 2 p (1 - p) - 2 Cov(a, b), so this is a ceiling: their
    actual interval from `paired_difference` is often narrower.
    """
    if n < 1:
        raise ValueError(f"min_detectable_difference: n must be at least 1 image, got {n}")
    if not 0 <= accuracy <= 1:
        raise ValueError(f"min_detectable_difference: accuracy is a fraction in [0, 1], got {accuracy}")
    z = _z_value(confidence)
    adjusted = (accuracy * n + 1) / (n + 2)
    return z * math.sqrt(2 * adjusted * (1 - adjusted) / (n + 2))


# ---------------------------------------------------------------------------------------
# One metric across training seeds
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedSummary:
    mean: float
    std: float                 # sample standard deviation (ddof=1); nan for one seed
    low: float                 # Student-t interval for the mean; nan for one seed
    high: float
    n: int                     # seeds
    confidence: float = 0.95
    values: tuple[float, ...] = ()  # the per-seed values summarised (differences for paired_seed_difference)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: nan becomes None."""
        return _json_ready(asdict(self))


def seed_summary(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Mean, sample std and Student-t interval of one metric over seeds.

    With a single seed the spread is unknown: std, low and high are nan (None in to_dict).
    """
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"seed_summary: expected a non-empty list of per-seed values, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"seed_summary: per-seed values must be finite, got {array.tolist()}")
    _check_confidence(confidence)
    n, mean = int(array.size), float(array.mean())
    if n == 1:
        std = low = high = math.nan
    else:
        std = float(array.std(ddof=1))
        half_width = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
        low, high = mean - half_width, mean + half_width
    return SeedSummary(mean=mean, std=std, low=low, high=high, n=n, confidence=confidence, values=tuple(array.tolist()))


def paired_seed_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Summary of per-seed differences a[i] - b[i] (same seed i for both methods).

    The per-seed differences are in the returned summary's `values`.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_seed_difference: {len(a)} values for a but {len(b)} for b; pair them by seed")
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return seed_summary(differences.tolist(), confidence)
