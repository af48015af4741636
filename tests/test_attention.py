"""Attention kernels (`models.attention`): each equals the dense reference.

Every implementation that runs on CPU ("xla", "blockwise", and the
`jax.nn.dot_product_attention` plumbing of "cudnn" run with
implementation="xla"; the "pallas" TPU kernel in Pallas's interpret mode, on
its own) is compared in float32 with a float64 NumPy reference
and with the dense "xla" path: max abs error <= TOL on every query row that
sees at least one key (rows that see none only have to be finite), on left,
right and middle padding, GQA with G = 1 and G > 1, lengths that are not
multiples of the tiles, a KV cache written at an offset, single-token decode,
and gradients. The whole model gives the same logits and gradients with
"blockwise" as with "xla", and the blockwise gradient's compiled temporary
memory grows linearly with length where the dense one grows quadratically.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu  # Its TPU interpret mode runs on CPU.

from start_jax import models
from start_jax.models import attention

TOL = 1e-5  # float32 max abs difference allowed against the dense reference.
BLOCKS = dict(block_q=8, block_k=16)  # Small tiles, so that T = 37 spans several.


def _inputs(b, t, s, kh, g, h, seed=0, v_slots_last=False):
    rs = np.random.RandomState(seed)
    q = rs.randn(b, t, kh, g, h).astype(np.float32) / np.sqrt(h)
    k = rs.randn(b, kh, s, h).astype(np.float32)
    v = rs.randn(b, kh, s, h).astype(np.float32)
    if v_slots_last:
        v = v.transpose(0, 1, 3, 2)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def _numpy_reference(q, k, v, key_valid, q_slots, v_slots_last=False):
    """float64 attention over the visible keys; NaN on rows that see none."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    if v_slots_last:
        v = v.transpose(0, 1, 3, 2)
    t, s = q.shape[1], k.shape[2]
    slots = np.arange(t) if q_slots is None else np.asarray(q_slots)
    mask = (np.arange(s)[None, :] <= slots[:, None])[None] & np.asarray(key_valid)[:, None, :]
    scores = np.einsum("btkgh,bksh->bkgts", q, k)
    scores = np.where(mask[:, None, None], scores, -np.inf)
    with np.errstate(invalid="ignore"):
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bkgts,bksh->btkgh", probs, v)


def _seen(key_valid, q_slots, t):
    """[B, T] bool: the query sees at least one key."""
    return np.asarray(attention.dense_mask(jnp.asarray(key_valid), q_slots, t).any(-1))


def _max_err(a, b, rows):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))[rows].max())


def _rolled(q, k, v, key_valid, q_slots, v_slots_last=False):
    """The "cudnn" path's argument plumbing, run by jax.nn's XLA implementation."""
    fallback = functools.partial(attention.blockwise, **BLOCKS)
    return attention.attend_rolled(
        q,
        k,
        v,
        key_valid,
        q_slots,
        implementation="xla",
        fallback=fallback,
        v_slots_last=v_slots_last,
    )


def _impls():
    """name -> f(q, k, v, key_valid, q_slots, v_slots_last) for every CPU implementation."""

    def via(impl):
        return lambda q, k, v, valid, slots, vsl=False: attention.attend(
            q, k, v, key_valid=valid, q_slots=slots, impl=impl, v_slots_last=vsl, **BLOCKS
        )

    return {"xla": via("xla"), "blockwise": via("blockwise"), "dpa_xla": _rolled}


