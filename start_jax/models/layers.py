"""Building blocks of the decoder: RMSNorm, RoPE, attention and the gated MLP.

One parameter layout serves every family (`models.families`); a family's
differences are `ModelConfig` fields read here (norm offset, activation,
sandwich norms, query scale, sliding windows).

Shape letters used in einsum strings and comments:
    B batch, T new tokens, S key/cache slots, D model width, N query heads,
    K key/value heads, G = N // K query heads per key/value head, H head width,
    F MLP width, V vocabulary.

Every parameter is created with `nn.with_logical_partitioning`, so its logical
axis names travel with it; `start_jax.sharding` maps them to mesh axes.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from start_jax.models import fast_paths, lora
from start_jax.models.attention import attend
from start_jax.models.config import ModelConfig

FUSED_QKV, FUSED_QKV_BIAS, FUSED_GATE_UP = (
    fast_paths.FUSED_QKV,
    fast_paths.FUSED_QKV_BIAS,
    fast_paths.FUSED_GATE_UP,
)


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def project(module: nn.Module, cfg: ModelConfig, name: str, x, w, k: int = 1):
    """x W for the kernel `name` (`fast_paths.project`), plus its adapter path (x A) B
    when the parameters carry one (`models.lora.combine`)."""
    dt = cfg.jnp_dtype
    y = fast_paths.project(cfg, x, w.astype(dt), k)
    if module.has_variable("params", name + lora.A):
        a = module.get_variable("params", name + lora.A).astype(dt)
        b = module.get_variable("params", name + lora.B).astype(dt)
        y = y + fast_paths.project(cfg, fast_paths.project(cfg, x, a, k), b)
    return y


def dense_init(fan_in: int):
    del fan_in  # Same scale as the HF models' `initializer_range` default.
    return nn.initializers.normal(stddev=0.02)


class RMSNorm(nn.Module):
    """y = x / rms(x) * (offset + scale), computed in float32 as the HF models do."""

    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    axis_name: str = "norm"
    offset: float = 0.0  # 1: Gemma's (1 + w), its weights starting at 0.

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.zeros if self.offset else nn.initializers.ones
        scale = _param(self, "scale", init, (x.shape[-1],), (self.axis_name,), self.param_dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        if self.offset:  # Gemma multiplies in float32, then casts.
            return (y * (self.offset + scale.astype(jnp.float32))).astype(self.dtype)
        # HF casts back to the input dtype before the multiply; do the same so
        # that bfloat16 runs round at the same place.
        return scale.astype(self.dtype) * y.astype(self.dtype)


def norm(config: ModelConfig, name: str, axis_name: str = "norm") -> RMSNorm:
    """The family's RMSNorm (`config.norm_offset`) named `name`."""
    return RMSNorm(
        config.rms_norm_eps,
        config.jnp_dtype,
        config.jnp_param_dtype,
        axis_name,
        offset=config.norm_offset,
        name=name,
    )


def rope_inverse_frequencies(config: ModelConfig, local: bool = False) -> np.ndarray:
    """Inverse frequencies [H/2] in float32: the global layers' (llama3 or linear
    scaling), or with `local` the sliding-window layers' (base `local_rope_theta`)."""
    dim = config.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
    theta = config.local_rope_theta if local and config.local_rope_theta else config.rope_theta
    inv_freq = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
    if local:
        return inv_freq
    if config.rope_factor != 1.0:
        inv_freq = (inv_freq / np.float32(config.rope_factor)).astype(np.float32)
    s = config.rope_scaling
    if s is None:
        return inv_freq
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, and blend
    # smoothly in between (wavelength measured against the original context).
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, blended, scaled).astype(np.float32)


