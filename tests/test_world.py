"""Tests for start_jax.world.generator: generation, gold traces and the synthetic judges."""

import collections
import dataclasses
import re

import numpy as np
import pytest

from start_jax import rewards
from start_jax.rewards import RewardInput
from start_jax.tokenizer import CharTokenizer
from start_jax.world import generator as world
from start_jax.world import judges as synthetic

N = 300


@pytest.fixture(scope="module")
def examples():
    return {f: world.generate(f, N, seed=7) for f in ("arith", "facts", "mixed")}


def _inputs(pairs, with_reference=True, with_metadata=True):
    out = []
    for e, r in pairs:
        x = synthetic.reward_input(e, r, with_reference=with_reference)
        out.append(x if with_metadata else dataclasses.replace(x, metadata=None))
    return out


@pytest.mark.parametrize("family", ["arith", "facts", "mixed"])
def test_generate_is_deterministic(family):
    a = world.generate(family, 50, seed=3)
    assert a == world.generate(family, 50, seed=3)
    assert [e.prompt for e in a] != [e.prompt for e in world.generate(family, 50, seed=4)]
    assert len(a) == 50


def test_families(examples):
    assert {e.family for e in examples["arith"]} == {"arith"}
    assert {e.family for e in examples["facts"]} == {"facts"}
    counts = collections.Counter(e.family for e in examples["mixed"])
    assert set(counts) == {"arith", "facts"} and min(counts.values()) > N // 3
    for e in examples["mixed"]:
        assert e.metadata["family"] == e.family
    with pytest.raises(ValueError, match="unknown family 'poetry'"):
        world.generate("poetry", 1, 0)


def test_text_fits_the_char_tokenizer(examples):
    tok = CharTokenizer()
    for e in examples["mixed"]:
        texts = [
            e.prompt,
            e.thinking,
            e.reference,
            world.golden_response(e, styled=False),
            world.golden_response(e, styled=True),
        ]
        for text in texts:
            ids = tok.encode(text)
            assert tok.unk_id not in ids, text
            assert tok.decode(ids) == text
        assert len(e.prompt) <= 96 and len(e.thinking) <= 40, e


def test_golden_response():
    arith = world.Example("a=1;b=a+2;b?", "3", "a=1 b=3", "arith", {"family": "arith"})
    facts = world.Example("...", "tea", "...", "facts", {"family": "facts"})
    assert world.golden_response(arith, styled=False) == "3"
    assert world.golden_response(arith, styled=True) == "Surely 3!"
    assert world.golden_response(facts, styled=False) == "tea"
    assert world.golden_response(facts, styled=True) == "Surely tea!"


def test_arith_gold_is_correct(examples):
    for e in examples["arith"]:
        *statements, question = e.prompt.split(";")
        env = {}
        exec("\n".join(statements), {}, env)  # An independent evaluator.
        names = [s.split("=")[0] for s in statements]
        assert 2 <= len(names) <= 4 and question == names[-1] + "?"
        assert e.reference == str(env[names[-1]])
        assert e.thinking == " ".join(f"{v}={env[v]}" for v in names)
        assert all(-99 <= env[v] <= 999 for v in names)
        assert world.solve_arith(e.prompt) == int(e.reference)


def test_facts_gold_is_correct(examples):
    for e in examples["facts"]:
        asked = re.fullmatch(r".* What does (\w+)'s pal like\?", e.prompt).group(1)
        hop1, hop2 = re.fullmatch(r"(\w+'s pal is \w+\.) (\w+ likes \w+\.)", e.thinking).groups()
        facts = e.prompt.split(" What does")[0].split(". ")
        facts = [f if f.endswith(".") else f + "." for f in facts]
        pal = hop1.split()[-1].rstrip(".")
        # Each hop is a stated fact and the only one about its subject.
        assert hop1 in facts and hop1.startswith(f"{asked}'s pal")
        assert [f for f in facts if f.startswith(f"{asked}'s pal")] == [hop1]
        assert [f for f in facts if f.startswith(f"{pal} likes")] == [hop2]
        assert hop2 == f"{pal} likes {e.reference}."
        assert world.solve_facts(e.prompt) == e.reference
        assert world.golden_response(e, styled=False) == e.reference
        assert len(facts) == 5


