"""The 'math' reward is math-verify: its verdicts agree with math_verify.verify."""

from __future__ import annotations

import concurrent.futures
import fractions
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest

from start_jax import rewards

math_verify = pytest.importorskip("math_verify")

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (response, reference, expected reward), checked by hand.
TABLE = [
    # Fractions and decimals.
    (r"The answer is $\frac{1}{2}$.", "0.5", 1.0),
    ("The answer is 0.5", r"\frac{1}{2}", 1.0),
    ("So x = 1/2", "0.5", 1.0),
    (r"\boxed{\frac{1}{2}}", "1/2", 1.0),
    (r"\boxed{\dfrac{3}{4}}", "0.75", 1.0),
    (r"\boxed{3/4}", "0.75", 1.0),
    (r"Simplify: $\frac{2}{4}$", r"\frac{1}{2}", 1.0),
    ("The answer is 1/3", "0.333333", 1.0),  # Equal after rounding to 6 places.
    (r"\boxed{0.34}", r"\frac{1}{3}", 0.0),
    ("The answer is 0.4999999", "0.5", 1.0),  # Equal after rounding to 6 places.
    ("The answer is 0.49", "0.5", 0.0),
    (r"\boxed{2.50}", 2.5, 1.0),
    ("That is 0.75 of the cake.", fractions.Fraction(3, 4), 1.0),
    # LaTeX.
    (r"\boxed{\sqrt{2}}", r"\sqrt{2}", 1.0),
    (r"$\frac{\sqrt{8}}{2}$", r"\sqrt{2}", 1.0),
    (r"\boxed{2\pi}", r"2\pi", 1.0),
    (r"\boxed{\pi \cdot 2}", r"2\pi", 1.0),
    (r"\boxed{6.283185}", r"2\pi", 1.0),  # Numeric, 6 places.
    (r"\boxed{\sqrt{3}}", r"\sqrt{2}", 0.0),
    (r"\boxed{\pi}", r"2\pi", 0.0),
    (r"\boxed{x = 5}", "5", 1.0),
    (r"\boxed{2x + 2}", "2(x+1)", 1.0),
    # \boxed{}: the last one counts.
    (r"First \boxed{3}, then corrected: \boxed{4}", "4", 1.0),
    (r"First \boxed{4}, then corrected: \boxed{3}", "4", 0.0),
    (r"The answer is \boxed{12} (not 13)", "12", 1.0),
    (r"Adding up, 3 + 7 = 10, so the total is \boxed{10}.", 10, 1.0),
    # Plain integers with text around them.
    ("so c = 14", "14", 1.0),
    ("There are 72 clips in total.", 72, 1.0),
    ("I think the answer is 13", "14", 0.0),
    ("13", "14", 0.0),
    # Thousands separators.
    ("1,000", "1000", 1.0),
    ("The total is 1,234,567 dollars.", "1234567", 1.0),
    (r"\boxed{12,345}", 12345, 1.0),
    # Negative numbers.
    ("The temperature drops to -5 degrees", "-5", 1.0),
    (r"\boxed{-\frac{3}{2}}", "-1.5", 1.0),
    (r"\boxed{5}", "-5", 0.0),
    # Percentages.
    (r"\boxed{50\%}", "50%", 1.0),
    ("The discount is 25%.", "25", 1.0),
    (r"\boxed{0.25}", r"25\%", 1.0),
    (r"\boxed{30\%}", r"25\%", 0.0),
    # No answer at all.
    ("no number", "3", 0.0),
    ("", "7", 0.0),
    ("I don't know", r"\frac{1}{2}", 0.0),
]

# References math-verify parses into no maths expression: normalised string equality.
FALLBACK = [
    ("東京", "東京", 1.0),
    (r"The capital is \boxed{ 東京 }.", "東京", 1.0),
    ("The capital is 東京", "東京", 0.0),  # The whole response is the answer.
    (r"\boxed{#}", "#", 1.0),
    ("", "", 0.0),
]


def _input(response, reference):
    return rewards.RewardInput(
        prompt="q", response=response, prompt_ids=(), response_ids=(), reference=reference
    )


