"""Dynamic sampling: which groups are informative on the trained segment, which groups an
update keeps, and one RL step that samples further rounds to fill its batch."""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import pytest

from start_jax import rl, segments, train
from start_jax.errors import ConfigError
from tests.fixtures import rollout_segments, smoke_config

P, T, R = segments.PROMPT, segments.THINK, segments.RESPONSE


@pytest.mark.parametrize("mode", ["joint", "think", "response"])
def test_trained_rows_are_the_rows_with_loss_mask_tokens(mode):
    seg, forced = rollout_segments(b=16, length=24, seed=3)
    seg[2, :] = np.where(seg[2] == R, segments.PAD, seg[2])  # A row without a response.
    seg[5, :] = np.where(seg[5] == T, P, seg[5])  # A row without thinking.
    want = np.asarray(rl.loss_mask(seg, forced, mode)).any(axis=1)
    got = rl.dynamic.trained_rows(seg, forced, mode)
    np.testing.assert_array_equal(got, want)
    assert got[2] == (mode != "response") and got[5] == (mode != "think")


def test_a_group_is_informative_when_its_trained_rows_differ_in_reward():
    reward = [1, 1, 0, 1, 0.5, 0.5, 2, 0, 3, 3, 0, 1]
    trained = [1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1]  # Row 7 has nothing to train.
    got = rl.dynamic.informative(reward, np.asarray(trained, bool), 2)
    # (1,1) equal; (0,1) differ; (.5,.5) equal; (2,-) one trained row; (3,3); (0,1).
    np.testing.assert_array_equal(got, [False, True, False, False, False, True])
    got = rl.dynamic.informative(reward, np.ones(12, bool), 4)
    np.testing.assert_array_equal(got, [True, True, True])


def test_select_takes_informative_groups_in_order_then_fills_from_the_first_round():
    rounds = [np.asarray([0, 1, 0, 1], bool), np.asarray([0, 0, 0, 1], bool)]
    assert rl.dynamic.select(rounds, 4) == [(0, 1), (0, 3), (1, 3), (0, 0)]
    rounds.append(np.asarray([1, 1, 0, 0], bool))
    assert rl.dynamic.select(rounds, 4) == [(0, 1), (0, 3), (1, 3), (2, 0)]
    assert rl.dynamic.select([np.ones(3, bool)], 3) == [(0, 0), (0, 1), (0, 2)]
    np.testing.assert_array_equal(rl.dynamic.row_index([(0, 1), (2, 0)], 4, 2), [2, 3, 16, 17])


def test_the_rounds_are_checked():
    c = smoke_config()
    c.sampling.dynamic_rounds = -1
    with pytest.raises(
        ConfigError, match=re.escape("config: sampling.dynamic_rounds=-1 must be an integer >= 0")
    ):
        train.validate(c)
    c = smoke_config()
    c.algo.group_size, c.algo.advantage = 1, "gae"
    c.stages.s2.dynamic_rounds = 2
    with pytest.raises(
        ConfigError, match=re.escape("config: stages.s2.dynamic_rounds=2 (or sampling.dynamic")
    ):
        train.validate(c)
    c = smoke_config()
    c.sampling.dynamic_rounds = 3
    c.stages.s2.dynamic_rounds = 0
    spec = train.RunSpec.from_config(c)
    assert [s.dynamic_rounds for s in spec.stages] == [3, 0]


# Rewards of each sampling round, by group of 2 rows: round 0 has informative groups 1 and
# 3, round 1 group 3, round 2 groups 0 and 1.
ROUNDS = [
    [1, 1, 0, 1, 0, 0, 1, 0],
    [0, 0, 1, 1, 0, 0, 0, 1],
    [0, 1, 1, 0, 1, 1, 1, 1],
]


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """A random-init smoke trainer with 4 prompts a step (8 rows), its stage 1 (think, with
    a frozen responder) sampling dynamically."""
    config = smoke_config()
    config.sft.steps = 0
    config.data.prompts_per_step = 4
    config.sampling.dynamic_rounds = 2
    return train.Trainer(config, str(tmp_path_factory.mktemp("dynamic")))


def _step(trainer, monkeypatch, rounds: int, step: int, guard: str = "allow"):
    stage = dataclasses.replace(trainer.stages[0], dynamic_rounds=rounds)
    seen = []  # (host rollout, examples) of each round, in order.

    def score(host, examples, repeat):
        seen.append((host, list(examples)))
        return np.asarray(ROUNDS[len(seen) - 1], np.float32)

    monkeypatch.setattr(trainer, "score", score)
    data = iter([trainer.train_data[i] for i in range(4 * k, 4 * k + 4)] for k in range(3))
    state = trainer.states.fresh(stage, trainer.init_params)
    with jax.transfer_guard(guard):
        out = trainer.rl_step(state, next(data), step, stage, more=lambda: next(data))
    return out, seen


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_a_step_fills_its_batch_with_informative_groups_of_further_rounds(trainer, monkeypatch):
    _step(trainer, monkeypatch, 2, 0)  # Compiles; the next step runs guarded.
    out, seen = _step(trainer, monkeypatch, 2, 1, guard="disallow")
    assert len(seen) == 3  # Two further rounds.
    chosen = [(0, 1), (0, 3), (1, 3), (2, 0)]
    rows = rl.dynamic.row_index(chosen, 4, 2)
    every = np.concatenate([h.tokens for h, _ in seen])
    np.testing.assert_array_equal(out.host.tokens, every[rows])
    np.testing.assert_array_equal(np.asarray(out.batch.tokens), every[rows])
    np.testing.assert_array_equal(out.reward, np.concatenate(ROUNDS)[rows])
    assert out.examples == [seen[k][1][g] for k, g in chosen]
    # Further rounds draw other rollouts than the first (their own keys).
    assert not np.array_equal(seen[0][0].tokens, seen[1][0].tokens)
    m = out.metrics
    assert m["dynamic/rounds"] == 2 and m["dynamic/extra_rollouts"] == 16
    assert m["dynamic/filtered_frac"] == 0.5 and m["dynamic/uninformative_frac"] == 0.0
    assert m["adv_nonzero_frac"] == 1.0  # Every row of the update has a gradient.


@pytest.mark.slow
def test_at_the_cap_uninformative_groups_of_the_first_round_fill_the_batch(trainer, monkeypatch):
    out, seen = _step(trainer, monkeypatch, 1, 2)
    assert len(seen) == 2
    rows = rl.dynamic.row_index([(0, 1), (0, 3), (1, 3), (0, 0)], 4, 2)
    np.testing.assert_array_equal(
        out.host.tokens, np.concatenate([h.tokens for h, _ in seen])[rows]
    )
    assert out.metrics["dynamic/uninformative_frac"] == 0.25
    assert out.metrics["dynamic/rounds"] == 1


@pytest.mark.slow
def test_a_step_whose_groups_are_all_informative_samples_once(trainer, monkeypatch):
    every = np.asarray([0, 1] * 4, np.float32)  # Every group informative.
    monkeypatch.setattr(trainer, "score", lambda host, ex, g: every)
    stage = trainer.stages[0]
    examples = [trainer.train_data[i] for i in range(4)]
    state = trainer.states.fresh(stage, trainer.init_params)
    out = trainer.rl_step(state, examples, 3, stage, more=lambda: pytest.fail("sampled again"))
    assert out.examples == examples and out.metrics["dynamic/rounds"] == 0
    monkeypatch.setattr(trainer, "score", lambda h, e, g: np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="rl_step needs `more`"):
        trainer.rl_step(out.state, examples, 3, stage)
