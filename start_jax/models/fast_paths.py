"""XLA:CPU fast paths, all behind one switch: `ModelConfig.cpu_fast_paths` (the run
config's `model.cpu_fast_paths`), off by default.

Each path computes what the plain path computes, laid out or lowered so that
XLA:CPU runs it faster; on other backends they bring nothing. Switched on:

* `project`: the projections' matmul with its own backward pass, which gives
  d w with the contracted (B, T) axes of its left operand first.
* `v_slots_last`: the KV cache holds values as [B, K, H, S], so both
  attention dots contract the last axis of each operand.
* `fuse`: the sampler stacks q/k/v and gate/up into one matrix each
  (`fuse_projections`), one wide matmul per step instead of several narrow.
* `kernel_grad`: the head's d kernel behind an optimization barrier, so that
  a tied embedding's transpose is not folded into a slow generic dot.
* `argmax`: greedy decoding's argmax as two plain reductions.

tests/test_fast_paths.py checks each against the plain path (values and
gradients); experiments/bench/fast_paths.py times the two.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from start_jax.models import lora

# Parameter names of the fused layout made by `fuse_projections`.
FUSED_QKV, FUSED_QKV_BIAS, FUSED_GATE_UP = "qkv_proj", "qkv_bias", "gate_up_proj"


def enabled(config) -> bool:
    """Whether `config` (a `ModelConfig`) opts in."""
    return bool(getattr(config, "cpu_fast_paths", False))


def _dot(x: jax.Array, w: jax.Array, k: int) -> jax.Array:
    return jax.lax.dot_general(
        x, w, ((tuple(range(x.ndim - k, x.ndim)), tuple(range(k))), ((), ()))
    )


def project(config, x: jax.Array, w: jax.Array, k: int = 1) -> jax.Array:
    """x [B, T, *in] times w [*in, *out] -> [B, T, *out], contracting the k `in` axes;
    through `project_cpu`'s backward pass when `config` opts in."""
    return project_cpu(x, w, k) if enabled(config) else _dot(x, w, k)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project_cpu(x: jax.Array, w: jax.Array, k: int = 1) -> jax.Array:
    """The product of `project`, with a backward pass laid out for XLA:CPU.

    XLA:CPU's matmuls want the contracted (B, T) axes of d w's left operand
    transposed first: d w is dot(x, d y), which comes out as [*in, *out]
    directly, unless x is the wider of the two (then dot(d y, x), transposed).
    Autodiff of the plain product always computes dot(d y, x), so XLA:CPU
    wrote the wide gate and up activation gradients [B * T, F] transposed: in
    a 58M-parameter model's train step (2 CPU cores) those transposes took
    longer than the MLP's matmuls.
    """
    return _dot(x, w, k)


def _project_fwd(x, w, k):
    return _dot(x, w, k), (x, w)


def _project_bwd(k, residuals, dy):
    x, w = residuals
    lead = x.ndim - k
    dx = jax.lax.dot_general(
        dy, w, ((tuple(range(lead, dy.ndim)), tuple(range(k, w.ndim))), ((), ()))
    )
    batch_axes = tuple(range(lead))
    if np.prod(x.shape[lead:]) <= np.prod(dy.shape[lead:]):
        dw = jax.lax.dot_general(x, dy, ((batch_axes, batch_axes), ((), ())))
    else:  # A wide input (the MLP's down projection): transpose the narrower d y instead.
        dw = jax.lax.dot_general(dy, x, ((batch_axes, batch_axes), ((), ())))
        n_out = dy.ndim - lead
        dw = dw.transpose(tuple(range(n_out, dw.ndim)) + tuple(range(n_out)))
    return dx.astype(x.dtype), dw.astype(w.dtype)


project_cpu.defvjp(_project_fwd, _project_bwd)


def v_slots_last(config) -> bool:
    """Whether the KV cache holds values as [B, K, H, S] (else [B, K, S, H], as keys).

    Both attention dots then contract the last axis of each operand, which
    XLA:CPU runs as one fast batched matmul straight from the cache; values as
    [B, K, S, H] cost it a slower generic dot, twice the time of the whole
    decode attention.
    """
    return enabled(config)


def fuse_projections(params):
    """The same weights with q/k/v and gate/up each stacked into one matrix.

    Attention then runs one [D, N + 2K] matmul instead of three and the MLP
    one [D, 2F] matmul instead of two: with few rows (decoding), XLA:CPU gets
    markedly more from one wide matmul than from several narrow ones. The
    modules accept either layout; checkpoints, sharding rules and training
    use the separate one. Works on the full tree or on stacked layers.
    """
    if "layers" in params:
        return {**params, "layers": fuse_projections(params["layers"])}
    attn = dict(params["attn"])
    qkv = [attn.pop(name) for name in ("q_proj", "k_proj", "v_proj")]
    attn[FUSED_QKV] = jnp.concatenate(qkv, axis=-2)  # [.., D, N+2K, H]
    if "q_bias" in attn:
        bias = [attn.pop(name) for name in ("q_bias", "k_bias", "v_bias")]
        attn[FUSED_QKV_BIAS] = jnp.concatenate(bias, axis=-2)  # [.., N+2K, H]
    mlp = dict(params["mlp"])
    mlp[FUSED_GATE_UP] = jnp.stack([mlp.pop("gate_proj"), mlp.pop("up_proj")], axis=-2)
    return {**params, "attn": attn, "mlp": mlp}


def decode_params(config, params):
    """The parameters the decode loop reads: fused (`fuse_projections`, unless they
    already are or carry LoRA adapters) when `config` opts in, else as given."""
    if not enabled(config):
        return params
    tree = params.get("layers", params)
    if FUSED_QKV in tree["attn"] or lora.has_adapters(params):
        return params  # Fused already, or adapters (`models.lora`) that read each kernel.
    return fuse_projections(params)


def kernel_grad(d_kernel: jax.Array, dtype, barrier: bool) -> jax.Array:
    """The head's d kernel [D, V] cast to `dtype`; with `barrier`, as computed, behind an
    optimization barrier.

    With tied embeddings the kernel is the embedding table transposed, and XLA
    would fold that transpose into the d kernel matmul, making its left operand
    d logits [B * T, V] contracted over its rows, which XLA:CPU runs as a slow
    generic dot (1.8x the time of the [D, V] matmul plus a transpose of the
    [D, V] result, at B * T = 4080, D = 256, V = 16384).
    """
    if barrier:
        d_kernel = jax.lax.optimization_barrier(d_kernel)
    return d_kernel.astype(dtype)


def argmax(x: jax.Array, fast: bool) -> jax.Array:
    """Index of the first maximum of each row of x [B, V], as int32: `jnp.argmax`, or with
    `fast` the same (for finite rows) as two plain reductions, since XLA:CPU runs argmax's
    paired (value, index) reduction several times slower."""
    if not fast:
        return jnp.argmax(x, axis=-1).astype(jnp.int32)
    v = x.shape[-1]
    best = jnp.max(x, axis=-1, keepdims=True)
    index = jnp.min(jnp.where(x == best, jnp.arange(v, dtype=jnp.int32), v), axis=-1)
    return jnp.minimum(index, v - 1)  # A row with NaN has no equal entry.
