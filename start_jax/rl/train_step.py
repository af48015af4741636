"""The update of one rollout batch: one pure function (state, batch, rng) -> (state, metrics).

`mu` epochs over the batch, each split into `minibatches` optimizer updates;
each update accumulates gradients over `micro_batches` slices. Loss terms are
(sum, count) pairs whose counts are taken over the whole minibatch before the
micro-batch loop, so accumulation gives exactly the minibatch gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from start_jax import segments
from start_jax.errors import TrainingError
from start_jax.models import lora as lora_lib
from start_jax.models.config import ModelConfig
from start_jax.models.lora import LoraConfig
from start_jax.rl import logprobs as lp
from start_jax.rl import losses


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # [] int32 optimizer updates so far.
    params: Any  # Policy parameters.
    opt_state: Any  # Policy optimizer state.
    critic_params: Any = None  # Value-model parameters (PPO with GAE).
    critic_opt_state: Any = None


@flax.struct.dataclass
class Batch:
    """A rollout batch ready for the loss; every array is [B, L] unless noted."""

    tokens: jax.Array  # int32.
    segment_ids: jax.Array  # int32 PAD/PROMPT/THINK/RESPONSE.
    loss_mask: jax.Array  # bool: tokens the policy loss trains.
    kl_mask: jax.Array  # bool: tokens that carry the KL penalty.
    advantages: jax.Array  # float32, 0 outside loss_mask.
    old_logprobs: jax.Array  # float32 log p_old(token).
    ref_logprobs: jax.Array  # float32 log p_ref(token).
    returns: jax.Array  # float32 value targets (critic).
    old_values: jax.Array  # float32 critic values at sampling time.
    rewards: jax.Array  # [B] float32 response-only rewards.
    # The sampler's own log-probabilities of the tokens it drew, and which tokens those are
    # (None: not known). They give the sampler/trainer mismatch metrics and the truncated
    # importance-sampling weights.
    sampler_logprobs: jax.Array | None = None  # float32.
    sampled: jax.Array | None = None  # bool.
    # int32 document ids of packed rows (`rl.packing.pack_batch`: several rollouts a row,
    # each attending only to itself); None: one rollout a row. `rewards` stays per rollout.
    documents: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Static settings of the update."""

    loss: losses.LossConfig = losses.LossConfig()
    ppo_epochs: int = 1  # mu: passes over one rollout batch.
    minibatches: int = 1  # Optimizer updates per pass.
    micro_batches: int = 1  # Gradient-accumulation slices per update.
    logprob_chunk: int = 0  # Positions per vocabulary-head chunk; 0 = auto (`auto_chunk`).
    # Leading columns that hold only prompt (or padding) in every rollout, e.g. the sampler's
    # prompt width: no loss or KL token lies there, so the vocabulary head skips them (the
    # trunk still reads them). A loss or KL mask token before it makes the loss NaN.
    logprob_start: int = 0
    # Rows sorted by length and cut into this many equal groups, each trained on the columns
    # its rows fill (`length_widths`); 1 = every row on every column. Needs minibatches = 1.
    length_groups: int = 1
    use_critic: bool = False  # Train a value model (PPO with GAE).
    # Ids with no probability at the RESPONSE tokens, in every log-probability of the update
    # (current, old, reference): the think tags when the sampler bans them there
    # (`SamplingConfig.ban_tags_in_response`), so that the update sees the policy that sampled.
    response_banned: tuple[int, ...] = ()
    # LoRA (`models.lora`): the state's params are adapters on a frozen base, which the
    # step takes as its own argument (never donated, never updated); None = full training.
    lora: LoraConfig | None = None
    # The trainer packs each batch's rollouts into as few rows as hold them (`rl.packing`;
    # each rollout attends only to itself) before the update: less work on padding. Needs
    # the token-level losses `check_packable` names, logprob_start=0 and no length groups.
    pack_rows: bool = False

    @property
    def on_policy(self) -> bool:
        """One update per rollout batch: the old policy is the current one.

        The loss then takes the old log-probabilities from the current forward
        (without gradient), and the batch needs no old-policy forward.
        """
        return self.ppo_epochs * self.minibatches == 1


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """One stage's optimizer (`make_optimizer`'s arguments), frozen and hashable. The
    learning rate and warmup live in the optimizer's state (`LearningRateState`), so one
    compiled update serves every rate: `program_key` is what a jit cache keys on."""

    learning_rate: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    def make(self) -> optax.GradientTransformation:
        return make_optimizer(**dataclasses.asdict(self))

    @property
    def program_key(self) -> OptimizerConfig:
        """The fields the compiled update depends on: the rate and warmup set to 0."""
        return dataclasses.replace(self, learning_rate=0.0, warmup_steps=0)


