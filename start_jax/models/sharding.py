"""Shardings of model parameters and caches, from their logical axes and the rules table.

`start_jax.sharding` holds the mesh and the rules; this module applies them to
the arrays a model owns.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from start_jax.models import lora as lora_lib
from start_jax.models import transformer
from start_jax.sharding import ShardingRules


def param_shardings(model_config, mesh: Mesh, rules: ShardingRules | None = None):
    """NamedSharding for every parameter of a model."""
    rules = rules or ShardingRules()
    return rules.tree_shardings(
        mesh, transformer.param_logical_axes(model_config), transformer.param_shapes(model_config)
    )


def adapter_shardings(
    model_config, lora: lora_lib.LoraConfig, mesh: Mesh, rules: ShardingRules | None = None
):
    """NamedSharding for every LoRA adapter of a model (`models.lora.logical_axes`: like
    the kernels they adapt, the rank axis replicated)."""
    rules = rules or ShardingRules()
    return rules.tree_shardings(
        mesh,
        lora_lib.logical_axes(transformer.param_logical_axes(model_config), lora),
        lora_lib.adapter_shapes(transformer.param_shapes(model_config), lora),
    )


def init_sharded(model_config, rng: jax.Array, mesh: Mesh, rules: ShardingRules | None = None):
    """Random parameters created directly in their sharded layout.

    `jax.eval_shape` gives shapes and logical axes, the rules give shardings,
    and the init is jitted with those `out_shardings`, so no device ever holds a
    full copy of a sharded parameter.
    """
    shardings = param_shardings(model_config, mesh, rules)
    return jax.jit(transformer.init_params, static_argnums=0, out_shardings=shardings)(
        model_config, rng
    )


def shard_params(model_config, params, mesh: Mesh, rules: ShardingRules | None = None):
    """Places existing parameters (host or device arrays) on the mesh."""
    return jax.device_put(params, param_shardings(model_config, mesh, rules))


def cache_shardings(
    model_config, mesh: Mesh, batch_size: int, max_length: int, rules: ShardingRules | None = None
):
    """NamedShardings for a `KVCache` of the given size."""
    rules = rules or ShardingRules()
    shapes = jax.eval_shape(lambda: transformer.init_cache(model_config, batch_size, max_length))
    return jax.tree.map(
        lambda axes, s: rules.sharding(mesh, axes, s.shape),
        transformer.cache_logical_axes(model_config),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )
