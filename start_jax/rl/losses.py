"""Policy, KL, entropy and value losses, reduced as (sum, count) pairs.

Every token loss l[b, t] is reduced by an aggregation mode to a pair
(sum, count) whose count does not depend on the parameters. The loss is
sum / count; splitting a batch into micro-batches and adding their sums and
counts gives exactly the gradient of the whole batch.

| mode                      | sum                          | count                       |
|---------------------------|------------------------------|-----------------------------|
| token-mean                | sum_bt l m                   | sum_bt m                    |
| seq-mean-token-mean       | sum_b (sum_t l m / sum_t m)  | rows with sum_t m > 0       |
| seq-mean-token-sum        | sum_b sum_t l m              | rows with sum_t m > 0       |
| seq-mean-token-sum-norm   | sum_b sum_t l m              | rows * norm_length (Dr.GRPO)|
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from start_jax.rl.masks import KL_SCOPES

AGGREGATIONS = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)
POLICY_LOSSES = ("ppo", "dual_clip", "gspo")
KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Hyper-parameters of the policy (and value) loss; static under jit."""

    policy_loss: str = "ppo"  # 'ppo', 'dual_clip' or 'gspo'.
    clip_low: float = 0.2  # ratio >= 1 - clip_low.
    clip_high: float = 0.2  # ratio <= 1 + clip_high (DAPO: 0.28).
    dual_clip: float = 3.0  # Dual clip c for negative advantages.
    aggregation: str = "token-mean"  # One of AGGREGATIONS.
    norm_length: int = 1024  # Constant length of seq-mean-token-sum-norm.
    kl_coef: float = 0.0  # Weight of KL(policy || reference).
    kl_estimator: str = "k3"  # 'k1', 'k2' or 'k3'.
    kl_scope: str = "mask"  # 'mask' or 'completion'.
    entropy_coef: float = 0.0  # Entropy bonus weight.
    value_clip: float = 0.2  # PPO value clipping range.
    value_coef: float = 0.5  # Weight of the value loss.
    temperature: float = 1.0  # Sampling temperature of the rollouts.
    tis_cap: float = 0.0  # Truncated importance sampling cap; 0 = off.
    # Off-policy masking on the sampler/trainer ratio w = p_trainer / p_sampler of each
    # sampled loss token (0 = that bound off): a token with w outside [token_mask_low,
    # token_mask_high] gets no policy gradient (ICEPOP-style token masking); a row whose
    # geometric-mean w over its sampled loss tokens is outside [seq_mask_low,
    # seq_mask_high] gets none at all (sequence-level masking, MIS).
    token_mask_low: float = 0.0
    token_mask_high: float = 0.0
    seq_mask_low: float = 0.0
    seq_mask_high: float = 0.0

    # Set by the run from the sampling config, not options of the config's algo section.
    DERIVED = ("norm_length", "temperature")

    @classmethod
    def options(cls) -> dict:
        """The loss's options (each an ``algo.<field>`` key of the run config) and defaults."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in cls.DERIVED}

    @classmethod
    def from_section(cls, section, **derived) -> "LossConfig":
        """From a run config's ``algo`` section (a mapping) plus the `DERIVED` fields
        (and any field given here instead of read from the section)."""
        return cls(
            **{name: section[name] for name in cls.options() if name not in derived}, **derived
        )

    def __post_init__(self):
        for name, value, allowed in (
            ("policy_loss", self.policy_loss, POLICY_LOSSES),
            ("aggregation", self.aggregation, AGGREGATIONS),
            ("kl_estimator", self.kl_estimator, KL_ESTIMATORS),
            ("kl_scope", self.kl_scope, KL_SCOPES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {list(allowed)}")
        bounds = ("tis_cap", "token_mask_low", "token_mask_high", "seq_mask_low", "seq_mask_high")
        for name in bounds:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be a number (0 = off)")
            if not 0 <= value < float("inf"):
                raise ValueError(f"{name}={value!r} must be 0 (off) or a finite number > 0")
        for kind in ("token", "seq"):
            low, high = f"{kind}_mask_low", f"{kind}_mask_high"
            lo, hi = getattr(self, low), getattr(self, high)
            if hi and not lo < 1.0 < hi:
                raise ValueError(f"{low}={lo!r} and {high}={hi!r} must hold 1: {low} < 1 < {high}")
            if not hi and lo >= 1.0:
                raise ValueError(f"{low}={lo!r} must be < 1 (a ratio of 1 is never masked)")

    @property
    def masks_tokens(self) -> bool:
        return bool(self.token_mask_low or self.token_mask_high)

    @property
    def masks_rows(self) -> bool:
        return bool(self.seq_mask_low or self.seq_mask_high)


def aggregate(
    loss: jax.Array, mask: jax.Array, mode: str, norm_length: int = 1024
) -> tuple[jax.Array, jax.Array]:
    """Reduces token losses [B, L] on `mask` to (sum, count); see module doc."""
    mask = mask.astype(jnp.float32)
    loss = jnp.where(mask > 0, loss, 0.0)  # No NaN or inf from outside the mask.
    tokens = mask.sum(-1)  # [B]
    rows = (tokens > 0).astype(jnp.float32)
    if mode == "token-mean":
        return loss.sum(), mask.sum()
    if mode == "seq-mean-token-mean":
        return (loss.sum(-1) / jnp.maximum(tokens, 1.0)).sum(), rows.sum()
    if mode == "seq-mean-token-sum":
        return loss.sum(), rows.sum()
    if mode == "seq-mean-token-sum-norm":
        return loss.sum(), jnp.asarray(loss.shape[0] * norm_length, jnp.float32)
    raise ValueError(f"unknown aggregation {mode!r}; expected one of {AGGREGATIONS}")


def policy_token_losses(
    logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, config: LossConfig
) -> dict[str, jax.Array]:
    """Per-token policy-gradient losses [B, L] and clipping indicators.

    ratio r = exp(logp - old_logp), A the advantage.
      ppo:       max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
      dual_clip: ppo, but for A < 0 at most -A * dual_clip
      gspo:      ppo on the sequence ratio s = exp(mean_t (logp - old_logp))
                 over mask tokens, with per-token gradient
                 s_t = sg(s) * exp(logp_t - sg(logp_t)).
    """
    mask = mask.astype(bool)
    log_ratio = jnp.where(mask, logp - old_logp, 0.0)
    if config.policy_loss == "gspo":
        count = jnp.maximum(mask.sum(-1, keepdims=True), 1)
        seq_log_ratio = log_ratio.sum(-1, keepdims=True) / count
        log_ratio = jnp.minimum(
            logp - jax.lax.stop_gradient(logp) + jax.lax.stop_gradient(seq_log_ratio), 10.0
        )
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - config.clip_low, 1.0 + config.clip_high)
    unclipped_loss = -advantages * ratio
    loss = jnp.maximum(unclipped_loss, -advantages * clipped)
    if config.policy_loss == "dual_clip":
        loss = jnp.where(advantages < 0, jnp.minimum(loss, -advantages * config.dual_clip), loss)
    return dict(
        loss=jnp.where(mask, loss, 0.0),
        clip_low=mask & (advantages < 0) & (ratio < 1.0 - config.clip_low),
        clip_high=mask & (advantages > 0) & (ratio > 1.0 + config.clip_high),
        approx_kl=jnp.where(mask, 0.5 * jnp.square(logp - old_logp), 0.0),
    )


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
    """Per-token estimate of KL(policy || reference), from x = ref_logp - logp.

    k1 = -x;  k2 = x^2 / 2;  k3 = exp(x) - x - 1, clamped to [-10, 10].
    """
    x = ref_logp - logp
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * jnp.square(x)
    if estimator == "k3":
        return jnp.clip(jnp.exp(jnp.clip(x, -20.0, 20.0)) - x - 1.0, -10.0, 10.0)
    raise ValueError(f"unknown kl_estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def value_token_losses(
    values: jax.Array, old_values: jax.Array, returns: jax.Array, clip: float
) -> jax.Array:
    """Clipped value loss 0.5 max((v - R)^2, (v_clip - R)^2) per token [B, L]."""
    v_clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    return 0.5 * jnp.maximum(jnp.square(values - returns), jnp.square(v_clipped - returns))
