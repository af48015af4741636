"""Advantage estimators, chosen by name from one registry.

Sequence-level estimators map rewards [B] to advantages [B]; rows come in
groups of G consecutive completions of the same prompt. `broadcast` spreads a
sequence advantage over the tokens of a mask. GAE works per token with a value
model, over the action tokens of a mask only.

Every registered estimator has one signature, ``(rewards [B], values [B, L],
mask [B, L], config: AdvantageConfig) -> (advantages [B, L], returns [B, L])``;
`estimate` dispatches on ``config.estimator``. Sequence estimators ignore the
values and return zero returns.

This module is the one home of the estimators: a new one is a function, a
`register` call (saying whether it needs a critic and when it needs groups of
at least two completions) and, if it has a hyperparameter, a field of
`AdvantageConfig`. The run config's ``algo`` section gets a key for every field
(with its default) and the run spec reads them back (`AdvantageConfig.from_section`),
so neither names an estimator or its options.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

EPS = 1e-6


def _groups(rewards: jax.Array, group_size: int) -> jax.Array:
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"batch of {rewards.shape[0]} rows is not a multiple of group_size={group_size}"
        )
    return rewards.reshape(-1, group_size).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("group_size", "scale"))
def grpo(rewards: jax.Array, group_size: int, scale: str = "std") -> jax.Array:
    """GRPO: A_i = (r_i - mean_g r) / (std_g r + eps).

    `std_g` is the unbiased (ddof=1) standard deviation of the group.
    `scale='none'` is Dr.GRPO: A_i = r_i - mean_g r. A group whose rewards are
    all equal gets zero advantages.
    """
    r = _groups(rewards, group_size)
    centred = r - r.mean(axis=1, keepdims=True)
    if scale == "none":
        return centred.reshape(-1)
    if scale != "std":
        raise ValueError(f"unknown GRPO scale {scale!r}; expected 'std' or 'none'")
    std = jnp.std(r, axis=1, keepdims=True, ddof=1) if group_size > 1 else jnp.zeros_like(centred)
    return (centred / (std + EPS)).reshape(-1)


@functools.partial(jax.jit, static_argnames=("group_size",))
def rloo(rewards: jax.Array, group_size: int) -> jax.Array:
    """RLOO: A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_g r)."""
    if group_size < 2:
        raise ValueError("RLOO needs group_size >= 2")
    r = _groups(rewards, group_size)
    loo_mean = (r.sum(axis=1, keepdims=True) - r) / (group_size - 1)
    return (r - loo_mean).reshape(-1)


@functools.partial(jax.jit, static_argnames=("group_size", "group_baseline"))
def reinforce_pp(
    rewards: jax.Array, group_size: int = 1, group_baseline: bool = False
) -> jax.Array:
    """REINFORCE++: a_i = r_i - b_i, then whitened over the batch rows.

    b_i = mean of the row's group when `group_baseline`, else 0;
    A_i = (a_i - mean(a)) / (std(a) + eps) with the population std of the batch.
    """
    r = rewards.astype(jnp.float32)
    if group_baseline:
        g = _groups(r, group_size)
        r = (g - g.mean(axis=1, keepdims=True)).reshape(-1)
    return (r - r.mean()) / (jnp.std(r) + EPS)


def broadcast(advantages: jax.Array, mask: jax.Array) -> jax.Array:
    """[B] sequence advantages -> [B, L] on mask tokens, 0 elsewhere."""
    return jnp.where(mask, advantages[:, None], 0.0).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("gamma", "lam"))
def gae(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float = 1.0, lam: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """GAE over the action tokens of `mask` only.

    Tokens outside the mask are transitions of the environment: they are
    skipped, so the next action's value bootstraps across them. The terminal
    reward is credited to the last action token. With actions at positions
    t_1 < ... < t_n of a row:

      delta_k = [k = n] R + gamma V(t_{k+1}) [k < n] - V(t_k)
      A_k     = delta_k + gamma lam A_{k+1}          (A_{n+1} = 0)
      returns_k = A_k + V(t_k)

    Args:
      rewards: [B] terminal rewards.
      values: [B, L] value of the state before each token.
      mask: [B, L] bool action tokens.

    Returns:
      (advantages [B, L], returns [B, L]), zero outside the mask.
    """
    values = values.astype(jnp.float32)
    mask = mask.astype(bool)

    def step(carry, x):
        next_value, next_adv, seen = carry
        v, m = x
        reward = jnp.where(seen, 0.0, rewards.astype(jnp.float32))
        boot = jnp.where(seen, next_value, 0.0)
        delta = reward + gamma * boot - v
        adv = delta + gamma * lam * jnp.where(seen, next_adv, 0.0)
        carry = (jnp.where(m, v, next_value), jnp.where(m, adv, next_adv), seen | m)
        return carry, jnp.where(m, adv, 0.0)

    b = values.shape[0]
    init = (jnp.zeros(b), jnp.zeros(b), jnp.zeros(b, bool))
    _, adv = jax.lax.scan(step, init, (values.T, mask.T), reverse=True)
    adv = adv.T
    returns = jnp.where(mask, adv + values, 0.0)
    return adv, returns


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    """Which estimator and its settings (only the ones it reads matter).

    Every field after `group_size` is an estimator's hyperparameter: the run
    config has it as ``algo.<field>`` with this default.
    """

    estimator: str = "grpo"  # A key of ESTIMATORS (the run config's algo.advantage).
    group_size: int = 1  # Consecutive completions of one prompt.
    grpo_scale: str = "std"  # GRPO: 'std' or 'none' (Dr.GRPO).
    group_baseline: bool = True  # REINFORCE++: subtract the group mean.
    gamma: float = 1.0  # GAE discount.
    lam: float = 0.95  # GAE lambda.

    @property
    def needs_critic(self) -> bool:
        return self.estimator in CRITIC_ESTIMATORS

    @property
    def needs_groups(self) -> bool:
        """Whether the estimator compares completions of one prompt (group_size >= 2)."""
        return _GROUPED[self.estimator](self) if self.estimator in _GROUPED else False

    @classmethod
    def options(cls) -> dict:
        """The estimators' hyperparameters and their defaults (the fields after group_size)."""
        return {
            f.name: f.default
            for f in dataclasses.fields(cls)
            if f.name not in ("estimator", "group_size")
        }

    @classmethod
    def from_section(cls, section) -> "AdvantageConfig":
        """From a run config's ``algo`` section (a mapping): ``advantage`` names the
        estimator; every other field is read under its own name."""
        return cls(
            estimator=section["advantage"],
            group_size=section["group_size"],
            **{name: section[name] for name in cls.options()},
        )