def rope_tables(
    config: ModelConfig, positions: jax.Array, local: bool = False
) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, 1, H] for positions [B, T]; computed once per forward."""
    inv_freq = rope_inverse_frequencies(config, local)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B,T,H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B,T,1,H]
    return jnp.cos(angles), jnp.sin(angles)


def layer_ropes(config: ModelConfig, positions: jax.Array):
    """What the decoder blocks get: the global layers' `rope_tables`, and with sliding
    layers the pair (global, local), of which `DecoderBlock` picks its own."""
    ropes = rope_tables(config, positions)
    if config.windowed:
        ropes = (ropes, rope_tables(config, positions, local=True))
    return ropes


NO_WINDOW = 2**30  # The window of a global layer in a model with sliding layers.


def layer_windows(config: ModelConfig) -> np.ndarray | None:
    """[L] int32: the slots each layer sees (NO_WINDOW: all), or None without sliding layers."""
    if not config.windowed:
        return None
    return np.asarray(
        [config.sliding_window if s else NO_WINDOW for s in config.sliding_layers], np.int32
    )


def apply_rope(x: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotates x [B, T, heads, H] by the `rope_tables` (rotate-half layout)."""
    cos, sin = rope[0].astype(x.dtype), rope[1].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Grouped-query self-attention over an optional KV cache."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, rope, mask, kv, cache_index, layer, window=None):
        """Attends x [B, T, D] to itself and to cached keys.

        Args:
            x: [B, T, D] normalised hidden states.
            rope: `rope_tables` of the token positions.
            mask: (key_valid, q_slots, documents), the mask described, not built
                (see `attention.attend`): key_valid bool [B, S] is False for padding
                and unwritten cache slots; q_slots int32 [T] is the cache slot
                of each query (key slot s is visible iff s <= q_slots[t] and
                key_valid[b, s]), or None without a cache (arange(T), S == T);
                documents int32 [B, T] (packed rows, no cache) or None.
            kv: None (no cache: S == T) or the whole cache (k [L, B, K, S, H],
                v [L, B, K, H, S]); this layer's T new keys and values are
                written at slots cache_index:cache_index + T of `layer`. The
                full cache is carried (not sliced per layer) so XLA updates it
                in place.
            cache_index: int32 scalar write offset into the cache.
            layer: int32 scalar index of this layer.
            window: None, or int32 scalar: key slot s is visible only if
                s > q_slots[t] - window (a sliding-window layer).

        Returns:
            ([B, T, D] output, updated (k, v) or None).
        """
        cfg = self.config
        dt, pdt = cfg.jnp_dtype, cfg.jnp_param_dtype
        d, n, k_heads, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        init = dense_init(d)
        if self.has_variable("params", FUSED_QKV):
            # `fuse_projections` layout: one matmul for q, k and v.
            wqkv = self.get_variable("params", FUSED_QKV)  # [D, N + 2K, H]
            wo = _param(self, "o_proj", init, (n, h, d), ("q_heads", "head_dim", "embed"), pdt)
            qkv = jnp.einsum("BTD,DNH->BTNH", x, wqkv.astype(dt))
            if cfg.qkv_bias:
                qkv = qkv + self.get_variable("params", FUSED_QKV_BIAS).astype(dt)
            q, k, v = jnp.split(qkv, [n, n + k_heads], axis=2)
        else:
            wq = _param(self, "q_proj", init, (d, n, h), ("embed", "q_heads", "head_dim"), pdt)
            wk = _param(
                self, "k_proj", init, (d, k_heads, h), ("embed", "kv_heads", "head_dim"), pdt
            )
            wv = _param(
                self, "v_proj", init, (d, k_heads, h), ("embed", "kv_heads", "head_dim"), pdt
            )
            # Flax derives each parameter's init key from the declaration
            # order: q, k, v, o, then the biases, as always.
            wo = _param(self, "o_proj", init, (n, h, d), ("q_heads", "head_dim", "embed"), pdt)
            q = project(self, cfg, "q_proj", x, wq)  # [B, T, N, H]
            k = project(self, cfg, "k_proj", x, wk)  # [B, T, K, H]
            v = project(self, cfg, "v_proj", x, wv)
            if cfg.qkv_bias:
                zeros = nn.initializers.zeros
                q = q + _param(self, "q_bias", zeros, (n, h), ("q_heads", "head_dim"), pdt).astype(
                    dt
                )
                k = k + _param(
                    self, "k_bias", zeros, (k_heads, h), ("kv_heads", "head_dim"), pdt
                ).astype(dt)
                v = v + _param(
                    self, "v_bias", zeros, (k_heads, h), ("kv_heads", "head_dim"), pdt
                ).astype(dt)
        if cfg.qk_norm:  # Qwen3 and Gemma 3 normalise each head before RoPE.
            q = norm(cfg, "q_norm", "head_dim")(q)
            k = norm(cfg, "k_norm", "head_dim")(k)
        q = apply_rope(q, rope)
        k = apply_rope(k, rope)

        b, t = x.shape[:2]
        g = n // k_heads
        scale = cfg.query_scale if cfg.query_scale is not None else 1.0 / math.sqrt(h)
        q = q.reshape(b, t, k_heads, g, h) * jnp.asarray(scale, dt)
        # Keys as [B, K, S, H]; values the same, or in the cache [B, K, H, S] with the
        # CPU fast paths (`fast_paths.v_slots_last`). The mask is described, not built: the
        # attention implementation (`config.attention_impl`, see `attention.attend`)
        # builds a dense [B, T, S] one only on its dense path.
        k = k.transpose(0, 2, 1, 3)
        slots_last = kv is not None and fast_paths.v_slots_last(cfg)
        v = v.transpose(0, 2, 3, 1) if slots_last else v.transpose(0, 2, 1, 3)
        if kv is not None:
            cache_k = jax.lax.dynamic_update_slice(
                kv[0], k[None].astype(kv[0].dtype), (layer, 0, 0, cache_index, 0)
            )
            at = (layer, 0, 0, 0, cache_index) if slots_last else (layer, 0, 0, cache_index, 0)
            cache_v = jax.lax.dynamic_update_slice(kv[1], v[None].astype(kv[1].dtype), at)
            kv = (cache_k, cache_v)
            k = jax.lax.dynamic_index_in_dim(cache_k, layer, 0, keepdims=False)  # [B, K, S, H]
            v = jax.lax.dynamic_index_in_dim(cache_v, layer, 0, keepdims=False)

        key_valid, q_slots, documents = mask
        out = attend(
            q,
            k,
            v,
            key_valid=key_valid,
            q_slots=q_slots,
            documents=documents,
            impl=cfg.attention_impl,
            block_q=cfg.attention_block_q,
            block_k=cfg.attention_block_k,
            v_slots_last=slots_last,
            window=window,
        ).reshape(b, t, n, h)
        return project(self, cfg, "o_proj", out, wo, 2), kv


