"""pyra.report.stats against hand computations and known statistical behaviour (seeded, CPU, fast)."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from pyra.report.stats import (
    NO_CLEAR_DIFFERENCE,
    accuracy_interval,
    min_detectable_difference,
    paired_difference,
    paired_seed_difference,
    seed_summary,
)

Z_95 = 1.959963984540054  # two-sided 95% standard-normal quantile


def _wilson_by_hand(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def _paired_predictions(rng: np.random.Generator, n: int, joint: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two methods drawn from P(a, b) given as {"11", "10", "01", "00"}."""
    outcome = rng.choice(4, size=n, p=[joint["11"], joint["10"], joint["01"], joint["00"]])
    return np.isin(outcome, (0, 1)), np.isin(outcome, (0, 2))


# True difference P(a right) - P(b right) = 0.10 - 0.05 = +5 points.
JOINT = {"11": 0.70, "10": 0.10, "01": 0.05, "00": 0.15}
TRUE_DIFFERENCE = JOINT["10"] - JOINT["01"]


def test_wilson_8_of_10_matches_formula():
    interval = accuracy_interval(8, 10)
    low, high = _wilson_by_hand(8, 10)
    assert interval.estimate == 0.8
    assert interval.low == pytest.approx(low, abs=1e-12)
    assert interval.high == pytest.approx(high, abs=1e-12)
    assert (round(interval.low, 4), round(interval.high, 4)) == (0.4902, 0.9433)


def test_wilson_array_and_counts_agree():
    correct = np.array([True] * 8 + [False] * 2)
    assert accuracy_interval(correct) == accuracy_interval(8, 10)
    assert accuracy_interval(correct.astype(int)) == accuracy_interval(8, 10)


@pytest.mark.parametrize("k", [0, 10])
def test_wilson_edges_stay_in_unit_interval(k):
    interval = accuracy_interval(k, 10)
    low, high = _wilson_by_hand(k, 10)
    assert 0.0 <= interval.low < interval.high <= 1.0
    if k == 0:
        assert interval.low == 0.0 and interval.high == pytest.approx(high, abs=1e-12)  # ~0.2775
    else:
        assert interval.high == 1.0 and interval.low == pytest.approx(low, abs=1e-12)  # ~0.7225


def test_wilson_rejects_bad_input():
    with pytest.raises(ValueError, match="total"):
        accuracy_interval(3)
    with pytest.raises(ValueError):
        accuracy_interval(11, 10)
    with pytest.raises(ValueError, match="0/1"):
        accuracy_interval(np.array([0, 1, 2]))


def test_mcnemar_exact_p_value():
    # 2 images only a gets right, 9 only b gets right, 20 both right, 5 both wrong.
    a = np.array([1] * 2 + [0] * 9 + [1] * 20 + [0] * 5, dtype=bool)
    b = np.array([0] * 2 + [1] * 9 + [1] * 20 + [0] * 5, dtype=bool)
    result = paired_difference(a, b, name_a="PYRA", name_b="ToMe", resamples=1000)
    expected = 2 * sum(math.comb(11, k) for k in range(3)) * 0.5**11
    assert (result.only_a_correct, result.only_b_correct) == (2, 9)
    assert result.mcnemar_p == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.0654296875)
    assert result.difference == pytest.approx((2 - 9) / 36)


def test_identical_predictions_give_zero_width_interval():
    correct = np.random.default_rng(0).random(50) < 0.7
    result = paired_difference(correct, correct.copy(), name_a="PYRA", name_b="ToMe")
    assert result.difference == 0.0 and result.low == 0.0 and result.high == 0.0
    assert result.mcnemar_p == 1.0
    assert result.verdict == NO_CLEAR_DIFFERENCE


def test_bootstrap_is_stable_across_seeds_at_default_resamples():
    a, b = _paired_predictions(np.random.default_rng(1), 1000, JOINT)
    first = paired_difference(a, b, name_a="PYRA", name_b="ToMe", seed=0)
    second = paired_difference(a, b, name_a="PYRA", name_b="ToMe", seed=1)
    assert abs(first.low - second.low) <= 0.002
    assert abs(first.high - second.high) <= 0.002


