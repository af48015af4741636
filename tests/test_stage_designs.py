"""Stage-2 designs: a frozen thinker, a KL anchor to a stage-start snapshot, carried optimizer
state and per-stage warmup; each tested on one in-process run of the smoke model."""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from start_jax import rl, sampling, segments, train
from start_jax.errors import ConfigError
from start_jax.train import checkpointing
from start_jax.train.config import stage
from tests.fixtures import assert_same_metrics, read_metrics, smoke_config

pytestmark = pytest.mark.e2e  # Runs of the trainer or launch.py (so also slow).


def designs_config():
    """s1 thinks (frozen responder); s2 trains the response with the thinking anchored to the
    policy at s2's start; s3 trains the response under a frozen thinker with the optimizer
    carried and a warmup."""
    c = smoke_config()
    c.algo.kl_coef = 0.0
    c.algo.entropy_coef = 0.01  # A gradient from the first step (the first rewards are equal).
    c.stages = {
        "s1": stage("think", "frozen", steps=2),
        "s2": stage(
            "response", "self", steps=2, kl_coef=0.5, kl_reference="stage_start", kl_scope="think"
        ),
        "s3": stage(
            "response", "self", steps=2, thinker="frozen", carry_optimizer=True, warmup_steps=1
        ),
    }
    c.checkpoint.every = 1
    c.checkpoint.keep = 10
    c.eval.every = 2
    return c


@pytest.fixture(scope="module")
def designs_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("designs"))
    trainer = train.Trainer(designs_config(), workdir)
    summary = trainer.run()
    return trainer, summary


def _params_at(trainer, step):
    ckpt = checkpointing.Checkpointer(os.path.join(trainer.workdir, "checkpoints"), 10)
    target = trainer.states.restore_target(trainer.stage_at(step))
    state, _ = ckpt.restore(step, target, checkpointing.model_fields(trainer.model_config))
    ckpt.close()
    return state


def test_stage_options_reach_the_spec():
    spec = train.RunSpec.from_config(designs_config())
    s1, s2, s3 = spec.stages
    assert (s1.thinker, s1.needs_snapshot, s1.kl_coef, s1.warmup_steps) == ("self", False, 0, 0)
    assert (s3.thinker, s3.carry_optimizer, s3.warmup_steps, s3.needs_snapshot) == (
        "frozen",
        True,
        1,
        True,
    )
    assert (s2.kl_coef, s2.kl_reference, s2.kl_scope, s2.needs_snapshot) == (
        0.5,
        "stage_start",
        "think",
        True,
    )
    loss = s2.train_config(spec.train).loss
    assert (loss.kl_coef, loss.kl_scope) == (0.5, "think")
    assert s1.train_config(spec.train) == spec.train  # Nothing per stage: the run's settings.


def test_frozen_thinker_samples_the_snapshot_and_trains_the_response_only(designs_run):
    trainer, summary = designs_run
    rows = read_metrics(trainer.workdir)
    s3_rows = [r for r in rows if r["stage"] == 2]
    assert [r["step"] for r in s3_rows] == [5, 6]
    for r in s3_rows:
        assert r["mask_think_tokens"] == 0 and r["mask_response_tokens"] > 0, r
        assert r["kl"] == 0.0
    # The stage's snapshot is the policy at its start (the step-4 checkpoint), and its
    # thinking tokens are exactly the snapshot's own samples for the same keys.
    s3 = trainer.stages[2]
    snap = _params_at(trainer, 4).params
    same = jax.tree.map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), summary["thinker_params"], snap
    )
    assert all(jax.tree.leaves(same))
    final = summary["params"]
    moved = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), final, snap)
    assert not all(jax.tree.leaves(moved))  # The policy itself trained on.
    examples = [trainer.train_data[i] for i in range(2)]
    step = 5
    got = jax.device_get(trainer.rollouts(final, examples, step, s3))
    prompts = [p for p in trainer.encode(examples) for _ in range(trainer.spec.group_size)]
    row_ids = np.arange(len(prompts)) + step * len(prompts)
    want = jax.device_get(
        sampling.sample(
            trainer.sampler_config,
            snap,
            prompts,
            trainer.spec.sampling.replace(response_budget=0),
            trainer._key("rollout", step),
            trainer.special,
            row_ids=row_ids,
            mesh=trainer.mesh,
            rules=trainer.rules,
            width=trainer.width - trainer.spec.sampling.response_budget,
            group_size=trainer.spec.group_size,
            compact=trainer.spec.compaction,
        )
    )
    think = got.segment_ids == segments.THINK
    assert think.any()
    # The thinking ends at the same columns: the response is appended after it.
    want_think = want.segment_ids == segments.THINK
    assert (think.sum(1) == want_think.sum(1)).all()
    for i in range(len(prompts)):
        np.testing.assert_array_equal(got.tokens[i][think[i]], want.tokens[i][want_think[i]])
    # The gradient of that stage's loss reaches the response tokens only.
    reward = np.linspace(0.0, 1.0, len(prompts)).astype(np.float32)
    state = trainer.states.fresh(s3, final)
    batch = jax.device_get(trainer.make_batch(state, jax.device_put(got), reward, s3))
    batch = jax.tree.map(jnp.asarray, batch)
    counts = rl.loss_counts(batch, s3.train_config(trainer.spec.train).loss)
    logp = jnp.asarray(np.where(batch.segment_ids > 0, -1.0, 0.0), jnp.float32)
    grad = jax.grad(
        lambda lp: rl.policy_loss_terms(
            lp,
            jnp.zeros_like(lp),
            batch,
            counts,
            s3.train_config(trainer.spec.train).loss,
            on_policy=True,
        )[0]
    )(logp)
    touched = np.asarray(grad) != 0
    assert touched.any()
    assert (np.asarray(batch.segment_ids)[touched] == segments.RESPONSE).all()
    # The trained system is the snapshot thinking and the policy responding: both exported.
    for name in ("export", "export_thinker"):
        assert os.path.isfile(os.path.join(trainer.workdir, name, "config.json"))
    assert summary["export_thinker"] == os.path.join(trainer.workdir, "export_thinker")


