"""The trainer end to end: stages, resume after SIGKILL/SIGTERM, outputs and bad inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import optax
import pytest

from start_jax import checkpoints, rewards, rl, segments, train
from start_jax.train import checkpointing
from start_jax.train import trainer as trainer_module
from tests.fixtures import ROOT, SMOKE, assert_same_metrics, read_metrics, smoke_config
from tests.xla_flags import device_flags

pytestmark = pytest.mark.e2e  # Runs of the trainer or launch.py (so also slow).


# The smoke run's first rewards are all equal, so its policy gradient is 0 there; an
# entropy bonus gives every update a direction (the policy must move to be checked).
ENTROPY = 0.01


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One in-process smoke run with an entropy bonus: (trainer, summary, initial params)."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = smoke_config()
    config.algo.entropy_coef = ENTROPY
    trainer = train.Trainer(config, workdir)
    init = jax.tree.map(np.array, trainer.init_params)
    summary = trainer.run()
    return trainer, summary, init


def test_each_stage_trains_only_its_segments(finished_run):
    trainer, _, _ = finished_run
    rows = read_metrics(trainer.workdir)
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:
        if r["stage"] == 0:  # think
            assert r["mask_think_tokens"] > 0 and r["mask_response_tokens"] == 0
        else:  # response
            assert r["mask_response_tokens"] > 0 and r["mask_think_tokens"] == 0
        assert r["mask_other_tokens"] == 0
        # The policy sampled what it trains (the thinking, with a frozen responder, too),
        # sampler and trainer both in float32.
        assert r["logprob_mismatch_max"] < 1e-4, r
    assert "eval/reward" in rows[2] and "eval/reward" in rows[5]


def test_update_skips_the_head_on_prompt_columns_only(finished_run):
    """`TrainConfig.logprob_start` is the first decoded column of every rollout shape the
    trainer samples: nothing sampled lies before it, and the first thinking token at it."""
    trainer, _, _ = finished_run
    start = trainer.spec.train.logprob_start
    assert (
        start
        == trainer.width
        - (trainer.spec.sampling.think_budget + 1 + trainer.spec.sampling.response_budget)
        > 0
    )
    examples = [trainer.train_data[i] for i in range(2)]
    for stage in trainer.spec.stages:  # A frozen responder (s1), then the policy's own.
        rollout = jax.device_get(trainer.rollouts(trainer.init_params, examples, 0, stage))
        assert rollout.tokens.shape[1] == trainer.width
        assert not rollout.sampled[:, :start].any(), stage
        assert rollout.sampled[:, start].all(), stage


def test_update_length_groups_follow_the_rollout_and_the_mesh(finished_run):
    trainer, _, _ = finished_run
    width, start = trainer.width, trainer.spec.train.logprob_start
    assert trainer.spec.train.length_groups == 2

    def host(rows):
        seg = np.zeros((rows, width), np.int32)
        for i in range(rows):  # Half the rows end right after their first token.
            seg[i, start - 5 : start + 1 if i % 2 else width] = segments.THINK
        return types.SimpleNamespace(segment_ids=seg)

    widths = trainer.widths_of(host(16))  # 2 groups of 8 rows over 8 devices.
    assert widths == rl.length_widths(host(16).segment_ids, 2, start)
    assert len(widths) == 2 and widths[0] < width and widths[1] == width
    assert trainer.widths_of(host(4)) is None  # 2 rows a group do not split over 8 devices.


def test_frozen_responder_and_reference_are_unchanged(finished_run):
    trainer, summary, init = finished_run
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(trainer.init_params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    changed = [
        not np.array_equal(a, np.asarray(b))
        for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(summary["params"]))
    ]
    assert any(changed), "the policy did not train"


def test_outputs_are_written_and_readable(finished_run):
    trainer, summary, _ = finished_run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(trainer.workdir, "tensorboard"))
    acc.Reload()
    assert "reward_mean" in acc.Tags()["scalars"]
    events = acc.Scalars("reward_mean")
    assert [e.step for e in events] == list(range(1, 7))
    metrics = read_metrics(trainer.workdir)
    np.testing.assert_allclose(
        [e.value for e in events], [m["reward_mean"] for m in metrics], rtol=1e-6
    )
    with open(os.path.join(trainer.workdir, "samples.jsonl")) as fh:
        samples = [json.loads(line) for line in fh]
    assert {"prompt", "thinking", "response", "reward", "step"} <= set(samples[0])
    # One step numbering in every log: samples of the step metrics.jsonl calls 1, 3, 5.
    assert sorted({s["step"] for s in samples}) == [1, 3, 5]
    assert {s["step"] for s in samples} <= {m["step"] for m in metrics}
    config, _ = checkpoints.load_pretrained(summary["export"])
    assert config.hidden_size == 32


def test_behaviour_rates_are_logged_every_step_and_shown(finished_run, capsys):
    trainer, summary, _ = finished_run
    metrics = read_metrics(trainer.workdir)
    for m in metrics:
        families = {k.split("/")[1] for k in m if k.startswith("behaviour/")}
        assert families, m
        for fam in families:
            think = [v for k, v in m.items() if k.startswith(f"behaviour/{fam}/think_")]
            response = [v for k, v in m.items() if k.startswith(f"behaviour/{fam}/response_")]
            assert sum(think) == pytest.approx(1.0) and sum(response) == pytest.approx(1.0)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(trainer.workdir, "tensorboard"))
    acc.Reload()
    assert any(t.startswith("behaviour/") for t in acc.Tags()["scalars"])
    trainer_module.print_summary(trainer, summary)
    table = capsys.readouterr().out
    assert "train reward (first 3 -> last 3 steps)" in table
    assert re.search(r"(facts|arith): complete thinking +\d\.\d{3} -> \d\.\d{3}", table), table


def _launch(workdir, *extra):
    env = dict(
        os.environ,
        XLA_FLAGS=device_flags(8),  # As the in-process reference: the same programs.
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",  # A killed run's output up to the kill can be read.
    )
    return subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "launch.py"),
            f"--config={SMOKE}",
            f"--workdir={workdir}",
            f"--config.algo.entropy_coef={ENTROPY}",  # As `finished_run`.
            "--config.log.progress=True",  # As a plain run (the smoke config turns it off).
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_step(proc, workdir, step, timeout=240):
    path = os.path.join(workdir, "metrics.jsonl")
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early:\n{proc.stdout.read()}")
        if os.path.exists(path):
            with open(path) as fh:
                steps = [json.loads(line)["step"] for line in fh if line.strip()]
            if steps and steps[-1] >= step:
                return steps[-1]
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _quiet(out: str) -> None:
    """A run's output is its progress bar, stage lines and table: no library log lines
    (absl's "W1202 16:16:24.372290 ..."), INFO lines or tfds download messages."""
    noisy = [
        line
        for line in out.splitlines()
        if re.match(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", line) or "INFO" in line or "Downloading" in line
    ]
    assert not noisy, noisy


def test_resume_after_sigkill_and_sigterm_reproduces_every_metric(tmp_path, finished_run):
    """Three launch.py runs of one workdir: killed (SIGKILL) between checkpoints, stopped
    by SIGTERM, then resumed to the end. The metrics equal the uninterrupted run's, and
    each run prints only its progress bar, stage lines and table."""
    reference = finished_run[0].workdir  # The same config, uninterrupted (in-process).

    workdir = str(tmp_path / "interrupted")
    # The same cold start as the reference's, reused (the runs train from it).
    shutil.copytree(os.path.join(reference, "init_policy"), os.path.join(workdir, "init_policy"))
    proc = _launch(workdir)
    seen = _wait_for_step(proc, workdir, 3)  # Checkpoints are at steps 2, 4 and 6.
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0]
    assert seen in (3,), f"killed after step {seen}, not between checkpoints"
    assert "stage s1 (1/2): train think, frozen responder, steps 0-3, lr 0.001" in out, out
    assert re.search(r"rl: +\d+%.*\| *[0-3]/6", out), out[-3000:]  # The progress bar.
    _quiet(out)

    proc = _launch(workdir)
    _wait_for_step(proc, workdir, 4)
    proc.send_signal(signal.SIGTERM)
    out = _finish(proc)
    assert "stopped by SIGTERM" in out
    saved = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step()
    assert saved is not None and saved >= 4

    out = _finish(_launch(workdir))
    assert f"resuming from step {saved}" in out
    resumed = ", resumed" if saved > 4 else ""  # Stage s2 starts at step 4.
    assert f"stage s2 (2/2{resumed}): train response, self responder, steps 4-5, lr 0.001" in out, (
        out
    )
    assert re.search(r"rl: 100%.*6/6", out), out[-3000:]
    assert re.search(r"train reward \(first 3 -> last 3 steps\)\s+\d", out), out
    assert "wall time" in out
    _quiet(out)
    assert_same_metrics(read_metrics(workdir), read_metrics(reference))


# ------------------------------------------------------------ bad inputs


def test_unknown_config_key_names_it():
    config = smoke_config()
    config.algo.learning_rat = 1.0
    with pytest.raises(
        ValueError,
        match=re.escape("config: unknown key 'algo.learning_rat' (known keys under 'algo': "),
    ):
        train.validate(config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("algo.group_size", 0, "config: algo.group_size=0 must be an integer >= 1"),
        (
            "algo.group_size",
            1,
            "config: algo.group_size=1 with algo.advantage='grpo' makes every advantage 0",
        ),
        ("data.prompts_per_step", 0, "config: data.prompts_per_step=0 must be an integer >= 1"),
        ("stages.s1.steps", -3, "config: stages.s1.steps=-3 must be an integer >= 0"),
        (
            "stages.s2.learning_rate",
            float("inf"),
            "config: stages.s2.learning_rate=inf must be a finite number > 0",
        ),
    ],
)
def test_bad_numbers_name_the_field(field, value, message):
    config = smoke_config()
    section, *rest = field.split(".")
    target = config[section]
    for key in rest[:-1]:
        target = target[key]
    target[rest[-1]] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        train.validate(config)