def test_bootstrap_interval_covers_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(12345)
    trials, covered = 300, 0
    for trial in range(trials):
        a, b = _paired_predictions(rng, 200, JOINT)
        result = paired_difference(a, b, name_a="a", name_b="b", resamples=2000, seed=trial)
        covered += result.low <= TRUE_DIFFERENCE <= result.high
    # Binomial sd of the coverage over 300 trials is ~1.3 points; allow ~3.
    assert abs(covered / trials - 0.95) <= 0.035


def test_verdict_and_sentence():
    n = 400  # a right on 60 images b misses, b right on 10 images a misses
    a = np.array([1] * 60 + [0] * 10 + [1] * 250 + [0] * 80, dtype=bool)
    b = np.array([0] * 60 + [1] * 10 + [1] * 250 + [0] * 80, dtype=bool)
    better = paired_difference(a, b, name_a="PYRA", name_b="ToMe")
    assert better.low > 0 and better.verdict == "PYRA better"
    worse = paired_difference(b, a, name_a="ToMe", name_b="PYRA")
    assert worse.high < 0 and worse.verdict == "PYRA better"
    sentence = better.sentence()
    assert sentence.startswith(f"PYRA vs ToMe: +12.5 points (95% CI +{100 * better.low:.1f} to +")
    assert sentence.endswith(f"McNemar p < 0.001, n = {n}): PYRA better.")
    assert json.loads(json.dumps(better.to_dict()))["verdict"] == "PYRA better"


def test_paired_difference_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same images"):
        paired_difference(np.ones(5, bool), np.ones(6, bool), name_a="PYRA", name_b="ToMe")


def test_min_detectable_difference_tracks_bootstrap_width_for_independent_methods():
    # For independent methods the rough half-width should match the bootstrap half-width.
    rng = np.random.default_rng(7)
    n, accuracy = 400, 0.8
    a, b = rng.random(n) < accuracy, rng.random(n) < accuracy
    result = paired_difference(a, b, name_a="a", name_b="b", resamples=4000)
    assert min_detectable_difference(n, accuracy) == pytest.approx((result.high - result.low) / 2, rel=0.15)
    # Never zero at the edges; shrinks like 1/sqrt(n).
    assert min_detectable_difference(40, 1.0) > 0
    assert min_detectable_difference(4 * n, 0.8) == pytest.approx(min_detectable_difference(n, 0.8) / 2, rel=0.01)


def test_seed_summary_matches_t_interval_by_hand():
    values = [0.81, 0.84, 0.83]
    mean = (0.81 + 0.84 + 0.83) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    half = stats.t.ppf(0.975, df=2) * std / math.sqrt(3)
    summary = seed_summary(values)
    assert summary.n == 3
    assert summary.mean == pytest.approx(mean, abs=1e-12)
    assert summary.std == pytest.approx(std, abs=1e-12)
    assert (summary.low, summary.high) == pytest.approx((mean - half, mean + half), abs=1e-12)


def test_seed_summary_single_seed_has_no_spread():
    summary = seed_summary([0.9])
    assert summary.mean == 0.9
    assert math.isnan(summary.std) and math.isnan(summary.low) and math.isnan(summary.high)
    assert json.loads(json.dumps(summary.to_dict()))["std"] is None


def test_paired_seed_difference():
    summary = paired_seed_difference([0.80, 0.82, 0.85], [0.78, 0.81, 0.80])
    assert summary.values == pytest.approx((0.02, 0.01, 0.05))
    expected = seed_summary([0.80 - 0.78, 0.82 - 0.81, 0.85 - 0.80])
    assert (summary.mean, summary.low, summary.high) == pytest.approx((expected.mean, expected.low, expected.high))
    with pytest.raises(ValueError, match="pair them by seed"):
        paired_seed_difference([0.8, 0.9], [0.8])
