"""Confidence intervals of the evaluations: percentile bootstrap and Wilson score.

* `bootstrap_efficacy` / `bootstrap_interval`: the mean of per-(seed, question)
  values and a percentile bootstrap interval over those pairs (Cross-Generation
  efficacy, final rewards, paired differences);
* `wilson_interval` / `pooled_proportion`: a rate counted over questions, with a
  Wilson score interval (behaviour rates);
* `hierarchical_bootstrap`: the training run as the unit. Seeds are resampled, then
  questions within each drawn seed, so the interval carries the run-to-run variance;
  with a two-sided bootstrap p-value for "the mean is 0";
* `holm`: Holm's step-down adjustment of the p-values of one family of contrasts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Z95 = 1.959964  # Two-sided 95% quantile of the standard normal.


def bootstrap_efficacy(
    gain: np.ndarray, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Mean and percentile CI of gain [answerers, seeds, questions] over (seed, question) pairs."""
    per_pair = gain.mean(axis=0).reshape(-1)  # Mean over answerers, per pair.
    rs = np.random.RandomState(seed)
    idx = rs.randint(0, per_pair.size, size=(samples, per_pair.size))
    means = per_pair[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    return {
        "mean": float(per_pair.mean()),
        "low": float(np.quantile(means, alpha)),
        "high": float(np.quantile(means, 1 - alpha)),
    }


def bootstrap_interval(
    values, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> list[float]:
    """[mean, low, high] of per-pair values ([seeds, questions]: each entry one pair)."""
    e = bootstrap_efficacy(np.asarray(values, np.float64)[None], samples, confidence, seed)
    return [e["mean"], e["low"], e["high"]]


def wilson_interval(successes: float, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / total`` (95% for the default z)."""
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return float(centre - half), float(centre + half)


def pooled_proportion(rates: Sequence[float], n: int, z: float = Z95) -> list[float]:
    """[rate, low, high]: per-seed rates over ``n`` questions each, pooled, Wilson interval."""
    total = len(rates) * n
    successes = float(np.sum(np.round(np.asarray(rates, np.float64) * n)))
    return [successes / total, *wilson_interval(successes, total, z)]


def hierarchical_bootstrap(
    values, samples: int = 4000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Mean, percentile interval and two-sided p-value of per-(seed, question) values.

    ``values``: one sequence of per-question values per seed (a [seeds, questions] array
    or ragged lists). Each bootstrap sample draws the seeds with replacement, then, within
    each drawn seed, its questions with replacement, and takes the mean of the seed means;
    the seeds (training runs) are the unit, so two runs that disagree widen the interval
    however many questions each has. ``p`` is twice the smaller of the fractions of samples
    at or below and at or above 0 (at most 1; at least 1 / samples when none is).
    """
    runs = [np.asarray(v, np.float64).reshape(-1) for v in values]
    if not runs or any(r.size == 0 for r in runs):
        raise ValueError("hierarchical_bootstrap: every seed needs at least one value")
    rs = np.random.RandomState(seed)
    n = len(runs)
    picks = rs.randint(0, n, size=(samples, n))
    means = np.empty(samples)
    for k in range(samples):
        total = 0.0
        for i in picks[k]:
            r = runs[i]
            total += r[rs.randint(0, r.size, size=r.size)].mean()
        means[k] = total / n
    alpha = (1.0 - confidence) / 2
    p = 2 * min(np.mean(means <= 0), np.mean(means >= 0))
    return {
        "mean": float(np.mean([r.mean() for r in runs])),
        "low": float(np.quantile(means, alpha)),
        "high": float(np.quantile(means, 1 - alpha)),
        "p": float(min(1.0, max(p, 1.0 / samples))),
        "seeds": n,
    }


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order): the i-th smallest times (m - i), made
    non-decreasing in that order and capped at 1. Reject at level a where adjusted < a."""
    p = np.asarray(pvalues, np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