def test_stages_run_in_natural_order():
    config = smoke_config()
    config.stages = {"s10": train.stage("response", steps=1), "s2": train.stage("think", steps=2)}
    spec = train.RunSpec.from_config(config)
    assert [s.name for s in spec.stages] == ["s2", "s10"]
    assert [s.start for s in spec.stages] == [0, 2]


def test_the_run_report_is_one_well_formed_page_with_its_figures(finished_run, tmp_path):
    """`python -m experiments.report`: the curves as embedded PNGs, the table, and the
    written samples with prompt, thinking and response apart."""
    import base64
    import html.parser

    from experiments import report

    trainer = finished_run[0]
    path = report.main([f"--workdir={trainer.workdir}", f"--out={tmp_path / 'r.html'}"])
    page = open(path).read()

    class Check(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.open, self.images, self.classes = [], [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img":
                self.images.append(attrs["src"])
            elif tag not in ("meta", "br"):
                self.open.append(tag)
                self.classes.append(attrs.get("class"))

        def handle_endtag(self, tag):
            assert self.open and self.open.pop() == tag, (tag, self.open)

    check = Check()
    check.feed(page)
    assert not check.open  # Every element closed, in order.
    assert len(check.images) == 4  # Rewards, lengths, budget hits, behaviour rates.
    for src in check.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    samples = [json.loads(line) for line in open(os.path.join(trainer.workdir, "samples.jsonl"))]
    assert check.classes.count("sample") == 6 and check.classes.count("thinking") == 6
    assert html.escape(samples[-1]["prompt"]) in page
    assert "<td>reward_mean</td>" in page and "<td>eval/reward</td>" in page
    with pytest.raises(SystemExit):
        report.main([f"--workdir={tmp_path}"])
    # A run with a gold reward: its gap gets a figure of its own.
    gold = tmp_path / "gold"
    gold.mkdir()
    with open(gold / "metrics.jsonl", "w") as fh:
        for step in (1, 2):
            row = {"step": step, "stage": 0, "reward_mean": 0.5, "eval/gold_reward": 0.3}
            fh.write(json.dumps({**row, "eval/gold_gap": 0.2 * step}) + "\n")
    page = open(report.main([f"--workdir={gold}"])).read()
    assert '<img alt="Training minus gold reward (evaluations)"' in page
    assert "<td>eval/gold_gap</td>" in page


def test_the_gold_reward_judges_the_evaluations_own_rollouts(finished_run, monkeypatch):
    """`eval.gold_reward`: scored on exactly the rows the training reward scored, logged
    beside it with the gap."""
    trainer, summary, _ = finished_run
    seen = {}

    def recording(name, fn):
        def call(inputs):
            seen[name] = [(x.prompt, x.response, x.reference) for x in inputs]
            return fn(inputs)

        return call

    monkeypatch.setattr(trainer, "reward_fn", recording("train", trainer.reward_fn))
    monkeypatch.setattr(trainer, "gold_fn", recording("gold", rewards.make("synthetic_correct")))
    out = trainer.evaluate(summary["params"], 6)
    assert seen["gold"] == seen["train"] and len(seen["gold"]) == trainer.spec.eval.prompts
    assert 0.0 <= out["eval/gold_reward"] <= 1.0
    assert out["eval/gold_gap"] == pytest.approx(out["eval/reward"] - out["eval/gold_reward"])


def test_ten_stage_schedule_runs_its_stages_in_order(tmp_path, finished_run):
    """Stages s1..s10, declared out of order, run in natural order (s2 before s10), each
    mask mode with each responder, with LoRA, dynamic sampling, length shaping, truncated
    importance sampling and off-policy masking on (`test_budget_modes` has the rows
    stopped at their thinking budget). Each step's reward is the task's plus the logged
    length terms, the per-segment metrics read 0 for a segment the stage does not train;
    the base (the reference and frozen responder) never changes, checkpoints hold the
    adapters, the export is the base with the adapters merged, and a run resumed from its
    middle checkpoint reproduces every metric."""
    config = smoke_config()
    config.sampling.dynamic_rounds = 1
    config.shaping.think_overlong_buffer = 4  # Of the smoke run's thinking budget of 8.
    config.shaping.response_overlong_buffer = 2  # Of its response budget of 4.
    config.shaping.think_target, config.shaping.think_target_coef = 3, 0.1
    config.algo.token_mask_low, config.algo.token_mask_high = 0.5, 2.0
    config.algo.seq_mask_low, config.algo.seq_mask_high = 0.5, 2.0
    config.algo.tis_cap = 2.0
    config.lora.rank, config.lora.alpha = 4, 8.0
    config.algo.entropy_coef = ENTROPY  # Every update moves the adapters.
    order = [f"s{i}" for i in range(1, 11)]
    modes = ["think", "response", "joint"]
    # Stage i: mode i % 3, frozen responder on odd i: all six pairs.
    config.stages = {
        name: train.stage(modes[i % 3], ("self", "frozen")[i % 2], steps=1, learning_rate=1e-3)
        for i, name in sorted(enumerate(order), key=lambda x: x[1])
    }
    assert list(config.stages.keys())[:3] == ["s1", "s10", "s2"]  # Declared in string order.
    config.eval.every = 0
    config.log.samples_every = 0
    config.checkpoint.every, config.checkpoint.keep = 5, 2
    # The smoke run's cold start, reused (the session shares the data sets: tests/conftest.py).
    shutil.copytree(
        os.path.join(finished_run[0].workdir, "init_policy"), tmp_path / "run" / "init_policy"
    )
    trainer = train.Trainer(config, str(tmp_path / "run"))
    trainer.run()
    rows = read_metrics(trainer.workdir)
    assert [trainer.stages[int(r["stage"])].name for r in rows] == order
    # Each stage trained its own segments: think-only stages have no response tokens in the mask.
    for r, name in zip(rows, order):
        mode = modes[order.index(name) % 3]
        assert (r["mask_response_tokens"] == 0) == (mode == "think"), (name, r)
        assert (r["mask_think_tokens"] == 0) == (mode == "response"), (name, r)
        terms = ("think_overlong", "response_overlong", "think_target")
        assert all(-1.0 <= r[f"reward/{t}"] <= 0.0 for t in terms), r
        shaped = r["reward/task"] + sum(r[f"reward/{t}"] for t in terms)
        assert r["reward_mean"] == pytest.approx(shaped, abs=1e-5), r
        assert (r["response/entropy"] == 0) == (mode == "think"), (name, r)
        assert (r["think/entropy"] == 0) == (mode == "response"), (name, r)
        assert r["dynamic/rounds"] in (0, 1) and 0 <= r["dynamic/uninformative_frac"] <= 1, r
        assert r["dynamic/extra_rollouts"] == 4 * r["dynamic/rounds"], r
        assert 0 <= r["token_masked_frac"] <= 1 and 0 <= r["seq_masked_frac"] <= 1, r
    assert any(r["dynamic/rounds"] for r in rows), rows  # Some step sampled again.
    # LoRA: the base is unchanged, the checkpoint holds the adapters (A and B of each of
    # the 7 kernels), and the export is the base with them merged.
    base = finished_run[2]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.init_params), base)
    assert all(r["l2_updates"] > 0 for r in rows), rows
    state = checkpointing.Checkpointer(os.path.join(trainer.workdir, "checkpoints")).restore(
        10,
        trainer.states.restore_target(trainer.stages[-1]),
        checkpointing.model_fields(trainer.model_config),
    )[0]
    names = sorted(k for m in state.params["layers"].values() for k in m)
    assert len(names) == 14 and all("_lora_" in n for n in names), names
    exported = jax.device_get(
        checkpoints.load_pretrained(os.path.join(trainer.workdir, "export"))[1]
    )
    merged = jax.device_get(trainer.full_params(state.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), exported, merged)
    kernels = ("q_proj", "k_proj", "v_proj", "o_proj")
    attn = base["layers"]["attn"]
    assert not any(np.array_equal(exported["layers"]["attn"][k], attn[k]) for k in kernels)
    np.testing.assert_array_equal(exported["embed"]["embedding"], base["embed"]["embedding"])
    # Resumed from step 5 (its checkpoint and data position), the same ten steps.
    resumed = tmp_path / "resumed"
    shutil.copytree(trainer.workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "10")
    train.Trainer(config, str(resumed)).run()
    assert_same_metrics(read_metrics(str(resumed)), rows)


