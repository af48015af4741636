"""Decoder-only transformer models: policy and value heads on one trunk."""

from start_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, RopeScaling
from start_jax.models.layers import fuse_projections
from start_jax.models.transformer import (
    CACHE_LOGICAL_AXES,
    ForwardOutput,
    KVCache,
    apply,
    forward,
    head_kernel,
    head_logits,
    head_values,
    init_cache,
    init_params,
    param_logical_axes,
    param_shapes,
    sequence_scores,
    value_model_from_policy,
)

_CHECKPOINT_NAMES = ("CheckpointError", "load_pretrained", "save_pretrained")


def __getattr__(name: str):
    """`models.load_pretrained` and friends, from `start_jax.checkpoints` on first use.

    Checkpoints depend on models (not the reverse), so importing them here at
    import time would make a cycle when `start_jax.checkpoints` is imported first.
    """
    if name in _CHECKPOINT_NAMES:
        from start_jax.checkpoints import hf
        return getattr(hf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