def test_stage_start_kl_is_zero_at_the_first_step_and_anchors_the_thinking(designs_run):
    trainer, _ = designs_run
    s2 = [r for r in read_metrics(trainer.workdir) if r["stage"] == 1]
    assert [r["step"] for r in s2] == [3, 4]
    assert abs(s2[0]["kl"]) < 1e-9, s2[0]["kl"]  # The reference is the policy itself.
    assert s2[1]["kl"] > 1e-7, s2[1]["kl"]  # One update later it is not.
    for r in s2:  # The loss trains the response only.
        assert r["mask_think_tokens"] == 0 and r["mask_response_tokens"] > 0
    # The reference of s2 is the policy at s2's start (the step-2 checkpoint), not the
    # initial policy (a resumed run restores it: test_resume_... at step 3).
    ckpt = checkpointing.Checkpointer(os.path.join(trainer.workdir, "checkpoints"), 10)
    snapshot = ckpt.restore_snapshot(3, trainer.states.restore_target(trainer.stages[1]).params)
    ckpt.close()
    same = jax.tree.map(
        lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)),
        snapshot,
        _params_at(trainer, 2).params,
    )
    assert all(jax.tree.leaves(same))


def test_carried_optimizer_state_continues_the_moments():
    tx1, tx2 = rl.make_optimizer(1e-3), rl.make_optimizer(1e-2, warmup_steps=3)
    params = {"w": jnp.ones(3)}
    state = tx1.init(params)
    for _ in range(2):
        _, state = tx1.update({"w": jnp.asarray([0.1, -0.2, 0.3])}, state, params)
    carried = rl.carry_optimizer_state(state, tx2.init(params))
    adam = [
        s
        for s in jax.tree.leaves(carried, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)
    ][0]
    assert int(adam.count) == 2 and float(jnp.abs(adam.mu["w"]).sum()) > 0
    schedule = [
        s
        for s in jax.tree.leaves(carried, is_leaf=lambda x: isinstance(x, rl.LearningRateState))
        if isinstance(s, rl.LearningRateState)
    ][0]
    assert int(schedule.count) == 0  # The new stage's warmup starts at 0...
    assert float(schedule.learning_rate) == np.float32(1e-2)  # ...at the new stage's rate.
    assert int(schedule.warmup_steps) == 3
    # The first update of the new stage reads the carried moments: it differs from a fresh one.
    g = {"w": jnp.asarray([0.1, 0.1, 0.1])}
    tx2b = rl.make_optimizer(1e-2)
    fresh = tx2b.update(g, tx2b.init(params), params)[0]["w"]
    cont = tx2b.update(g, rl.carry_optimizer_state(state, tx2b.init(params)), params)[0]["w"]
    assert not np.allclose(fresh, cont)


@pytest.mark.parametrize("resume_at", [3, 4, 5])
def test_resume_inside_and_at_the_start_of_a_stage_is_exact(designs_run, tmp_path, resume_at):
    """3: inside s2 (its KL reference snapshot from the checkpoint); 4: at s3's start (the
    moments carried from the restored state, the thinker snapshot taken from its policy);
    5: inside s3 (the carried moments and the thinker snapshot from the checkpoint)."""
    trainer, _ = designs_run
    workdir = str(tmp_path / "resumed")
    shutil.copytree(trainer.workdir, workdir)
    for name in os.listdir(os.path.join(workdir, "checkpoints")):
        if name.isdigit() and int(name) > resume_at:
            shutil.rmtree(os.path.join(workdir, "checkpoints", name))
    for name in ("export", "export_thinker"):
        shutil.rmtree(os.path.join(workdir, name))
    resumed = train.Trainer(designs_config(), workdir)
    resumed.run()
    assert_same_metrics(read_metrics(workdir), read_metrics(trainer.workdir))


@pytest.mark.parametrize(
    "name, override, message",
    [
        ("s3", dict(train_segments="joint"), "train_segments='response'"),
        ("s3", dict(responder="frozen"), "responder='self'"),
        ("s3", dict(thinker="both"), "thinker='both'"),
        ("s3", dict(kl_reference="stage_start"), "needs a KL coefficient"),
        ("s2", dict(kl_reference="start"), "kl_reference='start'"),
        ("s2", dict(kl_scope="prompt"), "kl_scope='prompt'"),
        ("s2", dict(kl_coef=-0.5), "kl_coef=-0.5"),
        ("s2", dict(warmup_steps=-2), "warmup_steps=-2"),
    ],
)
def test_bad_stage_options_name_the_field(name, override, message):
    c = designs_config()
    for key, value in override.items():
        c.stages[name][key] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        train.RunSpec.from_config(c)
    assert f"stages.{name}." in str(err.value)


def test_carry_on_the_first_stage_is_an_error():
    c = designs_config()
    c.stages.s1.carry_optimizer = True
    with pytest.raises(ConfigError, match="stages.s1.carry_optimizer=True"):
        train.RunSpec.from_config(c)


def test_stages_that_differ_in_rate_share_one_compiled_update(designs_run):
    trainer, _ = designs_run
    s = trainer.stages[1]
    other = dataclasses.replace(s, learning_rate=0.5, warmup_steps=7)
    assert trainer._step_fn(other) is trainer._step_fn(s)
