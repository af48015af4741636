"""From a sampled rollout and its rewards to a `Batch`: one jitted function.

Masks, old and reference log-probabilities, critic values and advantages are
computed in one program on device, so a rollout never goes back to the host
between sampling and the update. Forwards that the update does not read are
skipped: the old policy's when the update is on-policy (`TrainConfig.on_policy`:
the loss then uses the current log-probabilities without gradient), the
reference policy's when there is no KL coefficient, and the critic's when the
estimator needs no values.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from start_jax import segments
from start_jax.models.config import ModelConfig
from start_jax.rl import advantages as adv_lib
from start_jax.rl import logprobs as lp
from start_jax.rl import masks, packing
from start_jax.rl.train_step import Batch, TrainConfig


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """Static settings of the batch builder of one stage."""

    train: TrainConfig
    advantage: adv_lib.AdvantageConfig
    train_segments: str = "joint"


def build_batch(
    params,
    ref_params,
    critic_params,
    tokens: jax.Array,
    segment_ids: jax.Array,
    forced: jax.Array,
    rewards: jax.Array,
    sampler_logprobs: jax.Array | None = None,
    sampled: jax.Array | None = None,
    layout: packing.Layout | None = None,
    *,
    model_config: ModelConfig,
    critic_config: ModelConfig | None,
    config: BatchConfig,
) -> Batch:
    """The `Batch` of a rollout [B, L] with response-only rewards [B].

    `ref_params` is read only with a KL coefficient, `critic_params` only by an
    estimator with a critic; either may be None otherwise. `sampler_logprobs`
    and `sampled` (the rollout's own log-probabilities and which tokens it
    drew) give the sampler/trainer mismatch metrics and truncated importance
    sampling. With a `layout` (`packing.layout`, needs `logprob_start=0`), the forwards
    run on the packed rows and their results come back to the padded ones; the batch is
    the padded one either way.
    """
    train, loss = config.train, config.train.loss
    if layout is not None and train.logprob_start:
        raise ValueError(f"a packed layout needs logprob_start=0, not {train.logprob_start}")
    mask = masks.loss_mask(segment_ids, forced, config.train_segments)
    kl_mask = masks.kl_mask(segment_ids, forced, config.train_segments, loss.kl_scope)
    zeros = jnp.zeros(tokens.shape, jnp.float32)

    def forward(fn):
        """fn(tokens, segment_ids, documents) [rows, columns], on the packed rows when
        there is a layout, as [B, L]."""
        if layout is None:
            return fn(tokens, segment_ids, None)
        packed = fn(
            packing.to_packed(tokens, layout),
            packing.to_packed(segment_ids, layout, segments.PAD),
            layout.documents,
        )
        return packing.to_padded(packed, layout)

    def log_probs(p):
        return forward(
            lambda t, s, d: lp.token_log_probs(
                model_config,
                p,
                t,
                s,
                loss.temperature,
                train.logprob_chunk,
                train.logprob_start,
                train.response_banned,
                documents=d,
            )[0]
        )

    old = zeros if train.on_policy else log_probs(params)
    ref = log_probs(ref_params) if loss.kl_coef else zeros
    values = (
        forward(lambda t, s, d: lp.token_values(critic_config, critic_params, t, s, d))
        if config.advantage.needs_critic
        else zeros
    )
    rewards = rewards.astype(jnp.float32)
    advantages, returns = adv_lib.estimate(rewards, values, mask, config.advantage)
    return Batch(
        tokens=tokens,
        segment_ids=segment_ids,
        loss_mask=mask,
        kl_mask=kl_mask,
        advantages=advantages,
        old_logprobs=jax.lax.stop_gradient(old),
        ref_logprobs=jax.lax.stop_gradient(ref),
        returns=returns,
        old_values=values,
        rewards=rewards,
        sampler_logprobs=sampler_logprobs,
        sampled=None if sampled is None else sampled.astype(bool),
    )


def jit_build_batch(
    model_config: ModelConfig,
    critic_config: ModelConfig | None,
    config: BatchConfig,
    out_shardings=None,
):
    """`build_batch` jitted for one model and stage: f(params, ref, critic, tokens,
    segment_ids, forced, rewards, sampler_logprobs, sampled, layout=None) -> Batch."""
    fn = functools.partial(
        build_batch, model_config=model_config, critic_config=critic_config, config=config
    )
    return jax.jit(fn, out_shardings=out_shardings)
