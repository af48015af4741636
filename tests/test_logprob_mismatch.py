"""Sampler/trainer log-probability mismatch: the logged figures and truncated importance
sampling."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from start_jax import rl, train
from start_jax.rl import losses
from tests.fixtures import make_batch, smoke_config

pytestmark = pytest.mark.e2e  # Runs of the trainer or launch.py (so also slow).

TOL = 1e-6


def _np_ppo(logp, old, adv, cfg):
    ratio = np.exp(logp - old)
    return np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high))


def test_mismatch_metrics_and_truncated_importance_weights_by_hand():
    batch = make_batch()
    rs = np.random.RandomState(5)
    b, length = batch.tokens.shape
    sampler = np.asarray(batch.old_logprobs) + rs.randn(b, length).astype(np.float32) * 0.7
    sampled = rs.rand(b, length) < 0.8
    batch = batch.replace(sampler_logprobs=jnp.asarray(sampler), sampled=jnp.asarray(sampled))
    logp = np.asarray(batch.old_logprobs) + rs.randn(b, length).astype(np.float32) * 0.1
    entropy = jnp.zeros((b, length))
    mask = np.asarray(batch.loss_mask)
    old = np.asarray(batch.old_logprobs)
    adv = np.asarray(batch.advantages)
    both = mask & sampled
    for cap in (0.0, 2.0):
        cfg = losses.LossConfig(clip_low=0.2, clip_high=0.28, aggregation="token-mean", tis_cap=cap)
        counts = rl.loss_counts(batch, cfg)
        loss, aux = rl.policy_loss_terms(jnp.asarray(logp), entropy, batch, counts, cfg)
        per_token = _np_ppo(logp, old, adv, cfg)
        weight = np.where(both, np.minimum(np.exp(old - sampler), cap), 1.0) if cap else 1.0
        want_pg = np.sum(np.where(mask, per_token * weight, 0.0)) / mask.sum()
        np.testing.assert_allclose(float(aux["pg_loss"]), want_pg, rtol=1e-5, atol=TOL)
        diff = np.abs(old - sampler)[both]
        np.testing.assert_allclose(float(aux["logprob_mismatch_mean"]), diff.mean(), rtol=1e-5)
        np.testing.assert_allclose(float(aux["logprob_mismatch_max"]), diff.max(), rtol=1e-6)
    # On-policy, the old policy is the current one: the mismatch is |logp - sampler|.
    counts = rl.loss_counts(batch, cfg)
    _, aux = rl.policy_loss_terms(jnp.asarray(logp), entropy, batch, counts, cfg, on_policy=True)
    np.testing.assert_allclose(
        float(aux["logprob_mismatch_mean"]), np.abs(logp - sampler)[both].mean(), rtol=1e-5
    )


def test_bf16_sampler_with_float32_trainer_logs_the_mismatch(tmp_path):
    config = smoke_config()
    config.stages = {"s1": train.stage("joint", "self", steps=2)}
    config.sampling.dtype = "bfloat16"
    config.algo.tis_cap = 2.0
    config.eval.every = 0
    trainer = train.Trainer(config, str(tmp_path))
    assert trainer.sampler_config.dtype == "bfloat16" and trainer.model_config.dtype == "float32"
    trainer.run()
    with open(os.path.join(trainer.workdir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    for r in rows:
        assert 1e-4 < r["logprob_mismatch_mean"] <= r["logprob_mismatch_max"] < 5, r
    assert all(np.isfinite(r["pg_loss"]) for r in rows)
