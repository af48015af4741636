"""The real-model path end to end: a byte-level BPE tokenizer with Qwen3's chat markers
and think tokens, a tiny random Qwen3 checkpoint, GSM8K-style JSONL, and `launch.py`
running a START schedule on them with prompts rendered by the chat template."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from start_jax import segments
from start_jax.data.prompts import PromptFormat, messages_of
from start_jax.tokenizer import HFTokenizer
from start_jax.train import trainer as trainer_module
from tests import bpe_fixtures
from tests.fixtures import SMOKE, smoke_config

pytestmark = pytest.mark.e2e  # Runs of the trainer or launch.py (so also slow).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM = "Reason first, then answer."
OVERRIDES = dict(think_budget=16, response_budget=8, max_prompt_tokens=160)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    ckpt = bpe_fixtures.make_tiny_qwen3(d / "qwen3")
    # Train rows are conversations with their own system message; test rows plain prompts.
    train = bpe_fixtures.write_gsm8k_jsonl(d / "train.jsonl", 16, seed=0, messages=True)
    test = bpe_fixtures.write_gsm8k_jsonl(d / "test.jsonl", 4, seed=1)
    return {"ckpt": str(ckpt), "train": str(train), "test": str(test), "dir": d}


def _fields(files) -> dict:
    """The run's config fields beyond the smoke config (typed; launch.py gets them as flags)."""
    return {
        "init_checkpoint": files["ckpt"],
        "data.source": "jsonl",
        "data.train_path": files["train"],
        "data.test_path": files["test"],
        "data.max_prompt_tokens": OVERRIDES["max_prompt_tokens"],
        "reward.name": "math",
        "prompt.chat_template": True,
        "prompt.system": SYSTEM,
        "sampling.think_budget": OVERRIDES["think_budget"],
        "sampling.response_budget": OVERRIDES["response_budget"],
        "log.samples_every": 1,
        "log.samples": 4,
        "stages.s1.steps": 2,  # s1 (think, frozen responder), then s2 (response).
        "stages.s2.steps": 1,
    }


@pytest.fixture(scope="module")
def launched(files):
    workdir = files["dir"] / "run"
    args = [f"--config.{k}={v}" for k, v in _fields(files).items()]
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch.py"),
            f"--config={SMOKE}",
            f"--workdir={workdir}",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, proc


def _rendered(tok, rows) -> set[str]:
    """The chat template's text of each JSONL row, as the run should render it."""
    fmt = PromptFormat.create(True, SYSTEM, {"enable_thinking": True})
    return {
        tok.apply_chat_template(
            messages_of(
                {"prompt": r.get("prompt", ""), "metadata": {"messages": r["messages"]}}, fmt
            ),
            add_generation_prompt=True,
            enable_thinking=True,
        )
        for r in rows
    }


def test_launch_runs_start_on_a_chat_checkpoint_and_logs_rendered_samples(files, launched):
    workdir, proc = launched
    tok = HFTokenizer.from_pretrained(files["ckpt"])
    train_rows = [json.loads(line) for line in open(files["train"])]
    with open(workdir / "metrics.jsonl") as fh:
        metrics = [json.loads(line) for line in fh]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert [m["stage"] for m in metrics] == [0, 0, 1]  # s1 think/frozen, s2 response.
    assert all(np.isfinite(m["logprob_mismatch_max"]) for m in metrics)
    with open(workdir / "samples.jsonl") as fh:
        samples = [json.loads(line) for line in fh]
    assert samples, "no samples written"
    expected = _rendered(tok, train_rows)
    for s in samples:
        # The prompt is the chat template's text, markers included: the row's own system
        # message (the config's is for rows without one), the user turn, the assistant header.
        assert s["prompt"] in expected, s["prompt"]
        assert s["prompt"].startswith(
            f"<|im_start|>system\n{bpe_fixtures.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
        )
        assert s["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert "<think>" not in s["thinking"] and "</think>" not in s["thinking"]
        assert set(s) >= {"thinking", "response", "reward"}
    assert "stage s1 (1/2" in proc.stdout and "stage s2 (2/2" in proc.stdout
    # No library log line (absl's "W1202 16:16:24.372290 ...": tfds, orbax) in the output.
    assert not re.search(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", proc.stdout + proc.stderr, re.MULTILINE), (
        proc.stderr[-3000:]
    )
    # The exported policy carries the tokenizer with its chat template.
    again = HFTokenizer.from_pretrained(workdir / "export")
    assert again.apply_chat_template([{"role": "user", "content": "x"}]) == tok.apply_chat_template(
        [{"role": "user", "content": "x"}]
    )


def test_rollout_segments_on_the_rendered_prompt(files, launched):
    """Token by token: PROMPT = the encoded template text, THINK = <think> ... </think>
    with the tags as single Qwen3 tokens, RESPONSE = what follows, ending in <|im_end|>
    unless truncated; the prompt test rows get the config's system message."""
    workdir, _ = launched
    c = smoke_config()
    for key, value in _fields(files).items():
        section, _, field = key.rpartition(".")
        (c[section] if section else c)[field] = value
    trainer = trainer_module.Trainer(c, str(workdir))
    tok = trainer.tokenizer
    ids = bpe_fixtures.special_ids(files["ckpt"])
    assert (tok.think_id, tok.end_think_id, tok.eos_id) == (
        ids["<think>"],
        ids["</think>"],
        ids["<|im_end|>"],
    )
    examples = [trainer.test_data[i] for i in range(2)]
    assert examples[0]["prompt"] == tok.apply_chat_template(
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": examples[0]["question"]},
        ],
        enable_thinking=True,
    )
    for stage in trainer.stages:  # The frozen responder (s1) and the policy itself (s2).
        rollout = trainer.rollouts(trainer.init_params, examples, 0, stage, group_size=2)
        tokens, seg = np.asarray(rollout.tokens), np.asarray(rollout.segment_ids)
        for i in range(len(tokens)):
            row, s = tokens[i], seg[i]
            assert row[s == segments.PROMPT].tolist() == tok.encode(examples[i // 2]["prompt"])
            think = row[s == segments.THINK].tolist()
            assert think[0] == tok.think_id and think[-1] == tok.end_think_id
            assert think.count(tok.end_think_id) == 1
            response = row[s == segments.RESPONSE].tolist()
            assert response, "empty response"
            assert (response[-1] == tok.eos_id) != bool(rollout.response_truncated[i])
            order = [v for v in s.tolist() if v != segments.PAD]
            assert order == sorted(order)  # PROMPT, then THINK, then RESPONSE.
