"""pass@k and maj@k from n samples per question.

pass@k is the probability that at least one of k samples, drawn without replacement
from the n taken, is correct; with c of the n correct its unbiased estimate is
1 - C(n - c, k) / C(n, k) (Chen et al., 2021), computed here as a product so that
large n does not overflow. maj@k is the rate at which the most frequent answer among k
samples is a correct one; from n >= k samples it is estimated over the first k of each
question (the samples are exchangeable), the most frequent answer's first sample
deciding ties.
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question with c correct samples out of n (k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_per_question(correct, k: int) -> np.ndarray:
    """[Q] pass@k of each question from bool [Q, n] correctness."""
    correct = np.asarray(correct, bool)
    n = correct.shape[1]
    return np.asarray([pass_at_k(n, int(c), k) for c in correct.sum(axis=1)])


def maj_at_k_per_question(answers: Sequence[Sequence[Hashable]], correct, k: int) -> np.ndarray:
    """[Q] 1.0 where the most frequent of the first k extracted answers is correct.

    `answers[q][i]` is sample i's extracted answer (None: none could be extracted; such
    samples never win the vote), `correct[q][i]` whether sample i is correct. The winning
    answer is correct when its first sample is."""
    correct = np.asarray(correct, bool)
    out = np.zeros(len(answers))
    for q, row in enumerate(answers):
        if len(row) < k:
            raise ValueError(f"question {q} has {len(row)} samples, fewer than k={k}")
        first = [a for a in row[:k] if a is not None]
        if not first:
            continue
        counts = Counter(first)
        top = max(counts.values())
        winner = next(a for a in first if counts[a] == top)  # Ties: the earliest sample.
        out[q] = float(correct[q][list(row[:k]).index(winner)])
    return out
