"""Off-policy corrections (truncated importance weights, token and sequence masking on the
sampler/trainer ratio), per-segment metrics, and forced tokens kept out of both: each
against numpy by hand."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from start_jax import rl, segments, train
from start_jax.errors import ConfigError
from start_jax.rl import losses
from tests.fixtures import make_batch, rollout_segments, smoke_config

RTOL, ATOL = 1e-5, 1e-6


def _np_ppo(logp, old, adv, cfg):
    ratio = np.exp(logp - old)
    return np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high))


def _np_weights(log_w, sampled, cfg):
    """The weights, token mask and row mask of `rl.off_policy_weights`, by hand."""
    w = np.exp(log_w)
    weight = np.where(sampled, np.minimum(w, cfg.tis_cap), 1.0) if cfg.tis_cap else np.ones_like(w)
    token_out = np.zeros_like(sampled)
    if cfg.token_mask_low:
        token_out |= w < cfg.token_mask_low
    if cfg.token_mask_high:
        token_out |= w > cfg.token_mask_high
    token_out &= sampled
    weight = np.where(token_out, 0.0, weight)
    row_out = np.zeros(sampled.shape[0], bool)
    for i in range(sampled.shape[0]):
        if sampled[i].any():
            geo = np.exp(log_w[i][sampled[i]].mean())  # The geometric mean of w.
            row_out[i] = (cfg.seq_mask_low and geo < cfg.seq_mask_low) or (
                cfg.seq_mask_high and geo > cfg.seq_mask_high
            )
    weight = np.where(row_out[:, None], 0.0, weight)
    return weight, token_out, row_out


def _mismatched(seed=5, scale=0.7):
    """A batch whose sampler log-probabilities differ from the trainer's, the policy's
    log-probabilities and zero entropies."""
    batch = make_batch(seed=seed)
    rs = np.random.RandomState(seed)
    b, length = batch.tokens.shape
    sampler = np.asarray(batch.old_logprobs) + rs.randn(b, length).astype(np.float32) * scale
    sampled = rs.rand(b, length) < 0.8
    batch = batch.replace(sampler_logprobs=jnp.asarray(sampler), sampled=jnp.asarray(sampled))
    logp = np.asarray(batch.old_logprobs) + rs.randn(b, length).astype(np.float32) * 0.1
    entropy = rs.rand(b, length).astype(np.float32) * 3
    return batch, logp, entropy


CONFIGS = [
    dict(tis_cap=2.0),
    dict(token_mask_low=0.5, token_mask_high=2.0),
    dict(token_mask_high=1.5),
    dict(seq_mask_low=0.8, seq_mask_high=1.25),
    dict(tis_cap=2.0, token_mask_low=0.5, token_mask_high=3.0, seq_mask_high=1.1),
]


@pytest.mark.parametrize("options", CONFIGS, ids=lambda o: ",".join(o))
def test_corrections_weight_the_policy_loss_as_by_hand(options):
    batch, logp, entropy = _mismatched()
    cfg = losses.LossConfig(clip_low=0.2, clip_high=0.28, **options)
    old, sampler = np.asarray(batch.old_logprobs), np.asarray(batch.sampler_logprobs)
    mask, adv = np.asarray(batch.loss_mask), np.asarray(batch.advantages)
    both = mask & np.asarray(batch.sampled)
    weight, token_out, row_out = _np_weights(old - sampler, both, cfg)
    got = rl.off_policy_weights(jnp.asarray(old - sampler), jnp.asarray(both), cfg)
    np.testing.assert_allclose(np.asarray(got[0]), weight, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(np.asarray(got[1]), token_out)
    np.testing.assert_array_equal(np.asarray(got[2]), row_out)

    counts = rl.loss_counts(batch, cfg)
    _, aux = rl.policy_loss_terms(jnp.asarray(logp), jnp.asarray(entropy), batch, counts, cfg)
    per_token = _np_ppo(logp, old, adv, cfg) * weight
    want_pg = np.sum(np.where(mask, per_token, 0.0)) / mask.sum()  # token-mean
    np.testing.assert_allclose(float(aux["pg_loss"]), want_pg, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(float(aux["token_masked_frac"]), token_out.sum() / both.sum())
    rows = both.any(-1)
    np.testing.assert_allclose(float(aux["seq_masked_frac"]), row_out.sum() / rows.sum())
    # Something is masked in every masking config here, and the masking is not everything.
    if cfg.masks_tokens:
        assert 0 < token_out.sum() < both.sum()
    if cfg.masks_rows:
        assert 0 < row_out.sum() < rows.sum()


def test_per_segment_metrics_by_hand_and_over_micro_batches():
    batch, logp, entropy = _mismatched(seed=7)
    cfg = losses.LossConfig(
        clip_low=0.2, clip_high=0.28, kl_coef=0.1, token_mask_low=0.5, token_mask_high=2.0
    )
    counts = rl.loss_counts(batch, cfg)
    _, aux = rl.policy_loss_terms(jnp.asarray(logp), jnp.asarray(entropy), batch, counts, cfg)
    seg = np.asarray(batch.segment_ids)
    mask, kl_mask = np.asarray(batch.loss_mask), np.asarray(batch.kl_mask)
    old, ref = np.asarray(batch.old_logprobs), np.asarray(batch.ref_logprobs)
    sampler, sampled = np.asarray(batch.sampler_logprobs), np.asarray(batch.sampled)
    ratio = np.exp(logp - old)
    adv = np.asarray(batch.advantages)
    x = ref - logp
    k3 = np.clip(np.exp(x) - x - 1, -10, 10)
    diff = np.abs(old - sampler)
    _, token_out, _ = _np_weights(old - sampler, mask & sampled, cfg)
    for name, s in (("think", segments.THINK), ("response", segments.RESPONSE)):
        m, k, ms = mask & (seg == s), kl_mask & (seg == s), mask & sampled & (seg == s)
        assert m.sum() > 0 and k.sum() > 0 and ms.sum() > 0  # Joint mode: both trained.
        want = {
            "entropy": entropy[m].mean(),
            "clip_frac_low": np.mean((adv < 0)[m] & (ratio < 0.8)[m]),
            "clip_frac_high": np.mean((adv > 0)[m] & (ratio > 1.28)[m]),
            "approx_kl": np.mean(0.5 * np.square(logp - old)[m]),
            "kl": k3[k].mean(),
            "logprob_mismatch_mean": diff[ms].mean(),
            "logprob_mismatch_max": diff[ms].max(),
            "token_masked_frac": token_out[ms].mean(),
        }
        for key, value in want.items():
            np.testing.assert_allclose(
                float(aux[f"{name}/{key}"]), value, rtol=RTOL, atol=ATOL, err_msg=key
            )
    # Two micro-batches of rows, scaled by the whole batch's counts, add up (a maximum
    # stays a maximum) to the whole batch's figures, as the train step combines them.
    halves = [jax.tree.map(lambda a, h=h: a[h * 4 : (h + 1) * 4], batch) for h in (0, 1)]
    parts = [
        rl.policy_loss_terms(
            jnp.asarray(logp[h * 4 : (h + 1) * 4]),
            jnp.asarray(entropy[h * 4 : (h + 1) * 4]),
            half,
            counts,
            cfg,
        )[1]
        for h, half in enumerate(halves)
    ]
    for key, value in aux.items():
        combine = max if key.endswith("_max") else (lambda a, b: a + b)
        np.testing.assert_allclose(
            float(combine(parts[0][key], parts[1][key])), float(value), rtol=RTOL, atol=ATOL
        )


@pytest.mark.parametrize("mode", ["joint", "think", "response"])
def test_forced_tokens_carry_no_gradient_ratio_or_kl(mode):
    """`<think>` and a budget-forced `</think>` are written by rule: they are in no loss
    or KL mask, so a sampler/trainer ratio there (even a wild one) changes no loss, no
    weight and no metric, and their log-probabilities get no gradient."""
    batch = make_batch(mode, kl_scope="completion", seed=3)
    _, forced = rollout_segments(8, 20, 3)
    assert forced.sum() > 8  # Every row's <think>, and half the rows' forced </think>.
    rs = np.random.RandomState(0)
    old = np.asarray(batch.old_logprobs)
    sampler = old + rs.randn(*old.shape).astype(np.float32) * 0.3
    wild = np.where(forced, sampler - 20.0, sampler)  # w = e^20 on the forced tokens only.
    cfg = losses.LossConfig(
        kl_coef=0.1, tis_cap=2.0, token_mask_low=0.5, token_mask_high=2.0, seq_mask_high=1.5
    )
    logp = jnp.asarray(old + rs.randn(*old.shape).astype(np.float32) * 0.1)
    entropy = jnp.zeros(old.shape)
    every = jnp.ones(old.shape, bool)  # Even marked as sampled.
    results = []
    for s in (sampler, wild):
        b = batch.replace(sampler_logprobs=jnp.asarray(s), sampled=every)
        counts = rl.loss_counts(b, cfg)

        def total(lp, b=b, counts=counts):
            return rl.policy_loss_terms(lp, entropy, b, counts, cfg)

        (loss, aux), grad = jax.value_and_grad(total, has_aux=True)(logp)
        assert not np.asarray(b.loss_mask)[forced].any()
        assert not np.asarray(b.kl_mask)[forced].any()
        np.testing.assert_array_equal(np.asarray(grad)[forced], 0.0)
        results.append((float(loss), {k: float(v) for k, v in aux.items()}, np.asarray(grad)))
    (loss_a, aux_a, grad_a), (loss_b, aux_b, grad_b) = results
    assert loss_a == loss_b and aux_a == aux_b
    np.testing.assert_array_equal(grad_a, grad_b)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("token_mask_low", 2.0, "config: algo.token_mask_low=2.0 must be < 1"),
        ("token_mask_high", 0.9, "config: algo.token_mask_low=0.0 and token_mask_high=0.9"),
        ("seq_mask_high", -1.0, "config: algo.seq_mask_high=-1.0 must be 0 (off) or a finite"),
        ("tis_cap", float("inf"), "config: algo.tis_cap=inf must be 0 (off) or a finite"),
    ],
)
def test_bad_bounds_name_the_field(field, value, message):
    config = smoke_config()
    config.algo[field] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        train.RunSpec.from_config(config)


def test_the_run_reads_the_bounds():
    config = smoke_config()
    config.algo.token_mask_low, config.algo.token_mask_high = 0.5, 2.0
    config.algo.seq_mask_low, config.algo.seq_mask_high = 0.9, 1.1
    loss = train.RunSpec.from_config(config).train.loss
    assert (loss.token_mask_low, loss.token_mask_high) == (0.5, 2.0)
    assert (loss.seq_mask_low, loss.seq_mask_high) == (0.9, 1.1)
    assert loss.masks_tokens and loss.masks_rows
