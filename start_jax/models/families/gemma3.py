"""Gemma 3 (text): sliding-window and global layers, (1 + w) norms around each sub-layer,
a scaled embedding, GeGLU, RMSNorm on each query and key head.

Checkpoints with `model_type` "gemma3_text" (Gemma 3 270M and 1B, or the text
model of a larger one saved on its own). Every `sliding_window_pattern`-th
layer (6: five local, one global) attends to all earlier tokens with RoPE base
`rope_theta` (1e6, optionally scaled linearly); the others to the last
`sliding_window` slots with base `rope_local_base_freq` (1e4). The window
counts cache slots, as transformers counts positions in a padded batch.
"""

from __future__ import annotations

from start_jax.models.families import Family, register

_ACT = "gelu_pytorch_tanh"


def _rope(hf, source) -> dict:
    """(rope_theta, local_rope_theta, rope_factor) from transformers 5's per-layer-type
    `rope_parameters` or 4.x's `rope_theta` / `rope_local_base_freq` / `rope_scaling`."""
    params = hf.get("rope_parameters") or {}
    full = dict(params.get("full_attention") or {})
    local = dict(params.get("sliding_attention") or {})
    if not full and hf.get("rope_scaling"):
        full = dict(hf["rope_scaling"])
    full.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
    local.setdefault("rope_theta", hf.get("rope_local_base_freq", 10_000.0))
    factor = 1.0
    kind = full.get("rope_type", full.get("type", "default"))
    if kind == "linear":
        factor = float(full["factor"])
    elif kind not in ("default", None):
        raise ValueError(
            f"{source}: rope_type {kind!r} of the global layers is not supported "
            "(supported: default, linear)"
        )
    local_kind = local.get("rope_type", "default")
    if local_kind not in ("default", None):
        raise ValueError(
            f"{source}: rope_type {local_kind!r} of the sliding layers is not "
            "supported (default only)"
        )
    return dict(
        rope_theta=float(full["rope_theta"]),
        local_rope_theta=float(local["rope_theta"]),
        rope_factor=factor,
        rope_scaling=None,
    )


def _from_hf(hf, source) -> dict:
    act = hf.get("hidden_activation") or hf.get("hidden_act") or _ACT
    if act != _ACT:
        raise ValueError(f"{source}: hidden_activation={act!r} is not supported ({_ACT} only)")
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if hf.get(key) is not None:
            raise ValueError(f"{source}: {key}={hf[key]} is not supported (null only)")
    if hf.get("use_bidirectional_attention"):
        raise ValueError(f"{source}: use_bidirectional_attention=true is not supported")
    if hf.get("attention_bias"):
        raise ValueError(f"{source}: attention_bias=true is not supported")
    layers = int(hf["num_hidden_layers"])
    types = hf.get("layer_types")
    if types is None:
        pattern = int(hf.get("sliding_window_pattern", 6))
        types = [
            "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)
        ]
    unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
    if unknown or len(types) != layers:
        raise ValueError(
            f"{source}: layer_types must list 'sliding_attention' or "
            f"'full_attention' for each of the {layers} layers, got {types}"
        )
    window = hf.get("sliding_window")
    sliding = tuple(t == "sliding_attention" for t in types)
    head_dim = hf.get("head_dim") or int(hf["hidden_size"]) // int(hf["num_attention_heads"])
    return dict(
        query_scale=float(hf.get("query_pre_attn_scalar", head_dim)) ** -0.5,
        sliding_window=int(window) if window and any(sliding) else None,
        sliding_layers=sliding if window and any(sliding) else (),
        **_rope(hf, source),
    )


def _scalar(config):
    """query_pre_attn_scalar (an integer in transformers' config) of `query_scale`."""
    if config.query_scale is None:
        return config.head_dim
    value = config.query_scale**-2
    return int(round(value)) if abs(value - round(value)) < 1e-6 else value


def _to_hf(config) -> dict:
    full = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_factor != 1.0:
        full = {
            "rope_type": "linear",
            "rope_theta": config.rope_theta,
            "factor": config.rope_factor,
        }
    local = {"rope_type": "default", "rope_theta": config.local_rope_theta or config.rope_theta}
    sliding = config.sliding_layers or (False,) * config.num_layers
    return {
        "hidden_activation": _ACT,
        "query_pre_attn_scalar": _scalar(config),
        "sliding_window": config.sliding_window,
        "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
        "rope_parameters": {"full_attention": full, "sliding_attention": local},
        "rope_scaling": None
        if config.rope_factor == 1.0
        else {"rope_type": "linear", "factor": config.rope_factor},
        "rope_local_base_freq": local["rope_theta"],
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "attention_bias": False,
    }


register(
    Family(
        model_type="gemma3_text",
        architectures={"lm": "Gemma3ForCausalLM", "score": "Gemma3TextForSequenceClassification"},
        fixed=dict(
            hidden_act="gelu_tanh",
            norm_offset=1.0,
            embed_scale=True,
            sandwich_norm=True,
            qkv_bias=False,
            qk_norm=True,
        ),
        from_hf=_from_hf,
        to_hf=_to_hf,
        tensor_names={
            (
                "layers",
                "attn_out_norm",
                "scale",
            ): "model.layers.{i}.post_attention_layernorm.weight",
            (
                "layers",
                "post_attn_norm",
                "scale",
            ): "model.layers.{i}.pre_feedforward_layernorm.weight",
            (
                "layers",
                "mlp_out_norm",
                "scale",
            ): "model.layers.{i}.post_feedforward_layernorm.weight",
        },
    )
)