def test_unknown_algorithm_and_reward_names(tmp_path):
    config = smoke_config()
    config.algo.advantage = "ppo"
    with pytest.raises(
        ValueError,
        match=re.escape(
            "config: algo.advantage='ppo' is not one of ['gae', 'grpo', 'reinforce_pp', 'rloo']"
        ),
    ):
        train.validate(config)
    config = smoke_config()
    config.reward.name = "no_such_reward"
    with pytest.raises(
        ValueError, match=re.escape("unknown reward 'no_such_reward'; registered: [")
    ):
        train.Trainer(config, str(tmp_path))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a?", "reference": "b"}\n{"prompt": "c?"}\n')
    config = smoke_config()
    config.data.source = "jsonl"
    config.data.train_path = str(path)
    config.reward.name = "exact_match"
    with pytest.raises(ValueError, match=re.escape(f"{path} line 2: missing field 'reference'")):
        train.Trainer(config, str(tmp_path / "run"))


def test_prompt_longer_than_context(tmp_path):
    config = smoke_config()
    config.data.max_prompt_tokens = 5
    trainer = train.Trainer(config, str(tmp_path))
    with pytest.raises(
        ValueError,
        match=r"prompt has \d+ tokens, more than "
        r"data.max_prompt_tokens=5: ",
    ):
        trainer.run()


