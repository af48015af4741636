"""Estimators and losses are extended in their own module: the run config and the run
spec read their options from the dataclasses, with nothing named by hand."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from start_jax.rl import advantages, losses
from start_jax.train import config as config_module
from start_jax.train import stages
from start_jax.train.spec import RunSpec
from tests.fixtures import smoke_config


def test_every_estimator_and_loss_option_is_a_config_key_with_the_library_default():
    c = config_module.default_config()
    for name, default in advantages.AdvantageConfig.options().items():
        assert c.algo[name] == default, name
    for name in losses.LossConfig.options():
        assert name in c.algo, name
    # The run's defaults that differ from the library's are stated in the config.
    assert c.algo.clip_high == 0.28 != losses.LossConfig().clip_high


def test_the_spec_reads_every_option_back():
    c = smoke_config()
    c.algo.advantage, c.algo.gamma, c.algo.lam = "gae", 0.9, 0.8
    c.algo.clip_low, c.algo.entropy_coef, c.algo.kl_estimator = 0.1, 0.01, "k2"
    spec = RunSpec.from_config(c)
    assert spec.advantage == advantages.AdvantageConfig(
        "gae",
        group_size=c.algo.group_size,
        grpo_scale="std",
        group_baseline=True,
        gamma=0.9,
        lam=0.8,
    )
    loss = spec.train.loss
    assert (loss.clip_low, loss.entropy_coef, loss.kl_estimator) == (0.1, 0.01, "k2")
    assert loss.norm_length == c.sampling.think_budget + c.sampling.response_budget + 1
    assert spec.train.use_critic


def test_a_registered_estimator_is_usable_by_a_run_without_other_edits():
    """A batch-mean baseline registered from outside the library: accepted by the
    config check (group_size=1 too, as it declares no groups) and run by `estimate`."""

    def batch_mean(rewards, values, mask, config):
        del values, config
        r = rewards.astype(jnp.float32)
        return advantages.broadcast(r - r.mean(), mask), jnp.zeros(mask.shape, jnp.float32)

    advantages.register("batch_mean", batch_mean)
    try:
        c = smoke_config()
        c.algo.advantage, c.algo.group_size = "batch_mean", 1
        config_module.validate(c)
        spec = RunSpec.from_config(c)
        assert not spec.advantage.needs_critic and not spec.advantage.needs_groups
        mask = np.ones((4, 3), bool)
        adv, _ = advantages.estimate(
            jnp.asarray([1.0, 0.0, 0.0, 1.0]), jnp.zeros((4, 3)), jnp.asarray(mask), spec.advantage
        )
        np.testing.assert_allclose(np.asarray(adv)[:, 0], [0.5, -0.5, -0.5, 0.5])
    finally:
        del advantages.ESTIMATORS["batch_mean"], advantages._GROUPED["batch_mean"]
    with pytest.raises(ValueError, match="algo.advantage='batch_mean' is not one of"):
        config_module.validate(c)


def test_groups_are_asked_for_by_the_estimators_themselves():
    need = {
        name: advantages.AdvantageConfig(name, group_size=2).needs_groups
        for name in advantages.ESTIMATORS
    }
    assert need == {"grpo": True, "rloo": True, "reinforce_pp": True, "gae": False}
    assert not advantages.AdvantageConfig("reinforce_pp", group_baseline=False).needs_groups
    assert advantages.CRITIC_ESTIMATORS == ("gae",)
    assert dataclasses.fields(advantages.AdvantageConfig)[0].name == "estimator"


def test_every_stage_knob_is_declared_once_with_its_default_check_and_inheritance():
    """A stage's knobs come from `StageSpec`'s fields: the config section has each one at
    its declared default, a bad value is refused naming the key, and a knob left unset
    takes the run-wide value it inherits."""
    section = stages.stage()
    declared = {f.name: f.default for f in stages.knobs()}
    assert dict(section) == declared
    assert set(declared) == {f.name for f in dataclasses.fields(stages.StageSpec)} - {
        "name",
        "start",
    }
    bad = dict(
        train_segments="thinking",
        responder="me",
        steps=-1,
        learning_rate=0.0,
        thinker="both",
        kl_coef=-0.5,
        kl_reference="base",
        kl_scope="all",
        warmup_steps=-2,
        carry_optimizer="yes",
        dynamic_rounds=-2,
    )
    assert set(bad) == set(declared)
    for knob, value in bad.items():
        c = smoke_config()
        c.stages.s1 = ml_collections.ConfigDict({**c.stages.s1.to_dict(), knob: value})
        with pytest.raises(ValueError, match=rf"stages\.s1\.{knob}="):
            config_module.validate(c)
    c = smoke_config()
    c.algo.kl_coef, c.algo.kl_scope, c.optim.warmup_steps = 0.25, "think", 3
    c.stages.s2.kl_coef, c.stages.s2.warmup_steps = 0.0, 0
    first, second = RunSpec.from_config(c).stages[:2]
    assert (first.kl_coef, first.kl_scope, first.warmup_steps) == (0.25, "think", 3)
    assert (second.kl_coef, second.kl_scope, second.warmup_steps) == (0.0, "think", 0)
    with pytest.raises(TypeError, match="unknown knobs"):
        stages.stage(kl_coeff=0.1)


def test_a_new_task_is_one_registered_class(tmp_path):
    """A data source is a `tasks.Task`: registered, it is a valid `data.source`, the run's
    data sets and cold-start traces come from it, and its rewards are refused elsewhere."""
    from start_jax import rewards, tasks
    from start_jax.errors import ConfigError
    from start_jax.train import data_io, init_policy

    class Echo(tasks.Task):
        name = "echo_test"
        description = "echo prompts"
        own_rewards = ("exact_match",)
        decodes_every_row = True

        def load(self, split, name, train_path, test_path, data_dir):
            n = 5 if split == "train" else 2
            return [
                {"prompt": f"say {i}", "reference": str(i), "family": "echo", "metadata": "{}"}
                for i in range(n)
            ]

        def sft_traces(self, examples, mixture, seed, draws):
            return [{**e, "thinking": "echo", "response": e["reference"]} for e in examples]

        def behaviour_metrics(self, rows):
            return {"behaviour/echo/rows": float(len(rows))}

    with pytest.raises(TypeError, match="abstract"):  # `load` and `sft_traces` are required.
        type("Bare", (tasks.Task,), {"name": "bare"})()
    assert "echo_test" not in tasks.registered()
    tasks.register(Echo())
    try:
        config = smoke_config()
        config.data.source = "echo_test"
        config.reward.name = "exact_match"
        spec = RunSpec.from_config(config)
        train_data, test_data = data_io.datasets(spec.data, str(tmp_path))
        assert (len(train_data), len(test_data)) == (5, 2)
        assert train_data[3]["reference"] == "3" and train_data[3]["family"] == "echo"
        traces = init_policy.sft_traces(spec, [train_data[i] for i in range(2)])
        assert [t["response"] for t in traces] == ["0", "1"]
        # Its own reward judges only its examples.
        config.data.source = "synthetic"
        with pytest.raises(ConfigError, match="'exact_match' judges only echo prompts"):
            RunSpec.from_config(config)
        assert "exact_match" in rewards.registered()
    finally:
        tasks.base._TASKS.pop("echo_test")
    config.data.source = "echo_test"
    with pytest.raises(ConfigError, match=r"data.source='echo_test' is not one of \["):
        RunSpec.from_config(config)
