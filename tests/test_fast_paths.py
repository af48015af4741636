"""The train step's fast paths equal the paths they replace.

* The whole-head log-probabilities (`logprobs.chunked_head` with chunk >= T:
  one matmul, logits kept for the backward pass) equal the chunked,
  recomputing path, values and gradients, with and without an entropy term.
* `TrainConfig.logprob_start` (the head skips the prompt columns) gives the
  same update as the whole head.
* `fast_paths.project_cpu` (the projections' matmul with its own backward
  pass) equals the einsum it replaced, values and gradients, in float32 and
  bfloat16.
* The CPU fast paths switched on (`ModelConfig.cpu_fast_paths`) give the
  train step of the plain paths; greedy decoding on each is checked against
  transformers in test_sampling_plain.py and test_models.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from start_jax import models, rl
from start_jax.models import fast_paths
from start_jax.rl import logprobs as lp

CONFIG = models.tiny_config(48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)


def _head_inputs(b=3, t=11, seed=0):
    rs = np.random.RandomState(seed)
    hidden = jnp.asarray(rs.randn(b, t, CONFIG.hidden_size), jnp.float32)
    kernel = jnp.asarray(rs.randn(CONFIG.hidden_size, CONFIG.vocab_size) * 0.3, jnp.float32)
    targets = jnp.asarray(rs.randint(0, CONFIG.vocab_size, size=(b, t)), jnp.int32)
    w1, w2 = (jnp.asarray(rs.randn(b, t), jnp.float32) for _ in range(2))
    return hidden, kernel, targets, w1, w2


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("entropy_weight", [True, False])
def test_whole_head_equals_chunked_values_and_gradients(entropy_weight):
    hidden, kernel, targets, w1, w2 = _head_inputs()
    t = hidden.shape[1]

    def objective(chunk):
        def f(h, k):
            logp, ent = lp.chunked_head(h, k, targets, 0.8, chunk, jnp.float32)
            # Without an entropy term its cotangent is a symbolic zero (skipped).
            return jnp.sum(logp * w1) + (jnp.sum(ent * w2) if entropy_weight else 0.0)

        return f

    for whole in (t, 2 * t):
        for chunk in (1, 4, 5):
            a = lp.chunked_head(hidden, kernel, targets, 0.8, whole, jnp.float32)
            b = lp.chunked_head(hidden, kernel, targets, 0.8, chunk, jnp.float32)
            for x, y in zip(a, b):
                np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)
            ga = jax.grad(objective(whole), argnums=(0, 1))(hidden, kernel)
            gb = jax.grad(objective(chunk), argnums=(0, 1))(hidden, kernel)
            for x, y in zip(ga, gb):
                np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


def test_whole_head_equals_naive_log_softmax():
    hidden, kernel, targets, w1, w2 = _head_inputs(seed=1)

    def naive(h, k):
        logits = jnp.einsum("BTD,DV->BTV", h, k) / 0.8
        logp = jax.nn.log_softmax(logits, -1)
        picked = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
        return picked, -jnp.sum(jnp.exp(logp) * logp, -1)

    def whole(h, k):
        return lp.chunked_head(h, k, targets, 0.8, hidden.shape[1], jnp.float32)

    for x, y in zip(whole(hidden, kernel), naive(hidden, kernel)):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)
    obj = lambda f: lambda h, k: jnp.sum(f(h, k)[0] * w1 + f(h, k)[1] * w2)  # noqa: E731
    for x, y in zip(
        jax.grad(obj(whole), argnums=(0, 1))(hidden, kernel),
        jax.grad(obj(naive), argnums=(0, 1))(hidden, kernel),
    ):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


def test_auto_chunk_whole_head_when_small_else_even_chunks():
    assert lp.auto_chunk(16, 32000, 95) == 95  # 195 MB of logits: whole.
    assert lp.auto_chunk(16, 32000, 95, unchunked=0) == 48  # Two chunks, not 64 + 31.
    assert lp.auto_chunk(8, 151936, 1023) == 16  # 4.6 GiB: chunks of 78 MB.
    assert lp.auto_chunk(1, 10, 5, unchunked=0) == 5  # Chunks never exceed the length.
    assert lp._even_chunk(64, 95) == 48 and lp._even_chunk(7, 7) == 7


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_token_log_probs_whole_and_chunked_agree_through_the_model():
    params = models.init_params(CONFIG, jax.random.key(0))
    rs = np.random.RandomState(2)
    tokens = jnp.asarray(rs.randint(1, CONFIG.vocab_size, size=(4, 13)), jnp.int32)
    seg = jnp.asarray(np.where(np.arange(13) < 2, 0, 1)[None].repeat(4, 0), jnp.int32)
    w = jnp.asarray(rs.randn(4, 13), jnp.float32)

    def f(chunk):
        return lambda p: jnp.sum(rl.token_log_probs(CONFIG, p, tokens, seg, 1.0, chunk)[0] * w)

    np.testing.assert_allclose(f(0)(params), f(3)(params), rtol=1e-5)
    g0, g3 = jax.grad(f(0))(params), jax.grad(f(3))(params)
    diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g0, g3)
    assert max(jax.tree.leaves(diffs)) <= 1e-5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    "spec,x_shape,w_shape,k",
    [
        ("BTD,DNH->BTNH", (2, 5, 16), (16, 4, 8), 1),  # q/k/v: narrow input.
        ("BTNH,NHD->BTD", (2, 5, 4, 8), (4, 8, 16), 2),  # o_proj: two contracted axes.
        ("BTF,FD->BTD", (2, 5, 48), (48, 16), 1),  # down_proj: the wide-input branch.
        ("BTD,DF->BTF", (2, 5, 16), (16, 48), 1),  # gate/up.
    ],
)
def test_project_equals_einsum(dtype, spec, x_shape, w_shape, k):
    rs = np.random.RandomState(3)
    x = jnp.asarray(rs.randn(*x_shape), dtype)
    w = jnp.asarray(rs.randn(*w_shape) * 0.3, dtype)
    out_shape = jax.eval_shape(lambda a, b: jnp.einsum(spec, a, b), x, w).shape
    g = jnp.asarray(rs.randn(*out_shape), dtype)
    ours = lambda a, b: fast_paths.project_cpu(a, b, k)  # noqa: E731
    ref = lambda a, b: jnp.einsum(spec, a, b)  # noqa: E731
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    y1, y2 = ours(x, w), ref(x, w)
    assert y1.dtype == y2.dtype == dtype and y1.shape == y2.shape
    np.testing.assert_allclose(np.float32(y1), np.float32(y2), atol=tol, rtol=tol)
    _, vjp1 = jax.vjp(ours, x, w)
    _, vjp2 = jax.vjp(ref, x, w)
    for a, b in zip(vjp1(g), vjp2(g)):
        assert a.dtype == b.dtype == dtype and a.shape == b.shape
        np.testing.assert_allclose(np.float32(a), np.float32(b), atol=tol, rtol=tol)


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_step_runs_in_both_dtypes(dtype):
    config = CONFIG.replace(dtype=dtype)
    params = models.init_params(config, jax.random.key(0))
    rs = np.random.RandomState(4)
    b, length = 4, 12
    tokens = jnp.asarray(rs.randint(1, config.vocab_size, size=(b, length)), jnp.int32)
    seg = np.full((b, length), 3, np.int32)
    seg[:, :4] = 1
    seg = jnp.asarray(seg)
    forced = jnp.zeros((b, length), bool)
    mask = rl.loss_mask(seg, forced, "joint")
    adv = jnp.where(mask, jnp.asarray(rs.randn(b, 1), jnp.float32), 0.0)
    zeros = jnp.zeros((b, length), jnp.float32)
    batch = rl.Batch(
        tokens=tokens,
        segment_ids=seg,
        loss_mask=mask,
        kl_mask=rl.kl_mask(seg, forced, "joint"),
        advantages=adv,
        old_logprobs=zeros,
        ref_logprobs=zeros,
        returns=zeros,
        old_values=zeros,
        rewards=jnp.zeros((b,), jnp.float32),
    )
    tx = rl.make_optimizer(1e-3)
    for chunk in (0, 5):
        state = rl.init_state(jax.tree.map(jnp.copy, params), tx)  # The step donates it.
        step = rl.jit_train_step(config, rl.TrainConfig(logprob_chunk=chunk), tx)
        state, metrics = step(state, batch, jax.random.key(0))
        values = rl.check_finite(metrics, 0)
        assert values["l2_grads"] > 0


def _prompt_batch(config, b=4, prompt=5, length=14, seed=5):
    """Rows with a left-padded prompt in the first `prompt` columns, then thinking/response."""
    rs = np.random.RandomState(seed)
    seg = np.zeros((b, length), np.int32)
    for i in range(b):
        seg[i, prompt - rs.randint(2, prompt + 1) : prompt] = 1
        seg[i, prompt : prompt + 4] = 2
        seg[i, prompt + 4 : length - rs.randint(0, 3)] = 3
    tokens = np.where(seg > 0, rs.randint(1, config.vocab_size, size=(b, length)), 0)
    seg, tokens = jnp.asarray(seg), jnp.asarray(tokens, jnp.int32)
    forced = jnp.zeros((b, length), bool)
    mask = rl.loss_mask(seg, forced, "joint")
    adv = jnp.where(mask, jnp.asarray(rs.randn(b, 1), jnp.float32), 0.0)
    noise = jnp.asarray(rs.randn(b, length) * 0.05, jnp.float32)
    zeros = jnp.zeros((b, length), jnp.float32)
    return rl.Batch(
        tokens=tokens,
        segment_ids=seg,
        loss_mask=mask,
        kl_mask=rl.kl_mask(seg, forced, "joint"),
        advantages=adv,
        old_logprobs=zeros,
        ref_logprobs=noise,
        returns=zeros,
        old_values=zeros,
        rewards=jnp.zeros((b,), jnp.float32),
    )


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_logprob_start_skips_the_prompt_columns_only():
    params = models.init_params(CONFIG, jax.random.key(1))
    batch = _prompt_batch(CONFIG)
    full = rl.token_log_probs(CONFIG, params, batch.tokens, batch.segment_ids, 0.9, 0)
    part = rl.token_log_probs(CONFIG, params, batch.tokens, batch.segment_ids, 0.9, 0, start=5)
    for a, b in zip(full, part):
        np.testing.assert_allclose(b[:, 5:], a[:, 5:], atol=1e-6)
        assert not np.any(np.asarray(b[:, :5]))


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("kl_coef,entropy_coef", [(0.0, 0.0), (0.05, 0.01)])
def test_train_step_with_logprob_start_equals_full_head(kl_coef, entropy_coef):
    params = models.init_params(CONFIG, jax.random.key(2))
    batch = _prompt_batch(CONFIG, seed=6)
    tx = rl.make_optimizer(1e-3)
    loss = rl.LossConfig(kl_coef=kl_coef, entropy_coef=entropy_coef)
    out = []
    for start in (0, 5):
        state = rl.init_state(jax.tree.map(jnp.copy, params), tx)
        step = rl.jit_train_step(CONFIG, rl.TrainConfig(loss=loss, logprob_start=start), tx)
        state, metrics = step(state, batch, jax.random.key(0))
        out.append((state.params, rl.check_finite(metrics, 0)))
    (p0, m0), (p1, m1) = out
    for name in ("loss", "pg_loss", "kl", "entropy", "l2_grads"):
        np.testing.assert_allclose(m1[name], m0[name], rtol=1e-5, atol=1e-7)
    diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), p0, p1)
    assert max(jax.tree.leaves(diffs)) <= 1e-6


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_logprob_start_past_a_mask_token_stops_the_run():
    params = models.init_params(CONFIG, jax.random.key(3))
    batch = _prompt_batch(CONFIG, seed=7)
    tx = rl.make_optimizer(1e-3)
    step = rl.jit_train_step(CONFIG, rl.TrainConfig(logprob_start=6), tx)  # Column 5 is THINK.
    _, metrics = step(rl.init_state(params, tx), batch, jax.random.key(0))
    with pytest.raises(rl.NonFiniteError, match="'loss'"):
        rl.check_finite(metrics, 0)


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_cpu_fast_paths_give_the_plain_paths_train_step(tie):
    """One update with `cpu_fast_paths` on (the projections' own backward pass, the head's
    d kernel behind its barrier) equals the plain paths': metrics to 1e-5 relative and the
    updated parameters to 1e-6."""
    plain = CONFIG.replace(tie_embeddings=tie, lm_head=True)
    params = models.init_params(plain, jax.random.key(1))
    batch = _prompt_batch(plain)
    tx = rl.make_optimizer(1e-3)
    out = {}
    for fast in (False, True):
        config = plain.replace(cpu_fast_paths=fast)
        state = rl.init_state(jax.tree.map(jnp.copy, params), tx)
        step = rl.jit_train_step(config, rl.TrainConfig(), tx)
        out[fast] = step(state, batch, jax.random.key(0))
    (s0, m0), (s1, m1) = out[False], out[True]
    for key in ("loss", "l2_grads", "l2_updates"):
        np.testing.assert_allclose(float(m1[key]), float(m0[key]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s0.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
