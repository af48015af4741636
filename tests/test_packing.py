"""Several rollouts packed into one row: every attention path masks by document, positions
restart at each rollout, and the model's outputs, log-probabilities and gradients equal
those of the padded rows (`start_jax.rl.packing`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental.pallas import tpu as pltpu  # Its TPU interpret mode runs on CPU.

from start_jax import models, rl, segments
from start_jax.models import attention, transformer
from start_jax.rl import logprobs, packing
from tests import fixtures

TOL = 2e-5  # float32, "highest" matmul precision (tests/conftest.py).


def _padded_rollouts(b=6, length=24, seed=0):
    """Segment ids [B, L] of left-padded prompts, completions and right padding, with
    lengths from 3 to 20 tokens; and random tokens."""
    rs = np.random.RandomState(seed)
    seg = np.zeros((b, length), np.int32)
    for i in range(b):
        left = rs.randint(0, 4)
        prompt = rs.randint(1, 5)
        think = rs.randint(1, 8)
        resp = rs.randint(1, length - left - prompt - think + 1)
        seg[i, left : left + prompt] = segments.PROMPT
        seg[i, left + prompt : left + prompt + think] = segments.THINK
        seg[i, left + prompt + think : left + prompt + think + resp] = segments.RESPONSE
    tokens = np.where(seg != segments.PAD, rs.randint(1, 40, size=seg.shape), 0)
    return tokens.astype(np.int32), seg


def test_plan_pack_and_unpack():
    tokens, seg = _padded_rollouts(b=9, length=20, seed=3)
    valid = seg != segments.PAD
    p = packing.plan(valid, width=32)
    assert p.rows == -(-int(valid.sum()) // 32) or p.rows <= 1 + int(valid.sum()) // 32
    docs = p.documents
    for i in range(9):  # Each rollout one contiguous run of its own id, in order.
        where = np.argwhere(docs == i)
        assert len(where) == valid[i].sum() and len(set(where[:, 0])) == 1
        assert np.all(np.diff(where[:, 1]) == 1)
    packed = packing.pack(tokens, p)
    np.testing.assert_array_equal(packed[docs == 9], 0)
    np.testing.assert_array_equal(packing.unpack(packed, p, 20), tokens)
    assert packing.pack(seg, p)[docs < 9].min() > segments.PAD
    assert 0.5 < p.fill <= 1.0
    # Packed-row counts come in few sizes: 2^k or 3 * 2^k, a multiple, at most the total.
    assert [packing.bucket_rows(n, 64) for n in (1, 2, 3, 5, 7, 13, 33, 49, 64)] == [
        1,
        2,
        3,
        6,
        8,
        16,
        48,
        64,
        64,
    ]
    assert [packing.bucket_rows(n, 64, 8) for n in (1, 9, 17, 25, 33)] == [8, 16, 24, 32, 48]
    assert packing.bucket_rows(5, 12, 4) == 8 and packing.bucket_rows(9, 12, 4) == 12
    with pytest.raises(ValueError, match="12 rows are not a multiple of 8"):
        packing.bucket_rows(3, 12, 8)
    with pytest.raises(ValueError, match="need .* packed rows of width 32; got 1"):
        packing.plan(valid, width=32, rows=1)
    with pytest.raises(ValueError, match="does not fit a packed width 4"):
        packing.plan(valid, width=4)
    holed = valid.copy()
    holed[0, np.argmax(valid[0]) + 1] = False
    with pytest.raises(ValueError, match=r"rows \[0\] have padding between their tokens"):
        packing.plan(holed, width=32)


def _qkv(b, t, kh, g, h, seed):
    rs = np.random.RandomState(seed)
    q = rs.randn(b, t, kh, g, h).astype(np.float32) / np.sqrt(h)
    k = rs.randn(b, kh, t, h).astype(np.float32)
    v = rs.randn(b, kh, t, h).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def _documents(b, t, seed):
    """Contiguous runs of documents 0, 1, 2, ... per row, the last slots padding."""
    rs = np.random.RandomState(seed)
    docs = np.zeros((b, t), np.int32)
    valid = np.ones((b, t), bool)
    for r in range(b):
        cuts = np.sort(rs.choice(np.arange(1, t - 4), 3, replace=False))
        docs[r] = np.searchsorted(cuts, np.arange(t), side="right")
        valid[r, t - rs.randint(0, 4) :] = False
    return docs, valid


def _alone(q, k, v, docs, valid):
    """Each document attended on its own, in float64 numpy: [B, T, K, G, H] (rows that
    see no key are NaN)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    t = q.shape[1]
    mask = (np.arange(t)[None, :] <= np.arange(t)[:, None])[None] & valid[:, None, :]
    mask &= docs[:, :, None] == docs[:, None, :]  # Within the document only.
    scores = np.where(mask[:, None, None], np.einsum("btkgh,bksh->bkgts", q, k), -np.inf)
    with np.errstate(invalid="ignore"):
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bkgts,bksh->btkgh", probs, v)


