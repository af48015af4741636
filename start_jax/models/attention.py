"""Grouped-query attention with a described mask, by one of several kernels.

`attend` is the one entry point. The mask is described, never passed as a
[B, T, S] array: key slot s is visible to query t of row b iff

    s <= q_slots[t]  and  key_valid[b, s]

(`q_slots` None means q_slots = arange(T), i.e. self-attention without a
cache, S == T), and, for a sliding-window layer (`window` given),

    s > q_slots[t] - window. `key_valid` marks padding (anywhere: left-padded prompts,
right-padded responses, unwritten cache slots) and the query slots give
causality, also for a chunk of queries appended to a KV cache at an offset.

With `documents` (int32 [B, T], self-attention only: several sequences packed into one
row), key s is visible to query t only if also documents[b, s] == documents[b, t]:
every implementation applies it ("cudnn" takes "blockwise" for it, "pallas" reads it
as its segment ids).

Implementations (`impl`):

* "xla": the dense reference, scores [B, K, G, T, S] in float32 from a dense
  mask built here. Memory grows with T * S; it is the fast path for decoding
  (T = 1) and short prefills.
* "blockwise": online softmax (flash attention) over [block_q, block_k]
  tiles with `lax.fori_loop`, float32 running max, sum and accumulator. A
  `jax.custom_vjp` saves only the output and the per-row log-sum-exp and
  recomputes each tile's scores in the backward pass, so temporaries stay
  O(B * heads * block_q * block_k) in both passes, plus O(T * H) for
  outputs and gradients. Key blocks wholly in the future of a query block are
  skipped (the loop runs to the last block the block's last query can see).
* "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, GPU only,
  bfloat16/float16 only (other dtypes take "blockwise"). cuDNN's masks are
  causal (top-left aligned) plus per-row key lengths (right padding), so each
  row is rolled left by its count of leading padding slots: a row whose
  valid keys are one contiguous run starting anywhere then becomes
  right-padded with the same causal order, which cuDNN expresses exactly
  (`is_causal`, `key_value_seq_lengths`), and the output is rolled back.
  Rows with padding in the middle, or queries not at slots 0..T-1 (a cache
  written at an offset), cannot be expressed; a `lax.cond` checks this at run
  time and takes "blockwise" instead (for the whole batch when any row has a
  hole). Only queries preceded by left padding
  (which see no key at all) differ from "xla": they see the row's keys.
* "pallas": the TPU Pallas flash-attention kernel
  (`jax.experimental.pallas.ops.tpu.flash_attention`) with segment ids for
  padding; TPU only, self-attention without a cache (`q_slots` None) and
  lengths that are multiples of 128, else "blockwise". Never run on a TPU:
  checked only on CPU in Pallas's TPU interpret mode (the forward pass in
  tests/test_attention.py; gradients once, to 1.1e-5 of the dense path). On a
  multi-device mesh the kernel would need a `shard_map` around it (not done).
* With a `window`, "cudnn" and "pallas" take "blockwise" (their window
  options are not wired); "xla" and "blockwise" apply it.
* "auto": `choose_impl`: "xla" for T < `DENSE_MAX_T` (decode, short
  prefills), else by `jax.default_backend()`: gpu -> "cudnn" for
  bfloat16/float16 and "blockwise" otherwise, tpu -> "pallas", cpu and
  others -> "blockwise".

Measured once on one H200 (jax 0.11.2, bfloat16, B = 4, T = 4096, 16 query /
8 key-value heads of width 128, one left-padded row), forward + backward:
"cudnn" 3.3 ms, "blockwise" with 512 x 512 tiles 13.7 ms (128 x 128: 45.8
ms), "xla" 25.5 ms; compiled temporaries of a 2-layer trunk gradient (B = 8,
L = 8192, 8/4 heads of width 32, remat): "cudnn" 0.97 GiB, "blockwise" 0.92
GiB, "xla" 44.1 GiB. Outputs and gradients of "cudnn" were within bfloat16
rounding of a float32 dense reference (as close as bfloat16 "xla").

Shapes: q [B, T, K, G, H], already multiplied by 1 / sqrt(H); k [B, K, S, H];
v [B, K, S, H] or, with `v_slots_last`, [B, K, H, S] (the KV cache layout).
The output is [B, T, K, G, H] in q's dtype.

Every query row with at least one visible key gets the dense reference's
value (up to float rounding). A row with none (a query preceded only by
padding) is finite: "xla" averages all S values uniformly, "blockwise"
averages the values of the key blocks it visits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from start_jax.models.config import ATTENTION_IMPLS as IMPLS

# Large negative logit for masked attention entries; finite so that a query
# with no visible key (a padding query) gives a uniform row instead of NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

# "auto" runs the dense path below this many new tokens (decode steps and
# short prefills), where its [T, S] scores are small. On 2 CPU cores (batch 8,
# 8 query / 4 key-value heads of width 32, float32, forward + backward) the
# two take the same time at T = 64, and blockwise with 128 x 128 tiles is
# about 2x faster at T = 128, 3x at T = 256 and 5-8x at T = 1024 (it skips
# the future half of the tiles and never builds the [T, S] arrays).
DENSE_MAX_T = 128

# Default "blockwise" tiles by backend: small tiles stay in cache on CPU (at
# T = 1024 on 2 cores 128 x 128 was 2-3x faster than 512 x 512); on an H200
# (bfloat16, T = 4096, H = 128) 512 x 512 was 3x faster than 128 x 128.
DEFAULT_BLOCK = {"cpu": 128}
DEFAULT_BLOCK_OTHER = 512


def default_block(backend: str | None = None) -> int:
    """The "blockwise" tile size used when none is given."""
    return DEFAULT_BLOCK.get(backend or jax.default_backend(), DEFAULT_BLOCK_OTHER)


_CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def choose_impl(
    impl: str, t: int, dtype, q_slots_given: bool = True, backend: str | None = None
) -> str:
    """The implementation `attend` runs for `impl` with T = t queries of `dtype`."""
    if impl not in IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; expected one of {IMPLS}")
    backend = backend or jax.default_backend()
    if impl == "auto":
        if t < DENSE_MAX_T:
            return "xla"
        impl = {"gpu": "cudnn", "tpu": "pallas"}.get(backend, "blockwise")
    if impl == "cudnn":
        if backend != "gpu":
            raise ValueError(f"attention_impl='cudnn' needs a GPU; the backend is {backend!r}")
        if jnp.dtype(dtype) not in _CUDNN_DTYPES:
            return "blockwise"
    if impl == "pallas":
        if backend != "tpu":
            raise ValueError(f"attention_impl='pallas' needs a TPU; the backend is {backend!r}")
        if q_slots_given or t % 128:
            return "blockwise"
    return impl


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    key_valid: jax.Array,
    q_slots: jax.Array | None = None,
    impl: str = "auto",
    block_q: int | None = None,
    block_k: int | None = None,
    v_slots_last: bool = False,
    window: jax.Array | int | None = None,
    documents: jax.Array | None = None,
) -> jax.Array:
    """Attention of q [B, T, K, G, H] (pre-scaled) to k, v; returns [B, T, K, G, H].

    Args:
        q: queries [B, T, K, G, H], already multiplied by 1 / sqrt(H).
        k: keys [B, K, S, H].
        v: values [B, K, S, H], or [B, K, H, S] when `v_slots_last`.
        key_valid: bool [B, S]; False for padding and unwritten cache slots.
        q_slots: int32 [T], the key slot of each query (causality: key slot s
            is visible iff s <= q_slots[t]); None: arange(T) with S == T.
        impl: "auto", "xla", "blockwise", "cudnn" or "pallas" (module doc).
        block_q, block_k: tile sizes of "blockwise" (clipped to T and S);
            None: `default_block()` (128 on CPU, 512 elsewhere).
        v_slots_last: v is [B, K, H, S].
        window: None, or an int32 scalar (traced or not): key slot s is
            visible only if s > q_slots[t] - window (a sliding-window layer).
        documents: None, or int32 [B, T] document ids of packed rows (self-attention,
            `q_slots` None): a query sees only keys of its own document.
    """
    b, t, kh, g, h = q.shape
    s = k.shape[2]
    if q_slots is None and s != t:
        raise ValueError(f"q_slots=None needs as many keys as queries; got T={t}, S={s}")
    if documents is not None and (q_slots is not None or documents.shape != (b, t)):
        raise ValueError(
            f"documents need self-attention (q_slots None) and shape {(b, t)}; got "
            f"{documents.shape} with q_slots {'given' if q_slots is not None else 'None'}"
        )
    impl = choose_impl(impl, t, q.dtype, q_slots is not None)
    if window is not None and impl in ("cudnn", "pallas"):
        impl = "blockwise"
    if documents is not None and impl == "cudnn":
        impl = "blockwise"  # cuDNN's masks (causal + key lengths) cannot express documents.
    block_q = block_q or default_block()
    block_k = block_k or default_block()
    if impl == "xla":
        return _attend_dense(q, k, v, key_valid, q_slots, v_slots_last, window, documents)
    if impl == "pallas":
        return _attend_pallas(q, k, v, key_valid, v_slots_last, documents)
    slots = jnp.arange(t, dtype=jnp.int32) if q_slots is None else q_slots.astype(jnp.int32)
    if impl == "blockwise":
        return blockwise(
            q, k, v, slots, key_valid, block_q, block_k, v_slots_last, window, documents
        )
    if impl == "cudnn":
        return attend_rolled(
            q,
            k,
            v,
            key_valid,
            q_slots,
            implementation="cudnn",
            fallback=functools.partial(blockwise, block_q=block_q, block_k=block_k),
            v_slots_last=v_slots_last,
        )
    raise AssertionError(impl)


def dense_mask(
    key_valid: jax.Array,
    q_slots: jax.Array | None,
    t: int,
    window: jax.Array | int | None = None,
    documents: jax.Array | None = None,
) -> jax.Array:
    """The [B, T, S] bool mask that `key_valid`, `q_slots`, `window` and `documents`
    describe."""
    s = key_valid.shape[1]
    if q_slots is None:
        q_slots = jnp.arange(t)
    causal = jnp.arange(s)[None, :] <= q_slots[:, None]  # [T, S]
    if window is not None:
        causal &= jnp.arange(s)[None, :] > q_slots[:, None] - window
    mask = causal[None] & key_valid.astype(bool)[:, None, :]  # [B, T, S]
    if documents is not None:
        mask &= documents[:, :, None] == documents[:, None, :]
    return mask


def _attend_dense(q, k, v, key_valid, q_slots, v_slots_last, window=None, documents=None):
    """The dense reference (the model's attention before this module)."""
    b, t, kh, g, h = q.shape
    dt = q.dtype
    mask = dense_mask(key_valid, q_slots, t, window, documents)
    scores = jnp.einsum("BTKGH,BKSH->BKGTS", q, k.astype(dt), preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    pv = "BKGTS,BKHS->BTKGH" if v_slots_last else "BKGTS,BKSH->BTKGH"
    return jnp.einsum(pv, probs, v.astype(dt))


# ----------------------------------------------------------------- blockwise


def _pad_axis(x, axis: int, size: int, value=0):
    pad = size - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def blockwise(
    q,
    k,
    v,
    q_slots,
    key_valid,
    block_q: int = 128,
    block_k: int = 128,
    v_slots_last: bool = False,
    window=None,
    documents=None,
):
    """Online-softmax attention over tiles; see the module docstring."""
    b, t, kh, g, h = q.shape
    s = k.shape[2]
    bq, bk = max(1, min(block_q, t)), max(1, min(block_k, s))
    tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
    dt = q.dtype
    # Queries as [B, K, G, T, H] so that each tile is one batched matmul over
    # (B, K) with G * block_q rows; T and S padded to whole tiles (padding
    # queries repeat the last slot, padding keys are invalid).
    qt = _pad_axis(q.transpose(0, 2, 3, 1, 4), 3, tp)
    slots = _pad_axis(q_slots.astype(jnp.int32), 0, tp)
    if tp > t:
        slots = slots.at[t:].set(q_slots[-1])
    kp = _pad_axis(k.astype(dt), 2, sp)
    vp = _pad_axis(v.astype(dt), 3 if v_slots_last else 2, sp)
    valid = _pad_axis(key_valid.astype(bool), 1, sp, False)
    windowed = window is not None
    w = jnp.asarray(window if windowed else 0, jnp.int32)
    if documents is None:
        docs = jnp.zeros((b, 1), jnp.int32)  # Unread (`packed` False).
    else:  # Query documents padded to Tp and key documents to Sp (their keys are invalid).
        docs = _pad_axis(documents.astype(jnp.int32), 1, max(tp, sp))
    flash = _flash(bq, bk, v_slots_last, windowed, documents is not None)
    out = flash(qt, kp, vp, slots, valid, w, docs)  # [B, K, G, Tp, H]
    return out[:, :, :, :t].transpose(0, 3, 1, 2, 4)


def _tile_mask(q_slots_blk, valid, j, bk, window=None, docs=None, q_docs=None):
    """[B, 1, 1, bq, bk] bool mask of key block j for queries at q_slots_blk [bq];
    with `docs` ([B, Sp] key documents) and `q_docs` ([B, bq]), within documents."""
    key_slots = j * bk + jnp.arange(bk)
    causal = key_slots[None, :] <= q_slots_blk[:, None]  # [bq, bk]
    if window is not None:
        causal &= key_slots[None, :] > q_slots_blk[:, None] - window
    vb = jax.lax.dynamic_slice_in_dim(valid, j * bk, bk, axis=1)  # [B, bk]
    mask = causal[None] & vb[:, None, :]  # [B, bq, bk]
    if docs is not None:
        kd = jax.lax.dynamic_slice_in_dim(docs, j * bk, bk, axis=1)  # [B, bk]
        mask &= q_docs[:, :, None] == kd[:, None, :]
    return mask[:, None, None]


def _key_blocks(q_slots_blk, bk, nk):
    """How many key blocks query slots q_slots_blk can see (later ones are skipped)."""
    return jnp.minimum(nk, jnp.max(q_slots_blk) // bk + 1)


def _slice_v(v, j, bk, v_slots_last):
    return jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=3 if v_slots_last else 2)


def _scores(qb, kb):
    """[B, K, G, bq, H] x [B, K, bk, H] -> float32 [B, K, G, bq, bk]."""
    return jnp.einsum("BKGtH,BKsH->BKGts", qb, kb, preferred_element_type=jnp.float32)


def _pv(p, vb, v_slots_last):
    spec = "BKGts,BKHs->BKGtH" if v_slots_last else "BKGts,BKsH->BKGtH"
    return jnp.einsum(spec, p.astype(vb.dtype), vb, preferred_element_type=jnp.float32)


def _q_docs(docs, i, bq):
    return None if docs is None else jax.lax.dynamic_slice_in_dim(docs, i * bq, bq, axis=1)


def _forward(bq, bk, v_slots_last, q, k, v, q_slots, valid, window=None, docs=None):
    """(out [B, K, G, Tp, H] in q.dtype, lse [B, K, G, Tp] float32)."""
    b, kh, g, tp, h = q.shape
    nq, nk = tp // bq, k.shape[2] // bk

    def q_block(i, carry):
        out, lse = carry
        qb = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=3)  # [B, K, G, bq, H]
        sl = jax.lax.dynamic_slice_in_dim(q_slots, i * bq, bq)
        qd = _q_docs(docs, i, bq)

        def k_block(j, c):
            m, l, acc = c
            kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
            mask = _tile_mask(sl, valid, j, bk, window, docs, qd)
            sc = jnp.where(mask, _scores(qb, kb), MASK_VALUE)
            m_new = jnp.maximum(m, jnp.max(sc, axis=-1))
            alpha = jnp.exp(m - m_new)
            p = jnp.exp(sc - m_new[..., None])
            l = alpha * l + jnp.sum(p, axis=-1)
            acc = alpha[..., None] * acc + _pv(p, _slice_v(v, j, bk, v_slots_last), v_slots_last)
            return m_new, l, acc

        init = (
            jnp.full((b, kh, g, bq), -jnp.inf, jnp.float32),
            jnp.zeros((b, kh, g, bq), jnp.float32),
            jnp.zeros((b, kh, g, bq, h), jnp.float32),
        )
        m, l, acc = jax.lax.fori_loop(0, _key_blocks(sl, bk, nk), k_block, init)
        out = jax.lax.dynamic_update_slice_in_dim(
            out, (acc / l[..., None]).astype(out.dtype), i * bq, axis=3
        )
        lse = jax.lax.dynamic_update_slice_in_dim(lse, m + jnp.log(l), i * bq, axis=3)
        return out, lse

    init = (jnp.zeros(q.shape, q.dtype), jnp.zeros((b, kh, g, tp), jnp.float32))
    return jax.lax.fori_loop(0, nq, q_block, init)


def _backward(bq, bk, v_slots_last, q, k, v, q_slots, valid, out, lse, do, window=None, docs=None):
    """Gradients w.r.t. q, k, v, recomputing each tile's probabilities from lse."""
    b, kh, g, tp, h = q.shape
    nq, nk = tp // bq, k.shape[2] // bk
    dt = q.dtype
    delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B,K,G,Tp]

    def q_block(i, carry):
        dq, dk, dv = carry
        qb = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=3)
        dob = jax.lax.dynamic_slice_in_dim(do, i * bq, bq, axis=3).astype(dt)
        sl = jax.lax.dynamic_slice_in_dim(q_slots, i * bq, bq)
        lse_b = jax.lax.dynamic_slice_in_dim(lse, i * bq, bq, axis=3)
        delta_b = jax.lax.dynamic_slice_in_dim(delta, i * bq, bq, axis=3)
        qd = _q_docs(docs, i, bq)

        def k_block(j, c):
            dqb, dk, dv = c
            kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)
            vb = _slice_v(v, j, bk, v_slots_last)
            mask = _tile_mask(sl, valid, j, bk, window, docs, qd)
            p = jnp.exp(jnp.where(mask, _scores(qb, kb), MASK_VALUE) - lse_b[..., None])
            if v_slots_last:
                dv_j = jnp.einsum(
                    "BKGts,BKGtH->BKHs", p.astype(dt), dob, preferred_element_type=jnp.float32
                )
                dp = jnp.einsum("BKGtH,BKHs->BKGts", dob, vb, preferred_element_type=jnp.float32)
            else:
                dv_j = jnp.einsum(
                    "BKGts,BKGtH->BKsH", p.astype(dt), dob, preferred_element_type=jnp.float32
                )
                dp = jnp.einsum("BKGtH,BKsH->BKGts", dob, vb, preferred_element_type=jnp.float32)
            ds = jnp.where(mask, p * (dp - delta_b[..., None]), 0.0).astype(dt)
            dqb = dqb + jnp.einsum("BKGts,BKsH->BKGtH", ds, kb, preferred_element_type=jnp.float32)
            dk_j = jnp.einsum("BKGts,BKGtH->BKsH", ds, qb, preferred_element_type=jnp.float32)
            v_axis = 3 if v_slots_last else 2
            dk = jax.lax.dynamic_update_slice_in_dim(
                dk, jax.lax.dynamic_slice_in_dim(dk, j * bk, bk, axis=2) + dk_j, j * bk, axis=2
            )
            dv = jax.lax.dynamic_update_slice_in_dim(
                dv,
                jax.lax.dynamic_slice_in_dim(dv, j * bk, bk, axis=v_axis) + dv_j,
                j * bk,
                axis=v_axis,
            )
            return dqb, dk, dv

        init = (jnp.zeros(qb.shape, jnp.float32), dk, dv)
        dqb, dk, dv = jax.lax.fori_loop(0, _key_blocks(sl, bk, nk), k_block, init)
        dq = jax.lax.dynamic_update_slice_in_dim(dq, dqb, i * bq, axis=3)
        return dq, dk, dv

    init = (
        jnp.zeros(q.shape, jnp.float32),
        jnp.zeros(k.shape, jnp.float32),
        jnp.zeros(v.shape, jnp.float32),
    )
    dq, dk, dv = jax.lax.fori_loop(0, nq, q_block, init)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.lru_cache(maxsize=None)
