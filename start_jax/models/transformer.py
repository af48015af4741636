"""The decoder-only transformer as pure functions of (params, tokens, positions, cache).

One trunk serves both heads: the policy head gives per-token logits, the value
head one scalar per token (a critic, or a reward model loaded from a
sequence-classification checkpoint). Layers are stacked with `nn.scan`, so
every per-layer parameter and the KV cache carry a leading layer axis.

The KV cache is an explicit pytree passed in and returned. All rows write the
same cache slots at each call (`end` is shared); which slots hold real tokens
is tracked per row in `valid`, so prompts may be padded anywhere (the sampler
left-pads) and per-row RoPE positions are derived from the count of valid
slots.
"""

from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from start_jax.models import fast_paths
from start_jax.models.config import ModelConfig
from start_jax.models.layers import DecoderBlock, _param, layer_ropes, norm


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer for B rows and S slots."""

    k: jax.Array  # [L, B, K, S, H] keys, already rotated by RoPE.
    v: jax.Array  # [L, B, K, H, S] values (slots last: see `Attention`).
    valid: jax.Array  # [B, S] bool: the slot holds a real (non-padding) token.
    end: jax.Array  # [] int32: slots [0, end) have been written.

    @property
    def max_length(self) -> int:
        return self.k.shape[3]

    def next_positions(self) -> jax.Array:
        """[B] RoPE position the next real token of each row will take."""
        return jnp.sum(self.valid, axis=-1, dtype=jnp.int32)


@flax.struct.dataclass
class ForwardOutput:
    logits: jax.Array | None  # [B, T, V] float32, when the policy head is present.
    values: jax.Array | None  # [B, T] float32, when the value head is present.
    cache: KVCache | None  # The updated cache, when one was passed in.
    hidden: jax.Array | None = None  # [B, T, D] final-norm output, on request.


def init_cache(config: ModelConfig, batch_size: int, max_length: int, dtype=None) -> KVCache:
    """An empty cache with room for `max_length` slots per row."""
    dtype = config.jnp_dtype if dtype is None else dtype
    shape = (config.num_layers, batch_size, config.num_kv_heads, max_length, config.head_dim)
    v_shape = (
        shape[:3] + (config.head_dim, max_length) if fast_paths.v_slots_last(config) else shape
    )
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(v_shape, dtype),
        valid=jnp.zeros((batch_size, max_length), bool),
        end=jnp.zeros((), jnp.int32),
    )


def cache_logical_axes(config: ModelConfig) -> KVCache:
    """The logical axis names of `init_cache(config, ...)`'s arrays."""
    k = ("layers", "batch", "kv_heads", "cache_length", "head_dim")
    v = k[:3] + ("head_dim", "cache_length") if fast_paths.v_slots_last(config) else k
    return KVCache(k=k, v=v, valid=("batch", "cache_length"), end=())


