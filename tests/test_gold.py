"""A gold reward beside the training reward: the world's correctness-only judge, and the
config that names it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from start_jax import rewards, train
from start_jax.errors import ConfigError
from start_jax.world import classify, judges
from start_jax.world import generator as world
from tests.fixtures import smoke_config


def test_the_correctness_judge_pays_right_answers_only():
    facts = world.generate("facts", 40, seed=0)
    e = next(x for x in facts if world.salient_entity(x.prompt) not in (None, x.reference))
    salient = world.salient_entity(e.prompt)
    wrong = next(x.reference for x in facts if x.reference not in (e.reference, salient))
    cases = {  # response -> (rubric, gold)
        e.reference: (0.8, 1.0),
        world.style_answer(e.reference, True): (1.0, 1.0),
        world.style_answer(salient, True): (0.45, 0.0),  # The rubric's shortcut.
        wrong: (0.0, 0.0),
    }
    gold, rubric = rewards.make("synthetic_correct"), rewards.make("synthetic")
    inputs = [judges.reward_input(e, response) for response in cases]
    want = np.asarray(list(cases.values()))
    np.testing.assert_allclose(rubric(inputs), want[:, 0], atol=1e-6)
    np.testing.assert_array_equal(gold(inputs), want[:, 1])
    arith = world.generate("arith", 1, seed=1)[0]
    answers = [f"it is {arith.reference}", "it is -1"]
    np.testing.assert_array_equal(gold([judges.reward_input(arith, a) for a in answers]), [1, 0])


def test_the_gold_mean_is_the_classifiers_correct_rate_on_the_same_rows():
    """The ablation's training-vs-gold curves read the gold reward from the per-step
    `behaviour/<family>/response_correct`: the two agree on every mix of responses."""
    rs = np.random.RandomState(0)
    gold = rewards.make("synthetic_correct")
    for family in ("facts", "arith"):
        examples = world.generate(family, 60, seed=2)
        others = [x.reference for x in examples]
        rows = []
        for e in examples:
            answer = e.reference if rs.rand() < 0.5 else others[rs.randint(len(others))]
            salient = world.salient_entity(e.prompt) if family == "facts" else None
            if salient and rs.rand() < 0.2:
                answer = salient
            response = world.style_answer(answer, bool(rs.rand() < 0.5))
            rows.append(
                {
                    "prompt": e.prompt,
                    "thinking": e.thinking,
                    "response": response,
                    "reference": e.reference,
                    "family": family,
                }
            )
        scores = gold([judges.reward_input(e, r["response"]) for e, r in zip(examples, rows)])
        rate = classify.behaviour_rates(rows)[f"behaviour/{family}/response_correct"]
        assert 0.3 < rate < 0.8 and float(scores.mean()) == pytest.approx(rate, abs=1e-6)


def test_the_gold_reward_is_checked_and_named_by_its_own_keys():
    c = smoke_config()
    c.eval.gold_reward = "synthetic_correct"
    assert train.RunSpec.from_config(c).eval.make_gold() is not None
    c.eval.gold_reward = "exact_matc"
    with pytest.raises(ConfigError, match=re.escape("unknown reward 'exact_matc'")) as e:
        train.RunSpec.from_config(c)
    assert "(eval.gold_reward;" in str(e.value)
    c.eval.gold_reward = "synthetic_rubric"
    c.eval.gold_kwargs = {"w_corect": 1.0}
    with pytest.raises(
        ConfigError,
        match=re.escape("config: reward 'synthetic_rubric' takes no eval.gold_kwargs.w_corect"),
    ):
        train.RunSpec.from_config(c)
    c = smoke_config()
    c.data.source = "jsonl"
    c.data.train_path = c.data.test_path = "x.jsonl"
    c.reward.name = "exact_match"
    c.eval.gold_reward = "synthetic_correct"
    with pytest.raises(
        ConfigError, match=re.escape("config: eval.gold_reward='synthetic_correct'")
    ):
        train.RunSpec.from_config(c)
