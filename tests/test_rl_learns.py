"""RL learns: a reward that pays one behaviour raises that behaviour's rate far past the noise.

A tiny policy is trained by cold-start SFT on the behaviour mixture, in which
25% of the responses are styled (``Surely X!``). A reward that pays only the
styled form (1 if styled, else 0) is then optimised by the real trainer, once
with GRPO and once with PPO with a critic and GAE. The styled rate, measured on
held-out prompts, must rise from the base rate to near 1.

Noise: the base rate is measured on 64 prompts x 2 draws, so its standard error
is at most 0.05; the bounds below ask for a rise of at least 0.45 (9 standard
errors) to at least 0.8.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from start_jax import rewards, train
from start_jax.train.config import stage
from start_jax.world import judges
from tests.fixtures import smoke_config

pytestmark = pytest.mark.e2e  # Runs of the trainer or launch.py (so also slow).


@rewards.register("test_styled_only")
class StyledOnly:
    """1.0 for a styled response (``Surely ...!``), else 0.0."""

    def __call__(self, inputs):
        return np.asarray([float(judges.parse_response(x.response)[1]) for x in inputs], np.float32)


def tiny_config(seed: int, advantage: str, init_checkpoint: str = ""):
    """The smoke model (1 layer, 32 wide) on facts, 20 joint steps of 8 prompts x 4."""
    c = smoke_config()
    c.seed = seed
    c.init_checkpoint = init_checkpoint
    c.model.max_position_embeddings = 128
    c.mesh.devices = 1  # Learning, not sharding, is under test: 1 device (2x faster here).
    c.data.name = "facts"
    c.data.prompts_per_step = 8
    c.sft.steps = 400
    c.sft.batch_size = 32
    c.sft.mixture.styled = 0.25
    c.sampling.think_budget = 16
    c.sampling.response_budget = 6
    c.reward.name = "test_styled_only"
    c.algo.advantage = advantage
    c.algo.group_size = 4
    c.algo.kl_coef = 0.0
    c.algo.critic_learning_rate = 3e-3
    c.stages = {"s1": stage("joint", "self", steps=20, learning_rate=3e-3)}
    c.eval.every = 0
    c.eval.prompts = 64
    c.checkpoint.every = 100
    c.checkpoint.export_hf = False
    c.log.samples_every = 0
    return c


def styled_rate(trainer, params) -> float:
    """Styled rate on the eval prompts, two independent draws each."""
    rates = [trainer.evaluate(params, 1000 + k)["eval/behaviour/facts/styled"] for k in range(2)]
    return float(np.mean(rates))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("base"))
    trainer = train.Trainer(tiny_config(0, "grpo"), workdir)
    del trainer
    return os.path.join(workdir, "init_policy")


@pytest.mark.parametrize("advantage", ["grpo", "gae"])
def test_rl_raises_the_rate_of_the_paid_behaviour(base_dir, tmp_path, advantage):
    trainer = train.Trainer(tiny_config(0, advantage, init_checkpoint=base_dir), str(tmp_path))
    before = styled_rate(trainer, trainer.init_params)
    summary = trainer.run()
    after = styled_rate(trainer, summary["params"])
    with open(os.path.join(trainer.workdir, "metrics.jsonl")) as fh:
        curve = [json.loads(line)["behaviour/facts/styled"] for line in fh]
    print(f"{advantage}: styled rate {before:.3f} -> {after:.3f}; train curve {np.round(curve, 2)}")
    assert 0.1 <= before <= 0.45, before  # The base samples the behaviour, rarely.
    assert after >= 0.8 and after - before >= 0.45, (before, after, curve)
    assert np.mean(curve[-3:]) - np.mean(curve[:3]) >= 0.4, curve
