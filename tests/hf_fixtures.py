"""Tiny random Hugging Face checkpoints written by the tests themselves."""

from __future__ import annotations

import os

import numpy as np
import torch
import transformers

VOCAB = 96

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)

# name -> (config class, model class, extra config fields)
FAMILIES = {
    "qwen2": (
        transformers.Qwen2Config,
        transformers.Qwen2ForCausalLM,
        dict(rope_theta=10_000.0, tie_word_embeddings=True),
    ),
    "qwen3": (
        transformers.Qwen3Config,
        transformers.Qwen3ForCausalLM,
        dict(head_dim=16, rope_theta=1_000_000.0, tie_word_embeddings=True),
    ),
    "llama3": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(
            rope_theta=500_000.0,
            tie_word_embeddings=False,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        ),
    ),
    # Sliding-window layers (window 4) around a global one, linear RoPE scaling on the
    # global layer, a query scale other than 1 / sqrt(head_dim).
    "gemma3": (
        transformers.Gemma3TextConfig,
        transformers.Gemma3ForCausalLM,
        dict(
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
            tie_word_embeddings=True,
        ),
    ),
    "qwen2_score": (
        transformers.Qwen2Config,
        transformers.Qwen2ForSequenceClassification,
        dict(rope_theta=10_000.0, num_labels=1),
    ),
    "llama_score": (
        transformers.LlamaConfig,
        transformers.LlamaForSequenceClassification,
        dict(rope_theta=10_000.0, num_labels=1),
    ),
    "gemma3_score": (
        transformers.Gemma3TextConfig,
        transformers.Gemma3TextForSequenceClassification,
        dict(
            head_dim=16,
            sliding_window=4,
            num_labels=1,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        ),
    ),
}


def make_checkpoint(family: str, directory: str, seed: int = 0, **overrides):
    """Writes a random tiny checkpoint of `family` to `directory`; returns the torch model."""
    config_cls, model_cls, extra = FAMILIES[family]
    fields = {**_COMMON, **extra, **overrides}
    config = config_cls(**fields)
    torch.manual_seed(seed)
    model = model_cls(config).eval().float()
    with torch.no_grad():
        # Non-trivial norm weights and biases, so that a mix-up would show.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    return model


def greedy_generate(model, rows, max_new: int, eos, pad: int = 0, **kwargs) -> list[list[int]]:
    """`transformers` greedy generate on left-padded rows; the new tokens of each row."""
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    with torch.no_grad():
        out = model.generate(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=max_new,
            eos_token_id=eos,
            pad_token_id=pad,
            **kwargs,
        )
    return [[int(t) for t in row[width:]] for row in out.numpy()]
