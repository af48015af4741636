"""Bad input, as a new user gives it: one clear line naming the field, file or line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from start_jax import sharding, train
from start_jax.errors import ConfigError, TrainingError, UserError
from start_jax.train import loop as loop_module
from start_jax.train import preflight as preflight_module
from start_jax.train import trainer as trainer_module
from tests.fixtures import SMOKE, smoke_config

pytestmark = pytest.mark.e2e  # Runs of the trainer or launch.py (so also slow).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={SMOKE}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _jsonl(tmp_path, text, name="tasks.jsonl"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_launch_ends_with_one_line_naming_the_problem(tmp_path):
    """A refusal as its own launch.py command (the other refusals, with their exact lines,
    run through launch.py's parsing and main in one process: test_launch_refusals.py)."""
    bad = _jsonl(tmp_path, '{"prompt": "a?", "reference": "b"}\n{"prompt": "c?"}\n', "bad.jsonl")
    proc = _launch(
        f"--workdir={tmp_path / 'run'}",
        "--config.data.source=jsonl",
        f"--config.data.train_path={bad}",
        "--config.reward.name=exact_match",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("launch.py: error: "), proc.stderr[-3000:]
    assert f"{bad} line 2: missing field 'reference'" in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_jsonl_run_whose_reward_cannot_judge_it(tmp_path):
    config = smoke_config()
    config.data.source = "jsonl"
    config.data.train_path = _jsonl(tmp_path, '{"prompt": "a?", "reference": "b"}\n')
    for judge in ("synthetic", "synthetic_rubric"):
        config.reward.name = judge
        with pytest.raises(
            ConfigError,
            match=re.escape(
                f"config: reward.name='{judge}' judges only the embedded world's tasks"
            ),
        ):
            train.RunSpec.from_config(config)
    config.reward.name = "exact_match"
    assert train.RunSpec.from_config(config).reward_name == "exact_match"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("algo.minibatches", 3, "config: algo.minibatches=3 must divide the 4 rollouts of a step"),
        ("algo.micro_batches", 0, "config: algo.micro_batches=0 must divide the 4 rollouts"),
        ("sampling.top_p", 0.0, "config: sampling.top_p must be in (0, 1], got 0.0"),
    ],
)
def test_more_bad_numbers_name_the_field(field, value, message):
    config = smoke_config()
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        train.RunSpec.from_config(config)


def test_dimension_that_does_not_divide_its_mesh_axis():
    mesh = sharding.make_mesh(fsdp=8)
    rules = sharding.ShardingRules()
    with pytest.raises(
        sharding.ShardingError,
        match=re.escape(
            "dimension 0 (batch, size 4) of an array with axes ('batch', None) does not divide "
            "over mesh axes ('data', 'fsdp') of size 8; change the mesh (--config.mesh.*) or "
            "allow replication (--config.mesh.replicate_uneven=True)"
        ),
    ):
        rules.spec(("batch", None), (4, 3), mesh)
    assert isinstance(sharding.ShardingError("x"), UserError)
    replicate = sharding.ShardingRules(replicate_uneven=True)
    assert replicate.spec(("batch", None), (4, 3), mesh) == jax.sharding.PartitionSpec(None, None)
    assert rules.spec(("batch", None), (16, 3), mesh) == jax.sharding.PartitionSpec(
        ("data", "fsdp"), None
    )


def test_run_whose_batch_does_not_divide_the_mesh(tmp_path):
    config = smoke_config()
    config.mesh.replicate_uneven = False  # 4 rollouts a step over 8 devices.
    config.sft.steps = 0
    trainer = train.Trainer(config, str(tmp_path))
    with pytest.raises(sharding.ShardingError, match=r"\(batch, size 4\)"):
        trainer.run()