def activation(config: ModelConfig):
    """The MLP gate's activation: silu (SwiGLU) or tanh-approximated gelu (GeGLU)."""
    if config.hidden_act == "gelu_tanh":
        return functools.partial(jax.nn.gelu, approximate=True)
    return jax.nn.silu


class MLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x)), act silu (SwiGLU) or gelu (GeGLU)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dt, pdt = cfg.jnp_dtype, cfg.jnp_param_dtype
        d, f = cfg.hidden_size, cfg.intermediate_size
        if self.has_variable("params", FUSED_GATE_UP):
            # `fuse_projections` layout: one matmul for gate and up.
            both = self.get_variable("params", FUSED_GATE_UP)  # [D, 2, F]
            gate_up = jnp.einsum("BTD,DZF->BTZF", x, both.astype(dt))
            hidden = activation(cfg)(gate_up[..., 0, :]) * gate_up[..., 1, :]
        else:
            gate = _param(self, "gate_proj", dense_init(d), (d, f), ("embed", "mlp"), pdt)
            up = _param(self, "up_proj", dense_init(d), (d, f), ("embed", "mlp"), pdt)
            hidden = activation(cfg)(project(self, cfg, "gate_proj", x, gate))
            hidden = hidden * project(self, cfg, "up_proj", x, up)
        down = _param(
            self, "down_proj", dense_init(f), (f, d), ("mlp", "embed"), pdt
        )  # Last, as always.
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "act_mlp"))
        return project(self, cfg, "down_proj", hidden, down)


class DecoderBlock(nn.Module):
    """Pre-norm residual block; the scan body over layers.

    With `sandwich_norm` (Gemma) the attention and MLP outputs are normalised
    too (`attn_out_norm`, `mlp_out_norm`) before they join the residual.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, carry, rope, mask, cache_index):
        """carry = (x [B, T, D], whole cache or None, layer index); mask as in `Attention`;
        rope from `layer_ropes`."""
        x, kv, layer = carry
        cfg = self.config
        window = None
        if cfg.windowed:  # This layer's window and RoPE tables.
            window = jnp.asarray(layer_windows(cfg))[layer]
            sliding = jnp.asarray(cfg.sliding_layers)[layer]
            rope = tuple(jnp.where(sliding, local, full) for full, local in zip(*rope))
        h = norm(cfg, "input_norm")(x)
        attn_out, kv = Attention(cfg, name="attn")(h, rope, mask, kv, cache_index, layer, window)
        if cfg.sandwich_norm:
            attn_out = norm(cfg, "attn_out_norm")(attn_out)
        x = x + attn_out
        h = norm(cfg, "post_attn_norm")(x)
        mlp_out = MLP(cfg, name="mlp")(h)
        if cfg.sandwich_norm:
            mlp_out = norm(cfg, "mlp_out_norm")(mlp_out)
        x = x + mlp_out
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        return (x, kv, layer + 1), None