@pytest.fixture(scope="module")
def math_reward():
    return rewards.make("math")


def _direct(reward, response, reference) -> float:
    """math_verify itself, on the texts the reward hands it."""
    gold = math_verify.parse(reward.reference_text(reference))
    answer = math_verify.parse(reward.final_answer(response))
    return float(math_verify.verify(gold, answer))


def test_table_agrees_with_math_verify_and_by_hand(math_reward):
    assert len(TABLE) >= 30
    got = math_reward([_input(r, ref) for r, ref, _ in TABLE])
    assert got.dtype == np.float32 and got.shape == (len(TABLE),)
    direct = [_direct(math_reward, r, ref) for r, ref, _ in TABLE]
    expected = [e for _, _, e in TABLE]
    rows = [
        (i, TABLE[i][:2], float(g), d, e)
        for i, (g, d, e) in enumerate(zip(got, direct, expected))
        if not g == d == e
    ]
    assert not rows, f"(row, (response, reference), reward, math_verify, expected): {rows}"
    assert 0 < sum(expected) < len(expected)


def test_answer_and_reference_texts(math_reward):
    # The last complete \boxed{} is the answer, nested braces kept; else the whole response.
    assert (
        math_reward.final_answer(r"\boxed{1} then \boxed{\frac{1}{2}} and \boxed{3")
        == r"\boxed{\frac{1}{2}}"
    )
    assert math_reward.final_answer("so c = 14") == "so c = 14"
    # A bare reference is read as boxed LaTeX; one with delimiters as it is.
    assert math_reward.reference_text(r"2\pi") == r"\boxed{2\pi}"
    assert math_reward.reference_text(r"$\frac12$") == r"$\frac12$"
    assert math_reward.reference_text(1e-7) == r"\boxed{0.0000001}"
    assert math_reward.reference_text(None) is None
    # Several boxed answers: math-verify alone would read all of them, the reward only the last.
    response = r"First \boxed{3}, then corrected: \boxed{4}"
    assert math_verify.verify(math_verify.parse("4"), math_verify.parse(response)) is False
    assert math_reward([_input(response, "4")])[0] == 1.0


def test_unparsable_reference_falls_back_to_string_equality(math_reward):
    for _, ref, _ in FALLBACK:
        assert all(isinstance(g, str) for g in math_verify.parse(math_reward.reference_text(ref)))
    got = math_reward([_input(r, ref) for r, ref, _ in FALLBACK])
    np.testing.assert_array_equal(got, [e for _, _, e in FALLBACK])
    np.testing.assert_array_equal(math_reward([_input("14", None)]), [0.0])


def test_reads_only_response_and_reference(math_reward):
    x = rewards.RewardInput(
        prompt=r"\boxed{5}",
        response="It is 4.",
        prompt_ids=(5,),
        response_ids=(4,),
        reference="5",
        metadata={"answer": "5"},
    )
    np.testing.assert_array_equal(math_reward([x]), [0.0])


def test_works_off_the_main_thread(math_reward):
    # math-verify's timeouts use SIGALRM, which raises off the main thread unless disabled.
    inputs = [_input(r, ref) for r, ref, _ in TABLE[:8]]
    want = math_reward(inputs)

    def run():
        assert threading.current_thread() is not threading.main_thread()
        return math_reward(inputs)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for got in pool.map(lambda _: run(), range(2)):
            np.testing.assert_array_equal(got, want)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # What the reward avoids.
        with pytest.raises(ValueError, match="threaded"):
            pool.submit(math_verify.parse, "1", raise_on_error=True).result()


def test_missing_math_verify(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # `import math_verify` now fails.
    with pytest.raises(ImportError, match="pip install math-verify"):
        rewards.make("math")
    rewards.make("exact_match")  # Other rewards are unaffected.


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_start_jax_imports_without_math_verify():
    code = (
        "import sys; sys.modules['math_verify'] = None\n"
        "import start_jax, start_jax.rewards as r\n"
        "assert 'math' in r.registered()\n"
        "try:\n    r.make('math')\nexcept ImportError as e:\n    print(e)\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "pip install math-verify" in out.stdout
