"""The think-tag ban is part of the policy on both sides of RL.

With `ban_tags_in_response` the sampler draws response tokens from the policy
with the tags' logits at -inf, and reports those log-probabilities; the
update (`TrainConfig.response_banned`) recomputes the same numbers, so the
ratios start at 1 and the gradient is that of the policy that sampled.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from start_jax import models, rl, sampling, segments
from start_jax.rl import logprobs as lp
from start_jax.rl import train_step

THINK, END, EOS, PAD = 3, 4, 1, 0
SPECIAL = sampling.SpecialTokens(think=THINK, end_think=END, eos=EOS, pad=PAD)
TAGS = (THINK, END)
CONFIG = models.tiny_config(16)


@pytest.fixture(scope="module")
def params():
    return models.init_params(CONFIG, jax.random.key(1))


def _rollout(params, cfg):
    prompts = [[5, 6, 7], [8, 9], [5], [10, 11, 12]]
    return sampling.sample(CONFIG, params, prompts, cfg, 3, SPECIAL)


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("logprobs_of", ["model", "sampled"])
def test_update_log_probs_equal_the_sampler_s_under_the_ban(params, logprobs_of):
    cfg = sampling.SamplingConfig(
        temperature=0.9, think_budget=6, response_budget=6, logprobs_of=logprobs_of
    )
    assert cfg.ban_tags_in_response  # On by default.
    rollout = _rollout(params, cfg)
    segs = np.asarray(rollout.segment_ids)
    drawn = np.asarray(rollout.sampled) & (segs != segments.PAD)
    response = drawn & (segs == segments.RESPONSE)
    assert response.sum() >= 8 and (drawn & (segs == segments.THINK)).sum() >= 8
    tokens = np.asarray(rollout.tokens)
    assert not np.isin(tokens[response], TAGS).any()
    ours = np.asarray(
        rl.rollout_log_probs(
            CONFIG, params, rollout.tokens, rollout.segment_ids, 0.9, response_banned=TAGS
        )
    )
    theirs = np.asarray(rollout.logprobs)
    np.testing.assert_allclose(ours[drawn], theirs[drawn], atol=1e-5)
    # Without the ban the update would see another policy: in the response the tags
    # (about 2/16 of the mass of this random model) are missing from the sampler's.
    plain = np.asarray(
        rl.rollout_log_probs(CONFIG, params, rollout.tokens, rollout.segment_ids, 0.9)
    )
    gap = ours[response] - plain[response]
    assert gap.min() > 1e-2
    np.testing.assert_allclose(plain[drawn & ~response], ours[drawn & ~response], atol=1e-6)


def _naive(hidden, kernel, targets, ban, temperature):
    z = jnp.einsum("btd,dv->btv", hidden, kernel) / temperature
    tag = jnp.isin(jnp.arange(z.shape[-1]), jnp.asarray(TAGS))
    z = jnp.where(ban[..., None] & tag, lp.BANNED_LOGIT, z)
    logp = jax.nn.log_softmax(z, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return picked, entropy


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("chunk", [1, 4, 11])
def test_banned_head_equals_naive_masked_softmax_values_and_gradients(chunk):
    rs = np.random.RandomState(0)
    b, t, d = 3, 11, CONFIG.hidden_size
    hidden = jnp.asarray(rs.randn(b, t, d), jnp.float32)
    kernel = jnp.asarray(rs.randn(d, CONFIG.vocab_size) * 0.5, jnp.float32)
    targets = jnp.asarray(rs.randint(5, CONFIG.vocab_size, size=(b, t)), jnp.int32)
    ban = jnp.asarray(rs.rand(b, t) < 0.5)
    w1, w2 = (jnp.asarray(rs.randn(b, t), jnp.float32) for _ in range(2))

    def objective(fn):
        def f(h, k):
            logp, ent = fn(h, k)
            return jnp.sum(logp * w1) + jnp.sum(ent * w2)

        return f

    ours = lambda h, k: lp.chunked_head(h, k, targets, 0.8, chunk, jnp.float32, ban, TAGS)  # noqa: E731
    naive = lambda h, k: _naive(h, k, targets, ban, 0.8)  # noqa: E731
    for x, y in zip(ours(hidden, kernel), naive(hidden, kernel)):
        assert np.isfinite(np.asarray(x)).all()
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)
    ga = jax.grad(objective(ours), argnums=(0, 1))(hidden, kernel)
    gb = jax.grad(objective(naive), argnums=(0, 1))(hidden, kernel)
    for x, y in zip(ga, gb):
        assert np.isfinite(np.asarray(x)).all()
        np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4)
    # The banned logits get no gradient: their probability is 0 at the banned positions.
    unbanned = lambda h, k: lp.chunked_head(h, k, targets, 0.8, chunk, jnp.float32)  # noqa: E731
    assert not np.allclose(ours(hidden, kernel)[0], unbanned(hidden, kernel)[0], atol=1e-3)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_on_policy_update_starts_at_ratio_one_under_the_ban(params):
    """The batch builder and the loss both apply the ban: old = current log-probs."""
    cfg = sampling.SamplingConfig(temperature=1.0, think_budget=5, response_budget=5)
    rollout = _rollout(params, cfg)
    train = rl.TrainConfig(ppo_epochs=2, response_banned=TAGS)
    batch_cfg = rl.BatchConfig(
        train=train, advantage=rl.AdvantageConfig(estimator="grpo", group_size=2)
    )
    rewards = jnp.asarray([1.0, 0.0, 0.5, 0.2])
    batch = rl.jit_build_batch(CONFIG, None, batch_cfg)(
        params,
        None,
        None,
        rollout.tokens,
        rollout.segment_ids,
        rollout.forced,
        rewards,
        rollout.logprobs,
        rollout.sampled,
    )
    mask = np.asarray(batch.loss_mask)
    np.testing.assert_allclose(
        np.asarray(batch.old_logprobs)[mask], np.asarray(rollout.logprobs)[mask], atol=1e-5
    )
    counts = rl.loss_counts(batch, train.loss)
    _, aux = train_step.policy_loss(params, batch, counts, CONFIG, train)
    assert abs(float(aux["approx_kl"])) < 1e-6 and float(aux["clip_frac_low"]) == 0.0
    # The same batch scored without the ban is off-policy from the first update.
    _, plain = train_step.policy_loss(
        params, batch, counts, CONFIG, dataclasses.replace(train, response_banned=())
    )
    assert abs(float(plain["approx_kl"])) > 1e-4
