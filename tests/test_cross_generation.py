"""Cross-Generation on constructed cases whose answers are known."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from experiments import cross_generation as cli
from start_jax import checkpoints, models, rewards, sampling
from start_jax.eval import cross_generation as cg
from start_jax.eval import stats
from start_jax.tokenizer import CharTokenizer

QUESTIONS = [{"prompt": f"q{i}: {i}+{i}?", "reference": str(2 * i)} for i in range(40)]


class Oracle:
    """Writes the correct answer in its thinking."""

    def think(self, prompts, seed):
        return [f"the answer is {2 * int(p.split(':')[0][1:])}" for p in prompts]


class Noise:
    """Writes thinking that is of no use."""

    def think(self, prompts, seed):
        return ["hmm" for _ in prompts]


class Copier:
    """Answers with the last word of the thinking; its own thinking is empty."""

    def answer(self, prompts, thinking, seed):
        if thinking is None:
            return ["" for _ in prompts]
        return [t.split()[-1] if t.split() else "" for t in thinking]


class Guesser:
    """Ignores the thinking: right on a fixed tenth of the questions."""

    def answer(self, prompts, thinking, seed):
        return [
            str(2 * int(p.split(":")[0][1:])) if int(p.split(":")[0][1:]) % 10 == 0 else "x"
            for p in prompts
        ]


def test_copying_answerer_gives_oracle_maximum_efficacy():
    result = cg.run(
        {"oracle": Oracle(), "noise": Noise()},
        {"copier": Copier()},
        QUESTIONS,
        rewards.make("exact_match"),
        seeds=(0, 1),
    )
    assert result.sources == ["oracle", "noise", "empty", "self"]
    m = result.matrix
    assert m[0, 0] == 1.0 and m[1, 0] == 0.0 and m[2, 0] == 0.0
    assert result.efficacy["oracle"]["mean"] == pytest.approx(1.0)
    assert result.efficacy["oracle"]["low"] == pytest.approx(1.0)
    assert result.efficacy["noise"]["mean"] == 0.0
    assert result.efficacy["self"]["mean"] == 0.0
    assert result.scores.shape == (4, 1, 2, 40)


def test_efficacy_is_measured_against_each_answerers_empty_control():
    result = cg.run(
        {"oracle": Oracle()},
        {"copier": Copier(), "guesser": Guesser()},
        QUESTIONS,
        rewards.make("exact_match"),
        seeds=(0,),
        include_self=False,
    )
    m = result.matrix
    np.testing.assert_allclose(m[:, 1], [0.1, 0.1])  # The guesser ignores thinking.
    # Mean over answerers of the gain over empty thinking: (1.0 + 0.0) / 2.
    assert result.efficacy["oracle"]["mean"] == pytest.approx(0.5)
    lo, hi = result.efficacy["oracle"]["low"], result.efficacy["oracle"]["high"]
    assert lo <= 0.5 <= hi
    text = result.table()
    assert "oracle" in text and "+0.500" in text


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_data():
    rs = np.random.RandomState(0)
    small = stats.bootstrap_efficacy(rs.binomial(1, 0.3, size=(3, 1, 20)).astype(float))
    large = stats.bootstrap_efficacy(rs.binomial(1, 0.3, size=(3, 1, 2000)).astype(float))
    for e in (small, large):
        assert e["low"] <= e["mean"] <= e["high"]
    assert large["high"] - large["low"] < small["high"] - small["low"]


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_model_policies_think_and_answer_through_the_sampler(tmp_path):
    tok = CharTokenizer()
    config = models.tiny_config(tok.vocab_size)
    sc = sampling.SamplingConfig(temperature=1.0, think_budget=6, response_budget=4)
    a = cg.ModelPolicy(config, models.init_params(config, jax.random.key(0)), tok, sc)
    b = cg.ModelPolicy(config, models.init_params(config, jax.random.key(1)), tok, sc)
    result = cg.run(
        {"t": a},
        {"small": a, "other": b},  # One policy is thinker and answerer.
        QUESTIONS[:6],
        rewards.make("exact_match"),
        seeds=(0,),
    )
    assert result.matrix.shape == (3, 2)
    prompts = [q["prompt"] for q in QUESTIONS[:6]]
    rows = a.generate(prompts, 5, thinking=a.think(prompts, 5))
    assert [r["response"] for r in rows] == a.answer(prompts, a.think(prompts, 5), 5)
    assert all(r["thinking"] == "" for r in a.generate(prompts, 5, no_thinking=True))
    path = str(tmp_path / "heat.png")
    result.heatmap(path)
    assert os.path.getsize(path) > 1000
    cg.save(result, str(tmp_path / "cg.json"))
    with pytest.raises(ValueError, match="reserved for the controls"):
        cg.run({"empty": Oracle()}, {"c": Copier()}, QUESTIONS, rewards.make("exact_match"))


def test_repeat_group():
    assert cg.repeat_group([[1], [1], [2], [2]]) == 2
    assert cg.repeat_group([[1], [1], [2], [2]], [[5], [6], [7], [7]]) == 1  # Thinking differs.
    assert cg.repeat_group([[1]] * 6, [[5]] * 3 + [[6]] * 3) == 3
    assert cg.repeat_group([[1], [2], [1], [2]]) == 1
    assert cg.repeat_group([[1]] * 4) == 4


class Counter:
    """Answers with a different word each call; records the rows it was given."""

    def __init__(self):
        self.calls = []

    def answer(self, prompts, thinking, seed):
        self.calls.append((list(prompts), None if thinking is None else list(thinking)))
        return [
            str(2 * int(p.split(":")[0][1:])) if i % 4 == 0 else "x" for i, p in enumerate(prompts)
        ]


def test_several_responses_per_thinking_are_averaged():
    counter = Counter()
    qs = QUESTIONS[:5]
    result = cg.run(
        {"oracle": Oracle()},
        {"c": counter},
        qs,
        rewards.make("exact_match"),
        include_self=False,
        responses=4,
        bootstrap_samples=50,
    )
    # Each question (and its thinking) is asked 4 times in a row; one answer in 4 is right.
    prompts, thinking = counter.calls[0]
    assert prompts == [q["prompt"] for q in qs for _ in range(4)]
    assert thinking == [t for t in Oracle().think([q["prompt"] for q in qs], 0) for _ in range(4)]
    np.testing.assert_allclose(result.scores, 0.25)
    with pytest.raises(ValueError, match="responses=0"):
        cg.run({"oracle": Oracle()}, {"c": counter}, qs, rewards.make("exact_match"), responses=0)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_model_policy_shares_the_prefill_of_repeated_rows(monkeypatch):
    """Several answers to one thinking: one prefill for the group, the same rows as
    sampling each repeated row on its own."""
    tok = CharTokenizer()
    config = models.tiny_config(tok.vocab_size)
    sc = sampling.SamplingConfig(temperature=1.0, think_budget=6, response_budget=6)
    policy = cg.ModelPolicy(config, models.init_params(config, jax.random.key(0)), tok, sc)
    prompts = [q["prompt"] for q in QUESTIONS[:3] for _ in range(4)]
    thinking = [t for t in ("ab", "c d", "") for _ in range(4)]
    groups = []
    sample = sampling.sample
    monkeypatch.setattr(
        sampling, "sample", lambda *a, **k: (groups.append(k["group_size"]), sample(*a, **k))[1]
    )
    shared = policy.generate(prompts, 3, thinking=thinking)
    assert groups == [4]
    special = sampling.SpecialTokens.from_tokenizer(tok)
    alone = sample(
        config,
        policy.params,
        [tok.encode(p) for p in prompts],
        sc,
        3,
        special,
        thinking=[tok.encode(t) for t in thinking],
    )
    assert shared == sampling.decode_segments(tok, alone)
    assert len({r["response"] for r in shared}) > 3  # Answers to one thinking differ.


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_command_line_entry(tmp_path):
    tok = CharTokenizer()
    config = models.tiny_config(tok.vocab_size, max_position_embeddings=256)
    paths = {}
    for name, seed in (("t", 0), ("a1", 1), ("a2", 2)):
        paths[name] = str(tmp_path / name)
        checkpoints.save_pretrained(
            config, models.init_params(config, jax.random.key(seed)), paths[name]
        )
    tok.save_pretrained(paths["t"])  # One model brings its tokenizer; the rest use --tokenizer.
    out = str(tmp_path / "out")
    result = cli.main(
        [
            f"--thinker=t={paths['t']}",
            f"--answerer=a1={paths['a1']}",
            f"--answerer=a2={paths['a2']}",
            "--data=synthetic:facts",
            "--questions=6",
            "--think_budget=6",
            "--response_budget=4",
            "--responses=2",
            f"--out={out}",
        ]
    )
    assert result.matrix.shape == (3, 2)
    assert os.path.getsize(os.path.join(out, "cross_generation.png")) > 1000
    with pytest.raises(ValueError, match="expected NAME=PATH"):
        cli.main(["--thinker=nopath", f"--answerer=a1={paths['a1']}"])
