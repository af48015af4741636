"""pass@k against its closed form and against enumeration; maj@k on constructed answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from start_jax.eval import passk


@pytest.mark.parametrize("n, c, k", [(10, 3, 1), (10, 3, 5), (10, 0, 4), (10, 10, 3), (7, 5, 3)])
def test_pass_at_k_is_the_closed_form_and_the_mean_over_subsets(n, c, k):
    closed = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert passk.pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)
    correct = [True] * c + [False] * (n - c)
    subsets = [any(s) for s in itertools.combinations(correct, k)]
    assert passk.pass_at_k(n, c, k) == pytest.approx(np.mean(subsets), abs=1e-12)


def test_pass_at_one_is_the_correct_fraction_and_large_n_does_not_overflow():
    assert passk.pass_at_k(1000, 250, 1) == pytest.approx(0.25, abs=1e-12)
    got = passk.pass_at_k(2000, 3, 1000)
    assert got == pytest.approx(1 - math.comb(1997, 1000) / math.comb(2000, 1000), abs=1e-9)
    rows = passk.pass_at_k_per_question([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], 2)
    np.testing.assert_allclose(rows, [0.5, 0.0, 1.0])
    with pytest.raises(ValueError, match="1 <= k <= n"):
        passk.pass_at_k(4, 1, 5)


def test_maj_at_k_takes_the_most_frequent_answer_of_the_first_k():
    answers = [
        ["7", "8", "7", "9", "8", "8"],  # First 3: 7 wins (2 of 3).
        ["a", "b", "b", "a", "c", "c"],  # First 3: b wins; first 4: a and b tie, a first.
        [None, None, "x", "y", "y", "y"],  # First 3: only x was extracted.
        [None, None, None, "5", "5", "5"],  # First 3: nothing extracted.
    ]
    correct = [
        [1, 0, 1, 0, 0, 0],
        [0, 1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1],
    ]
    np.testing.assert_array_equal(passk.maj_at_k_per_question(answers, correct, 3), [1, 1, 1, 0])
    np.testing.assert_array_equal(passk.maj_at_k_per_question(answers, correct, 4), [1, 0, 1, 1])
    # All six: 8 wins question 0 (3 of 6), wrong; a, b and c tie in question 1 (a first).
    np.testing.assert_array_equal(passk.maj_at_k_per_question(answers, correct, 6), [0, 0, 0, 1])
