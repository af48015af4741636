"""Qwen2 / Qwen2.5 (q/k/v bias) and Qwen3 (RMSNorm on each query and key head)."""

from __future__ import annotations

from start_jax.models.families import Family, register
from start_jax.models.families.llama import PLAIN, silu_mlp


def _qwen2_from_hf(hf, source):
    silu_mlp(hf, source)
    if hf.get("use_sliding_window"):
        raise ValueError(f"{source}: use_sliding_window=true is not supported")
    return {}


def _qwen3_from_hf(hf, source):
    _qwen2_from_hf(hf, source)
    return {"qkv_bias": bool(hf.get("attention_bias", False))}


register(
    Family(
        model_type="qwen2",
        architectures={"lm": "Qwen2ForCausalLM", "score": "Qwen2ForSequenceClassification"},
        fixed=dict(PLAIN, qkv_bias=True, qk_norm=False),
        from_hf=_qwen2_from_hf,
    )
)

register(
    Family(
        model_type="qwen3",
        architectures={"lm": "Qwen3ForCausalLM", "score": "Qwen3ForSequenceClassification"},
        fixed=dict(PLAIN, qkv_bias=None, qk_norm=True),
        from_hf=_qwen3_from_hf,
        to_hf=lambda config: {"attention_bias": config.qkv_bias},
    )
)
