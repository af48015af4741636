"""Token log-probabilities, entropies and values of a rollout, chunked.

Arrays are aligned with the tokens: `logp[b, t]` is log p(tokens[b, t] |
tokens[b, :t]) (0 at t = 0), and `values[b, t]` is the value of the state
before token t. When the [B, L, V] float32 logits are small (`auto_chunk`) the
vocabulary head is one matmul whose logits the backward pass reuses; otherwise
it runs on `chunk` positions at a time inside a rematerialised scan, so
neither the forward nor the backward pass ever holds a [B, L, V] float32
logits array: the peak is [B, chunk, V].

`banned` ids (the think tags of a run with `sampling.ban_tags_in_response`)
have no probability at the positions a `ban` mask marks (the response
tokens): the same distribution the sampler draws those tokens from.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from start_jax import segments
from start_jax.models import fast_paths, transformer
from start_jax.models.config import ModelConfig


def _shifted_hidden(config: ModelConfig, params, tokens, segment_ids, documents=None):
    """Hidden states that predict each token: [B, L - 1, D] for tokens[:, 1:]."""
    mask = segment_ids != segments.PAD
    if documents is None:
        positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    else:
        positions = transformer.document_positions(mask, documents)
    out = transformer.apply(
        config,
        params,
        tokens,
        positions=positions,
        attention_mask=mask,
        heads=False,
        documents=documents,
    )
    return out.hidden[:, :-1]


def _first_of_document(documents, start: int) -> jax.Array:
    """bool [B, L - start]: columns start.. that open a document (nothing predicts them)."""
    return (documents[:, start:] != documents[:, start - 1 : -1]) if documents is not None else None


def _pad_front(x: jax.Array) -> jax.Array:
    return jnp.pad(x, ((0, 0), (1, 0)))


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[B, T, ...] -> [T / chunk, B, chunk, ...] (T padded up to a multiple)."""
    b, t = x.shape[:2]
    pad = (-t) % chunk
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((b, (t + pad) // chunk, chunk) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _unchunk(x: jax.Array, t: int) -> jax.Array:
    """[n, B, chunk] -> [B, t]."""
    n, b, c = x.shape
    return jnp.moveaxis(x, 0, 1).reshape(b, n * c)[:, :t]


def logits_log_probs(
    logits: jax.Array, targets: jax.Array, temperature: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """log p_T(targets) and entropy of p_T, from logits [..., V] and targets [...]."""
    logits = logits.astype(jnp.float32) / temperature
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    probs = jnp.exp(logits - logz[..., None])
    return picked - logz, logz - jnp.sum(probs * logits, axis=-1)


def _chunk_logits(h, kernel, temperature, dtype):
    """[B, C, D] x [D, V] -> [B, C, V] float32 logits / temperature."""
    return (
        jnp.einsum(
            "BCD,DV->BCV", h.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32
        )
        / temperature
    )


BANNED_LOGIT = -1e30  # Finite, so that 0 * logit stays 0 in the entropy and its gradient.


def _ban(z, ban, banned):
    """z [B, C, V] with the `banned` columns at BANNED_LOGIT where `ban` [B, C] is set."""
    if not banned or ban is None:
        return z
    ids = jnp.asarray(banned, jnp.int32)
    return z.at[..., ids].set(jnp.where(ban[..., None], BANNED_LOGIT, z[..., ids]))


def _block_stats(h, kernel, y, temperature, dtype, ban=None, banned=()):
    """(log p_T(y), entropy, z, lse) of one block of positions [B, C].

    z = logits / temperature [B, C, V] float32 and lse its log-sum-exp [B, C, 1]:
    log p = z - lse, and the entropy is lse - sum(e z) / s with m the row
    maximum, e = exp(z - m) and s = sum(e). XLA:CPU computes the maximum with
    the logits matmul, then e once; z - m is not stored.
    """
    z = _ban(_chunk_logits(h, kernel, temperature, dtype), ban, banned)
    m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    e = jnp.exp(z - m)
    s = jnp.sum(e, axis=-1, keepdims=True)
    lse = m + jnp.log(s)
    entropy = (lse - jnp.sum(e * z, axis=-1, keepdims=True) / s)[..., 0]
    picked = jnp.take_along_axis(z, y[..., None], axis=-1)[..., 0]
    return picked - lse[..., 0], entropy, z, lse


def _block_grads(h, kernel, y, z, lse, a, b, temperature, dtype):
    """(d hidden [B, C, D], d kernel [D, V] float32) of sum(a log p_y + b H) for one block.

      d/dz [a log p_y + b H] = a (onehot_y - p) - b p (log p + H)

    `b` None: no entropy term (its cotangent is zero).
    """
    log_p = z - lse
    p = jnp.exp(log_p)
    if b is None:
        dz = -p * a[..., None]
    else:
        entropy = -jnp.sum(p * log_p, axis=-1, keepdims=True)
        dz = -p * (a[..., None] + b[..., None] * (log_p + entropy))
    dz = jnp.where(jnp.arange(z.shape[-1]) == y[..., None], dz + a[..., None], dz)
    dz = (dz / temperature).astype(dtype)
    d_h = jnp.einsum(
        "BCV,DV->BCD", dz, kernel.astype(dtype), preferred_element_type=jnp.float32
    ).astype(h.dtype)
    d_kernel = jnp.einsum("BCD,BCV->DV", h.astype(dtype), dz, preferred_element_type=jnp.float32)
    return d_h, d_kernel


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 7, 8))
def chunked_head(
    hidden, kernel, targets, temperature, chunk, dtype, ban=None, banned=(), barrier=False
):
    """log p_T(targets) and entropies [B, T] through the head `kernel` [D, V].

    `ban` [B, T] bool (or None) marks the positions where the `banned` ids
    have no probability.

    With chunk < T, forward and backward both loop over chunks of positions;
    the backward recomputes each chunk's logits and writes d logits directly,

      d/dz [g1 log p_y + g2 H] = g1 (onehot_y - p) - g2 p (log p + H),

    so its peak memory is a few [B, chunk, V] arrays whatever the length.
    With chunk >= T the head is one matmul and the forward keeps the [B, T,
    V] float32 logits for the backward, which then recomputes nothing. A zero
    entropy cotangent (the loss has no entropy term) is skipped. `barrier`: d kernel
    behind `fast_paths.kernel_grad`'s optimization barrier (a CPU fast path).
    """
    args = (hidden, kernel, targets, temperature, chunk, dtype, ban, banned, barrier)
    return _chunked_head_fwd(*args)[0]


def _value(x):
    return x.value if isinstance(x, jax.custom_derivatives.CustomVJPPrimal) else x


def _chunked_head_fwd(hidden, kernel, targets, temperature, chunk, dtype, ban, banned, barrier):
    del barrier  # The backward pass's.
    hidden, kernel, targets, ban = _value(hidden), _value(kernel), _value(targets), _value(ban)
    if not banned:
        ban = None
    t = hidden.shape[1]
    if chunk >= t:
        logp, ent, z, lse = _block_stats(hidden, kernel, targets, temperature, dtype, ban, banned)
        return (logp, ent), (hidden, kernel, targets, ban, z, lse)

    def body(_, xs):
        h, y, b = xs
        return None, _block_stats(h, kernel, y, temperature, dtype, b, banned)[:2]

    xs = (
        _chunks(hidden, chunk),
        _chunks(targets, chunk),
        None if ban is None else _chunks(ban, chunk),
    )
    _, (logp, ent) = jax.lax.scan(body, None, xs)
    return (_unchunk(logp, t), _unchunk(ent, t)), (hidden, kernel, targets, ban, None, None)


def _chunked_head_bwd(temperature, chunk, dtype, banned, barrier, residuals, cotangents):
    hidden, kernel, targets, ban, z, lse = residuals
    g_logp, g_ent = cotangents
    zero = jax.custom_derivatives.SymbolicZero
    if isinstance(g_logp, zero):
        g_logp = jnp.zeros(targets.shape, jnp.float32)
    if isinstance(g_ent, zero):
        g_ent = None
    t = hidden.shape[1]
    if z is not None:
        d_hidden, d_kernel = _block_grads(
            hidden, kernel, targets, z, lse, g_logp, g_ent, temperature, dtype
        )
        return d_hidden, fast_paths.kernel_grad(d_kernel, kernel.dtype, barrier), None, None

    def body(d_kernel, xs):
        h, y, a, b, n = xs
        z = _ban(_chunk_logits(h, kernel, temperature, dtype), n, banned)  # [B, C, V]
        lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
        d_h, d_k = _block_grads(h, kernel, y, z, lse, a, b, temperature, dtype)
        return d_kernel + d_k, d_h

    xs = (
        _chunks(hidden, chunk),
        _chunks(targets, chunk),
        _chunks(g_logp, chunk),
        None if g_ent is None else _chunks(g_ent, chunk),
        None if ban is None else _chunks(ban, chunk),
    )
    d_kernel, d_h = jax.lax.scan(body, jnp.zeros(kernel.shape, jnp.float32), xs)
    n, b, c, d = d_h.shape
    d_hidden = jnp.moveaxis(d_h, 0, 1).reshape(b, n * c, d)[:, :t]
    return d_hidden, fast_paths.kernel_grad(d_kernel, kernel.dtype, barrier), None, None


chunked_head.defvjp(_chunked_head_fwd, _chunked_head_bwd, symbolic_zeros=True)


CHUNK_BYTES = 128 * 2**20  # Target size of one [B, chunk, V] float32 array.
UNCHUNKED_BYTES = 512 * 2**20  # Whole-head [B, T, V] float32 logits up to this size.


def auto_chunk(
    batch: int, vocab: int, length: int, budget: int = CHUNK_BYTES, unchunked: int = UNCHUNKED_BYTES
) -> int:
    """Positions per head chunk: `length` (one matmul, nothing recomputed) when the
    [B, length, V] float32 logits fit `unchunked` bytes; else about the largest
    power of two (8 to 512) whose [B, chunk, V] logits fit `budget`, evened out
    so that the chunks cover `length` with the least padding."""
    length = max(length, 1)
    if batch * length * vocab * 4 <= unchunked:
        return length
    chunk = 8
    while chunk < 512 and batch * (2 * chunk) * vocab * 4 <= budget:
        chunk *= 2
    return _even_chunk(chunk, length)


def _even_chunk(chunk: int, length: int) -> int:
    """The smallest chunk that covers `length` in as many chunks as `chunk` does."""
    n = -(-length // chunk)
    return -(-length // n)


def head_log_probs(
    config: ModelConfig,
    params,
    hidden: jax.Array,
    targets: jax.Array,
    temperature: float = 1.0,
    chunk: int = 0,
    ban: jax.Array | None = None,
    banned: tuple[int, ...] = (),
) -> tuple[jax.Array, jax.Array]:
    """log p_T(targets) and entropies [B, T] from hidden states [B, T, D].

    p_T = softmax(logits / temperature): the distribution the sampler drew
    from. `chunk=0` picks the chunk with `auto_chunk`: the whole head at
    once when the [B, T, V] float32 logits take at most 512 MiB (they are
    then kept for the backward pass, which recomputes nothing), else chunks
    whose logits take at most 128 MiB, recomputed in the backward pass
    (`chunked_head`). A given `chunk` >= T also runs the head at once.
    `ban` [B, T] marks the positions where the `banned` ids get no probability.
    """
    t = hidden.shape[1]
    if not chunk:
        chunk = auto_chunk(hidden.shape[0], config.vocab_size, t)
    chunk = max(1, min(_even_chunk(chunk, t), t))
    kernel = transformer.head_kernel(config, params)
    banned = tuple(sorted({int(t) for t in banned})) if ban is not None else ()
    return chunked_head(
        hidden,
        kernel,
        targets.astype(jnp.int32),
        float(temperature),
        chunk,
        config.jnp_dtype,
        ban if banned else None,
        banned,
        fast_paths.enabled(config),
    )


def token_log_probs(
    config: ModelConfig,
    params,
    tokens: jax.Array,
    segment_ids: jax.Array,
    temperature: float = 1.0,
    chunk: int = 0,
    start: int = 0,
    response_banned: tuple[int, ...] = (),
    documents: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(logp, entropy), each [B, L] aligned with `tokens`; 0 at t = 0.

    `documents` (int32 [B, L], see `transformer.apply`): rows that pack several
    sequences, each one contiguous run; every sequence gets the values it would get
    alone, and 0 at its first token (as at t = 0).

    `response_banned` ids (the think tags when `sampling.ban_tags_in_response`
    is set) get no probability at the RESPONSE tokens, as in the sampler.

    `start` > 0: the vocabulary head runs only for columns start..L-1 (the
    trunk still reads every token); columns before `start` are 0. For
    rollouts whose first `start` columns are prompt, where no loss reads a
    log-probability, this skips the head's work on the prompt.
    """
    start = max(1, min(start, tokens.shape[1]))
    hidden = _shifted_hidden(config, params, tokens, segment_ids, documents)[:, start - 1 :]
    ban = segment_ids[:, start:] == segments.RESPONSE if response_banned else None
    logp, entropy = head_log_probs(
        config, params, hidden, tokens[:, start:], temperature, chunk, ban, response_banned
    )
    first = _first_of_document(documents, start)
    if first is not None:
        logp, entropy = jnp.where(first, 0.0, logp), jnp.where(first, 0.0, entropy)
    pad = lambda x: jnp.pad(x, ((0, 0), (start, 0)))  # noqa: E731
    return pad(logp), pad(entropy)


def token_values(
    config: ModelConfig,
    params,
    tokens: jax.Array,
    segment_ids: jax.Array,
    documents: jax.Array | None = None,
) -> jax.Array:
    """Value of the state before each token [B, L] (0 at t = 0 and, in packed rows, at
    each document's first token)."""
    hidden = _shifted_hidden(config, params, tokens, segment_ids, documents)
    values = transformer.head_values(config, params, hidden)
    first = _first_of_document(documents, 1)
    if first is not None:
        values = jnp.where(first, 0.0, values)
    return _pad_front(values)


@functools.partial(jax.jit, static_argnames=("config", "temperature", "chunk", "response_banned"))
def rollout_log_probs(
    config: ModelConfig, params, tokens, segment_ids, temperature=1.0, chunk=0, response_banned=()
) -> jax.Array:
    """Jitted, gradient-free log-probabilities for old and reference policies."""
    return token_log_probs(
        config,
        params,
        tokens,
        segment_ids,
        temperature,
        chunk,
        response_banned=tuple(response_banned),
    )[0]


rollout_values = jax.jit(token_values, static_argnames=("config",))
