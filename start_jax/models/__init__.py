"""Decoder-only transformer models: policy and value heads on one trunk."""

from start_jax.models import fast_paths, lora
from start_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, RopeScaling, tiny_config
from start_jax.models.fast_paths import fuse_projections
from start_jax.models.lora import LoraConfig
from start_jax.models.sharding import (
    adapter_shardings,
    cache_shardings,
    init_sharded,
    param_shardings,
    shard_params,
)
from start_jax.models.transformer import (
    ForwardOutput,
    KVCache,
    apply,
    cache_logical_axes,
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