def _flash(bq: int, bk: int, v_slots_last: bool, windowed: bool = False, packed: bool = False):
    """The differentiable tiled kernel for one tile shape and value layout; `windowed`:
    its `window` argument is a sliding window, `packed`: its `docs` argument holds
    document ids (else each is ignored)."""

    def w_of(window):
        return window if windowed else None

    def d_of(docs):
        return docs if packed else None

    @jax.custom_vjp
    def flash(q, k, v, q_slots, valid, window, docs):
        args = (q, k, v, q_slots, valid, w_of(window), d_of(docs))
        return _forward(bq, bk, v_slots_last, *args)[0]

    def fwd(q, k, v, q_slots, valid, window, docs):
        out, lse = _forward(bq, bk, v_slots_last, q, k, v, q_slots, valid, w_of(window), d_of(docs))
        return out, (q, k, v, q_slots, valid, window, docs, out, lse)

    def bwd(res, do):
        q, k, v, q_slots, valid, window, docs, out, lse = res
        dq, dk, dv = _backward(
            bq, bk, v_slots_last, q, k, v, q_slots, valid, out, lse, do, w_of(window), d_of(docs)
        )
        return dq, dk, dv, None, None, None, None

    flash.defvjp(fwd, bwd)
    return flash


# ---------------------------------------------- jax.nn.dot_product_attention


