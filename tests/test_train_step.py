"""The train step: mask leaks, micro-batch equivalence, sharding, chunked log-probs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from start_jax import models, rewards, rl, sampling, segments, sharding
from start_jax.rl import losses
from tests.fixtures import STEP_CONFIG, make_batch

CONFIG = STEP_CONFIG


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_chunked_log_probs_equal_naive_and_so_do_gradients():
    params = models.init_params(CONFIG, jax.random.key(0))
    batch = make_batch()

    def naive(p):
        logits = (
            models.apply(
                CONFIG, p, batch.tokens, positions=None, attention_mask=batch.segment_ids != 0
            ).logits
            / 0.8
        )
        logp = jax.nn.log_softmax(logits, -1)
        picked = jnp.take_along_axis(logp[:, :-1], batch.tokens[:, 1:, None], -1)[..., 0]
        entropy = -jnp.sum(jnp.exp(logp) * logp, -1)[:, :-1]
        return jnp.pad(picked, ((0, 0), (1, 0))), jnp.pad(entropy, ((0, 0), (1, 0)))

    def chunked(p):
        return rl.token_log_probs(CONFIG, p, batch.tokens, batch.segment_ids, 0.8, chunk=3)

    for ours, ref in zip(jax.jit(chunked)(params), jax.jit(naive)(params)):
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    rs = np.random.RandomState(1)
    w1, w2 = (jnp.asarray(rs.randn(*batch.tokens.shape), jnp.float32) for _ in range(2))

    def objective(f):
        def total(p):
            logp, entropy = f(p)
            return jnp.sum(logp * w1 + entropy * w2)

        return jax.jit(jax.grad(total))

    g1 = objective(chunked)(params)
    g2 = objective(naive)(params)
    diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g1, g2)
    assert max(jax.tree.leaves(diffs)) <= 1e-5


# Every mode with GSPO (whose sequence-level ratio averages over the mask), each other
# loss once.
@pytest.mark.parametrize(
    "kind, mode",
    [
        ("gspo", "joint"),
        ("gspo", "think"),
        ("gspo", "response"),
        ("ppo", "think"),
        ("dual_clip", "response"),
    ],
)
@pytest.mark.slow  # Seconds: out of the fast tier.
def test_no_gradient_leaks_outside_the_loss_mask(mode, kind):
    batch = make_batch(mode)
    lc = losses.LossConfig(
        policy_loss=kind, kl_coef=0.1, entropy_coef=0.01, aggregation="seq-mean-token-mean"
    )
    counts = rl.loss_counts(batch, lc)
    logits = jnp.asarray(
        np.random.RandomState(3).randn(*batch.tokens.shape, CONFIG.vocab_size), jnp.float32
    )

    def loss(lg):  # lg[:, t] are the logits that predict tokens[:, t].
        logp, ent = rl.logits_log_probs(lg, batch.tokens)
        return rl.policy_loss_terms(logp, ent, batch, counts, lc)[0]

    grad = np.asarray(jax.grad(loss)(logits))
    per_token = np.abs(grad).sum(-1)
    mask = np.asarray(batch.loss_mask)
    assert np.all(per_token[~mask] == 0.0), "gradient outside the loss mask"
    assert np.all(per_token[mask] > 0.0)
    seg = np.asarray(batch.segment_ids)
    if mode == "think":
        assert not np.any(mask & (seg == segments.RESPONSE))
    if mode == "response":
        assert not np.any(mask & (seg == segments.THINK))


def _delta(before, after):
    return jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), before, after)


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("mode", losses.AGGREGATIONS)
def test_micro_batches_give_the_same_update(mode):
    batch = make_batch("think", b=8)
    params = models.init_params(CONFIG, jax.random.key(0))
    value_config, critic = models.value_model_from_policy(CONFIG, params, jax.random.key(2))
    tx = optax.sgd(1.0)  # The update is the gradient itself.
    results = []
    for micro in (1, 4):
        cfg = rl.TrainConfig(
            loss=losses.LossConfig(
                aggregation=mode, kl_coef=0.05, entropy_coef=0.01, norm_length=20
            ),
            micro_batches=micro,
            logprob_chunk=7,
            use_critic=True,
        )
        state = rl.init_state(
            jax.tree.map(jnp.copy, params), tx, jax.tree.map(jnp.copy, critic), tx
        )
        step = rl.jit_train_step(CONFIG, cfg, tx, value_config, tx)
        new, metrics = step(state, batch, jax.random.key(0))
        results.append((_delta(params, new.params), _delta(critic, new.critic_params), metrics))
    for a, b in zip(jax.tree.leaves(results[0][:2]), jax.tree.leaves(results[1][:2])):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert max(np.abs(x).max() for x in jax.tree.leaves(results[0][0])) > 1e-4
    for key in ("loss", "pg_loss", "kl", "entropy", "value_loss", "clip_frac_low"):
        np.testing.assert_allclose(results[0][2][key], results[1][2][key], atol=1e-6)


def test_length_widths_round_each_group_up():
    seg = np.zeros((4, 40), np.int32)
    for i, end in enumerate((30, 9, 17, 40)):
        seg[i, 2:end] = segments.THINK
    np.testing.assert_array_equal(rl.row_ends(seg), [30, 9, 17, 40])
    # Groups (9, 17) and (30, 40); steps of (40 - 8) / 4 = 8 columns after start 8.
    assert rl.length_widths(seg, 2, start=8) == (24, 40)
    assert rl.length_widths(seg, 4, start=8) == (16, 24, 32, 40)
    assert rl.length_widths(seg, 1) is None and rl.length_widths(seg, 3) is None


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_length_groups_give_the_same_update(mode="seq-mean-token-sum-norm"):
    """Rows sorted by length, each group trained on the columns it fills: the same update,
    metrics and critic as every row on every column (two epochs, micro-batches, KL,
    entropy, a critic)."""
    batch = make_batch("joint", b=8, length=40, seed=3)
    widths = rl.length_widths(np.asarray(batch.segment_ids), 2)
    assert widths[0] < 40, widths  # The short half is cropped.
    params = models.init_params(CONFIG, jax.random.key(0))
    value_config, critic = models.value_model_from_policy(CONFIG, params, jax.random.key(2))
    tx = optax.sgd(1.0)  # The update is the gradient itself (Adam would magnify rounding).
    cfg = rl.TrainConfig(
        loss=losses.LossConfig(aggregation=mode, kl_coef=0.05, entropy_coef=0.01, norm_length=40),
        ppo_epochs=2,
        micro_batches=2,
        use_critic=True,
    )
    step = rl.jit_train_step(CONFIG, cfg, tx, value_config, tx)
    out = {}
    for w in (None, widths):
        state = rl.init_state(
            jax.tree.map(jnp.copy, params), tx, jax.tree.map(jnp.copy, critic), tx
        )
        out[w] = step(state, batch, jax.random.key(4), w)
    (a, ma), (b, mb) = out[None], out[widths]
    for x, y in zip(
        jax.tree.leaves((_delta(params, a.params), _delta(critic, a.critic_params))),
        jax.tree.leaves((_delta(params, b.params), _delta(critic, b.critic_params))),
    ):
        np.testing.assert_allclose(x, y, atol=1e-6)
    assert max(np.abs(x).max() for x in jax.tree.leaves(_delta(params, a.params))) > 1e-4
    assert set(ma) == set(mb)
    for key in ma:
        np.testing.assert_allclose(ma[key], mb[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # A group cropped short of its rows' tokens is flagged: the loss becomes NaN and
    # check_finite stops the run instead of training on less.
    from start_jax.rl.train_step import _by_length

    parts, overflow = _by_length(batch, widths)
    assert [p.tokens.shape for p in parts] == [(4, widths[0]), (4, widths[1])]
    assert not bool(overflow) and bool(_by_length(batch, (widths[0] - 8, 40))[1])
    from start_jax.rl.train_step import _accumulate_groups

    summed = lambda p, mb, c: (p * jnp.sum(mb.advantages), {"n": jnp.sum(mb.loss_mask)})  # noqa
    for w, nan in ((widths, False), ((widths[0] - 8, 40), True)):
        _, loss, aux = _accumulate_groups(summed, jnp.ones(()), batch, None, 1, w)
        assert bool(jnp.isnan(loss)) == nan
        assert nan or int(aux["n"]) == int(batch.loss_mask.sum())  # Every mask token seen.
    with pytest.raises(ValueError, match="length groups need minibatches=1"):
        rl.jit_train_step(CONFIG, cfg.__class__(minibatches=2), tx)(
            rl.init_state(jax.tree.map(jnp.copy, params), tx), batch, jax.random.key(4), widths
        )


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_sharded_step_equals_unsharded():
    batch = make_batch("joint", b=8)
    params = models.init_params(CONFIG, jax.random.key(0))
    tx = rl.make_optimizer(learning_rate=1e-2)
    cfg = rl.TrainConfig(
        loss=losses.LossConfig(kl_coef=0.05), micro_batches=2, ppo_epochs=2, minibatches=2
    )
    ref_state, ref_metrics = rl.jit_train_step(CONFIG, cfg, tx)(
        rl.init_state(jax.tree.map(jnp.copy, params), tx), batch, jax.random.key(1)
    )

    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sharded_params = models.shard_params(CONFIG, params, mesh)
    state = jax.jit(lambda p: rl.init_state(p, tx))(sharded_params)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    batch_sh = jax.tree.map(lambda x: sharding.batch_sharding(mesh, x.ndim), batch)
    step = rl.jit_train_step(CONFIG, cfg, tx, state_shardings=state_sh, batch_shardings=batch_sh)
    new, metrics = step(state, jax.device_put(batch, batch_sh), jax.random.key(1))
    assert (
        new.params["layers"]["mlp"]["up_proj"].sharding.spec
        == sharded_params["layers"]["mlp"]["up_proj"].sharding.spec
    )
    diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new.params, ref_state.params)
    assert max(jax.tree.leaves(diffs)) <= 1e-5
    for key, value in ref_metrics.items():
        np.testing.assert_allclose(metrics[key], value, atol=1e-5, err_msg=key)
    assert int(new.step) == 4


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_metrics_are_complete_and_count_mask_tokens_per_segment():
    batch = make_batch("think")
    tx = rl.make_optimizer(learning_rate=1e-3)
    state = rl.init_state(models.init_params(CONFIG, jax.random.key(0)), tx)
    _, metrics = rl.jit_train_step(CONFIG, rl.TrainConfig(), tx)(state, batch, jax.random.key(0))
    for key in (
        "loss",
        "pg_loss",
        "kl",
        "entropy",
        "clip_frac_low",
        "clip_frac_high",
        "approx_kl",
        "adv_mean",
        "adv_std",
        "adv_nonzero_frac",
        "reward_mean",
        "reward_std",
        "mask_think_tokens",
        "mask_response_tokens",
        "l2_grads",
        "l2_params",
        "l2_updates",
    ):
        assert key in metrics, key
    values = rl.check_finite(metrics, step=0)
    assert values["mask_response_tokens"] == 0 and values["mask_think_tokens"] > 0
    assert values["mask_think_tokens"] == float(np.asarray(batch.loss_mask).sum())


def test_non_finite_metric_stops_with_step_and_name():
    with pytest.raises(rl.NonFiniteError, match=r"step 17: metric 'l2_grads' is nan"):
        rl.check_finite({"loss": 1.0, "l2_grads": float("nan")}, step=17)


def test_invalid_settings_name_the_field():
    with pytest.raises(ValueError, match=r"unknown policy_loss 'ppo2'"):
        losses.LossConfig(policy_loss="ppo2")
    with pytest.raises(ValueError, match=r"unknown aggregation 'mean'"):
        losses.LossConfig(aggregation="mean")
    with pytest.raises(ValueError, match=r"unknown kl_estimator 'k4'"):
        losses.LossConfig(kl_estimator="k4")


# ------------------------------------------------------------ rewards


class _Recorder:
    def __init__(self):
        self.seen = []

    def __call__(self, inputs):
        self.seen.extend(inputs)
        return np.ones(len(inputs), np.float32)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_rewards_never_see_the_thinking():
    from start_jax.tokenizer import CharTokenizer

    tok = CharTokenizer()
    special = sampling.SpecialTokens.from_tokenizer(tok)
    prompts = [tok.encode("q: 2+2?"), tok.encode("q: 3+3?")]
    thinking = [tok.encode("SECRETA"), tok.encode("SECRETB")]
    config = CONFIG.replace(vocab_size=tok.vocab_size)
    params = models.init_params(config, jax.random.key(0))
    rollout = sampling.sample(
        config,
        params,
        prompts,
        sampling.SamplingConfig(response_budget=6),
        0,
        special,
        thinking=thinking,
    )
    rec = _Recorder()
    scores = rewards.score(rollout, tok, rec, references=["4", "6"])
    assert scores.shape == (2,)
    for x, p in zip(rec.seen, ["q: 2+2?", "q: 3+3?"]):
        assert x.prompt == p
        for field in (x.prompt, x.response):
            assert "SECRET" not in field
        assert special.think not in x.response_ids and special.end_think not in x.response_ids


def test_exact_match_and_math_verifier():
    em = rewards.make("exact_match")
    mk = lambda r, ref: rewards.RewardInput(r, r, (), (), ref)  # noqa: E731
    np.testing.assert_array_equal(em([mk(" Tea. ", "tea"), mk("coffee", "tea")]), [1.0, 0.0])
    math = rewards.make("math")
    got = math(
        [
            mk("so c = 14", "14"),
            mk(r"\boxed{3/4}", "0.75"),
            mk("1,000", "1000"),
            mk("no number", "3"),
            mk("13", "14"),
        ]
    )
    np.testing.assert_array_equal(got, [1, 1, 1, 0, 0])
    with pytest.raises(ValueError, match=r"unknown reward 'no_such_judge'; registered: \["):
        rewards.make("no_such_judge")


def test_optimizer_config_is_a_cache_key_and_makes_make_optimizer_s_optimizer():
    a = rl.OptimizerConfig(learning_rate=1e-2, warmup_steps=2, weight_decay=0.1, max_grad_norm=1.0)
    same = rl.OptimizerConfig(1e-2, 2, 0.1, 1.0)
    assert a == same and hash(a) == hash(same)
    assert len({a, same, rl.OptimizerConfig(2e-2, 2, 0.1, 1.0)}) == 2
    params = {"w": jnp.asarray([1.0, -1.0, 0.5])}
    grads = {"w": jnp.asarray([3.0, -2.0, 1.0])}
    updates = []
    for tx in (a.make(), rl.make_optimizer(1e-2, 2, 0.1, 1.0)):
        state, p, got = tx.init(params), params, []
        for _ in range(3):
            u, state = tx.update(grads, state, p)
            p = optax.apply_updates(p, u)
            got.append(np.asarray(p["w"]))
        updates.append(got)
    np.testing.assert_array_equal(np.asarray(updates[0]), np.asarray(updates[1]))
    np.testing.assert_array_equal(updates[0][0], params["w"])  # The warmup starts at 0,
    assert not np.allclose(updates[0][-1], params["w"])  # then the parameters move.


@pytest.mark.parametrize("warmup", [0, 3])
def test_make_optimizer_equals_optax_adamw_with_a_warmup_schedule(warmup):
    """The rate held as state gives optax's own AdamW with a linear warmup joined to a
    constant rate: parameters equal to 1e-6 over 6 updates."""
    lr, wd = 1e-2, 0.1
    schedule = (
        optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
        if warmup
        else lr
    )
    want_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=wd))
    got_tx = rl.make_optimizer(lr, warmup, wd, 1.0)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=5), jnp.float32)}
    got, want = params, params
    gs, ws = got_tx.init(params), want_tx.init(params)
    for _ in range(6):
        g = {"w": jnp.asarray(rng.normal(size=5), jnp.float32)}
        u, gs = got_tx.update(g, gs, got)
        got = optax.apply_updates(got, u)
        u, ws = want_tx.update(g, ws, want)
        want = optax.apply_updates(want, u)
        np.testing.assert_allclose(got["w"], want["w"], rtol=0, atol=1e-6)
    assert not np.allclose(got["w"], params["w"])


def test_a_new_learning_rate_reuses_the_compiled_update():
    """The rate and warmup are state: one compiled update serves every rate, and
    `with_learning_rate` sets them (the count kept) as a resumed run does."""
    traces = []

    @jax.jit
    def step(opt_state, params, grads):
        traces.append(1)
        u, opt_state = rl.make_optimizer(0.0).update(grads, opt_state, params)
        return optax.apply_updates(params, u), opt_state

    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.asarray([1.0, -1.0, 2.0])}
    moved = {}
    for lr in (1e-3, 1e-1):
        p, s = step(rl.make_optimizer(lr).init(params), params, grads)
        moved[lr] = np.abs(np.asarray(p["w"]) - 1.0)
    assert len(traces) == 1
    # Adam's first step is lr * sign(g) (to its epsilon): the rate the state held.
    np.testing.assert_allclose(moved[1e-3], 1e-3, rtol=1e-4)
    np.testing.assert_allclose(moved[1e-1], 1e-1, rtol=1e-4)
    s = rl.with_learning_rate(s, 5e-2, 4)
    (rate,) = [
        x
        for x in jax.tree.leaves(s, is_leaf=lambda x: isinstance(x, rl.LearningRateState))
        if isinstance(x, rl.LearningRateState)
    ]
    assert (float(rate.learning_rate), int(rate.warmup_steps), int(rate.count)) == (
        np.float32(5e-2),
        4,
        1,
    )
    a = rl.OptimizerConfig(1e-2, 2, 0.1, 1.0)
    assert a.program_key == rl.OptimizerConfig(3e-4, 0, 0.1, 1.0).program_key
    assert a.program_key != rl.OptimizerConfig(1e-2, 2, 0.2, 1.0).program_key