def test_exploding_updates_stop_the_run_naming_the_learning_rate(tmp_path):
    config = smoke_config()
    config.stages.s1.learning_rate = 1e8
    # A gradient to scale: the smoke run's first rewards are equal (no advantage) and its
    # KL term is 0 at the reference, so the entropy bonus gives the update its direction.
    config.algo.entropy_coef = 0.01
    config.checkpoint.every = 1
    trainer = train.Trainer(config, str(tmp_path))
    with pytest.raises(
        TrainingError,
        match=r"step 0: the update exploded \(its norm .* of the "
        r"parameter norm .*\); lower stages.s1.learning_rate \(now 1e\+08\)",
    ):
        trainer.run()
    assert not os.path.isdir(os.path.join(trainer.workdir, "checkpoints", "1"))


def test_health_check_thresholds():
    stage = train.StageSpec("s3", "think", "self", 4, 1e-3, 0)
    ok = dict(l2_updates=0.4, l2_params=30.0, l2_grads=0.2, adv_nonzero_frac=0.5)
    trainer_module.check_health(ok, 7, stage)
    trainer_module.check_health(dict(ok, l2_grads=0.0, adv_nonzero_frac=0.0), 7, stage)
    with pytest.raises(TrainingError, match="step 7: the update exploded"):
        trainer_module.check_health(dict(ok, l2_updates=20.0), 7, stage)
    with pytest.raises(
        TrainingError,
        match=r"step 7: the gradients collapsed to 0 although 50% "
        r"of the advantages are not 0 .*; lower stages.s3.learning_rate",
    ):
        trainer_module.check_health(dict(ok, l2_grads=0.0), 7, stage)


def test_sigterm_handler_off_the_main_thread_says_so(caplog):
    caplog.set_level("WARNING")
    seen = []

    def worker():
        with loop_module._SigtermFlag() as flag:
            seen.append(flag)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen and "SIGTERM will not save a checkpoint" in caplog.text


def test_rl_step_makes_no_implicit_transfer(tmp_path):
    """One RL step with jax_transfer_guard='disallow': every host<->device copy is explicit."""
    config = smoke_config()
    config.sft.steps = 0
    trainer = train.Trainer(config, str(tmp_path))
    stage = trainer.stages[0]
    examples = [trainer.train_data[i] for i in range(config.data.prompts_per_step)]
    state = trainer.states.fresh(stage, trainer.init_params)
    for step in range(3):  # The first step builds and compiles; the next two run guarded.
        with jax.transfer_guard("disallow" if step else "allow"):
            state, host, _, _, metrics, _ = trainer.rl_step(state, examples, step, stage)
        assert np.isfinite(metrics["loss"])
    assert host.tokens.shape == (4, trainer.width)


def test_options_the_run_does_not_read_are_named():
    config = smoke_config()
    assert preflight_module.ignored_options(train.RunSpec.from_config(config)) == []
    config.init_checkpoint = "/some/checkpoint"
    config.tokenizer = "world"
    config.sft.steps = 50
    config.algo.critic_learning_rate = 5e-4
    assert preflight_module.ignored_options(train.RunSpec.from_config(config)) == [
        "sft.steps, sft.batch_size, sft.examples set, but a run from init_checkpoint trains no "
        "cold-start SFT unless sft.from_checkpoint=True: ignored",
        "algo.critic_learning_rate set, but algo.advantage='grpo' trains no critic: ignored",
    ]
    config.sft.from_checkpoint = True  # Now the SFT settings are read.
    assert preflight_module.ignored_options(train.RunSpec.from_config(config)) == [
        "algo.critic_learning_rate set, but algo.advantage='grpo' trains no critic: ignored"
    ]
    config.sft.steps = 0
    assert "sft.from_checkpoint set with sft.steps=0: no SFT step runs" in " ".join(
        preflight_module.ignored_options(train.RunSpec.from_config(config))
    )
    config.init_checkpoint = ""
    assert (
        "sft.from_checkpoint set without init_checkpoint (a random init always trains "
        "its cold start): ignored"
    ) in preflight_module.ignored_options(train.RunSpec.from_config(config))