# Rows: left-padded, right-padded, both, unpadded.
CONTIGUOUS = np.ones((4, 37), bool)
CONTIGUOUS[0, :9] = False
CONTIGUOUS[1, 30:] = False
CONTIGUOUS[2, :3] = False
CONTIGUOUS[2, 20:] = False
# As above, plus a row with a hole in the middle (unwritten slots).
HOLES = CONTIGUOUS.copy()
HOLES[3, 12:17] = False


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("g", [1, 3])
@pytest.mark.parametrize("valid", [CONTIGUOUS, HOLES], ids=["contiguous", "holes"])
def test_self_attention_matches_dense_reference(g, valid):
    b, t = valid.shape
    q, k, v = _inputs(b, t, t, 2, g, 16, seed=g)
    ref = _numpy_reference(q, k, v, valid, None)
    rows = _seen(valid, None, t)
    assert not rows.all()  # Left padding leaves queries that see nothing.
    key_valid = jnp.asarray(valid)
    assert bool(attention.rolled_expressible(key_valid, None, t)) == (valid is CONTIGUOUS)
    for name, fn in _impls().items():
        out = fn(q, k, v, key_valid, None)
        assert out.shape == q.shape and out.dtype == q.dtype
        assert np.isfinite(np.asarray(out)).all(), name
        assert _max_err(out, ref, rows) <= TOL, name
        if name != "xla":
            dense = attention.attend(q, k, v, key_valid=key_valid, impl="xla")
            assert _max_err(out, dense, rows) <= TOL, name


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("t", [13, 1])
def test_cache_at_an_offset_matches_dense_reference(t):
    """Prefill of 13 tokens, or one decode step, into a cache of 64 slots at end = 20.

    Row 0 is left-padded, row 1 has unwritten slots in the middle of its
    cache, row 2 is full; slots past end + T are unwritten (and future)."""
    b, s, end = 3, 64, 20
    valid = np.zeros((b, s), bool)
    valid[:, : end + t] = True
    valid[0, :6] = False
    valid[1, 8:14] = False
    q_slots = end + jnp.arange(t, dtype=jnp.int32)
    q, k, v = _inputs(b, t, s, 2, 2, 16, seed=t, v_slots_last=True)
    ref = _numpy_reference(q, k, v, valid, q_slots, v_slots_last=True)
    rows = _seen(valid, q_slots, t)
    assert rows.all()
    key_valid = jnp.asarray(valid)
    assert not bool(attention.rolled_expressible(key_valid, q_slots, t))  # Offset > 0.
    for name, fn in _impls().items():
        out = fn(q, k, v, key_valid, q_slots, True)
        assert _max_err(out, ref, rows) <= TOL, name
    # The same row layout written from slot 0 is expressible for cuDNN.
    slots0 = jnp.arange(t, dtype=jnp.int32)
    valid0 = np.zeros((b, s), bool)
    valid0[:, :t] = True
    valid0[0, : min(4, t - 1)] = False
    assert bool(attention.rolled_expressible(jnp.asarray(valid0), slots0, t))
    ref0 = _numpy_reference(q, k, v, valid0, slots0, v_slots_last=True)
    rows0 = _seen(valid0, slots0, t)
    for name, fn in _impls().items():
        out = fn(q, k, v, jnp.asarray(valid0), slots0, True)
        assert _max_err(out, ref0, rows0) <= TOL, name