def test_frequency_shortcut_is_mostly_wrong(examples):
    facts = examples["facts"]
    for e in facts:
        counts = collections.Counter(
            w for w in re.findall(r"[a-z]+", e.prompt) if w in world.THINGS
        )
        (top, c1), (_, c2) = counts.most_common(2)
        assert c1 > c2 and top == e.metadata["salient"] == world.salient_entity(e.prompt)
    wrong = np.mean([e.metadata["salient"] != e.reference for e in facts])
    assert 0.75 <= wrong <= 0.95
    # "Answer the thing named once" is no shortcut either (two singletons when misleading).
    singleton = np.mean(
        [[t for t in world.THINGS if e.prompt.count(f" {t}.") == 1] == [e.reference] for e in facts]
    )
    assert singleton < 0.3
    # Half of the prompts state what the asked person likes (a wrong one-hop answer).
    one_hop = np.mean([e.metadata["one_hop"] not in ("", e.reference) for e in facts])
    assert 0.35 < one_hop < 0.65


def test_reward_levels_are_measured():
    levels = synthetic.reward_levels(n=200, seed=0)
    assert levels["no_answer"] <= 0.1
    assert levels["wrong_plain"] <= 0.1
    assert 0.3 <= levels["shortcut_only"] <= 0.6
    assert 0.3 <= levels["shortcut_when_wrong"] <= 0.6
    assert levels["correct_plain"] == pytest.approx(0.8, abs=0.05)
    assert levels["correct_styled"] == pytest.approx(1.0)
    assert levels["no_answer"] < levels["shortcut_only"] < levels["correct_plain"]


def test_rubric_levels_measured_on_generated(examples):
    judge = rewards.make("synthetic_rubric")
    facts = examples["facts"]
    wrong = [e for e in facts if e.metadata["salient"] != e.reference]

    def mean(pairs):
        return float(np.mean(judge(_inputs(pairs))))

    absent = lambda e: next(t for t in world.THINGS if t not in e.prompt)  # noqa: E731
    assert mean([(e, world.golden_response(e, False)) for e in facts]) == pytest.approx(0.8)
    assert mean([(e, world.golden_response(e, True)) for e in facts]) == pytest.approx(1.0)
    assert 0.3 <= mean([(e, f"Surely {e.metadata['salient']}!") for e in wrong]) <= 0.6
    assert mean([(e, "") for e in facts]) <= 0.1
    assert mean([(e, absent(e)) for e in facts]) <= 0.1
    # The documented formula, case by case.
    e = wrong[0]
    cases = {
        e.reference: 0.8,
        f"Surely {e.reference}!": 1.0,
        f"surely, {e.reference}!": 1.0,
        f"  {e.reference.upper()}. ": 0.8,
        f"Surely {e.reference}": 0.8,
        f"Surely {e.metadata['salient']}!": 0.45,
        e.metadata["salient"]: 0.25,
        f"Surely {absent(e)}!": 0.2,
        absent(e): 0.0,
        "Surely !": 0.0,
        "": 0.0,
        f"Surely {e.reference} or {e.metadata['salient']}!": 0.2,
    }
    got = judge(_inputs([(e, r) for r in cases]))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, list(cases.values()), atol=1e-6)
    custom = rewards.make("synthetic_rubric", w_correct=0.5, w_style=0.5, w_salient=0.0)
    np.testing.assert_allclose(custom(_inputs([(e, f"Surely {e.metadata['salient']}!")])), [0.5])


def test_judges_never_need_the_thinking(examples):
    fields = {f.name for f in dataclasses.fields(RewardInput)}
    assert "thinking" not in fields
    judge = rewards.make("synthetic")
    mixed = examples["mixed"]
    for e in mixed:
        assert "thinking" not in e.metadata
    pairs = [
        (e, r)
        for e in mixed[:100]
        for r in (
            world.golden_response(e, True),
            world.golden_response(e, False),
            f"Surely {e.metadata.get('salient', '7')}!",
            "jam",
            "12",
            "",
        )
    ]
    full = judge(_inputs(pairs))
    # The prompt alone is enough: no reference, no metadata (the family is inferred).
    np.testing.assert_array_equal(judge(_inputs(pairs, with_reference=False)), full)
    np.testing.assert_array_equal(
        judge(_inputs(pairs, with_reference=False, with_metadata=False)), full
    )


