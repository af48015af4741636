"""Per-step sampling maths: constraints, filtering, drawing and log-probabilities.

All functions work on one decode step: logits [B, V] float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from start_jax.models import fast_paths

NEG_INF = -jnp.inf


LOGPROBS_OF = ("model", "sampled")
THINK_BUDGET_MODES = ("force_end", "truncate")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn and how long each segment may be.

    Hashable, so it is a static argument of the jitted sampler: a change
    recompiles, switching parameters or prompts of the same shape does not,
    and neither does a new `SamplingConfig` with equal values.

    Constraints on the drawn tokens (applied inside the jitted decode loop):

    * `banned_tokens`: ids that are never drawn, in any segment. Tokens the
      sampler writes by rule (a forced `</think>`, padding) are still written.
      Stored sorted and without duplicates, so equal sets are equal configs.
    * `min_response_tokens`: eos cannot be drawn while the response has fewer
      than this many tokens, so a response that ends with eos has at least
      `min_response_tokens + 1` tokens (as `min_new_tokens` in transformers).
      Thinking is not affected (an eos drawn inside the thinking still closes
      it). With `min_response_tokens >= response_budget` no row draws eos.
      Every id that ends a row (`SpecialTokens.eos_ids`) counts as eos.
    * `ban_tags_in_response` (default True): the think tags are never drawn
      in the response of a segmented rollout (a second `<think>` or
      `</think>` after the thinking closed). No effect on plain generation.
      The ban is part of the policy, not a processing step: the "model"
      log-probabilities below are those of the policy with the tags' logits
      at -inf in the response, and the update computes its log-probabilities
      the same way (`TrainConfig.response_banned`), so RL trains the policy
      that sampled.

    `logprobs_of` chooses what `Rollout.logprobs` reports for each sampled
    token (see `draw`):

    * "model" (default): log softmax(logits / T)[token] of the unprocessed
      model at temperature T (T = 1 when greedy; the think tags banned in
      the response with `ban_tags_in_response`): top-k/top-p filtering,
      banned tokens, the minimum length and any user `logits_processor` are
      ignored. This is what a trainer recomputes with a forward pass at
      temperature T.
    * "sampled": the log-probability of the token under the distribution it
      was actually drawn from: the processed logits (user processor, bans,
      minimum length) at temperature T, top-k/top-p filtered and renormalised;
      0 when greedy (a point mass). Use it for importance weights against the
      behaviour distribution.

    Without processing (T > 0, no filter, ban, minimum or processor) both are
    the same number.
    """

    temperature: float = 1.0  # Softmax temperature; 0 means greedy.
    top_k: int = 0  # Keep the k most likely tokens; 0 keeps all.
    top_p: float = 1.0  # Keep the smallest set with mass >= top_p.
    think_budget: int = 64  # Thinking tokens allowed (tags excluded).
    response_budget: int = 64  # Response tokens allowed (eos included).
    banned_tokens: tuple[int, ...] = ()  # Ids never drawn (stored sorted, unique).
    min_response_tokens: int = 0  # Response tokens before eos may be drawn.
    logprobs_of: str = "model"  # What Rollout.logprobs reports: see above.
    ban_tags_in_response: bool = True  # No think tag drawn in a response.
    # At the thinking budget: "force_end" writes </think> (marked forced) and the response
    # follows; "truncate" ends the row there, with no </think> and no response.
    think_budget_mode: str = "force_end"

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.think_budget < 0 or self.response_budget < 0:
            raise ValueError(
                "segment budgets must be >= 0, got "
                f"think_budget={self.think_budget}, "
                f"response_budget={self.response_budget}"
            )
        object.__setattr__(self, "banned_tokens", _token_ids(self.banned_tokens))
        if not _is_int(self.min_response_tokens) or self.min_response_tokens < 0:
            raise ValueError(
                f"min_response_tokens must be an integer >= 0, got {self.min_response_tokens!r}"
            )
        # response_budget = 0 (thinking only) is how thinking-only runs are
        # derived from a full config, so a minimum is allowed to outlive it.
        if 0 < self.response_budget < self.min_response_tokens:
            raise ValueError(
                f"min_response_tokens={self.min_response_tokens} exceeds "
                f"response_budget={self.response_budget}"
            )
        if not isinstance(self.ban_tags_in_response, (bool, np.bool_)):
            raise ValueError(
                f"ban_tags_in_response must be True or False, got {self.ban_tags_in_response!r}"
            )
        object.__setattr__(self, "ban_tags_in_response", bool(self.ban_tags_in_response))
        if self.think_budget_mode not in THINK_BUDGET_MODES:
            raise ValueError(
                f"think_budget_mode={self.think_budget_mode!r} is not one of "
                f"{list(THINK_BUDGET_MODES)}"
            )
        if self.logprobs_of not in LOGPROBS_OF:
            raise ValueError(f"logprobs_of must be one of {LOGPROBS_OF}, got {self.logprobs_of!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def processed(self) -> bool:
        """Whether tokens are drawn from something else than softmax(logits / T).

        True when greedy, filtered, with banned tokens or a minimum length
        (a user `logits_processor`, not part of the config, also processes).
        `ban_tags_in_response` is not counted: it is part of the model's
        distribution (see above).
        """
        return (
            self.greedy
            or self.top_k > 0
            or self.top_p < 1.0
            or bool(self.banned_tokens)
            or self.min_response_tokens > 0
        )

    def replace(self, **kwargs) -> "SamplingConfig":
        return dataclasses.replace(self, **kwargs)

    def check_vocab(self, vocab_size: int, eos_ids: Sequence[int]) -> None:
        """Raises ValueError if the constraints do not fit a vocabulary of `vocab_size`.

        `eos_ids`: every id that ends a row (`SpecialTokens.eos_ids`).
        """
        outside = [t for t in self.banned_tokens if t >= vocab_size]
        if outside:
            raise ValueError(
                f"banned_tokens {outside} are outside the vocabulary of {vocab_size} tokens"
            )
        eos_ids = {int(t) for t in eos_ids}
        outside = sorted(t for t in eos_ids if not 0 <= t < vocab_size)
        if outside:
            raise ValueError(f"eos ids {outside} are outside the vocabulary of {vocab_size} tokens")
        closed = set(self.banned_tokens) | (eos_ids if self.min_response_tokens else set())
        if len(closed) >= vocab_size:
            raise ValueError(
                f"banned_tokens (with eos, when min_response_tokens > 0) cover all "
                f"{vocab_size} tokens of the vocabulary: nothing can be drawn"
            )


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _token_ids(ids) -> tuple[int, ...]:
    """`banned_tokens` as a sorted tuple of distinct ints; ValueError otherwise."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise ValueError(f"banned_tokens must be a sequence of token ids, got {ids!r}")
    ids = list(ids)
    bad = [t for t in ids if not _is_int(t) or t < 0]
    if bad:
        raise ValueError(f"banned_tokens must be integer token ids >= 0, got {bad}")
    return tuple(sorted({int(t) for t in ids}))


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
    values, indices = jax.lax.top_k(logits, k)  # [B, k], descending.
    keep = jnp.ones_like(values, bool)
    if top_p < 1.0:
        probs = jax.nn.softmax(values, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # Mass of better tokens.
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
    mass = blocks.sum(-1)  # [B, V/block]
    cum = jnp.cumsum(mass, axis=-1)
    target = jnp.minimum(u * cum[:, -1], _below(cum[:, -1]))
    i = jnp.sum(cum <= target[:, None], axis=-1)  # First block past u.
    rows = jnp.arange(b)
    inner_cum = jnp.cumsum(blocks[rows, i], axis=-1)  # [B, block]
    rest = jnp.clip(target - (cum[rows, i] - mass[rows, i]), 0.0, _below(inner_cum[:, -1]))
    j = jnp.sum(inner_cum <= rest[:, None], axis=-1)
    return (i * block + j).astype(jnp.int32)


def ban_tags(logits: jax.Array, tags: Sequence[int], responding: jax.Array) -> jax.Array:
    """logits [B, V] with the think tags' ids at -inf in the rows `responding` [B]."""
    ids = jnp.asarray(list(tags), jnp.int32)
    return logits.at[:, ids].set(jnp.where(responding[:, None], NEG_INF, logits[:, ids]))


def constrain(
    logits: jax.Array,
    config: SamplingConfig,
    eos_ids: Sequence[int],
    eos_blocked: jax.Array,
    tags: Sequence[int] = (),
    responding: jax.Array | None = None,
) -> jax.Array:
    """Applies the config's banned tokens, minimum length and tag ban to logits [B, V].

    `eos_ids` are the ids that end a row; `eos_blocked` [B] marks the
    rows whose response is still shorter than `config.min_response_tokens`.
    `tags` are the think tags' ids and `responding` [B] the rows in their
    response, where `config.ban_tags_in_response` bans the tags. Returns
    `logits` itself when nothing is constrained (no extra pass over [B, V]
    in the decode loop).
    """

    def block(x, ids, rows):
        ids = jnp.asarray(ids, jnp.int32)
        return x.at[:, ids].set(jnp.where(rows[:, None], NEG_INF, x[:, ids]))

    if config.banned_tokens:
        logits = logits.at[:, jnp.asarray(config.banned_tokens, jnp.int32)].set(NEG_INF)
    if config.min_response_tokens > 0:
        logits = block(logits, list(eos_ids), eos_blocked)
    if config.ban_tags_in_response and tags and responding is not None:
        logits = ban_tags(logits, tags, responding)
    return logits


def draw(
    u: jax.Array,
    logits: jax.Array,
    config: SamplingConfig,
    processed: jax.Array | None = None,
    fast_argmax: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Draws one token per row from one uniform number per row.

    Sampling inverts the CDF of the filtered distribution with one uniform
    number per row (`inverse_cdf`): exact up to float32 rounding, and much
    cheaper on CPU than Gumbel-max, which hashes V random numbers per row and
    step.

    Args:
      u: [B] uniform numbers in [0, 1) (`step_uniforms`); unused when greedy.
      logits: [B, V] model logits.
      config: temperature, filters and `logprobs_of`.
      processed: [B, V] the logits to draw from when they differ from the
        model's (a logits processor, banned tokens, a minimum length).

    Returns:
      (tokens [B] int32, log-probabilities [B]): with
      ``config.logprobs_of == "model"`` log softmax(logits / T)[token] of the
      unprocessed, unfiltered model (T = 1 when greedy); with "sampled" the
      log-probability under the distribution the token was drawn from
      (processed, scaled by T, filtered and renormalised; 0 when greedy).
    """
    # One log-normaliser serves both the draw and the reported log-probability
    # when nothing is processed (the body of the decode loop is bound by passes
    # over [B, V]); XLA drops whichever of the two results is not returned.
    t = 1.0 if config.greedy else config.temperature
    scaled = logits.astype(jnp.float32) / t
    source = scaled if processed is None else processed.astype(jnp.float32) / t
    lse = jax.nn.logsumexp(scaled, axis=-1)  # [B]
    if config.greedy:
        token = fast_paths.argmax(source, fast_argmax)
        drawn_logp = jnp.zeros(token.shape, jnp.float32)  # A point mass.
    else:
        filtered = filter_logits(source, config.top_k, config.top_p)
        norm = lse if filtered is scaled else jax.nn.logsumexp(filtered, axis=-1)
        probs = jnp.exp(filtered - norm[:, None])  # [B, V]; 0 if filtered.
        token = inverse_cdf(probs, u)
        drawn_logp = _take(filtered, token) - norm
    if config.logprobs_of == "sampled":
        return token, drawn_logp
    return token, _take(scaled, token) - lse


def _take(x: jax.Array, token: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, token[:, None], axis=-1)[:, 0]


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
            jnp.arange(num_steps)
        )

    return jax.vmap(row)(keys)
