"""The evaluation intervals against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from start_jax.eval import stats

Z = 1.959964


def _wilson_closed_form(k: int, n: int, z: float = Z) -> tuple[float, float]:
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


def _wilson_roots(k: int, n: int, z: float = Z) -> np.ndarray:
    """The interval's ends solve (p - x)^2 = z^2 x (1 - x) / n for x."""
    p = k / n
    return np.sort(np.roots([1 + z**2 / n, -(2 * p + z**2 / n), p**2]).real)


def test_wilson_interval_of_7_in_20():
    low, high = stats.wilson_interval(7, 20)
    np.testing.assert_allclose([low, high], _wilson_closed_form(7, 20), rtol=0, atol=1e-12)
    np.testing.assert_allclose([low, high], _wilson_roots(7, 20), rtol=0, atol=1e-12)
    np.testing.assert_allclose([low, high], [0.1812, 0.5671], atol=1e-4)  # Published table.


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (1, 3), (96, 192)])
def test_wilson_interval_edges_and_sizes(k, n):
    low, high = stats.wilson_interval(k, n)
    np.testing.assert_allclose([low, high], _wilson_roots(k, n), rtol=0, atol=1e-12)
    assert -1e-12 <= low <= k / n + 1e-12 and k / n - 1e-12 <= high <= 1.0 + 1e-12


def test_pooled_proportion_counts_questions_over_seeds():
    # Seeds with 2/8 and 4/8 questions: 6 of 16 in all.
    rate, low, high = stats.pooled_proportion([0.25, 0.5], 8)
    assert rate == 6 / 16
    np.testing.assert_allclose([low, high], _wilson_closed_form(6, 16), rtol=0, atol=1e-12)
    # Rates stored rounded (0.333 for 1/3) still count whole questions.
    np.testing.assert_allclose(
        stats.pooled_proportion([0.333, 0.667], 3),
        [0.5, *_wilson_closed_form(3, 6)],
        rtol=0,
        atol=1e-12,
    )


def test_bootstrap_interval_against_a_direct_resampling():
    values = np.array([[1.0, 0.0, 0.5, 1.0, 0.25], [0.0, 0.0, 1.0, 0.75, 0.5]])  # [seeds, q]
    mean, low, high = stats.bootstrap_interval(values, samples=500, seed=3)
    pairs = values.reshape(-1)
    idx = np.random.RandomState(3).randint(0, 10, size=(500, 10))
    means = pairs[idx].mean(axis=1)
    assert mean == pytest.approx(5.0 / 10, abs=1e-12)
    assert low == pytest.approx(np.quantile(means, 0.025), abs=1e-12)
    assert high == pytest.approx(np.quantile(means, 0.975), abs=1e-12)
    assert stats.bootstrap_interval(np.full((2, 4), 0.5)) == [0.5, 0.5, 0.5]


def test_bootstrap_efficacy_averages_answerers_per_pair():
    gain = np.zeros((2, 1, 4))  # [answerers, seeds, questions]
    gain[0, 0] = [1, 1, 0, 0]
    gain[1, 0] = [1, 0, 0, 0]
    e = stats.bootstrap_efficacy(gain, samples=200)
    assert e["mean"] == pytest.approx(0.375, abs=1e-12)  # Pairs 1, 0.5, 0, 0.
    assert 0.0 <= e["low"] <= e["mean"] <= e["high"] <= 1.0
    assert stats.bootstrap_interval(gain.mean(0), samples=200) == [e["mean"], e["low"], e["high"]]


def test_holm_by_hand():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> monotone.
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])
    assert stats.holm([]) == []


def test_hierarchical_bootstrap_treats_the_run_as_the_unit():
    rng = np.random.default_rng(0)
    # Two seeds that disagree (run means +0.2 and -0.1), many questions each: a flat bootstrap
    # over (seed, question) pairs is narrow and excludes 0; the run-level one does not.
    runs = np.stack([0.2 + 0.05 * rng.standard_normal(200), -0.1 + 0.05 * rng.standard_normal(200)])
    flat = stats.bootstrap_interval(runs)
    h = stats.hierarchical_bootstrap(runs, samples=2000)
    assert flat[1] > 0
    assert h["low"] < 0 < h["high"] and h["p"] > 0.05
    assert abs(h["mean"] - runs.mean()) < 1e-12 and h["seeds"] == 2
    # Five runs that agree: the interval excludes 0, with a small p-value.
    agree = 0.1 + 0.05 * rng.standard_normal((5, 64))
    h = stats.hierarchical_bootstrap(agree, samples=2000)
    assert 0 < h["low"] < 0.1 < h["high"] and h["p"] <= 1 / 2000 + 1e-12
    # One seed: the question-level bootstrap of that run (same mean, similar width).
    one = stats.hierarchical_bootstrap(agree[:1], samples=4000)
    flat = stats.bootstrap_interval(agree[:1], samples=4000)
    assert abs((one["high"] - one["low"]) - (flat[2] - flat[1])) < 0.01
    # Ragged runs and determinism.
    ragged = [[0.1, 0.2, 0.3], [0.0, 0.1]]
    assert stats.hierarchical_bootstrap(ragged, seed=3) == stats.hierarchical_bootstrap(
        ragged, seed=3
    )