def rolled_expressible(key_valid: jax.Array, q_slots: jax.Array | None, t: int) -> jax.Array:
    """Whether `attend_rolled` is exact: every row's valid keys are one contiguous
    run and the queries sit at slots 0..T-1. A bool scalar."""
    valid = key_valid.astype(bool)
    s = valid.shape[1]
    n = jnp.sum(valid, axis=1)
    first = jnp.argmax(valid, axis=1)
    last = s - 1 - jnp.argmax(valid[:, ::-1], axis=1)
    ok = jnp.all((n == 0) | (last - first + 1 == n))
    if q_slots is not None:
        ok &= jnp.all(q_slots == jnp.arange(t))
    return ok


def attend_rolled(
    q, k, v, key_valid, q_slots, *, implementation: str, fallback, v_slots_last: bool = False
):
    """`jax.nn.dot_product_attention(implementation=...)` with each row rolled so
    that its padding is right padding (`is_causal` + `key_value_seq_lengths`).

    Exact where `rolled_expressible` holds (checked at run time); elsewhere
    `fallback(q, k, v, q_slots, key_valid, v_slots_last=...)` runs instead.
    `implementation="xla"` runs the same plumbing on any backend (tests).
    """
    b, t, kh, g, h = q.shape
    s = k.shape[2]
    slots = jnp.arange(t, dtype=jnp.int32) if q_slots is None else q_slots.astype(jnp.int32)
    valid = key_valid.astype(bool)

    def rolled(q, k, v):
        n = jnp.sum(valid, axis=1, dtype=jnp.int32)
        shift = jnp.where(n > 0, jnp.argmax(valid, axis=1).astype(jnp.int32), 0)  # [B]
        q_idx = (jnp.arange(t)[None, :] + shift[:, None]) % t  # [B, T]
        k_idx = (jnp.arange(s)[None, :] + shift[:, None]) % s  # [B, S]
        qr = jnp.take_along_axis(q.reshape(b, t, kh * g, h), q_idx[:, :, None, None], axis=1)
        kr = jnp.take_along_axis(k.transpose(0, 2, 1, 3), k_idx[:, :, None, None], axis=1)
        vs = v.transpose(0, 3, 1, 2) if v_slots_last else v.transpose(0, 2, 1, 3)
        vr = jnp.take_along_axis(vs.astype(kr.dtype), k_idx[:, :, None, None], axis=1)
        # cuDNN's backward pass wants even lengths (odd ones raise when traced): queries and
        # keys grow at the end to a multiple of 8, keys beyond each row's length are
        # masked, and the extra query rows are dropped.
        grow = lambda x, n: jnp.pad(x, ((0, 0), (0, -n % 8), (0, 0), (0, 0)))  # noqa: E731
        o = jax.nn.dot_product_attention(
            grow(qr, t),
            grow(kr, s).astype(qr.dtype),
            grow(vr, s).astype(qr.dtype),
            scale=1.0,
            is_causal=True,
            key_value_seq_lengths=jnp.maximum(n, 1),
            implementation=implementation,
        )[:, :t]
        back = (jnp.arange(t)[None, :] - shift[:, None]) % t
        o = jnp.take_along_axis(o, back[:, :, None, None], axis=1)
        return o.reshape(b, t, kh, g, h).astype(q.dtype)

    def other(q, k, v):
        return fallback(q, k, v, slots, valid, v_slots_last=v_slots_last).astype(q.dtype)

    return jax.lax.cond(rolled_expressible(valid, q_slots, t), rolled, other, q, k, v)