def test_checkpoint_from_a_different_model(tmp_path, finished_run):
    trainer, _, _ = finished_run
    ckpt = checkpointing.Checkpointer(os.path.join(trainer.workdir, "checkpoints"))
    fields = dict(checkpointing.model_fields(trainer.model_config), hidden_size=48)
    target = trainer.states.fresh(trainer.stages[0], trainer.init_params)
    with pytest.raises(
        checkpointing.CheckpointMismatch,
        match=re.escape(
            f"checkpoint {trainer.workdir}/checkpoints/6 was written for a different model "
            "(hidden_size: checkpoint 32 != config 48)"
        ),
    ):
        ckpt.restore(6, target, fields)
    # The same through the trainer: a workdir made for another model shape.
    config = smoke_config()
    config.model.hidden_size = 48
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{trainer.workdir}/init_policy was made for a different model (hidden_size: 32 != 48)"
        ),
    ):
        train.Trainer(config, trainer.workdir)


def test_cached_initial_policy_from_another_cold_start(finished_run):
    trainer, _, _ = finished_run
    config = smoke_config()
    config.sft.mixture.styled = 0.9
    with pytest.raises(
        ValueError,
        match=re.escape(f"{trainer.workdir}/init_policy was made by another cold start (mixture: "),
    ):
        train.Trainer(config, trainer.workdir)


