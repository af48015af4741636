"""The reward-model judge against transformers' sequence-classification score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from start_jax import rewards
from start_jax.tokenizer import CharTokenizer
from tests import hf_fixtures


def test_reward_model_judge_matches_transformers(tmp_path):
    tok = CharTokenizer()
    directory = str(tmp_path / "rm")
    hf = hf_fixtures.make_checkpoint(
        "qwen2_score", directory, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id
    )
    tok.save_pretrained(directory)
    judge = rewards.make("reward_model", path=directory, separator="\n")
    inputs = [
        rewards.RewardInput(prompt=p, response=r, prompt_ids=(), response_ids=())
        for p, r in [("a=3; a?", "3"), ("Bob likes tea. What?", "Surely tea!"), ("x?", "")]
    ]
    ours = judge(inputs)
    ids = [tok.encode(x.prompt + "\n" + x.response) for x in inputs]
    with torch.no_grad():
        ref = [hf(torch.tensor([row])).logits[0, 0].item() for row in ids]
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_reward_model_needs_a_score_head(tmp_path):
    tok = CharTokenizer()
    directory = str(tmp_path / "lm")
    hf_fixtures.make_checkpoint("qwen3", directory, vocab_size=tok.vocab_size)
    tok.save_pretrained(directory)
    with pytest.raises(ValueError, match="needs a sequence-classification checkpoint"):
        rewards.make("reward_model", path=directory)