# ---------------------------------------------------------------- TPU Pallas


def _attend_pallas(q, k, v, key_valid, v_slots_last, documents=None):
    """TPU flash-attention kernel, self-attention (S == T); see the module docstring."""
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

    b, t, kh, g, h = q.shape
    qh = q.transpose(0, 2, 3, 1, 4).reshape(b, kh * g, t, h)
    vs = v.transpose(0, 1, 3, 2) if v_slots_last else v
    kh_ = jnp.repeat(k.astype(q.dtype), g, axis=1)  # [B, N, S, H]
    vh = jnp.repeat(vs.astype(q.dtype), g, axis=1)
    # Segment ids: every query 1, valid keys 1 and padding keys 0, so each
    # query sees the valid keys up to its own slot, as in the dense path; with
    # documents, document d is d + 1 (padding keys stay 0).
    ids = jnp.ones((b, t), jnp.int32) if documents is None else documents.astype(jnp.int32) + 1
    segments = tpu_flash.SegmentIds(q=ids, kv=jnp.where(key_valid.astype(bool), ids, 0))
    o = tpu_flash.flash_attention(qh, kh_, vh, segment_ids=segments, causal=True, sm_scale=1.0)
    return o.reshape(b, kh, g, t, h).transpose(0, 3, 1, 2, 4)


__all__ = [
    "IMPLS",
    "MASK_VALUE",
    "DENSE_MAX_T",
    "attend",
    "attend_rolled",
    "blockwise",
    "choose_impl",
    "default_block",
    "dense_mask",
    "rolled_expressible",
]
