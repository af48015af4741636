"""Length shaping per segment (`rewards.shaping`): DAPO's soft overlong penalty for the
thinking and the response, a thinking-length target; by hand, and as the run reads it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from start_jax import train
from start_jax.errors import ConfigError
from start_jax.rewards.shaping import LengthShaping, soft_overlong
from tests.fixtures import smoke_config


def test_soft_overlong_by_hand():
    # Budget 10, buffer 4: no penalty up to 6 tokens, then -1/4 a token, -1 past the budget.
    got = soft_overlong([0, 6, 7, 8, 9, 10, 11], budget=10, buffer=4)
    np.testing.assert_allclose(got, [0, 0, -0.25, -0.5, -0.75, -1.0, -1.0])


def test_terms_and_the_shaped_reward_by_hand():
    shaping = LengthShaping(
        think_overlong_buffer=2,
        response_overlong_buffer=1,
        overlong_coef=0.5,
        think_target=4,
        think_target_coef=0.2,
    )
    think, response, task = [2, 7, 8], [1, 3, 4], [1.0, 0.0, 0.5]
    terms = shaping.terms(think, response, think_budget=8, response_budget=4)
    np.testing.assert_allclose(terms["think_overlong"], [0.0, -0.25, -0.5])
    np.testing.assert_allclose(terms["response_overlong"], [0.0, 0.0, -0.5])
    np.testing.assert_allclose(terms["think_target"], [-0.1, -0.15, -0.2])
    reward, metrics = shaping.shape(task, think, response, 8, 4)
    want = np.array([0.9, -0.4, -0.7])
    np.testing.assert_allclose(reward, want, rtol=1e-6)
    assert reward.dtype == np.float32
    assert metrics == pytest.approx(
        {
            "reward/task": 0.5,
            "reward/think_overlong": -0.25,
            "reward/response_overlong": -0.5 / 3,
            "reward/think_target": -0.15,
        }
    )
    assert not LengthShaping().active and LengthShaping().terms(think, response, 8, 4) == {}


def test_the_run_reads_the_section_with_the_library_defaults():
    c = smoke_config()
    assert c.shaping.to_dict() == LengthShaping.options()
    c.shaping.think_overlong_buffer, c.shaping.think_target = 4, 3
    c.shaping.think_target_coef = 0.1
    spec = train.RunSpec.from_config(c)
    assert spec.shaping == LengthShaping(
        think_overlong_buffer=4, think_target=3, think_target_coef=0.1
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "think_overlong_buffer",
            9,
            "config: shaping.think_overlong_buffer=9 is longer than sampling.think_budget=8",
        ),
        ("response_overlong_buffer", -1, "config: shaping.response_overlong_buffer=-1 must be"),
        ("overlong_coef", -0.5, "config: shaping.overlong_coef=-0.5 must be a number >= 0"),
        ("think_target_coef", 0.1, "config: shaping.think_target_coef=0.1 needs think_target"),
    ],
)
def test_bad_values_name_the_field(field, value, message):
    c = smoke_config()
    c.shaping[field] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        train.RunSpec.from_config(c)
