"""Llama (2, 3, 3.1, 3.2): SwiGLU, RMSNorm, optional q/k/v bias, llama3 RoPE scaling."""

from __future__ import annotations

from start_jax.models.families import Family, register

# The architecture every family shares unless it says otherwise (Llama's).
PLAIN = dict(hidden_act="silu", norm_offset=0.0, embed_scale=False, sandwich_norm=False)


def silu_mlp(hf, source: str) -> dict:
    """The checks every SwiGLU family makes of its config.json."""
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{source}: hidden_act={act!r} is not supported (silu only)")
    if hf.get("mlp_bias"):
        raise ValueError(f"{source}: mlp_bias=true is not supported")
    return {}


def _from_hf(hf, source):
    silu_mlp(hf, source)
    return {"qkv_bias": bool(hf.get("attention_bias", False))}


def _to_hf(config):
    return {"attention_bias": config.qkv_bias, "mlp_bias": False}


register(
    Family(
        model_type="llama",
        architectures={"lm": "LlamaForCausalLM", "score": "LlamaForSequenceClassification"},
        fixed=dict(PLAIN, qkv_bias=None, qk_norm=False),
        from_hf=_from_hf,
        to_hf=_to_hf,
    )
)
