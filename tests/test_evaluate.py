"""The evaluation command: k samples per question at several thinking budgets, pass@k,
maj@k and the reward with intervals, resumable."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from experiments import evaluate
from start_jax import checkpoints, models
from start_jax.eval import sampled
from start_jax.tokenizer import HFTokenizer
from start_jax.world import generator as world
from tests import bpe_fixtures

pytestmark = pytest.mark.e2e  # A command end to end (so also slow).


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny Qwen3 on the world's vocabulary, as a Hugging Face directory."""
    config = models.tiny_config(world.tokenizer().vocab_size, max_position_embeddings=64)
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    checkpoints.save_pretrained(config, models.init_params(config, jax.random.key(0)), path)
    return path


def test_the_command_samples_k_per_question_at_each_budget_and_resumes(
    checkpoint, tmp_path, monkeypatch
):
    out = str(tmp_path / "eval")
    argv = [
        f"--checkpoints={checkpoint}",
        "--questions=synthetic:facts",
        "--reward=synthetic_correct",
        "--k=3",
        "--budgets=1,4",
        "--response_budget=4",
        "--n=6",
        "--batch=4",
        f"--data_dir={tmp_path / 'data'}",
        f"--out={out}",
    ]
    table = evaluate.main(argv)
    assert [(r["checkpoint"], r["budget"]) for r in table] == [("tiny", 1), ("tiny", 4)]
    for row in table:
        path = os.path.join(out, "tiny", f"budget{row['budget']}.jsonl")
        records = [json.loads(line) for line in open(path)]
        assert [r["question"] for r in records] == list(range(6))
        think = np.asarray([r["think_tokens"] for r in records])
        hit = np.asarray([r["hit_budget"] for r in records])
        assert think.shape == (6, 3) and think.max() <= row["budget"]  # Forced closed.
        np.testing.assert_array_equal(think[hit], row["budget"])
        assert hit.mean() > 0.5  # A random model rarely closes its thinking itself.
        summary = sampled.summarize(records, 3)
        for name in ("pass@1", "pass@3", "maj@3", "reward", "think_tokens", "hit_budget"):
            mean, low, high = row[name]
            assert low <= mean <= high and summary[name] == row[name], name
        assert row["pass@1"][0] <= row["pass@3"][0]
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["table"] == json.loads(json.dumps(table))
    assert saved["provenance"]["seconds"] > 0 and "jax" in saved["provenance"]["versions"]
    assert os.path.isfile(os.path.join(out, "budgets.png"))
    # Rerun: every question is found, nothing is sampled again.
    monkeypatch.setattr(sampled, "evaluate_budget", lambda *a: pytest.fail("sampled again"))
    assert evaluate.main(argv) == table


def test_bad_arguments_are_refused_with_one_line(checkpoint, tmp_path, capsys):
    for extra, message in (
        (["--budgets=4,x"], "--budgets must be integers"),
        (["--k=0"], "--k, --n and --batch must be >= 1"),
        (["--reward_kwargs=[1]"], "--reward_kwargs must be a JSON object"),
    ):
        with pytest.raises(SystemExit):
            evaluate.main(
                [f"--checkpoints={checkpoint}", "--questions=synthetic:facts", "--reward=x"]
                + [f"--out={tmp_path}"]
                + extra
            )
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main([f"--checkpoints={tmp_path}", "--questions=q", "--reward=x", "--out=o"])
    assert "has no config.json" in capsys.readouterr().err


def test_messages_rows_are_rendered_through_the_chat_template_as_in_training(tmp_path, capsys):
    """JSONL rows with their own conversation (system + user) read as training renders them;
    a plain row gets `--system`; without `--chat_template` such rows are refused."""
    ckpt = bpe_fixtures.make_tiny_qwen3(tmp_path / "qwen3")
    rows = bpe_fixtures.gsm8k_rows(2, seed=3, messages=True) + bpe_fixtures.gsm8k_rows(1, seed=4)
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [
        f"--checkpoints={ckpt}",
        f"--questions=jsonl:{path}",
        "--reward=math",
        "--k=2",
        "--budgets=3",
        "--response_budget=4",
        f"--data_dir={tmp_path / 'data'}",
        f"--out={tmp_path / 'eval'}",
    ]
    with pytest.raises(SystemExit, match="has rows with 'messages': add --chat_template"):
        evaluate.main(argv)
    evaluate.main([*argv, "--chat_template", "--system=Be brief."])
    records = [json.loads(line) for line in open(tmp_path / "eval" / "qwen3" / "budget3.jsonl")]
    tok = HFTokenizer.from_pretrained(ckpt)
    want = [
        tok.apply_chat_template(r["messages"], add_generation_prompt=True, enable_thinking=True)
        for r in rows[:2]
    ] + [
        tok.apply_chat_template(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": rows[2]["prompt"]},
            ],
            add_generation_prompt=True,
            enable_thinking=True,
        )
    ]
    assert sorted(r["prompt"] for r in records) == sorted(want)  # The data set's order.
    assert want[0].startswith(f"<|im_start|>system\n{bpe_fixtures.SYSTEM_PROMPT}<|im_end|>")
    think = np.asarray([r["think_tokens"] for r in records])
    assert think.shape == (3, 2) and think.max() <= 3
