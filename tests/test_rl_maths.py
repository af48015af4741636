"""Advantages and losses against independent float64 numpy references."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from start_jax import segments
from start_jax.rl import advantages as adv
from start_jax.rl import losses, masks

TOL = 1e-6
RS = np.random.RandomState(0)


def _rewards_with_flat_group(groups=4, size=4):
    r = RS.randn(groups * size)
    r[:size] = 0.5  # Zero variance group.
    return r


# ------------------------------------------------------------ advantages


def test_grpo_matches_numpy():
    r = _rewards_with_flat_group()
    g = r.reshape(-1, 4)
    expect = ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-6)).ravel()
    got = np.asarray(adv.grpo(jnp.asarray(r, jnp.float32), group_size=4))
    np.testing.assert_allclose(got, expect, atol=TOL, rtol=TOL)
    assert np.all(got[:4] == 0)
    dr = np.asarray(adv.grpo(jnp.asarray(r, jnp.float32), group_size=4, scale="none"))
    np.testing.assert_allclose(dr, (g - g.mean(1, keepdims=True)).ravel(), atol=TOL)


def test_rloo_matches_numpy():
    r = _rewards_with_flat_group()
    g = r.reshape(-1, 4)
    expect = np.stack(
        [[g[i, j] - np.delete(g[i], j).mean() for j in range(4)] for i in range(len(g))]
    ).ravel()
    np.testing.assert_allclose(
        np.asarray(adv.rloo(jnp.asarray(r, jnp.float32), group_size=4)), expect, atol=TOL
    )


@pytest.mark.parametrize("baseline", [False, True])
def test_reinforce_pp_matches_numpy(baseline):
    r = _rewards_with_flat_group()
    a = r.reshape(-1, 4)
    a = (a - a.mean(1, keepdims=True)).ravel() if baseline else r
    expect = (a - a.mean()) / (a.std() + 1e-6)
    got = adv.reinforce_pp(jnp.asarray(r, jnp.float32), group_size=4, group_baseline=baseline)
    np.testing.assert_allclose(np.asarray(got), expect, atol=TOL, rtol=TOL)


def test_unknown_estimator_is_an_error():
    with pytest.raises(
        ValueError,
        match=r"unknown advantage estimator 'ppo'; known: "
        r"\['gae', 'grpo', 'reinforce_pp', 'rloo'\]",
    ):
        adv.estimate(
            jnp.zeros(4),
            jnp.zeros((4, 3)),
            jnp.ones((4, 3), bool),
            adv.AdvantageConfig("ppo", group_size=2),
        )


@pytest.mark.parametrize("name", sorted(adv.ESTIMATORS))
def test_registry_estimators_share_one_signature(name):
    """Each registered estimator equals its own function, through one call shape."""
    rng = np.random.default_rng(3)
    r = jnp.asarray(rng.integers(0, 3, 8), jnp.float32)
    values = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
    mask = jnp.asarray(rng.random((8, 5)) < 0.7)
    cfg = adv.AdvantageConfig(
        name, group_size=4, grpo_scale="std", group_baseline=True, gamma=0.9, lam=0.8
    )
    got_adv, got_ret = adv.estimate(r, values, mask, cfg)
    if name == "gae":
        want_adv, want_ret = adv.gae(r, values, mask, gamma=0.9, lam=0.8)
    else:
        seq = {
            "grpo": lambda: adv.grpo(r, 4, "std"),
            "rloo": lambda: adv.rloo(r, 4),
            "reinforce_pp": lambda: adv.reinforce_pp(r, 4, True),
        }[name]()
        want_adv, want_ret = adv.broadcast(seq, mask), jnp.zeros((8, 5))
    np.testing.assert_allclose(np.asarray(got_adv), np.asarray(want_adv), atol=0)
    np.testing.assert_allclose(np.asarray(got_ret), np.asarray(want_ret), atol=0)


def _np_gae(rewards, values, mask, gamma, lam):
    b, length = values.shape
    out = np.zeros((b, length))
    for i in range(b):
        idx = np.nonzero(mask[i])[0]
        a_next = 0.0
        for k in range(len(idx) - 1, -1, -1):
            t = idx[k]
            last = k == len(idx) - 1
            v_next = 0.0 if last else values[i, idx[k + 1]]
            delta = (rewards[i] if last else 0.0) + gamma * v_next - values[i, t]
            a_next = delta + gamma * lam * (0.0 if last else a_next)
            out[i, t] = a_next
    return out


def test_gae_hand_worked_example_with_a_gap():
    # Thinking tokens 1..3 are actions; the response (4..5) is outside the mask.
    values = np.array([[0.0, 0.5, 0.6, 0.8, 0.3, 0.2]])
    mask = np.array([[False, True, True, True, False, False]])
    reward, gamma, lam = 1.0, 0.9, 0.8
    # Last action (t=3) gets the terminal reward; response tokens are skipped.
    a3 = reward - 0.8  # 0.2
    a2 = (gamma * 0.8 - 0.6) + gamma * lam * a3  # 0.12 + 0.144 = 0.264
    a1 = (gamma * 0.6 - 0.5) + gamma * lam * a2  # 0.04 + 0.19008 = 0.23008
    got, returns = adv.gae(
        jnp.asarray([reward]),
        jnp.asarray(values, jnp.float32),
        jnp.asarray(mask),
        gamma=gamma,
        lam=lam,
    )
    np.testing.assert_allclose(np.asarray(got)[0], [0, a1, a2, a3, 0, 0], atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(returns)[0], [0, a1 + 0.5, a2 + 0.6, a3 + 0.8, 0, 0], atol=1e-6
    )


def test_gae_random_masks_match_numpy():
    b, length = 5, 17
    values = RS.randn(b, length)
    mask = RS.rand(b, length) < 0.5
    mask[2] = False  # An empty row.
    rewards = RS.randn(b)
    for gamma, lam in [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)]:
        got, _ = adv.gae(
            jnp.asarray(rewards, jnp.float32),
            jnp.asarray(values, jnp.float32),
            jnp.asarray(mask),
            gamma=gamma,
            lam=lam,
        )
        np.testing.assert_allclose(
            np.asarray(got), _np_gae(rewards, values, mask, gamma, lam), atol=TOL, rtol=TOL
        )
        assert np.all(np.asarray(got)[~mask] == 0)


# ------------------------------------------------------------ losses


def _inputs(b=4, length=12, empty_row=True):
    logp = -np.abs(RS.randn(b, length))
    old = logp + 0.3 * RS.randn(b, length)
    ref = logp + 0.3 * RS.randn(b, length)
    advantages = RS.randn(b, length)
    mask = RS.rand(b, length) < 0.6
    mask[0, 3:6] = False  # Holes.
    if empty_row:
        mask[1] = False
    return logp, old, ref, advantages, mask


def _np_policy(logp, old, a, mask, kind, cl, ch, c):
    ratio = np.exp(logp - old)
    if kind == "gspo":
        n = np.maximum(mask.sum(1, keepdims=True), 1)
        seq = np.where(mask, logp - old, 0).sum(1, keepdims=True) / n
        ratio = np.exp(np.minimum(seq, 10.0)) * np.ones_like(logp)
    loss = np.maximum(-a * ratio, -a * np.clip(ratio, 1 - cl, 1 + ch))
    if kind == "dual_clip":
        loss = np.where(a < 0, np.minimum(loss, -a * c), loss)
    return np.where(mask, loss, 0.0)


def _np_aggregate(loss, mask, mode, norm):
    loss = np.where(mask, loss, 0.0)
    tokens = mask.sum(1)
    rows = (tokens > 0).sum()
    if mode == "token-mean":
        return loss.sum() / max(mask.sum(), 1)
    if mode == "seq-mean-token-mean":
        return (loss.sum(1) / np.maximum(tokens, 1)).sum() / max(rows, 1)
    if mode == "seq-mean-token-sum":
        return loss.sum() / max(rows, 1)
    return loss.sum() / (loss.shape[0] * norm)


@pytest.mark.parametrize("kind", losses.POLICY_LOSSES)
@pytest.mark.parametrize("mode", losses.AGGREGATIONS)
def test_policy_losses_and_aggregation_match_numpy(kind, mode):
    logp, old, ref, a, mask = _inputs()
    cfg = losses.LossConfig(
        policy_loss=kind,
        clip_low=0.2,
        clip_high=0.28,
        dual_clip=3.0,
        aggregation=mode,
        norm_length=16,
    )
    parts = losses.policy_token_losses(
        *(jnp.asarray(x, jnp.float32) for x in (logp, old, a)), jnp.asarray(mask), cfg
    )
    expect_tokens = _np_policy(logp, old, a, mask, kind, 0.2, 0.28, 3.0)
    np.testing.assert_allclose(np.asarray(parts["loss"]), expect_tokens, atol=TOL, rtol=TOL)
    total, count = losses.aggregate(parts["loss"], jnp.asarray(mask), mode, 16)
    got = total / jnp.maximum(count, 1e-8)
    np.testing.assert_allclose(
        float(got), _np_aggregate(expect_tokens, mask, mode, 16), atol=TOL, rtol=TOL
    )


def test_clip_fractions_match_numpy():
    logp, old, _, a, mask = _inputs()
    cfg = losses.LossConfig(clip_low=0.2, clip_high=0.28)
    parts = losses.policy_token_losses(
        *(jnp.asarray(x, jnp.float32) for x in (logp, old, a)), jnp.asarray(mask), cfg
    )
    ratio = np.exp(logp - old)
    np.testing.assert_array_equal(np.asarray(parts["clip_low"]), mask & (a < 0) & (ratio < 0.8))
    np.testing.assert_array_equal(np.asarray(parts["clip_high"]), mask & (a > 0) & (ratio > 1.28))


@pytest.mark.parametrize("estimator", losses.KL_ESTIMATORS)
def test_kl_estimators_match_numpy(estimator):
    logp, _, ref, _, _ = _inputs()
    x = ref - logp
    expect = {"k1": -x, "k2": 0.5 * x**2, "k3": np.clip(np.exp(x) - x - 1, -10, 10)}[estimator]
    got = losses.kl_penalty(
        jnp.asarray(logp, jnp.float32), jnp.asarray(ref, jnp.float32), estimator
    )
    np.testing.assert_allclose(np.asarray(got), expect, atol=TOL, rtol=TOL)
    # k3 is clamped for extreme log-ratios.
    big = losses.kl_penalty(jnp.asarray([0.0]), jnp.asarray([30.0]), "k3")
    assert float(big[0]) == 10.0


def test_value_loss_matches_numpy():
    v, old_v, ret = RS.randn(3, 7), RS.randn(3, 7), RS.randn(3, 7)
    clipped = old_v + np.clip(v - old_v, -0.2, 0.2)
    expect = 0.5 * np.maximum((v - ret) ** 2, (clipped - ret) ** 2)
    got = losses.value_token_losses(*(jnp.asarray(x, jnp.float32) for x in (v, old_v, ret)), 0.2)
    np.testing.assert_allclose(np.asarray(got), expect, atol=TOL, rtol=TOL)


def test_empty_masks_give_zero_not_nan():
    logp, old, _, a, _ = _inputs()
    mask = np.zeros_like(logp, bool)
    for mode in losses.AGGREGATIONS:
        for kind in losses.POLICY_LOSSES:
            cfg = losses.LossConfig(policy_loss=kind, aggregation=mode)
            parts = losses.policy_token_losses(
                *(jnp.asarray(x, jnp.float32) for x in (logp, old, a)), jnp.asarray(mask), cfg
            )
            total, count = losses.aggregate(parts["loss"], jnp.asarray(mask), mode)
            value = total / jnp.maximum(count, 1e-8)
            assert float(value) == 0.0


def test_loss_masks_per_mode():
    seg = jnp.asarray([[0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 0]])
    forced = jnp.asarray([[0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0]], bool)
    expect = {
        "joint": [0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 0],
        "think": [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
        "response": [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0],
    }
    for mode, want in expect.items():
        np.testing.assert_array_equal(
            np.asarray(masks.loss_mask(seg, forced, mode))[0], np.asarray(want, bool)
        )
    np.testing.assert_array_equal(
        masks.kl_mask(seg, forced, "think", "completion"), masks.loss_mask(seg, forced, "joint")
    )
    with pytest.raises(
        ValueError,
        match=r"unknown train_segments 'thinking'; expected one of "
        r"\['joint', 'response', 'think'\]",
    ):
        masks.loss_mask(seg, forced, "thinking")
    assert segments.THINK == 2
