"""Confidence intervals of the evaluations: percentile bootstrap and Wilson score.

* `bootstrap_efficacy` / `bootstrap_interval`: the mean of per-(seed, question)
  values and a percentile bootstrap interval over those pairs (Cross-Generation
  efficacy, final rewards, paired differences);
* `wilson_interval` / `pooled_proportion`: a rate counted over questions, with a
  Wilson score interval (behaviour rates).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Z95 = 1.959964   # Two-sided 95% quantile of the standard normal.


def bootstrap_efficacy(gain: np.ndarray, samples: int = 2000, confidence: float = 0.95,
                       seed: int = 0) -> dict:
    """Mean and percentile CI of gain [answerers, seeds, questions] over (seed, question) pairs."""
    per_pair = gain.mean(axis=0).reshape(-1)          # Mean over answerers, per pair.
    rs = np.random.RandomState(seed)
    idx = rs.randint(0, per_pair.size, size=(samples, per_pair.size))
    means = per_pair[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    return {"mean": float(per_pair.mean()), "low": float(np.quantile(means, alpha)),
            "high": float(np.quantile(means, 1 - alpha))}


def bootstrap_interval(values, samples: int = 2000, confidence: float = 0.95,
                       seed: int = 0) -> list[float]:
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