class Transformer(nn.Module):
    """Embedding, L scanned decoder blocks, final norm and the heads."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        pdt = cfg.jnp_param_dtype
        self.embed = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=cfg.jnp_dtype,
            param_dtype=pdt,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(stddev=0.02), ("vocab", "embed")
            ),
        )
        block = DecoderBlock
        if cfg.remat:
            block = nn.remat(DecoderBlock, prevent_cse=False)
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, name="layers")
        self.final_norm = norm(cfg, "final_norm")
        if cfg.lm_head and not cfg.tie_embeddings:
            self.lm_head = _param(
                self,
                "lm_head",
                nn.initializers.normal(stddev=0.02),
                (cfg.hidden_size, cfg.vocab_size),
                ("embed", "vocab"),
                pdt,
            )
        if cfg.value_head:
            self.value_head = _param(
                self,
                "value_head",
                nn.initializers.normal(stddev=0.02),
                (cfg.hidden_size,),
                ("embed",),
                pdt,
            )

    def trunk(self, tokens, positions, mask, cache_index, kv):
        """tokens [B, T] -> final-norm hidden [B, T, D] and the new per-layer kv.

        `mask` is (key_valid [B, S], q_slots [T] or None, documents [B, T] or None): see
        `Attention`.
        """
        x = self.embed(tokens)
        if self.config.embed_scale:  # Gemma: the scale rounded to the parameters' dtype.
            scale = jnp.asarray(self.config.hidden_size**0.5, self.config.jnp_param_dtype)
            x = x * scale.astype(x.dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
        rope = layer_ropes(self.config, positions)
        (x, kv, _), _ = self.layers((x, kv, jnp.zeros((), jnp.int32)), rope, mask, cache_index)
        return self.final_norm(x), kv

    def logits(self, hidden):
        """[B, T, D] -> [B, T, V] float32 logits (matmul accumulated in float32)."""
        dt = self.config.jnp_dtype
        if self.config.tie_embeddings:
            kernel = self.embed.embedding.T
        else:
            kernel = self.lm_head
        return jnp.einsum(
            "BTD,DV->BTV", hidden.astype(dt), kernel.astype(dt), preferred_element_type=jnp.float32
        )

    def values(self, hidden):
        """[B, T, D] -> [B, T] float32 scalars."""
        dt = self.config.jnp_dtype
        return jnp.einsum(
            "BTD,D->BT",
            hidden.astype(dt),
            self.value_head.astype(dt),
            preferred_element_type=jnp.float32,
        )

    def __call__(self, tokens, positions, mask, cache_index, kv):
        hidden, kv = self.trunk(tokens, positions, mask, cache_index, kv)
        logits = self.logits(hidden) if self.config.lm_head else None
        values = self.values(hidden) if self.config.value_head else None
        return hidden, logits, values, kv


def document_positions(attention_mask: jax.Array, documents: jax.Array) -> jax.Array:
    """int32 [B, T]: each token's index among the real tokens of its own document (the
    RoPE positions of sequences packed into rows; each document one contiguous run)."""
    valid = attention_mask.astype(jnp.int32)
    before = jnp.cumsum(valid, axis=-1, dtype=jnp.int32) - valid  # Real tokens before t.
    starts = jnp.concatenate(
        [jnp.ones_like(documents[:, :1], bool), documents[:, 1:] != documents[:, :-1]], axis=1
    )
    # `before` never decreases along a row, so the running max over document starts is
    # the count at the start of t's document.
    base = jax.lax.cummax(jnp.where(starts, before, -1), axis=1)
    return before - base


def _masks_and_positions(tokens, positions, attention_mask, cache, documents=None):
    """The attention mask, described, and default positions.

    Returns ((key_valid [B, S], q_slots [T] or None, documents [B, T] or None),
    positions, new cache `valid`). Key slot s is visible to query t iff s <= q_slots[t]
    and key_valid[b, s] (and, for packed rows, documents[b, s] == documents[b, t]);
    without a cache q_slots is None (arange(T), S == T). No [B, T, S] array is built
    here (see `attention.attend`).
    """
    b, t = tokens.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), bool)
    attention_mask = attention_mask.astype(bool)
    counted = jnp.cumsum(attention_mask, axis=-1, dtype=jnp.int32) - 1  # [B, T]
    if documents is not None:
        if cache is not None:
            raise ValueError("documents (packed rows) are for forwards without a KV cache")
        documents = jnp.asarray(documents, jnp.int32)
        if positions is None:
            positions = document_positions(attention_mask, documents)
        return (attention_mask, None, documents), positions, None
    if cache is None:
        if positions is None:
            positions = jnp.maximum(counted, 0)
        return (attention_mask, None, None), positions, None
    if positions is None:
        positions = jnp.maximum(cache.next_positions()[:, None] + counted, 0)
    valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, cache.end))
    query_slot = cache.end + jnp.arange(t, dtype=jnp.int32)  # [T]
    return (valid, query_slot, None), positions, valid


def apply(
    config: ModelConfig,
    params,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    cache: KVCache | None = None,
    attention_mask: jax.Array | None = None,
    *,
    return_hidden: bool = False,
    heads: bool = True,
    documents: jax.Array | None = None,
) -> ForwardOutput:
    """Runs the model (not jitted; see `forward` for the jitted entry point).

    Args:
        config: the model's configuration.
        params: the parameter pytree (as from `init_params` or `load_pretrained`).
        tokens: int32 [B, T] token ids.
        positions: int32 [B, T] RoPE positions. Default: the index of each token
            among the row's real tokens (counting those already in the cache).
        cache: a `KVCache`; the T tokens are appended at slot `cache.end`. The
            caller must leave room: writes past the last slot are clamped by XLA.
        attention_mask: bool [B, T]; False marks padding tokens, which no later
            token attends to. Default: all True.
        return_hidden: also return the final-norm hidden states.
        heads: compute the heads; False returns only hidden states (used to
            compute log-probabilities in chunks without [B, T, V] logits).
        documents: int32 [B, T] (>= 0), no cache: several sequences packed into each
            row, one contiguous run of tokens each. A token attends only to its own
            document, and the default positions count from 0 in each document, so every
            document gets the outputs it would get alone in a row.

    Returns:
        A `ForwardOutput`.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    mask, positions, valid = _masks_and_positions(
        tokens, positions, attention_mask, cache, documents
    )
    kv = None if cache is None else (cache.k, cache.v)
    cache_index = jnp.zeros((), jnp.int32) if cache is None else cache.end
    model = Transformer(config)
    variables = {"params": params}
    if heads:
        hidden, logits, values, kv = model.apply(
            variables, tokens, positions, mask, cache_index, kv
        )
    else:
        hidden, kv = model.apply(
            variables, tokens, positions, mask, cache_index, kv, method=Transformer.trunk
        )
        logits = values = None
    new_cache = None
    if cache is not None:
        new_cache = KVCache(k=kv[0], v=kv[1], valid=valid, end=cache.end + tokens.shape[1])
    return ForwardOutput(
        logits=logits,
        values=values,
        cache=new_cache,
        hidden=hidden if (return_hidden or not heads) else None,
    )


