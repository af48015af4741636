"""The behaviour mixture of the cold-start data and the classifiers of thinking and responses."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from start_jax.tokenizer import HFTokenizer
from start_jax.world import behaviours as B
from start_jax.world import classify as C
from start_jax.world import generator as world

EXPECTED_CLASS = {
    "complete": "complete",
    "one_hop": "one_hop",
    "own_fact": "one_hop",
    "wrong_lookup": "wrong_lookup",
    "guess": "empty",
    "skipped_step": "skipped_step",
    "wrong_step": "wrong_step",
}


@pytest.mark.parametrize("family", ["arith", "facts"])
def test_every_generated_behaviour_is_classified_as_itself(family):
    examples = world.generate(family, 400, seed=3)
    rng = np.random.default_rng(0)
    mixture = B.Mixture(complete=1, sloppy=1, guess=1, styled=0.5)
    seen = collections.Counter()
    for e in examples:
        t = B.sample_trace(e, rng, mixture)
        seen[t.behaviour] += 1
        assert C.classify_thinking(e.prompt, t.thinking, family) == EXPECTED_CLASS[t.behaviour], t
        kind, styled = C.classify_response(e.prompt, t.response, e.reference, family)
        assert styled == t.styled
        if t.behaviour == "complete":
            assert kind == "correct"
        if t.behaviour in ("wrong_step", "skipped_step"):
            # The response follows the sloppy thinking: its last value, not the truth.
            assert t.response.rstrip("!").split()[-1] == t.thinking.split()[-1].split("=")[1]
    assert set(seen) == set(B.SLOPPY[family]) | {"complete", "guess"}


def test_mixture_rates_are_what_the_config_says():
    examples = world.generate("mixed", 1000, seed=4)
    mixture = B.Mixture(complete=0.6, sloppy=0.1, guess=0.3, styled=0.2)
    traces = B.mixture_traces(
        [e.to_row() | {"family": e.family} for e in examples], mixture, seed=1, draws=4
    )
    n = len(traces)
    behaviour = collections.Counter(t["behaviour"] for t in traces)
    sloppy = sum(v for k, v in behaviour.items() if k not in ("complete", "guess"))
    # 4000 draws: three standard errors of a rate p are at most 0.024.
    assert behaviour["complete"] / n == pytest.approx(0.6, abs=0.025)
    assert behaviour["guess"] / n == pytest.approx(0.3, abs=0.025)
    assert sloppy / n == pytest.approx(0.1, abs=0.025)
    assert np.mean([t["styled"] for t in traces]) == pytest.approx(0.2, abs=0.025)


def test_mixture_rejects_bad_rates():
    with pytest.raises(ValueError, match="guess=-0.1"):
        B.Mixture(guess=-0.1)
    with pytest.raises(ValueError, match="complete \\+ sloppy \\+ guess"):
        B.Mixture(complete=0, sloppy=0, guess=0)
    with pytest.raises(ValueError, match="styled=1.5"):
        B.Mixture(styled=1.5)


FACTS = (
    "Bo likes jam. Al likes tea. Cy likes jam. Di likes fig. Bo's pal is Al. "
    "What does Bo's pal like?"
)


@pytest.mark.parametrize(
    "thinking, want",
    [
        ("Bo's pal is Al. Al likes tea.", "complete"),
        ("  Bo's pal is Al.   Al likes tea. ", "complete"),
        ("Bo's pal is Al.", "one_hop"),
        ("Bo likes jam.", "one_hop"),
        ("Bo's pal is Al. Cy likes jam.", "wrong_lookup"),
        ("", "empty"),
        ("Bo's pal is Al. Al likes jam.", "other"),  # A fact the prompt does not state.
        ("Bo's pal is Cy. Cy likes jam.", "other"),
        ("Al likes tea.", "other"),
        ("Bo's pal is Al. Al likes tea. hmm", "other"),
    ],
)
def test_facts_thinking_classes(thinking, want):
    assert C.classify_thinking(FACTS, thinking) == want


ARITH = "a=3;b=a+4;c=b-5;d=c+9;d?"  # a=3 b=7 c=2 d=11


@pytest.mark.parametrize(
    "thinking, want, steps",
    [
        ("a=3 b=7 c=2 d=11", "complete", 1.0),
        ("a=3 b=7 c=3 d=12", "wrong_step", 0.5),
        ("a=3 c=-2 d=7", "skipped_step", 0.25),
        ("a=3 b=7 c=2", "skipped_step", 0.75),
        ("", "empty", 0.0),
        ("b=7 a=3", "other", 0.5),
        ("a=3 b=7 c=2 d=11 ok", "other", 0.0),
    ],
)
def test_arith_thinking_classes(thinking, want, steps):
    assert C.classify_thinking(ARITH, thinking) == want
    assert C.steps_correct(ARITH, thinking) == pytest.approx(steps)


@pytest.mark.parametrize(
    "response, want",
    [
        ("tea", ("correct", False)),
        ("Surely tea!", ("correct", True)),
        ("jam", ("salient", False)),
        ("Surely jam!", ("salient", True)),
        ("fig", ("other", False)),
        ("", ("other", False)),
        ("Surely fig", ("other", False)),
    ],
)
def test_response_classes(response, want):
    assert C.classify_response(FACTS, response, "tea") == want


def test_behaviour_rates_per_family():
    rows = [
        dict(prompt=FACTS, thinking="Bo's pal is Al. Al likes tea.", response="Surely tea!"),
        dict(prompt=FACTS, thinking="", response="Surely jam!"),
        dict(prompt=ARITH, thinking="a=3 b=7 c=2 d=11", response="11"),
        dict(prompt=ARITH, thinking="a=3 b=7 c=3 d=12", response="12", reference="11"),
    ]
    rates = C.behaviour_rates(rows)
    assert rates["behaviour/facts/think_complete"] == 0.5
    assert rates["behaviour/facts/think_empty"] == 0.5
    assert rates["behaviour/facts/response_salient"] == 0.5
    assert rates["behaviour/facts/styled"] == 1.0
    assert rates["behaviour/arith/think_complete"] == 0.5
    assert rates["behaviour/arith/response_correct"] == 0.5
    assert rates["behaviour/arith/steps_correct"] == pytest.approx(0.75)
    assert "behaviour/arith/response_salient" not in rates


def test_new_arith_stays_in_range_and_needs_thinking():
    examples = world.generate("arith", 500, seed=5)
    lo, hi = world.VALUE_RANGE
    for e in examples:
        values = e.metadata["values"]
        assert world.ARITH_CHAIN[0] <= len(values) <= world.ARITH_CHAIN[1]
        assert all(lo <= v <= hi for v in values)
        assert world.arith_values(e.prompt) == dict(zip("abcd", values))


def test_world_tokenizer_is_lossless_and_exports_to_tokenizer_json(tmp_path):
    tok = world.tokenizer()
    texts = [
        e.prompt + "<think>" + e.thinking + "</think>Surely " + e.reference + "!<eos>"
        for e in world.generate("mixed", 100, seed=6)
    ] + ["anything ~ at all: Zz 123"]
    hf = HFTokenizer.from_pretrained(tok.save_pretrained(tmp_path))
    for text in texts:
        ids = tok.encode(text)
        assert hf.encode(text) == ids
        assert tok.decode(ids, skip_special_tokens=False) == text.replace("~", "<unk>")
    facts = world.generate("facts", 50, seed=6)
    # A name, a thing or a number is one token: a facts prompt is about 30 tokens.
    assert np.mean([len(tok.encode(e.prompt)) for e in facts]) < 35
    assert tok.encode(" tea")[0] == tok.token_to_id(" tea")