Estimator = Callable[
    [jax.Array, jax.Array, jax.Array, AdvantageConfig], tuple[jax.Array, jax.Array]
]

ESTIMATORS: dict[str, Estimator] = {}
CRITIC_ESTIMATORS: tuple[str, ...] = ()
_GROUPED: dict[str, Callable[[AdvantageConfig], bool]] = {}


def register(
    name: str,
    fn: Estimator,
    *,
    critic: bool = False,
    grouped: bool | Callable[[AdvantageConfig], bool] = False,
) -> Estimator:
    """Adds estimator `name`; `critic`: it reads a value model's values; `grouped` (or a
    predicate of the config): it needs at least two completions per prompt."""
    global CRITIC_ESTIMATORS
    ESTIMATORS[name] = fn
    if critic:
        CRITIC_ESTIMATORS = tuple(sorted({*CRITIC_ESTIMATORS, name}))
    _GROUPED[name] = grouped if callable(grouped) else (lambda config, g=bool(grouped): g)
    return fn


def _sequence(fn) -> Estimator:
    def estimator(rewards, values, mask, config):
        del values
        adv = broadcast(fn(rewards, config), mask)
        return adv, jnp.zeros(mask.shape, jnp.float32)

    return estimator


register("grpo", _sequence(lambda r, c: grpo(r, c.group_size, c.grpo_scale)), grouped=True)
register("rloo", _sequence(lambda r, c: rloo(r, c.group_size)), grouped=True)
register(
    "reinforce_pp",
    _sequence(lambda r, c: reinforce_pp(r, c.group_size, c.group_baseline)),
    grouped=lambda c: c.group_baseline,
)
register("gae", lambda r, v, m, c: gae(r, v, m, gamma=c.gamma, lam=c.lam), critic=True)


def estimate(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, config: AdvantageConfig
) -> tuple[jax.Array, jax.Array]:
    """(advantages, returns) [B, L] from the estimator named by ``config.estimator``."""
    if config.estimator not in ESTIMATORS:
        raise ValueError(
            f"unknown advantage estimator {config.estimator!r}; known: {sorted(ESTIMATORS)}"
        )
    return ESTIMATORS[config.estimator](rewards, values, mask, config)