@pytest.mark.parametrize(
    "g, valid", [(1, CONTIGUOUS), (2, HOLES)], ids=["G1-contiguous", "G2-holes"]
)
@pytest.mark.slow  # Seconds: out of the fast tier.
def test_gradients_match_dense_reference(g, valid):
    """d/dq, d/dk, d/dv of sum(w * out), w zero on rows that see no key (as in
    training, where padding positions carry no loss)."""
    b, t = valid.shape
    q, k, v = _inputs(b, t, t, 2, g, 16, seed=10 + g)
    rows = _seen(valid, None, t)
    w = np.random.RandomState(3).randn(*q.shape).astype(np.float32)
    w = jnp.asarray(w * rows[:, :, None, None, None])
    key_valid = jnp.asarray(valid)
    grads = {}
    for name, fn in _impls().items():
        loss = lambda q, k, v, fn=fn: jnp.sum(w * fn(q, k, v, key_valid, None))  # noqa: E731
        grads[name] = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for name in ("blockwise", "dpa_xla"):
        for ours, ref in zip(grads[name], grads["xla"]):
            assert np.isfinite(np.asarray(ours)).all()
            assert float(jnp.abs(ours - ref).max()) <= TOL, name


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_blockwise_gradients_with_cache_layout():
    """Gradients through the cache layout (values [B, K, H, S]) at a query offset."""
    b, t, s = 2, 11, 30
    valid = np.ones((b, s), bool)
    valid[0, :4] = False
    valid[1, 7:9] = False
    q_slots = 15 + jnp.arange(t, dtype=jnp.int32)
    q, k, v = _inputs(b, t, s, 2, 2, 8, seed=5, v_slots_last=True)
    key_valid = jnp.asarray(valid)

    def loss(impl):
        return lambda q, k, v: jnp.sum(
            jnp.sin(
                attention.attend(
                    q,
                    k,
                    v,
                    key_valid=key_valid,
                    q_slots=q_slots,
                    impl=impl,
                    v_slots_last=True,
                    **BLOCKS,
                )
            )
        )

    ours = jax.grad(loss("blockwise"), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for a, r in zip(ours, ref):
        assert float(jnp.abs(a - r).max()) <= TOL


def _model_batch(config, b=3, t=40, seed=0):
    rs = np.random.RandomState(seed)
    tokens = rs.randint(3, config.vocab_size, size=(b, t)).astype(np.int32)
    mask = np.ones((b, t), bool)
    mask[0, :11] = False  # Left padding (a short prompt).
    mask[1, :3] = False
    mask[1, 33:] = False  # Left and right padding.
    return jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_model_blockwise_equals_dense_logits_and_gradients():
    base = models.tiny_config(50, num_layers=2, attention_block_q=8, attention_block_k=16)
    params = models.init_params(base, jax.random.key(0))
    tokens, mask = _model_batch(base)
    outs, grads = {}, {}
    for impl in ("xla", "blockwise"):
        config = base.replace(attention_impl=impl)

        def loss(p, config=config):
            logits = models.apply(config, p, tokens, attention_mask=mask).logits
            return jnp.sum(jnp.where(mask[..., None], jnp.sin(logits), 0.0)), logits

        grads[impl], outs[impl] = jax.jit(jax.grad(loss, has_aux=True))(params)
    rows = np.asarray(mask)  # Every real token sees at least itself.
    assert _max_err(outs["blockwise"], outs["xla"], rows) <= TOL
    assert np.isfinite(np.asarray(outs["blockwise"])).all()
    # Parameter gradients sum over every position (entries up to ~30 here):
    # the same 1e-5, relative to the largest entry of each gradient.
    for a, r in zip(jax.tree.leaves(grads["blockwise"]), jax.tree.leaves(grads["xla"])):
        assert float(jnp.abs(a - r).max()) <= TOL * max(1.0, float(jnp.abs(r).max()))


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_model_prefill_and_decode_with_blockwise_equal_dense():
    """A left-padded prompt prefilled into a cache, then a second chunk at an
    offset and one decode step: every impl gives the same logits."""
    base = models.tiny_config(50, attention_block_q=8, attention_block_k=16)
    params = models.init_params(base, jax.random.key(1))
    tokens, mask = _model_batch(base, t=24, seed=2)
    logits = {}
    for impl in ("xla", "blockwise"):
        config = base.replace(attention_impl=impl)
        cache = models.init_cache(config, 3, 64)
        out1 = models.forward(
            config, params, tokens[:, :17], cache=cache, attention_mask=mask[:, :17]
        )
        out2 = models.forward(
            config, params, tokens[:, 17:], cache=out1.cache, attention_mask=mask[:, 17:]
        )
        out3 = models.forward(config, params, tokens[:, :1], cache=out2.cache)
        logits[impl] = [out1.logits, out2.logits, out3.logits]
    rows = [np.asarray(mask[:, :17]), np.asarray(mask[:, 17:]), np.ones((3, 1), bool)]
    for ours, ref, r in zip(logits["blockwise"], logits["xla"], rows):
        assert _max_err(ours, ref, r) <= TOL


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_pallas_tpu_kernel_in_interpret_mode():
    """The "pallas" path's TPU kernel, run by Pallas's TPU interpreter on CPU."""
    b, t = 2, 256  # The kernel's tiles are 128 long; heads of width 128.
    valid = np.ones((b, t), bool)
    valid[0, :50] = False
    valid[1, 200:] = False
    q, k, v = _inputs(b, t, t, 1, 2, 128, seed=7)
    with pltpu.force_tpu_interpret_mode():
        out = attention._attend_pallas(q, k, v, jnp.asarray(valid), False)
    ref = _numpy_reference(q, k, v, valid, None)
    assert np.isfinite(np.asarray(out)).all()
    assert _max_err(out, ref, _seen(valid, None, t)) <= TOL


def test_auto_choice_by_backend_dtype_and_length():
    choose = attention.choose_impl
    f32, bf16 = jnp.float32, jnp.bfloat16
    assert choose("auto", 1, f32, backend="cpu") == "xla"
    assert choose("auto", attention.DENSE_MAX_T - 1, f32, backend="gpu") == "xla"
    assert choose("auto", 1024, f32, backend="cpu") == "blockwise"
    assert choose("auto", 1024, bf16, backend="gpu") == "cudnn"
    assert choose("auto", 1024, f32, backend="gpu") == "blockwise"
    assert choose("auto", 1024, bf16, q_slots_given=False, backend="tpu") == "pallas"
    assert choose("auto", 1000, bf16, q_slots_given=False, backend="tpu") == "blockwise"
    assert choose("auto", 1024, bf16, q_slots_given=True, backend="tpu") == "blockwise"
    assert choose("blockwise", 1, f32, backend="gpu") == "blockwise"
    assert attention.default_block("cpu") == 128 and attention.default_block("gpu") == 512
    with pytest.raises(ValueError, match="needs a GPU"):
        choose("cudnn", 1024, bf16, backend="cpu")
    with pytest.raises(ValueError, match="needs a TPU"):
        choose("pallas", 1024, bf16, backend="gpu")
    with pytest.raises(ValueError, match="unknown attention implementation"):
        choose("flash", 1024, f32, backend="cpu")


def test_config_validates_attention_fields():
    with pytest.raises(ValueError, match="attention_impl"):
        models.tiny_config(10, attention_impl="flash")
    with pytest.raises(ValueError, match="attention_block_k"):
        models.tiny_config(10, attention_block_k=0)
    config = models.tiny_config(10, attention_impl="blockwise", attention_block_q=64)
    assert "attention_impl" not in config.to_hf_dict()


def _grad_temp_bytes(config, length, batch=2):
    """Compiled temporaries of a train-like gradient: d/dparams of a loss on the
    final hidden states of `batch` x `length` left-padded tokens (compile only)."""

    def loss(params, tokens, mask):
        hidden = models.apply(config, params, tokens, attention_mask=mask, heads=False).hidden
        return jnp.sum(jnp.where(mask[..., None], hidden, 0.0) ** 2)

    tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    mask = jax.ShapeDtypeStruct((batch, length), jnp.bool_)
    compiled = jax.jit(jax.grad(loss)).lower(models.param_shapes(config), tokens, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_blockwise_gradient_memory_grows_linearly():
    """Blockwise temporaries at L = 512, 1024, 2048: the step from 1024 to 2048
    is about twice the step from 512 to 1024 (linear growth; quadratic growth
    would make it four times), and L = 2048 needs less than 2.5x L = 1024. The
    dense path's temporaries grow about 4x from 1024 to 2048, so the check can
    fail."""
    base = models.tiny_config(64, attention_block_q=128, attention_block_k=128)
    temps = {
        (impl, n): _grad_temp_bytes(base.replace(attention_impl=impl), n)
        for impl, n in [
            ("blockwise", 512),
            ("blockwise", 1024),
            ("blockwise", 2048),
            ("xla", 1024),
            ("xla", 2048),
        ]
    }
    t512, t1k, t2k = (temps["blockwise", n] for n in (512, 1024, 2048))
    assert (t2k - t1k) / (t1k - t512) < 2.5 and t2k / t1k < 2.5, temps
    assert temps["xla", 2048] / temps["xla", 1024] > 3.5, temps