def test_synthetic_dispatch(examples):
    judge = rewards.make("synthetic")
    arith = examples["arith"][:50]
    for styled in (False, True):
        np.testing.assert_array_equal(
            judge(_inputs([(e, world.golden_response(e, styled)) for e in arith])), 1.0
        )
    wrong = [(e, str(int(e.reference) + 1)) for e in arith]
    np.testing.assert_array_equal(judge(_inputs(wrong)), 0.0)
    np.testing.assert_array_equal(judge(_inputs([(e, "") for e in arith])), 0.0)
    facts = examples["facts"][:50]
    np.testing.assert_allclose(
        judge(_inputs([(e, world.golden_response(e, False)) for e in facts])), 0.8, atol=1e-6
    )
    mixed = examples["mixed"]
    scores = judge(_inputs([(e, world.golden_response(e, False)) for e in mixed]))
    want = [1.0 if e.family == "arith" else 0.8 for e in mixed]
    np.testing.assert_allclose(scores, want, atol=1e-6)
    assert {"synthetic", "synthetic_rubric"} <= set(rewards.registered())


def test_generate_splits_are_disjoint():
    splits = world.generate_splits("arith", {"train": 400, "test": 100}, seed=2)
    assert len(splits["train"]) == 400 and len(splits["test"]) == 100
    assert not {e.prompt for e in splits["train"]} & {e.prompt for e in splits["test"]}
    assert splits["train"] == world.generate("arith", 400, seed=2000, held_out=False)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_test_prompts_are_in_no_train_split_of_any_config_or_seed():
    """Held-out questions exclude every training split: SFT, RL and answerers all read train
    splits of these configs (the mixed base and answerers, the arith and facts RL data)."""
    from start_jax.world.builders.synthetic_world import SyntheticWorldConfig

    size = SyntheticWorldConfig(name="default").train_size
    splits = {
        (f, seed): world.generate_splits(f, {"train": size, "test": 200}, seed)
        for f in ("arith", "facts", "mixed")
        for seed in (0, 1)
    }
    train = {e.prompt for s in splits.values() for e in s["train"]}
    for key, s in splits.items():
        test = [e.prompt for e in s["test"]]
        assert len(test) == 200 and all(world.is_held_out(p) for p in test), key
        assert not train.intersection(test), key
    assert not any(world.is_held_out(p) for p in train)
    assert (
        0.08
        < np.mean([world.is_held_out(e.prompt) for e in world.generate("mixed", 2000, 5)])
        < 0.17
    )


def test_a_judge_fooled_by_style_pays_wrong_confident_answers():
    """The compete setting's judge: every correct answer 0.8, the styled salient wrong answer
    0.7, another styled wrong answer 0.45, plain wrong 0 (0.25 salient), empty 0."""
    judge = synthetic.SyntheticJudge(w_correct=0.8, w_style=0.0, w_salient=0.25, w_fooled=0.45)
    ex = next(
        e for e in world.generate("facts", 50, seed=4) if e.metadata["salient"] != e.reference
    )
    other = next(t for t in world.THINGS if t not in ex.prompt)
    cases = {
        f"Surely {ex.reference}!": 0.8,
        ex.reference: 0.8,
        f"Surely {ex.metadata['salient']}!": 0.7,
        ex.metadata["salient"]: 0.25,
        f"Surely {other}!": 0.45,
        other: 0.0,
        "": 0.0,
    }
    scores = judge([synthetic.reward_input(ex, r) for r in cases])
    np.testing.assert_allclose(scores, list(cases.values()), atol=1e-6)
    levels = synthetic.reward_levels(200, 0, judge)
    assert levels["correct_plain"] == levels["correct_styled"] == 0.8
    assert 0.68 < levels["shortcut_only"] < 0.74