def test_bad_mixture_names_the_field(tmp_path):
    config = smoke_config()
    config.sft.mixture.guess = -1.0
    with pytest.raises(ValueError, match=re.escape("config: sft.mixture: guess=-1.0 must be")):
        train.Trainer(config, str(tmp_path / "run"))


def test_tokenizer_without_think_tags(tmp_path):
    import tokenizers
    from tokenizers import models as tmodels

    tok = tokenizers.Tokenizer(tmodels.WordLevel({"a": 0, "b": 1, "<eos>": 2}, unk_token="a"))
    tok.add_special_tokens(["<eos>"])
    d = tmp_path / "tok"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    config = smoke_config()
    config.tokenizer = str(d)
    with pytest.raises(
        ValueError, match=re.escape(f"tokenizer {d / 'tokenizer.json'} has no token '<think>'")
    ):
        train.Trainer(config, str(tmp_path / "run"))


def test_packed_rows_give_the_padded_update(finished_run, tmp_path):
    """`algo.pack_rows`: the trainer packs a step's rollouts into fewer rows; its update
    equals the plain update of the same padded batch (token-mean, KL and entropy terms)."""
    config = smoke_config()
    config.algo.entropy_coef = ENTROPY
    config.algo.pack_rows = True
    shutil.copytree(
        os.path.join(finished_run[0].workdir, "init_policy"), tmp_path / "run" / "init_policy"
    )
    trainer = train.Trainer(config, str(tmp_path / "run"))
    stage = trainer.stages[0]
    examples = [trainer.train_data[i] for i in range(config.data.prompts_per_step)]
    fresh = lambda: trainer.states.fresh(stage, trainer.init_params, None)  # noqa: E731
    got = trainer.rl_step(fresh(), examples, 0, stage)
    rows = trainer.spec.rows
    assert got.batch.documents is not None and got.batch.tokens.shape[0] < rows
    assert got.metrics["packing/rows"] == got.batch.tokens.shape[0]
    real = int((got.host.segment_ids != segments.PAD).sum())
    assert got.metrics["packing/fill"] == pytest.approx(real / got.batch.documents.size)
    # The reference: the plain update on the padded batch of the same rollouts. The loss
    # terms must agree; so must the gradients, compared through plain SGD at a rate of 1e4
    # (the change is the gradient, large enough to stand above the parameters' float32
    # spacing; Adam's first step, g / (|g| + eps), magnifies rounding where g is near 0).
    padded = trainer.make_batch(fresh(), got.host, got.reward, stage)
    train_config = stage.train_config(trainer.train_config)
    plain = dataclasses.replace(train_config, pack_rows=False)
    sgd = optax.sgd(1e4)
    gradients, metrics = [], []
    unmasked = got.batch.replace(documents=None)  # Packed rows seen as plain rows.
    for config, batch in ((plain, padded), (train_config, got.batch), (plain, unmasked)):
        state = rl.init_state(jax.tree.map(np.array, trainer.init_params), sgd)
        new, m = rl.jit_train_step(trainer.model_config, config, sgd)(
            state, batch, jax.random.key(0)
        )
        gradients.append(jax.tree.map(lambda a, b: np.asarray(a) - b, new.params, state.params))
        metrics.append(m)
    for key in ("loss", "pg_loss", "kl", "entropy", "reward_mean", "mask_think_tokens"):
        want = float(metrics[0][key])  # The trainer's own packed step (Adam) has the same terms.
        assert got.metrics[key] == pytest.approx(want, rel=1e-5, abs=1e-7), key
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(gradients[0]))
    assert scale > 1e-2  # The entropy bonus moves the policy (its rewards may all be equal).
    for a, b in zip(*(jax.tree.leaves(g) for g in gradients[:2])):
        np.testing.assert_allclose(a, b, atol=1e-4 * scale)  # Float rounding of the largest.
    # Without the documents' masks and positions the same rows give another gradient.
    wrong = max(float(np.abs(a - b).max()) for a, b in zip(*map(jax.tree.leaves, gradients[::2])))
    assert wrong > 1e-2 * scale, wrong / scale
