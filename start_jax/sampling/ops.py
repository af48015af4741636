"""Per-step sampling maths: filtering, drawing and log-probabilities.

All functions work on one decode step: logits [B, V] float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn and how long each segment may be.

    Hashable, so it is a static argument of the jitted sampler: a change
    recompiles, switching parameters or prompts of the same shape does not.
    """

    temperature: float = 1.0    # Softmax temperature; 0 means greedy.
    top_k: int = 0              # Keep the k most likely tokens; 0 keeps all.
    top_p: float = 1.0          # Keep the smallest set with mass >= top_p.
    think_budget: int = 64      # Thinking tokens allowed (tags excluded).
    response_budget: int = 64   # Response tokens allowed (eos included).

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.think_budget < 0 or self.response_budget < 0:
            raise ValueError("segment budgets must be >= 0, got "
                             f"think_budget={self.think_budget}, "
                             f"response_budget={self.response_budget}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **kwargs) -> "SamplingConfig":
        return dataclasses.replace(self, **kwargs)


def sampled_token_log_probs(logits: jax.Array, tokens: jax.Array, temperature: float) -> jax.Array:
    """log softmax(logits / T)[token] [B]: the quantity the trainer recomputes.

    Greedy decoding (T = 0) reports the T = 1 log-probabilities.
    """
    scaled = logits.astype(jnp.float32) / (1.0 if temperature == 0.0 else temperature)
    chosen = jnp.take_along_axis(scaled, tokens[:, None], axis=-1)[:, 0]
    return chosen - jax.nn.logsumexp(scaled, axis=-1)


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Sets logits outside the top-k / top-p (nucleus) set to -inf.

    top-k keeps the k largest logits; top-p then keeps the smallest prefix of
    the sorted distribution whose probability reaches `top_p` (the most likely
    token is always kept). Ties at the boundary are broken by the sort order.
    """
    vocab = logits.shape[-1]
    if top_k == 0 and top_p >= 1.0:
        return logits
    k = vocab if top_k == 0 else min(top_k, vocab)
    values, indices = jax.lax.top_k(logits, k)               # [B, k], descending.
    keep = jnp.ones_like(values, bool)
    if top_p < 1.0:
        probs = jax.nn.softmax(values, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs     # Mass of better tokens.
        keep = mass_before < top_p
    kept = jnp.where(keep, values, NEG_INF)
    rows = jnp.arange(logits.shape[0])[:, None]
    return jnp.full_like(logits, NEG_INF).at[rows, indices].set(kept)


def _below(x: jax.Array) -> jax.Array:
    """The largest float32 strictly below x (x > 0)."""
    return jnp.nextafter(x, jnp.zeros_like(x))


def inverse_cdf(probs: jax.Array, u: jax.Array, block: int = 128) -> jax.Array:
    """Index of the first CDF entry above u * total, per row.

    probs [B, V] >= 0 (unnormalised is fine), u [B] in [0, 1). Two levels
    (blocks of `block` tokens, then tokens inside the chosen block) keep the
    cumulative sums short: faster than one cumsum over V, and more precise.
    The result always has positive mass.
    """
    b, v = probs.shape
    block = min(block, v)
    blocks = jnp.pad(probs, ((0, 0), (0, (-v) % block))).reshape(b, -1, block)
    mass = blocks.sum(-1)                                          # [B, V/block]
    cum = jnp.cumsum(mass, axis=-1)
    target = jnp.minimum(u * cum[:, -1], _below(cum[:, -1]))
    i = jnp.sum(cum <= target[:, None], axis=-1)                   # First block past u.
    rows = jnp.arange(b)
    inner_cum = jnp.cumsum(blocks[rows, i], axis=-1)               # [B, block]
    rest = jnp.clip(target - (cum[rows, i] - mass[rows, i]), 0.0, _below(inner_cum[:, -1]))
    j = jnp.sum(inner_cum <= rest[:, None], axis=-1)
    return (i * block + j).astype(jnp.int32)


def first_argmax(x: jax.Array) -> jax.Array:
    """Index of the first maximum of each row of x [B, V], as int32.

    Equal to `jnp.argmax` for finite rows, as two plain reductions: XLA:CPU
    runs argmax's paired (value, index) reduction several times slower.
    """
    v = x.shape[-1]
    best = jnp.max(x, axis=-1, keepdims=True)
    index = jnp.min(jnp.where(x == best, jnp.arange(v, dtype=jnp.int32), v), axis=-1)
    return jnp.minimum(index, v - 1)  # A row with NaN has no equal entry.


def draw(u: jax.Array, logits: jax.Array, config: SamplingConfig
         ) -> tuple[jax.Array, jax.Array]:
    """Draws one token per row from one uniform number per row.

    Sampling inverts the CDF of the filtered distribution with one uniform
    number per row (`inverse_cdf`): exact up to float32 rounding, and much
    cheaper on CPU than Gumbel-max, which hashes V random numbers per row and
    step.

    Args:
      u: [B] uniform numbers in [0, 1) (`step_uniforms`); unused when greedy.
      logits: [B, V] model logits (after any logits processor).
      config: temperature and filters.

    Returns:
      (tokens [B] int32, log p_T(token) [B]: the log-probability of each
      token under softmax(logits / T) before filtering; T = 1 when greedy).
    """
    # One log-normaliser serves both the draw and the reported log-probability
    # (the body of the decode loop is bound by passes over [B, V]).
    scaled = logits.astype(jnp.float32) / (1.0 if config.greedy else config.temperature)
    lse = jax.nn.logsumexp(scaled, axis=-1)                      # [B]
    if config.greedy:
        token = first_argmax(scaled)
    else:
        filtered = filter_logits(scaled, config.top_k, config.top_p)
        norm = lse if filtered is scaled else jax.nn.logsumexp(filtered, axis=-1)
        probs = jnp.exp(filtered - norm[:, None])                # [B, V]; 0 if filtered.
        token = inverse_cdf(probs, u)
    return token, jnp.take_along_axis(scaled, token[:, None], axis=-1)[:, 0] - lse


def row_keys(rng: jax.Array, row_ids: jax.Array) -> jax.Array:
    """One key per row, folded from the run's key and the row's global id.

    A row's tokens then depend only on (rng, row id, step), never on which
    other rows share the batch or how the batch is sharded.
    """
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, row_ids)


def step_uniforms(keys: jax.Array, num_steps: int) -> jax.Array:
    """[B, N] uniforms: entry (b, t) is drawn with fold_in(keys[b], t).

    Drawn for all steps before the decode loop, so that no PRNG hashing runs
    inside it (on CPU each hash is a small loop of its own).
    """
    def row(key):
        return jax.vmap(lambda t: jax.random.uniform(jax.random.fold_in(key, t)))(
            jnp.arange(num_steps))
    return jax.vmap(row)(keys)