forward = jax.jit(apply, static_argnames=("config", "return_hidden", "heads"))
forward.__doc__ = "Jitted `apply`: " + (apply.__doc__ or "")


def head_logits(config: ModelConfig, params, hidden: jax.Array) -> jax.Array:
    """Policy logits [..., V] float32 for hidden states [B, T, D] (for chunking)."""
    return Transformer(config).apply({"params": params}, hidden, method=Transformer.logits)


def head_kernel(config: ModelConfig, params) -> jax.Array:
    """The policy head as a [D, V] matrix (the embedding table, transposed, when tied)."""
    if config.tie_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]


def head_values(config: ModelConfig, params, hidden: jax.Array) -> jax.Array:
    """Value-head scalars [B, T] float32 for hidden states [B, T, D]."""
    return Transformer(config).apply({"params": params}, hidden, method=Transformer.values)


def _init_boxed(config: ModelConfig, rng: jax.Array):
    tokens = jnp.zeros((1, 1), jnp.int32)
    mask, positions, _ = _masks_and_positions(tokens, None, None, None)
    return Transformer(config).init(rng, tokens, positions, mask, jnp.zeros((), jnp.int32), None)[
        "params"
    ]


def init_params(config: ModelConfig, rng: jax.Array):
    """Random parameters (unsharded; see `sharding.init_sharded` for a mesh)."""
    return nn.unbox(jax.jit(_init_boxed, static_argnums=0)(config, rng))


def param_logical_axes(config: ModelConfig):
    """Pytree like the params whose leaves are tuples of logical axis names."""
    boxed = jax.eval_shape(functools.partial(_init_boxed, config), jax.random.key(0))
    specs = nn.get_partition_spec(boxed)
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def param_shapes(config: ModelConfig):
    """Pytree of `jax.ShapeDtypeStruct` for the params."""
    return nn.unbox(jax.eval_shape(functools.partial(_init_boxed, config), jax.random.key(0)))


def value_model_from_policy(config: ModelConfig, params, rng: jax.Array):
    """A separate value model: a copy of the policy trunk with a new value head.

    Returns (value_config, value_params); the policy head is dropped and the
    trunk arrays are copied, so training one never changes the other.
    """
    value_config = config.replace(lm_head=False, value_head=True, tie_embeddings=False)
    trunk = {
        k: jax.tree.map(jnp.copy, v)
        for k, v in params.items()
        if k not in ("lm_head", "value_head")
    }
    head = 0.02 * jax.random.normal(rng, (config.hidden_size,), jnp.float32)
    trunk["value_head"] = head.astype(config.jnp_param_dtype)
    return value_config, trunk


def sequence_scores(values: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Per-row value at the last real token: [B, T] values -> [B] scores.

    This is how sequence-classification reward models pool their per-token
    scores. Rows are assumed right-padded or unpadded; the last True entry of
    `attention_mask` is taken.
    """
    t = values.shape[-1]
    idx = t - 1 - jnp.argmax(attention_mask[:, ::-1].astype(jnp.int32), axis=-1)
    return jnp.take_along_axis(values, idx[:, None], axis=-1)[:, 0]