class LearningRateState(NamedTuple):
    """The step size as data: updates so far, the peak rate and the warmup length."""

    count: jax.Array  # [] int32.
    learning_rate: jax.Array  # [] float32.
    warmup_steps: jax.Array  # [] int32.


def scale_by_warmup_rate(learning_rate: float, warmup_steps: int) -> optax.GradientTransformation:
    """Scales updates by -rate, the rate rising linearly from 0 over `warmup_steps` updates
    (rate * count / warmup_steps) and then constant: optax's linear warmup joined to a
    constant schedule, with the rate and warmup held in the state instead of the program."""

    def init(params):
        del params
        return LearningRateState(
            count=jnp.zeros([], jnp.int32),
            learning_rate=jnp.asarray(learning_rate, jnp.float32),
            warmup_steps=jnp.asarray(warmup_steps, jnp.int32),
        )

    def update(updates, state, params=None):
        del params
        warm = state.count.astype(jnp.float32) / jnp.maximum(state.warmup_steps, 1)
        rate = state.learning_rate * jnp.where(state.warmup_steps > 0, jnp.minimum(warm, 1.0), 1.0)
        updates = jax.tree.map(lambda u: (-rate * u).astype(u.dtype), updates)
        return updates, state._replace(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def with_learning_rate(opt_state, learning_rate: float, warmup_steps: int):
    """`opt_state` with its `LearningRateState` set to this rate and warmup (the count
    kept): a restored state follows the configuration, not the checkpoint."""

    def put(s):
        if isinstance(s, LearningRateState):
            return s._replace(
                learning_rate=jnp.asarray(learning_rate, s.learning_rate.dtype),
                warmup_steps=jnp.asarray(warmup_steps, s.warmup_steps.dtype),
            )
        return s

    return jax.tree.map(put, opt_state, is_leaf=lambda s: isinstance(s, LearningRateState))


def make_optimizer(
    learning_rate: float = 1e-6,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and a linear warmup to a constant rate; the rate
    and warmup are state (`scale_by_warmup_rate`), so a new rate compiles nothing.

    Gradient accumulation is done by the train step (exact for every
    aggregation mode), not by `optax.MultiSteps`, which averages per step.
    """
    parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm > 0 else []
    parts += [
        optax.scale_by_adam(),
        optax.add_decayed_weights(weight_decay),
        scale_by_warmup_rate(learning_rate, warmup_steps),
    ]
    return optax.chain(*parts)


def carry_optimizer_state(previous, fresh):
    """`fresh` (a new stage's optimizer state) with the Adam state of `previous` (the last
    stage's): the moments and the bias-correction count go on, while everything else, the
    learning-rate schedule's count included (so the new stage's warmup starts at 0), is the
    new stage's. Both must come from `make_optimizer` (one structure)."""
    if isinstance(fresh, optax.ScaleByAdamState):
        if not isinstance(previous, optax.ScaleByAdamState):
            raise ValueError(
                f"optimizer states differ: {type(previous).__name__} where the new stage has Adam's"
            )
        return previous
    if isinstance(fresh, tuple) and not hasattr(fresh, "_fields"):  # A chain's states.
        if not isinstance(previous, tuple) or len(previous) != len(fresh):
            raise ValueError("optimizer states differ in structure between the stages")
        return tuple(carry_optimizer_state(p, f) for p, f in zip(previous, fresh))
    return fresh


def init_state(params, tx, critic_params=None, critic_tx=None) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        critic_params=critic_params,
        critic_opt_state=None if critic_params is None else critic_tx.init(critic_params),
    )


def _l2(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def loss_counts(batch: Batch, loss_config: losses.LossConfig) -> dict[str, jax.Array]:
    """Loss denominators over the whole minibatch (parameter-free)."""
    agg, norm = loss_config.aggregation, loss_config.norm_length
    zeros = jnp.zeros(batch.loss_mask.shape, jnp.float32)
    counts = dict(
        policy=losses.aggregate(zeros, batch.loss_mask, agg, norm)[1],
        kl=losses.aggregate(zeros, batch.kl_mask, agg, norm)[1],
        value=jnp.maximum(batch.loss_mask.sum().astype(jnp.float32), 0.0),
    )
    if batch.sampled is not None:
        sampled = batch.loss_mask & batch.sampled
        counts["sampled"] = sampled.sum().astype(jnp.float32)
        counts["sampled_rows"] = sampled.any(-1).sum().astype(jnp.float32)
    for name, seg in SEGMENT_METRICS:
        in_seg = batch.segment_ids == seg
        counts[f"{name}/loss"] = (batch.loss_mask & in_seg).sum().astype(jnp.float32)
        counts[f"{name}/kl"] = (batch.kl_mask & in_seg).sum().astype(jnp.float32)
        if batch.sampled is not None:
            counts[f"{name}/sampled"] = (sampled & in_seg).sum().astype(jnp.float32)
    return counts


# The segments whose metrics are logged apart, under "<name>/<metric>".
SEGMENT_METRICS = (("think", segments.THINK), ("response", segments.RESPONSE))


def off_policy_weights(
    log_w: jax.Array, sampled: jax.Array, loss_config: losses.LossConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The weight of each token's policy loss for a sampler whose numerics differ from
    the trainer's, from log_w = log p_trainer - log p_sampler [B, L] on the `sampled`
    loss tokens (1 elsewhere): min(w, tis_cap) with `tis_cap`; 0 where w is outside
    [token_mask_low, token_mask_high]; 0 on a whole row whose geometric mean of w over
    its sampled tokens is outside [seq_mask_low, seq_mask_high] (a bound of 0 is off).
    Returns (weights, the tokens masked by the token band, the rows masked) — the
    masks only count sampled tokens and rows with sampled tokens."""
    lc = loss_config
    w = jnp.exp(log_w)
    weight = jnp.ones(log_w.shape, jnp.float32)
    if lc.tis_cap:
        weight = jnp.where(sampled, jnp.minimum(w, lc.tis_cap), weight)
    token_out = jnp.zeros(log_w.shape, bool)
    if lc.masks_tokens:
        if lc.token_mask_low:
            token_out |= w < lc.token_mask_low
        if lc.token_mask_high:
            token_out |= w > lc.token_mask_high
        token_out &= sampled
        weight = jnp.where(token_out, 0.0, weight)
    row_out = jnp.zeros(log_w.shape[:1], bool)
    if lc.masks_rows:
        n = sampled.sum(-1)
        mean_log_w = jnp.where(sampled, log_w, 0.0).sum(-1) / jnp.maximum(n, 1)
        if lc.seq_mask_low:
            row_out |= mean_log_w < jnp.log(lc.seq_mask_low)
        if lc.seq_mask_high:
            row_out |= mean_log_w > jnp.log(lc.seq_mask_high)
        row_out &= n > 0
        weight = jnp.where(row_out[:, None], 0.0, weight)
    return weight, token_out, row_out


def policy_loss_terms(
    logp, entropy, batch: Batch, counts, loss_config: losses.LossConfig, on_policy: bool = False
):
    """(loss, aux) from token log-probabilities and entropies [B, L] of a micro-batch.

    loss = pg + kl_coef * kl - entropy_coef * entropy, each term a (sum,
    count) ratio with counts from the whole minibatch. `on_policy`: the old
    log-probabilities are `logp` itself without gradient (`batch.old_logprobs`
    is not read). Without a KL coefficient the KL diagnostic is taken against
    the old policy (`batch.ref_logprobs` is not read).

    With the sampler's log-probabilities in the batch, the mismatch between
    them and the trainer's old-policy log-probabilities on the sampled loss
    tokens is reported (`logprob_mismatch_mean`, `logprob_mismatch_max`: |old -
    sampler|), and with `tis_cap > 0` each token's policy loss is weighted by
    the truncated importance ratio min(exp(old - sampler), tis_cap), without
    gradient (truncated importance sampling for a sampler whose numerics
    differ from the trainer's, e.g. bf16 sampling with a float32 trainer).
    """
    lc = loss_config
    old = jax.lax.stop_gradient(logp) if on_policy else batch.old_logprobs
    ref = old if not lc.kl_coef else batch.ref_logprobs
    parts = losses.policy_token_losses(logp, old, batch.advantages, batch.loss_mask, lc)
    extra, diff, token_out = {}, None, None
    if batch.sampler_logprobs is not None:
        sampled = batch.loss_mask & batch.sampled
        log_w = old - batch.sampler_logprobs
        diff = jnp.where(sampled, jnp.abs(log_w), 0.0)
        extra = dict(
            logprob_mismatch_mean=diff.sum() / jnp.maximum(counts["sampled"], 1.0),
            logprob_mismatch_max=diff.max(),
        )
        if lc.tis_cap or lc.masks_tokens or lc.masks_rows:
            weight, token_out, row_out = off_policy_weights(log_w, sampled, lc)
            parts = dict(parts, loss=parts["loss"] * jax.lax.stop_gradient(weight))
            extra.update(
                token_masked_frac=token_out.sum() / jnp.maximum(counts["sampled"], 1.0),
                seq_masked_frac=row_out.sum() / jnp.maximum(counts["sampled_rows"], 1.0),
            )
    agg = lambda x, m: losses.aggregate(x, m, lc.aggregation, lc.norm_length)[0]  # noqa: E731
    pg = agg(parts["loss"], batch.loss_mask) / jnp.maximum(counts["policy"], 1e-8)
    kl_tokens = losses.kl_penalty(logp, ref, lc.kl_estimator)
    kl = agg(kl_tokens, batch.kl_mask) / jnp.maximum(counts["kl"], 1e-8)
    ent = agg(entropy, batch.loss_mask) / jnp.maximum(counts["policy"], 1e-8)
    total = pg  # A zero coefficient leaves its term out: no cotangent flows back through it.
    if lc.kl_coef:
        total = total + lc.kl_coef * kl
    if lc.entropy_coef:
        total = total - lc.entropy_coef * ent
    tokens = jnp.maximum(counts["value"], 1.0)  # Token-mean diagnostics.
    aux = dict(
        pg_loss=pg,
        kl=kl,
        entropy_loss=ent,
        entropy=jnp.sum(jnp.where(batch.loss_mask, entropy, 0.0)) / tokens,
        clip_frac_low=jnp.sum(parts["clip_low"]) / tokens,
        clip_frac_high=jnp.sum(parts["clip_high"]) / tokens,
        approx_kl=jnp.sum(parts["approx_kl"]) / tokens,
        **extra,
    )
    # The same diagnostics per segment: token means over the segment's loss tokens (its KL
    # over its KL-mask tokens, its mismatch over its sampled loss tokens); 0 for a segment
    # without such tokens (one the stage does not train).
    for name, seg in SEGMENT_METRICS:
        in_seg = batch.segment_ids == seg
        loss_tokens = batch.loss_mask & in_seg
        n = jnp.maximum(counts[f"{name}/loss"], 1.0)
        seg_sum = lambda x, m=loss_tokens: jnp.sum(jnp.where(m, x, 0.0))  # noqa: E731
        aux[f"{name}/entropy"] = seg_sum(entropy) / n
        aux[f"{name}/clip_frac_low"] = seg_sum(parts["clip_low"]) / n
        aux[f"{name}/clip_frac_high"] = seg_sum(parts["clip_high"]) / n
        aux[f"{name}/approx_kl"] = seg_sum(parts["approx_kl"]) / n
        aux[f"{name}/kl"] = seg_sum(kl_tokens, batch.kl_mask & in_seg) / jnp.maximum(
            counts[f"{name}/kl"], 1.0
        )
        if diff is not None:
            m = batch.sampled & loss_tokens
            aux[f"{name}/logprob_mismatch_mean"] = seg_sum(diff, m) / jnp.maximum(
                counts[f"{name}/sampled"], 1.0
            )
            aux[f"{name}/logprob_mismatch_max"] = jnp.max(jnp.where(m, diff, 0.0))
        if token_out is not None:
            aux[f"{name}/token_masked_frac"] = jnp.sum(token_out & in_seg) / jnp.maximum(
                counts[f"{name}/sampled"], 1.0
            )
    return total, aux


def policy_loss(params, batch: Batch, counts, model_config: ModelConfig, config: TrainConfig):
    """Loss of one micro-batch, scaled by the whole minibatch's counts."""
    start = config.logprob_start
    logp, entropy = lp.token_log_probs(
        model_config,
        params,
        batch.tokens,
        batch.segment_ids,
        config.loss.temperature,
        config.logprob_chunk,
        start,
        config.response_banned,
        documents=batch.documents,
    )
    loss, aux = policy_loss_terms(logp, entropy, batch, counts, config.loss, config.on_policy)
    if start:  # A mask token without a log-probability: stop the run (check_finite).
        early = jnp.any(batch.loss_mask[:, :start]) | jnp.any(batch.kl_mask[:, :start])
        loss = jnp.where(early, jnp.nan, loss)
    return loss, aux


def critic_loss(
    critic_params, batch: Batch, counts, critic_config: ModelConfig, config: TrainConfig
):
    values = lp.token_values(
        critic_config, critic_params, batch.tokens, batch.segment_ids, batch.documents
    )
    per_token = losses.value_token_losses(
        values, batch.old_values, batch.returns, config.loss.value_clip
    )
    total = jnp.sum(jnp.where(batch.loss_mask, per_token, 0.0)) / jnp.maximum(counts["value"], 1.0)
    return config.loss.value_coef * total, dict(value_loss=total)


def _combine(name: str):
    """How a metric of several micro-batches combines: a maximum stays a maximum."""
    return jnp.maximum if name.endswith("_max") else jnp.add


def _add(a, b):
    """Two (grads, loss, metrics) of disjoint rows together (`_combine` per metric)."""
    return (
        jax.tree.map(jnp.add, a[0], b[0]),
        a[1] + b[1],
        {k: _combine(k)(a[2][k], b[2][k]) for k in b[2]},
    )


def _accumulate(loss_fn, params, batch: Batch, counts, micro_batches: int):
    """Sum of micro-batch gradients (each already divided by global counts)."""
    b = batch.tokens.shape[0]
    if b % micro_batches:
        raise ValueError(f"minibatch of {b} rows is not divisible by micro_batches={micro_batches}")
    micro = jax.tree.map(
        lambda x: x.reshape((micro_batches, b // micro_batches) + x.shape[1:]), batch
    )
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(acc, mb):
        (loss, aux), grads = grad_fn(params, mb, counts)
        return _add(acc, (grads, loss, aux)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    first_aux = jax.eval_shape(
        lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), counts)[0][1]
    )
    aux0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first_aux)
    (grads, loss, aux), _ = jax.lax.scan(body, (zeros, jnp.zeros(()), aux0), micro)
    return grads, loss, aux


def row_ends(segment_ids) -> jax.Array:
    """[B] columns each row fills: one past its last non-PAD token (numpy or jax)."""
    xp = jnp if isinstance(segment_ids, jax.Array) else np
    length = segment_ids.shape[1]
    return xp.max(xp.where(segment_ids != segments.PAD, xp.arange(1, length + 1)[None], 0), axis=1)


def length_widths(segment_ids, groups: int, start: int = 0) -> tuple[int, ...] | None:
    """Host side: the static column widths of `groups` equal groups of rows sorted by
    `row_ends`: each group but the last the most its rows fill, rounded up to one of four
    steps between `start` (the first column a loss token may hold) and the full width, and
    to a multiple of 8; the last group (the longest rows) the full width. So a run compiles
    the update for at most 4^(groups - 1) widths. None when `groups` is 1 or does not
    divide the rows (every row on every column)."""
    segment_ids = np.asarray(segment_ids)
    rows, length = segment_ids.shape
    if groups <= 1 or rows % groups:
        return None
    ends = np.sort(row_ends(segment_ids))
    size = rows // groups
    step = max(-(-(length - start) // 4), 1)
    widths = []
    for i in range(groups - 1):
        end = int(ends[(i + 1) * size - 1])
        width = start + -(-max(end - start, 1) // step) * step
        widths.append(min(-(-width // 8) * 8, length))
    return tuple(widths) + (length,)


def _by_length(batch: Batch, widths: tuple[int, ...]) -> tuple[list[Batch], jax.Array]:
    """Rows sorted by `row_ends` and cut into len(widths) groups, group i cropped to
    widths[i] columns; and whether a row fills more columns than its group keeps."""
    b, length = batch.tokens.shape
    ends = row_ends(batch.segment_ids)
    order = jnp.argsort(ends, stable=True)
    ends = ends[order]
    size = b // len(widths)
    parts, overflow = [], jnp.zeros((), bool)
    for i, width in enumerate(widths):
        rows = order[i * size : (i + 1) * size]
        parts.append(
            jax.tree.map(
                lambda x, w=width, rows=rows: (
                    x[rows][:, :w] if x.ndim == 2 and x.shape[1] == length else x[rows]
                ),
                batch,
            )
        )
        overflow |= jnp.any(ends[i * size : (i + 1) * size] > width)
    return parts, overflow


def _accumulate_groups(
    loss_fn, params, batch: Batch, counts, micro_batches: int, widths: tuple[int, ...] | None
):
    """`_accumulate` over all rows, or over the length groups of `widths` summed (the loss
    is NaN if a row fills more columns than its group keeps: `check_finite` stops the run)."""
    if widths is None:
        return _accumulate(loss_fn, params, batch, counts, micro_batches)
    parts, overflow = _by_length(batch, widths)
    grads, loss, aux = functools.reduce(
        _add, [_accumulate(loss_fn, params, part, counts, micro_batches) for part in parts]
    )
    return grads, jnp.where(overflow, jnp.nan, loss), aux


def _update(
    state: TrainState,
    batch: Batch,
    model_config,
    critic_config,
    config: TrainConfig,
    tx,
    critic_tx,
    widths: tuple[int, ...] | None = None,
    frozen=None,
):
    counts = loss_counts(batch, config.loss)

    def policy(p):  # The model the loss reads: the params, or the base with adapters p.
        return p if config.lora is None else lora_lib.combine(frozen, p, config.lora)

    grads, loss, aux = _accumulate_groups(
        lambda p, mb, c: policy_loss(policy(p), mb, c, model_config, config),
        state.params,
        batch,
        counts,
        config.micro_batches,
        widths,
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(
        loss=loss, **aux, l2_grads=_l2(grads), l2_params=_l2(params), l2_updates=_l2(updates)
    )
    critic_params, critic_opt = state.critic_params, state.critic_opt_state
    if config.use_critic:
        c_grads, _, c_aux = _accumulate_groups(
            lambda p, mb, c: critic_loss(p, mb, c, critic_config, config),
            critic_params,
            batch,
            counts,
            config.micro_batches,
            widths,
        )
        c_updates, critic_opt = critic_tx.update(c_grads, critic_opt, critic_params)
        critic_params = optax.apply_updates(critic_params, c_updates)
        metrics.update(c_aux, critic_l2_grads=_l2(c_grads), critic_l2_updates=_l2(c_updates))
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        critic_params=critic_params,
        critic_opt_state=critic_opt,
    )
    return new_state, metrics


def check_packable(config: TrainConfig, widths: tuple[int, ...] | None = None) -> None:
    """ValueError unless an update with `config` can train packed rows (`Batch.documents`):
    every loss term must be a sum over tokens, not over rows, and every column scored."""
    lc = config.loss
    bad = [
        f"{name}={value!r} ({why})"
        for name, value, why, ok in (
            ("aggregation", lc.aggregation, "needs 'token-mean'", lc.aggregation == "token-mean"),
            ("policy_loss", lc.policy_loss, "a sequence ratio", lc.policy_loss != "gspo"),
            ("seq_mask_low", lc.seq_mask_low, "masks rows", not lc.seq_mask_low),
            ("seq_mask_high", lc.seq_mask_high, "masks rows", not lc.seq_mask_high),
            ("length_groups", widths, "length groups", widths is None),
            ("logprob_start", config.logprob_start, "skips columns", not config.logprob_start),
        )
        if not ok
    ]
    if bad:
        raise ValueError("packed rows (batch.documents) count tokens, not rows: " + "; ".join(bad))


def batch_statistics(batch: Batch) -> dict[str, jax.Array]:
    """Rollout-level metrics: rewards, advantages and mask token counts."""
    mask = batch.loss_mask
    n = jnp.maximum(mask.sum(), 1)
    adv = jnp.where(mask, batch.advantages, 0.0)
    adv_mean = adv.sum() / n
    return dict(
        reward_mean=batch.rewards.mean(),
        reward_std=batch.rewards.std(),
        adv_mean=adv_mean,
        adv_std=jnp.sqrt(jnp.sum(jnp.where(mask, jnp.square(adv - adv_mean), 0.0)) / n),
        adv_nonzero_frac=jnp.sum(mask & (batch.advantages != 0)) / n,
        mask_think_tokens=jnp.sum(mask & (batch.segment_ids == segments.THINK)),
        mask_response_tokens=jnp.sum(mask & (batch.segment_ids == segments.RESPONSE)),
        mask_other_tokens=jnp.sum(
            mask & (batch.segment_ids != segments.THINK) & (batch.segment_ids != segments.RESPONSE)
        ),
    )


def train_on_batch(
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    *,
    model_config: ModelConfig,
    config: TrainConfig,
    tx: optax.GradientTransformation,
    critic_config: ModelConfig | None = None,
    critic_tx: optax.GradientTransformation | None = None,
    widths: tuple[int, ...] | None = None,
    frozen=None,
):
    """All updates of one rollout batch: `ppo_epochs` x `minibatches`.

    With `config.lora`, `state.params` are the adapters and `frozen` the base they adapt.

    Rows are shuffled with `rng` in every epoch (not when there is a single
    minibatch). Metrics are averaged over the updates.

    `widths` (static; `length_widths` of the batch's segment ids): the rows,
    sorted by the columns they fill, are cut into len(widths) equal groups and
    group i is trained on its first widths[i] columns only. Columns past a
    row's last token change none of its log-probabilities (attention is
    causal) and the loss counts are the whole batch's, so the update equals
    training every row on every column, up to float rounding, with less work
    on padding. Needs a single minibatch.
    """
    b = batch.tokens.shape[0]
    if b % config.minibatches:
        raise ValueError(f"batch of {b} rows is not divisible by minibatches={config.minibatches}")
    if widths is not None and (
        config.minibatches != 1 or b % len(widths) or (b // len(widths)) % config.micro_batches
    ):
        raise ValueError(
            f"widths={widths}: length groups need minibatches=1 and "
            f"{len(widths)} groups x micro_batches={config.micro_batches} "
            f"dividing the {b} rows"
        )
    if batch.documents is not None:
        check_packable(config, widths)
    size = b // config.minibatches
    rows = batch.replace(rewards=None)  # Per rollout, read only by `batch_statistics`.

    def epoch(carry, key):
        st = carry
        order = jnp.arange(b) if config.minibatches == 1 else jax.random.permutation(key, b)
        shuffled = jax.tree.map(lambda x: x[order], rows)
        mbs = jax.tree.map(lambda x: x.reshape((config.minibatches, size) + x.shape[1:]), shuffled)

        def update(s, mb):
            return _update(
                s, mb, model_config, critic_config, config, tx, critic_tx, widths, frozen
            )

        st, metrics = jax.lax.scan(update, st, mbs)
        return st, metrics

    state, metrics = jax.lax.scan(epoch, state, jax.random.split(rng, config.ppo_epochs))
    # Averaged over the updates; a maximum stays a maximum.
    metrics = {
        k: (jnp.max if k.endswith("_max") else jnp.mean)(v.astype(jnp.float32))
        for k, v in metrics.items()
    }
    metrics.update(jax.tree.map(lambda x: x.astype(jnp.float32), batch_statistics(batch)))
    return state, metrics


def jit_train_step(
    model_config: ModelConfig,
    config: TrainConfig,
    tx,
    critic_config=None,
    critic_tx=None,
    state_shardings=None,
    batch_shardings=None,
    frozen_shardings=None,
):
    """`train_on_batch` jitted with donated state (and explicit shardings when given);
    call it as fn(state, batch, rng) or fn(state, batch, rng, widths) (static), and with
    `config.lora` as fn(state, batch, rng, base, widths) (`frozen_shardings`: the base's)."""

    def fn(state, batch, rng, frozen=None, widths=None):
        return train_on_batch(
            state,
            batch,
            rng,
            model_config=model_config,
            config=config,
            tx=tx,
            critic_config=critic_config,
            critic_tx=critic_tx,
            widths=widths,
            frozen=frozen,
        )

    lora = config.lora is not None
    step = fn
    if not lora:

        def step(state, batch, rng, widths=None):
            return fn(state, batch, rng, None, widths)

    kwargs = {}
    if state_shardings is not None:
        replicated = jax.sharding.NamedSharding(
            jax.tree.leaves(state_shardings)[0].mesh, jax.sharding.PartitionSpec()
        )
        ins = (state_shardings, batch_shardings, replicated)
        kwargs = dict(
            in_shardings=ins + ((frozen_shardings,) if lora else ()),
            out_shardings=(state_shardings, replicated),
        )
    return jax.jit(step, donate_argnums=(0,), static_argnums=(4 if lora else 3,), **kwargs)


class NonFiniteError(TrainingError, FloatingPointError):
    """A metric became NaN or infinite."""


def check_finite(metrics: dict, step: int) -> dict[str, float]:
    """Host-side: converts metrics to floats, raising at the first non-finite one."""
    out = {}
    for name, value in metrics.items():
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteError(
                f"step {step}: metric {name!r} is {value}; stopping before the "
                "bad update is checkpointed"
            )
        out[name] = value
    return out
