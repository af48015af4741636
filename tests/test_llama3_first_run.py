"""A Llama-3-style checkpoint's first run through `launch.py`: think tags added to a
tokenizer that has none, taught by the cold-start SFT option, several end-of-turn ids.

The checkpoint is a random tiny Llama with a Llama-3-style tokenizer and chat template
(`tests/bpe_fixtures.make_tiny_llama3`): no think tags, no pad token, no spare
embedding rows, eos `<|eot_id|>` and three end-of-turn ids in its configs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from start_jax.checkpoints import read_config
from start_jax.tokenizer import HFTokenizer
from tests import bpe_fixtures
from tests.fixtures import SMOKE
from tests.xla_flags import device_flags

pytestmark = pytest.mark.e2e  # Runs of the trainer or launch.py (so also slow).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THINK_BUDGET = 48
# absl's log line prefix (W1202 16:16:24.372290 ...): no library may print one.
LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama3")
    ckpt = bpe_fixtures.make_tiny_llama3(d / "llama3")
    train = bpe_fixtures.write_gsm8k_jsonl(d / "train.jsonl", 64, seed=0, traces=True)
    test = bpe_fixtures.write_gsm8k_jsonl(d / "test.jsonl", 8, seed=1)
    return {"ckpt": str(ckpt), "train": str(train), "test": str(test), "dir": d}


def _launch(files, workdir, **fields):
    args = {
        "init_checkpoint": files["ckpt"],
        "data.source": "jsonl",
        "data.train_path": files["train"],
        "data.test_path": files["test"],
        "data.max_prompt_tokens": 96,
        "data.prompts_per_step": 4,
        "reward.name": "math",
        "prompt.chat_template": True,
        "prompt.add_tags": True,
        "sampling.think_budget": THINK_BUDGET,
        "sampling.response_budget": 32,
        "stages.s1.steps": 1,
        "stages.s2.steps": 1,
        "eval.every": 0,
        "log.samples_every": 1,
        "log.samples": 8,
        **fields,
    }
    return subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "launch.py"),
            f"--config={SMOKE}",
            f"--workdir={workdir}",
            *[f"--config.{k}={v}" for k, v in args.items()],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        # The default optimisation level: 300 SFT steps run longer than they compile
        # (tests/xla_flags.py).
        env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=device_flags(1, fast_compile=False)),
    )


def test_added_tags_without_the_sft_option_are_refused_before_any_work(files):
    workdir = files["dir"] / "refused"
    proc = _launch(files, workdir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "vocab_size" in lines[0] and "sft.from_checkpoint=True" in lines[0]
    assert not workdir.exists()
    # The option without any thinking trace in the train file: refused as well.
    bare = bpe_fixtures.write_gsm8k_jsonl(files["dir"] / "bare.jsonl", 8, seed=3)
    proc = _launch(dict(files, train=str(bare)), workdir, **{"sft.from_checkpoint": True})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no row has a 'thinking' trace" in proc.stderr and str(bare) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not workdir.exists()


@pytest.mark.slow
def test_cold_start_sft_on_the_checkpoint_teaches_it_to_close_its_thinking(files):
    workdir = files["dir"] / "run"
    proc = _launch(
        files,
        workdir,
        **{
            "sft.from_checkpoint": True,
            "sft.steps": 300,
            "sft.batch_size": 16,
            "sft.learning_rate": 3e-3,
            "sampling.ban_tags_in_response": True,
        },
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not LOG_LINE.search(proc.stderr + proc.stdout), proc.stderr[-3000:]

    tok = HFTokenizer.from_pretrained(files["ckpt"], add_missing_tags=True)
    stored = read_config(files["ckpt"])
    ids = {t: tok.token_to_id(t) for t in bpe_fixtures.LLAMA3_SPECIAL_TOKENS}
    # Two rows were added for the tags, and the SFT record names the checkpoint.
    init = workdir / "init_policy"
    assert read_config(str(init)).vocab_size == stored.vocab_size + 2 == tok.vocab_size
    record = json.loads((init / "start_jax_sft.json").read_text())
    assert record["init_checkpoint"] == os.path.abspath(files["ckpt"]) and record["steps"] == 300

    # Most rows close their thinking before the budget (the untrained mean rows
    # almost never draw </think>), and no response holds a tag.
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    truncated = np.mean([m["think_truncated"] for m in metrics])
    assert truncated < 0.5, [m["think_truncated"] for m in metrics]
    samples = [json.loads(line) for line in (workdir / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["response"] for s in samples)
    assert not any("<think>" in s["response"] or "</think>" in s["response"] for s in samples)
    assert np.mean([not s["think_truncated"] for s in samples]) > 0.5

    # The exported tokenizer keeps the tags and every end-of-turn id.
    export = HFTokenizer.from_pretrained(workdir / "export")
    assert export.eos_id == ids[bpe_fixtures.EOT]
    assert export.stop_ids == tuple(sorted((ids[bpe_fixtures.END_OF_TEXT], ids[bpe_fixtures.EOM])))
    assert export.think_id == tok.think_id and export.end_think_id == tok.end_think_id