@pytest.mark.parametrize("impl,blocks", [("xla", {}), ("blockwise", dict(block_q=8, block_k=16))])
def test_each_path_attends_within_documents(impl, blocks):
    b, t = 2, 37
    q, k, v = _qkv(b, t, 2, 2, 8, seed=1)
    docs, valid = _documents(b, t, seed=2)
    want = _alone(q, k, v, docs, valid)

    def run(q, k, v):
        return attention.attend(
            q, k, v, key_valid=jnp.asarray(valid), impl=impl, documents=jnp.asarray(docs), **blocks
        )

    got = run(q, k, v)
    np.testing.assert_allclose(np.asarray(got)[valid], want[valid], atol=TOL)
    # Gradients through the packed rows equal the dense path's (the documents' own).
    w = jnp.asarray(
        np.random.RandomState(3).randn(*q.shape).astype(np.float32) * valid[..., None, None, None]
    )
    loss = lambda fn: lambda *a: jnp.sum(fn(*a) * w)  # noqa: E731
    dense = lambda q, k, v: attention.attend(  # noqa: E731
        q, k, v, key_valid=jnp.asarray(valid), impl="xla", documents=jnp.asarray(docs)
    )
    g_got = jax.grad(loss(run), argnums=(0, 1, 2))(q, k, v)
    g_want = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)
    for a, c in zip(g_got, g_want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=TOL)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_pallas_kernel_reads_documents_as_segment_ids():
    """The TPU kernel (Pallas's TPU interpreter on CPU): 128-long tiles, heads of 128."""
    b, t = 1, 256
    q, k, v = _qkv(b, t, 1, 2, 128, seed=4)
    docs, valid = _documents(b, t, seed=5)
    with pltpu.force_tpu_interpret_mode():
        got = attention._attend_pallas(q, k, v, jnp.asarray(valid), False, jnp.asarray(docs))
    want = _alone(q, k, v, docs, valid)
    np.testing.assert_allclose(np.asarray(got)[valid], want[valid], atol=TOL)


