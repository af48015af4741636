"""Bad inputs through launch.py: each refused before any work with one line (exit 2).

The cases run through launch.py's own flag parsing and `main` in one child process (one
jax import for all of them); `tests/test_bad_input.py` runs one as a separate command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from start_jax import models
from tests.fixtures import SMOKE

pytestmark = pytest.mark.e2e  # Runs of the trainer or launch.py (so also slow).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The child: runs every case as `launch.py` would (flags parsed from the default state,
# then main), and reports (exit status, stderr, traceback) per case as JSON.
DRIVER = r"""
import contextlib, io, json, os, sys, traceback
cases = json.load(open(sys.argv[1]))
sys.argv = ["launch.py"]
import hashlib
import launch
from absl import flags

def digest(path):
    files = {}
    for root, _, names in os.walk(path):
        for n in names:
            full = os.path.join(root, n)
            files[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    return files


out = {}
for name, args in cases.items():
    if name.startswith("cut:"):          # Cut a file short, as a killed writer leaves it.
        with open(args, "r+b") as fh:
            fh.truncate(max(1, os.path.getsize(args) // 2))
        continue
    if not any(a.startswith("--config=") for a in args):
        # Named, so that the config flag is parsed again (with its overrides) in every case.
        args = ["--config=" + launch.DEFAULT_CONFIG] + args
    sys.argv = ["launch.py"] + args      # The config flag reads its overrides from sys.argv.
    for flag in [f for f in flags.FLAGS if f.startswith("config.")]:
        delattr(flags.FLAGS, flag)       # Each case's overrides are defined by its own parse.
    flags.FLAGS.unparse_flags()
    err = io.StringIO()
    code, tb = 0, ""
    stdout = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
        try:
            argv = launch._parse_flags(["launch.py"] + args)
            launch.main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            code, tb = -1, traceback.format_exc()
    workdir = [a.split("=", 1)[1] for a in args if a.startswith("--workdir=")]
    out[name] = {"code": code, "stderr": err.getvalue(), "traceback": tb,
                 "stdout": stdout.getvalue()[-2000:],
                 "digest": digest(workdir[0]) if workdir and os.path.isdir(workdir[0]) else None}
print(json.dumps(out))
"""


def _files(tmp):
    """Bad files of every kind, made in `tmp`."""

    def write(name, data):
        path = os.path.join(tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        return path

    f = {
        "good": write("good.jsonl", '{"prompt": "a?", "reference": "b"}\n'),
        "latin1": write("latin1.jsonl", b'{"prompt": "caf\xe9?", "reference": "b"}\n'),
        "not_json": write("not_json.jsonl", '{"prompt": "a?", "reference": "b"}\n{oops\n'),
        "no_reference": write("no_ref.jsonl", '{"prompt": "a?"}\n'),
        "empty": write("empty.jsonl", ""),
        "file_workdir": write("a_file", "x"),
        "no_get_config": write("cfg/no_get.py", "x = 1\n"),
        "syntax": write("cfg/syntax.py", "def get_config(:\n"),
        "raises": write("cfg/raises.py", "def get_config():\n    raise RuntimeError('boom')\n"),
        # A reward registered by the config file itself (the file is loaded more than once).
        "own_reward": write(
            "cfg/own_reward.py",
            (
                "from start_jax import rewards\n"
                "from start_jax.train.config import default_config\n\n\n"
                "@rewards.register('always_one')\n"
                "def always_one(**kwargs):\n"
                "    return lambda inputs: [1.0] * len(inputs)\n\n\n"
                "def get_config():\n"
                "    c = default_config()\n"
                "    c.reward.name = 'always_one'\n"
                "    return c\n"
            ),
        ),
        "tok_cut": write("tok_cut/tokenizer.json", '{"model": {"vocab": {"a": 1'),
        "ckpt_cut": write("ckpt_cut/config.json", '{"model_type": "qwen3", "hidden'),
        "ckpt_gpt2": write("ckpt_gpt2/config.json", json.dumps({"model_type": "gpt2"})),
        "ckpt_short": write(
            "ckpt_short/config.json",
            json.dumps(models.tiny_config(64, max_position_embeddings=16).to_hf_dict()),
        ),
    }
    write("tok_cut/tokenizer_config.json", "{}")
    return {
        k: v if not k.startswith(("tok_", "ckpt_")) else os.path.dirname(v) for k, v in f.items()
    }


def _cases(f, tmp):
    jsonl = ["--config.data.source=jsonl", "--config.reward.name=exact_match"]
    c = "--config."
    # (name, args, what the one line must mention)
    return [
        (
            "unknown_field",
            [c + "x.y=1"],
            "--config.x.y: unknown config field 'x' (known keys at the top level: algo, ",
        ),
        (
            "unknown_nested",
            [c + "algo.foo=1"],
            "--config.algo.foo: unknown config field 'algo.foo' (known keys under 'algo': "
            "advantage, ",
        ),
        ("bad_value_type", [c + "algo.group_size=two"], "--config.algo.group_size"),
        (
            "group_size_0",
            [c + "algo.group_size=0"],
            "config: algo.group_size=0 must be an integer >= 1",
        ),
        ("group_size_1_grpo", [c + "algo.group_size=1"], "algo.group_size=1"),
        ("advantage", [c + "algo.advantage=ppo2"], "algo.advantage='ppo2'"),
        ("policy_loss", [c + "algo.policy_loss=x"], "algo.policy_loss='x'"),
        ("aggregation", [c + "algo.aggregation=x"], "algo.aggregation='x'"),
        ("kl_estimator", [c + "algo.kl_estimator=k9"], "algo.kl_estimator='k9'"),
        ("tis_cap", [c + "algo.tis_cap=-1"], "algo.tis_cap=-1"),
        ("minibatches", [c + "algo.minibatches=7"], "algo.minibatches=7"),
        ("micro_batches", [c + "algo.micro_batches=0"], "algo.micro_batches=0"),
        ("length_groups", [c + "algo.length_groups=0"], "algo.length_groups=0"),
        (
            "pack_rows_seq_mean",
            [c + "algo.pack_rows=True", c + "algo.aggregation=seq-mean-token-mean"],
            "config: algo.pack_rows=True: packed rows (batch.documents) count tokens, not rows:"
            " aggregation='seq-mean-token-mean' (needs 'token-mean')",
        ),
        (
            "pack_rows_gspo",
            [c + "algo.pack_rows=True", c + "algo.policy_loss=gspo"],
            "policy_loss='gspo' (a sequence ratio)",
        ),
        ("prompts_per_step", [c + "data.prompts_per_step=0"], "data.prompts_per_step=0"),
        ("data_source", [c + "data.source=csv"], "data.source='csv'"),
        ("top_p", [c + "sampling.top_p=0.0"], "sampling.top_p"),
        ("temperature", [c + "sampling.temperature=-1.0"], "sampling.temperature"),
        ("sampling_dtype", [c + "sampling.dtype=fp8"], "sampling.dtype='fp8'"),
        ("compact", [c + "sampling.compact_min_rows=0"], "sampling.compact_min_rows"),
        ("response_budget", [c + "sampling.response_budget=0"], "sampling.response_budget=0"),
        (
            "think_budget_think_stage",
            [c + "sampling.think_budget=0"],
            "stages.s1.train_segments='think' with sampling.think_budget=0",
        ),
        ("checkpoint_every", [c + "checkpoint.every=0"], "checkpoint.every=0"),
        ("checkpoint_keep", [c + "checkpoint.keep=0"], "checkpoint.keep=0"),
        ("eval_prompts", [c + "eval.prompts=0"], "eval.prompts=0"),
        ("eval_every", [c + "eval.every=-1"], "eval.every=-1"),
        (
            "all_stages_empty",
            [c + "stages.s1.steps=0", c + "stages.s2.steps=0"],
            "every stage has steps=0",
        ),
        ("stage_steps", [c + "stages.s1.steps=-1"], "stages.s1.steps=-1"),
        ("stage_lr", [c + "stages.s1.learning_rate=0.0"], "stages.s1.learning_rate=0.0"),
        ("stage_segments", [c + "stages.s1.train_segments=all"], "stages.s1.train_segments"),
        ("stage_responder", [c + "stages.s1.responder=judge"], "stages.s1.responder"),
        ("stage_thinker", [c + "stages.s1.thinker=frozen"], "stages.s1.thinker='frozen'"),
        ("stage_carry_first", [c + "stages.s1.carry_optimizer=True"], "stages.s1.carry_optimizer"),
        (
            "stage_kl_reference",
            [c + "stages.s2.kl_reference=stage_start"],
            "stages.s2.kl_reference='stage_start'",
        ),
        ("num_heads", [c + "model.num_heads=3"], "model.num_heads=3"),
        ("model_dtype", [c + "model.dtype=bf16"], "model.dtype='bf16'"),
        ("model_type", [c + "model.model_type=qwen2.5"], "model.model_type='qwen2.5'"),
        ("attention_impl", [c + "model.attention_impl=flash"], "model.attention_impl='flash'"),
        ("hidden_size", [c + "model.hidden_size=0"], "model.hidden_size=0"),
        ("sft_mixture", [c + "sft.mixture.complete=-1.0"], "sft."),
        (
            "judge_option_on_command_line",
            [c + "reward.kwargs.w_fooled=0.3"],
            "add c.reward.kwargs.w_fooled = ... to the config file",
        ),
        ("no_config_file", [f"--config={tmp}/nope.py"], f"--config={tmp}/nope.py"),
        ("no_get_config", [f"--config={f['no_get_config']}"], "defines no get_config()"),
        ("config_syntax", [f"--config={f['syntax']}"], f"--config={f['syntax']} line 1"),
        ("config_raises", [f"--config={f['raises']}"], "get_config() raised RuntimeError"),
        (
            "own_reward_typo",
            [f"--config={f['own_reward']}", c + "algo.foo=1"],
            "unknown config field 'algo.foo'",
        ),
        (
            "own_reward_bad_value",
            [f"--config={f['own_reward']}", c + "algo.group_size=0"],
            "algo.group_size=0",
        ),
        ("workdir_is_file", [f"--workdir={f['file_workdir']}"], "--workdir="),
        (
            "distributed_flags_alone",
            ["--num_processes=2", "--process_id=1", "--coordinator_address=localhost:1"],
            "without --distributed",
        ),
        (
            "process_id_range",
            ["--distributed", "--num_processes=2", "--process_id=2"],
            "--process_id=2",
        ),
        ("num_processes", ["--distributed", "--num_processes=0"], "--num_processes=0"),
        ("jsonl_no_path", jsonl, "data.train_path"),
        (
            "jsonl_synthetic_judge",
            ["--config.data.source=jsonl", f"--config.data.train_path={f['good']}"],
            "config: reward.name='synthetic' judges only the embedded world's tasks, "
            "but data.source='jsonl'; set --config.reward.name to one of",
        ),
        ("jsonl_missing_file", jsonl + [f"{c}data.train_path={tmp}/none.jsonl"], "none.jsonl"),
        (
            "jsonl_missing_field",
            jsonl + [f"{c}data.train_path={f['no_reference']}"],
            f"{f['no_reference']} line 1: missing field 'reference'",
        ),
        (
            "jsonl_bad_line",
            jsonl + [f"{c}data.train_path={f['not_json']}"],
            f"{f['not_json']} line 2",
        ),
        ("jsonl_not_utf8", jsonl + [f"{c}data.train_path={f['latin1']}"], f"{f['latin1']}"),
        ("jsonl_empty", jsonl + [f"{c}data.train_path={f['empty']}"], f"{f['empty']}"),
        ("unknown_reward", [c + "reward.name=nope"], "'nope'"),
        (
            "tokenizer_missing",
            [f"{c}tokenizer={tmp}/none"],
            f"tokenizer file {tmp}/none/tokenizer.json not found",
        ),
        ("tokenizer_cut", [f"{c}tokenizer={f['tok_cut']}"], f"{f['tok_cut']}"),
        ("checkpoint_missing", [f"{c}init_checkpoint={tmp}/none"], f"{tmp}/none"),
        ("checkpoint_config_cut", [f"{c}init_checkpoint={f['ckpt_cut']}"], "config.json"),
        ("checkpoint_family", [f"{c}init_checkpoint={f['ckpt_gpt2']}"], "gpt2"),
        ("budget_past_context", [c + "sampling.think_budget=200"], "max_position_embeddings"),
        (
            "budget_past_checkpoint_context",
            [f"{c}init_checkpoint={f['ckpt_short']}", f"{c}tokenizer=world"],
            f"max_position_embeddings of {f['ckpt_short']}/config.json=16",
        ),
        ("mesh_too_large", [c + "mesh.data=64"], "mesh"),
        ("mesh_devices", [c + "mesh.devices=16"], "mesh.devices=16 does not fit the 8 devices"),
    ]


def _reruns(tmp):
    """A finished smoke run, then refused reruns of it, then a damaged latest checkpoint."""
    run = [
        f"--config={SMOKE}",
        f"--workdir={tmp}/finished",
        "--config.checkpoint.every=1",
        "--config.checkpoint.export_hf=False",
        "--config.stages.s1.steps=1",  # Two steps: checkpoints 1 and 2.
        "--config.stages.s2.steps=1",
    ]
    more = "--config.stages.s2.steps=2"
    return {
        "train": run,
        "rerun_critic_added": run + ["--config.algo.advantage=gae"],
        "rerun_other_model": run + ["--config.model.hidden_size=48"],
        "rerun_bad_value": run + ["--config.checkpoint.every=0"],
        "rerun_more_steps_bad_jsonl": run
        + [
            more,
            "--config.data.source=jsonl",
            "--config.reward.name=exact_match",
            f"--config.data.train_path={tmp}/none.jsonl",
        ],
        f"cut:{tmp}/finished/checkpoints/2/meta/metadata": f"{tmp}/finished/checkpoints/2/meta/metadata",
        "resume_past_damage": run + [more],
    }


def _drive(tmp: str, spec: dict) -> dict:
    path = os.path.join(tmp, "cases.json")
    with open(path, "w") as fh:
        json.dump(spec, fh)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, path],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("bad"))
    cases = _cases(_files(tmp), tmp)
    names = [n for n, _, _ in cases]
    assert len(set(names)) == len(names)
    spec = {
        n: [f"--workdir={tmp}/run_{n}"] + args
        if not any(a.startswith("--workdir") for a in args)
        else args
        for n, args, _ in cases
    }
    return cases, _drive(tmp, spec), tmp


@pytest.fixture(scope="module")
def reruns(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("rerun"))
    return _drive(tmp, _reruns(tmp)), tmp


def test_at_least_forty_bad_inputs_each_refused_with_one_line(refusals):
    cases, results, tmp = refusals
    assert len(cases) >= 40
    failures = []
    for name, _, expect in cases:
        r = results[name]
        lines = [line for line in r["stderr"].splitlines() if line.strip()]
        ok = (
            r["code"] == 2
            and not r["traceback"]
            and len(lines) == 1
            and lines[0].startswith("launch.py: error: ")
            and expect in lines[0]
        )
        if not ok:
            failures.append(
                f"{name}: exit {r['code']}, stderr {r['stderr'][-400:]!r} {r['traceback'][-600:]}"
            )
        elif not name.startswith("workdir"):  # Refused before anything was written.
            assert not os.path.exists(os.path.join(tmp, f"run_{name}", "checkpoints")), name
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_refused_reruns_leave_the_workdir_byte_identical(reruns):
    results, _ = reruns
    assert results["train"]["code"] == 0, results["train"]["traceback"][-2000:]
    finished = results["train"]["digest"]
    assert any(p.startswith("checkpoints/2/") for p in finished)
    for name, expect in (
        ("rerun_critic_added", "has no critic and this run's algo.advantage needs one"),
        ("rerun_other_model", "hidden_size"),
        ("rerun_bad_value", "checkpoint.every=0"),
        ("rerun_more_steps_bad_jsonl", "none.jsonl"),
    ):
        r = results[name]
        lines = [line for line in r["stderr"].splitlines() if line.strip()]
        assert r["code"] == 2 and len(lines) == 1 and expect in lines[0], (name, r)
        assert r["digest"] == finished, name


@pytest.mark.slow
def test_damaged_latest_checkpoint_resumes_from_the_previous_one(reruns):
    results, tmp = reruns
    r = results["resume_past_damage"]
    assert r["code"] == 0, (r["stderr"][-2000:], r["traceback"][-3000:])
    assert "checkpoints/2: its metadata cannot be read" in r["stdout"]
    assert "resuming from step 1" in r["stdout"]
    assert os.path.isdir(os.path.join(tmp, "finished", "checkpoints_damaged", "2"))
    assert any(p.startswith("checkpoints/3/") for p in r["digest"])


def test_bad_override_without_a_config_flag_is_one_line(tmp_path):
    """With the default config, overrides are applied while launch.py defines its flags."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch.py"),
            "--config.x=1",
            f"--workdir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("launch.py: error: --config.x: unknown config field 'x'")
    assert not (tmp_path / "run").exists()