def test_documents_need_self_attention():
    q, k, v = _qkv(1, 4, 1, 1, 8, seed=0)
    with pytest.raises(ValueError, match="documents need self-attention"):
        attention.attend(
            q,
            k,
            v,
            key_valid=jnp.ones((1, 4), bool),
            q_slots=jnp.arange(4),
            documents=jnp.zeros((1, 4), jnp.int32),
        )


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize(
    "overrides",
    [
        dict(attention_impl="xla"),
        # A sliding layer and a global one, as Gemma-style models alternate them.
        dict(
            attention_impl="blockwise",
            attention_block_q=8,
            attention_block_k=8,
            num_layers=2,
            sliding_window=5,
            sliding_layers=(True, False),
        ),
    ],
    ids=["xla", "blockwise-sliding"],
)
def test_packed_rows_give_each_rollout_its_own_log_probs_and_gradients(overrides):
    config = models.tiny_config(40, **overrides)
    params = models.init_params(config, jax.random.key(0))
    tokens, seg = _padded_rollouts(b=6, length=24, seed=7)
    p = packing.plan(seg != segments.PAD, width=40)
    assert p.rows < 6  # Packing saves rows.
    docs = p.documents
    ptokens, pseg = packing.pack(tokens, p), packing.pack(seg, p)

    def plain(params):
        return logprobs.token_log_probs(config, params, jnp.asarray(tokens), jnp.asarray(seg))

    def packed(params):
        return logprobs.token_log_probs(
            config, params, jnp.asarray(ptokens), jnp.asarray(pseg), documents=jnp.asarray(docs)
        )

    (lp, ent), (plp, pent) = plain(params), packed(params)
    # Every token after a rollout's first has the padded row's log-prob and entropy.
    scored = np.asarray(seg != segments.PAD)
    scored[np.arange(6), p.first] = False
    np.testing.assert_allclose(
        packing.unpack(np.asarray(plp), p, 24)[scored], np.asarray(lp)[scored], atol=TOL
    )
    np.testing.assert_allclose(
        packing.unpack(np.asarray(pent), p, 24)[scored], np.asarray(ent)[scored], atol=TOL
    )
    np.testing.assert_array_equal(np.asarray(plp)[p.row, p.start], 0.0)  # Each first token.
    # Gradients of a weighted sum of log-probs over the same tokens.
    w = np.random.RandomState(8).rand(6, 24).astype(np.float32) * scored
    g_plain = jax.grad(lambda q: jnp.sum(plain(q)[0] * w))(params)
    g_packed = jax.grad(lambda q: jnp.sum(packed(q)[0] * packing.pack(w, p)))(params)
    for a, c in zip(jax.tree.leaves(g_packed), jax.tree.leaves(g_plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=TOL)


def test_document_positions_restart_at_each_document():
    mask = jnp.asarray([[1, 1, 1, 1, 1, 1, 0, 0]], bool)
    docs = jnp.asarray([[0, 0, 1, 1, 1, 2, 3, 3]])
    np.testing.assert_array_equal(
        transformer.document_positions(mask, docs), [[0, 1, 0, 1, 2, 0, 0, 0]]
    )


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_a_packed_batch_gives_the_padded_batch_update():
    """`pack_batch`: 8 rollouts in fewer rows; one step with KL and entropy terms and a
    critic changes the policy's and the critic's parameters as on the padded rows (plain
    SGD: the change is the gradient)."""
    batch = fixtures.make_batch("joint", b=8, length=20, seed=0)
    p = packing.plan(np.asarray(batch.segment_ids) != segments.PAD, width=40)
    packed = packing.pack_batch(batch, p)
    assert p.rows < 8 and packed.tokens.shape == (p.rows, 40)
    np.testing.assert_array_equal(packed.rewards, batch.rewards)
    assert int(packed.loss_mask.sum()) == int(batch.loss_mask.sum())
    for name in ("tokens", "segment_ids", "loss_mask", "advantages", "ref_logprobs"):
        fill = segments.PAD if name == "segment_ids" else 0  # The device gather is `pack`.
        want = packing.pack(np.asarray(getattr(batch, name)), p, fill)
        np.testing.assert_array_equal(np.asarray(getattr(packed, name)), want, err_msg=name)
    np.testing.assert_array_equal(packed.documents, p.documents)
    config = fixtures.STEP_CONFIG
    params = models.init_params(config, jax.random.key(0))
    tx = optax.sgd(1.0)  # The parameter change is the gradient itself (Adam would rescale).
    value_config, critic = models.value_model_from_policy(config, params, jax.random.key(2))
    train = rl.TrainConfig(loss=rl.LossConfig(kl_coef=0.05, entropy_coef=0.01), use_critic=True)
    step = rl.jit_train_step(config, train, tx, value_config, tx)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
    fresh = lambda: rl.init_state(copy(params), tx, copy(critic), tx)  # noqa: E731
    want, m_want = step(fresh(), batch, jax.random.key(1))
    got, m_got = step(fresh(), packed, jax.random.key(1))
    moved = jax.tree.leaves(
        jax.tree.map(lambda a, b: np.abs(a - b).max(), want.critic_params, critic)
    )
    assert max(moved) > 1e-4  # The critic learned, by far more than the tolerance.
    leaves = lambda s: jax.tree.leaves((s.params, s.critic_params))  # noqa: E731
    for a, b in zip(leaves(got), leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    for key in (
        "loss",
        "pg_loss",
        "kl",
        "entropy",
        "value_loss",
        "reward_mean",
        "mask_think_tokens",
    ):
        np.testing.assert_allclose(float(m_got[key]), float(m_want[key]), rtol=1e-5, err_msg=key)
    with pytest.raises(
        ValueError, match="packed rows .* aggregation='seq-mean-token-mean' \\(needs"
    ):
        seq = rl.TrainConfig(loss=rl.LossConfig(aggregation="seq-mean-token-mean"))
        rl.jit_train_step(config, seq, tx)(fresh(), packed, jax.random.key(1))


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_the_batch_forwards_on_packed_rows_give_the_padded_batch():
    """`build_batch` with a layout: the old and reference policies' log-probabilities and
    the critic's values come from the packed rows, back on the padded ones, and equal
    those of the padded forwards on every token a loss reads; the gathers equal `pack`
    and `unpack`."""
    config = fixtures.STEP_CONFIG
    source = fixtures.make_batch("joint", b=8, length=20, seed=1)
    p = packing.plan(np.asarray(source.segment_ids) != segments.PAD, width=40)
    lay = packing.layout(p, 20)
    assert p.rows < 8
    x = np.arange(8 * 20, dtype=np.float32).reshape(8, 20) + 1
    np.testing.assert_array_equal(packing.to_packed(jnp.asarray(x), lay), packing.pack(x, p))
    back = packing.to_padded(packing.to_packed(jnp.asarray(x), lay), lay)
    np.testing.assert_array_equal(back, packing.unpack(packing.pack(x, p), p, 20))
    params = models.init_params(config, jax.random.key(0))
    ref = models.init_params(config, jax.random.key(5))
    value_config, critic = models.value_model_from_policy(config, params, jax.random.key(2))
    cfg = rl.BatchConfig(
        train=rl.TrainConfig(loss=rl.LossConfig(kl_coef=0.05), ppo_epochs=2),
        advantage=rl.AdvantageConfig(estimator="gae"),
    )
    forced = np.zeros((8, 20), bool)
    fn = rl.jit_build_batch(config, value_config, cfg)
    args = (params, ref, critic, source.tokens, source.segment_ids, forced, source.rewards)
    want, got = fn(*args), fn(*args, None, None, lay)
    read = np.asarray(want.loss_mask | want.kl_mask)
    assert read.sum() > 40
    for name in ("old_logprobs", "ref_logprobs", "old_values", "advantages", "returns"):
        a, b = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
        assert np.abs(a[read]).max() > 1e-3, name
        np.testing.assert_allclose(a[read], b[read], atol=2e-5, err_msg=name)
    with pytest.raises(ValueError, match="a packed layout needs logprob_start=0, not 3"):
        train = rl.TrainConfig(logprob_start=3)
        rl.build_batch(
            *args,
            None,
            None,
            lay,
            model_config=config,
            critic_config=value_config,
            config=rl.BatchConfig(train=train, advantage=rl.AdvantageConfig()),
        )
