"""Host entry points of the sampler and text helpers for logging.

* `sample`: segmented completions (`prompt <think> thinking </think>
  response`), or responses after given or empty thinking.
* `respond`: responses after a thinking-only rollout, without leaving the device.
* `generate`: plain generation, the bare prompt continued with no tags at all
  (base models, judges, parity checks). Only eos and pad ids are needed; the
  generated tokens carry the RESPONSE segment (`response_length` counts them,
  eos included) and a row stops at eos or after `max_new_tokens`.

All three run the same jitted prefill and decode. `SamplingConfig` carries
the temperature, top-k/top-p, banned tokens and a minimum response length;
`Rollout.logprobs_of` says which log-probabilities `Rollout.logprobs` holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from start_jax import segments, sharding
from start_jax.models import fast_paths
from start_jax.models import sharding as model_sharding
from start_jax.models.config import ModelConfig
from start_jax.sampling import sampler as core
from start_jax.sampling.ops import SamplingConfig


def num_decode_steps(config: SamplingConfig, any_thinking: bool) -> int:
    """Decode columns a batch needs: thinking, a closing tag, then the response."""
    return (
        config.think_budget + 1 + config.response_budget if any_thinking else config.response_budget
    )


@dataclasses.dataclass(frozen=True)
class Compaction:
    """Stop decoding rows that have finished: every `every` decode steps, the rows
    still active go on in the smallest smaller batch that holds them, of a size
    2^k or 3 * 2^k (so a run compiles the decode loop for a few sizes only,
    two per halving), never below `min_rows` rows, and a multiple of the mesh's
    batch shards. Each row keeps its own cache, counters and draws, so the
    result equals decoding the whole batch to the end, up to the float rounding
    of matmuls over another number of rows (about 1e-6 in log-probabilities; a
    draw within that of a boundary may then differ)."""

    every: int = 8
    min_rows: int = 8

    def __post_init__(self):
        if self.every < 1 or self.min_rows < 1:
            raise ValueError(
                f"Compaction(every={self.every}, min_rows={self.min_rows}): both must be >= 1"
            )


def sample(
    model_config: ModelConfig,
    params,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig,
    rng: jax.Array | int,
    special: core.SpecialTokens,
    *,
    thinking: Sequence[Sequence[int] | None] | None = None,
    thinking_truncated: Sequence[bool] | None = None,
    no_thinking: bool = False,
    row_ids: Sequence[int] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules=None,
    pad_multiple: int = 8,
    max_length: int | None = None,
    logits_processor: core.LogitsProcessor | None = None,
    width: int | None = None,
    group_size: int = 1,
    compact: Compaction | None = None,
) -> core.Rollout:
    """Samples segmented completions for a batch of token-id prompts.

    Modes:
      * default: the model writes thinking and response;
      * `thinking=[...]`: rows with given thinking (token ids, tags excluded)
        only get a response, written by `params` (a responder or answerer);
        a None entry makes that row think itself;
      * `no_thinking=True`: `<think></think>` is forced and only the response
        is written.
    Bare prompts without any tag are continued by `generate`.

    Args:
      model_config / params: the model that samples (any parameter set with
        these shapes; a new set does not recompile).
      prompts: B lists of token ids (different lengths are left-padded).
      config: temperature, top-k/top-p, the two segment budgets, banned
        tokens, a minimum response length and which log-probabilities to
        report (`SamplingConfig`).
      rng: a PRNG key or an int seed; row i uses fold_in(rng, row_ids[i]).
      special: ids of <think>, </think>, eos and pad (`generate` needs no
        thinking tags).
      row_ids: global ids of the rows (default 0..B-1), so that a row's
        sample does not depend on the rest of the batch.
      mesh, rules: shard the batch over ('data', 'fsdp') and the cache by
        the rules table; params should already be sharded on `mesh`.
      max_length: context limit (default: the model's max positions).
      width: left-pad the rollout to exactly this many columns (on device), so
        that every rollout of a run has one shape; an error if it is wider.
      group_size: rows come in consecutive groups of this many identical
        prompts (G completions each, as an RL step samples them): each prompt
        is prefilled once and its cache shared by its group (equal to G
        prefills up to float rounding, as `Compaction`). An error if the rows
        of a group differ.
      compact: stop decoding finished rows (`Compaction`); None decodes every
        row until the last one ends.

    Returns:
      A `Rollout` of [B, P + N] arrays ([B, width] with `width`); its
      `logprobs_of` says what `logprobs` holds.
    """
    if no_thinking:
        if thinking is not None:
            raise ValueError("pass either thinking= or no_thinking=True, not both")
        thinking = [[] for _ in prompts]
    prefix = core.build_prefix(
        prompts, special, thinking, thinking_truncated, config.response_budget, pad_multiple
    )
    _check_groups(prefix, group_size)
    any_thinking = bool(np.any(prefix.start_phase == segments.THINK))
    return _from_prefix(
        model_config,
        params,
        prefix,
        num_decode_steps(config, any_thinking),
        config,
        rng,
        special,
        row_ids,
        mesh,
        rules,
        max_length,
        logits_processor,
        width,
        "prompt + thinking",
        group_size,
        compact,
    )


def _check_groups(prefix: core.Prefix, group: int) -> None:
    """Rows of each group of `group` consecutive rows must have one prefix."""
    batch = prefix.tokens.shape[0]
    if group < 1 or batch % group:
        raise ValueError(f"group_size={group} must be >= 1 and divide the {batch} rows")
    if group == 1:
        return
    for name in (
        "tokens",
        "mask",
        "segment_ids",
        "forced",
        "start_phase",
        "think_count",
        "think_truncated",
    ):
        x = getattr(prefix, name)
        grouped = x.reshape(batch // group, group, -1)
        differs = np.flatnonzero(np.any(grouped != grouped[:, :1], axis=(1, 2)))
        if len(differs):
            g = int(differs[0])
            raise ValueError(
                f"group_size={group}: rows {g * group}..{(g + 1) * group - 1} do "
                "not share one prompt (and thinking)"
            )


def generate(
    model_config: ModelConfig,
    params,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig,
    rng: jax.Array | int,
    *,
    eos_id: int | Sequence[int],
    pad_id: int,
    max_new_tokens: int | None = None,
    row_ids: Sequence[int] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules=None,
    pad_multiple: int = 8,
    max_length: int | None = None,
    logits_processor: core.LogitsProcessor | None = None,
    width: int | None = None,
    group_size: int = 1,
    compact: Compaction | None = None,
) -> core.Rollout:
    """Plain generation: continues bare prompts, with no segment tags.

    Each row is ``[left padding] prompt | generated tokens``: the prompt
    tokens carry the PROMPT segment, the generated ones the RESPONSE segment
    (eos included), so `Rollout.response_length`, `sampled` and `logprobs`
    read as for a response; `think_length` is 0. A row stops after eos or
    `max_new_tokens` tokens (`response_truncated`). Uses the same jitted
    prefill/decode as `sample`: parameters and prompts of the same shapes,
    and equal configs, do not recompile.

    Args:
      model_config / params / prompts / rng / row_ids / mesh / rules /
      max_length / logits_processor / width / group_size / compact: as in
      `sample`.
      config: temperature, top-k/top-p, `banned_tokens`,
        `min_response_tokens` (eos is not drawn before that many tokens) and
        `logprobs_of`; `think_budget` is unused.
      eos_id, pad_id: the end-of-sequence id (or several: a row stops at any
        of them) and the id written after a row ends (and as left padding).
      max_new_tokens: tokens to generate at most (eos included); default
        `config.response_budget`, which it replaces.

    Returns:
      A `Rollout` of [B, P + max_new_tokens] arrays ([B, width] with `width`).
    """
    if max_new_tokens is not None:
        config = config.replace(response_budget=max_new_tokens)
    if config.response_budget < 1:
        raise ValueError(
            f"max_new_tokens (response_budget) must be >= 1, got {config.response_budget}"
        )
    vocab = model_config.vocab_size
    eos_ids = [int(eos_id)] if isinstance(eos_id, (int, np.integer)) else [int(t) for t in eos_id]
    if not eos_ids:
        raise ValueError("eos_id must be an id or a non-empty sequence of ids")
    for name, value in [("eos_id", t) for t in eos_ids] + [("pad_id", pad_id)]:
        if not 0 <= int(value) < vocab:
            raise ValueError(f"{name}={value} is outside the vocabulary of {vocab} tokens")
    special = core.SpecialTokens(eos=eos_ids[0], pad=int(pad_id), stop=tuple(eos_ids[1:]))
    prefix = core.build_plain_prefix(prompts, special.pad, config.response_budget, pad_multiple)
    _check_groups(prefix, group_size)
    return _from_prefix(
        model_config,
        params,
        prefix,
        config.response_budget,
        config,
        rng,
        special,
        row_ids,
        mesh,
        rules,
        max_length,
        logits_processor,
        width,
        "prompt",
        group_size,
        compact,
    )


def _from_prefix(
    model_config,
    params,
    prefix: core.Prefix,
    steps: int,
    config: SamplingConfig,
    rng,
    special: core.SpecialTokens,
    row_ids,
    mesh,
    rules,
    max_length,
    logits_processor,
    width,
    what: str,
    group: int = 1,
    compact: Compaction | None = None,
) -> core.Rollout:
    """Checks a host prefix against the context, puts it on device and samples."""
    config.check_vocab(model_config.vocab_size, special.eos_ids)
    limit = model_config.max_position_embeddings if max_length is None else max_length
    longest = int(prefix.mask.sum(1).max())
    if longest + steps > limit:
        raise ValueError(
            f"{what} ({longest} tokens) + {steps} decode steps exceed the context of {limit} tokens"
        )
    batch = prefix.tokens.shape[0]
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    ids = np.arange(batch) if row_ids is None else np.asarray(row_ids)
    arrays = dict(
        prefix=prefix.tokens,
        prefix_mask=prefix.mask,
        start_phase=prefix.start_phase,
        think_count=prefix.think_count,
        think_truncated=prefix.think_truncated,
        row_ids=ids.astype(np.uint32),
        segment_ids=prefix.segment_ids,
        forced=prefix.forced,
    )
    # Every host array goes to the device here, explicitly (each process puts its shards).
    arrays = {
        k: sharding.host_to_global(
            v, None if mesh is None else sharding.batch_sharding(mesh, v.ndim, rules, batch)
        )
        for k, v in arrays.items()
    }
    return _generate(
        model_config,
        params,
        arrays,
        steps,
        config,
        rng,
        special,
        mesh,
        rules,
        logits_processor,
        width,
        group,
        compact,
    )


def respond(
    model_config: ModelConfig,
    params,
    thinking: core.Rollout,
    config: SamplingConfig,
    rng: jax.Array,
    special: core.SpecialTokens,
    *,
    row_ids: Sequence[int],
    mesh: jax.sharding.Mesh | None = None,
    rules=None,
    max_length: int | None = None,
    width: int | None = None,
    compact: Compaction | None = None,
) -> core.Rollout:
    """Responses of `params` after the thinking of a thinking-only rollout, on device.

    `thinking` is a rollout sampled with ``response_budget=0`` (each row ends
    with its closing tag, forced when the thinking was truncated; a row without
    one, stopped at its budget by ``think_budget_mode="truncate"``, gets no
    response and stays as it is). Its rows are
    right-aligned on device and continued with ``config.response_budget``
    response tokens: the same rows `sample(thinking=...)` would build from the
    decoded thinking, without a copy to the host. The thinking keeps its
    log-probabilities and sampled flags (the thinker's), so a trainer can compare
    them with its own. `compact` as in `sample`.
    """
    steps = config.response_budget
    config.check_vocab(model_config.vocab_size, special.eos_ids)
    limit = model_config.max_position_embeddings if max_length is None else max_length
    if thinking.tokens.shape[1] + steps > limit:
        raise ValueError(
            f"thinking rollout of {thinking.tokens.shape[1]} columns + {steps} "
            f"response steps exceed the context of {limit} tokens"
        )
    batch = thinking.tokens.shape[0]
    ids = np.asarray(row_ids).astype(np.uint32)
    put = lambda x: sharding.host_to_global(  # noqa: E731
        x, None if mesh is None else sharding.batch_sharding(mesh, x.ndim, rules, batch)
    )
    end_think = -1 if special.end_think is None else special.end_think
    arrays = dict(_continuation(thinking, end_think), row_ids=put(ids))
    return _generate(
        model_config,
        params,
        arrays,
        steps,
        config,
        rng,
        special,
        mesh,
        rules,
        None,
        width,
        1,
        compact,
    )


@functools.partial(jax.jit, static_argnames=("end_think",))
def _continuation(rollout: core.Rollout, end_think: int) -> dict:
    """A thinking rollout as a response prefix: rows shifted right to end in the last column.
    A row that does not end in `end_think` (stopped at its thinking budget) starts done."""
    filled = rollout.segment_ids != segments.PAD
    length = filled.shape[1]
    shift = jnp.argmax(filled[:, ::-1], axis=1)  # Trailing PAD columns per row.
    cols = (jnp.arange(length)[None, :] - shift[:, None]) % length
    take = lambda x: jnp.take_along_axis(x, cols, axis=1)  # noqa: E731
    segment_ids = take(rollout.segment_ids)
    closed = take(rollout.tokens)[:, -1] == end_think
    return dict(
        prefix=take(rollout.tokens),
        prefix_mask=segment_ids != segments.PAD,
        segment_ids=segment_ids,
        forced=take(rollout.forced),
        prefix_logprobs=take(rollout.logprobs),
        prefix_sampled=take(rollout.sampled),
        start_phase=jnp.where(closed, segments.RESPONSE, segments.PAD).astype(jnp.int32),
        think_count=rollout.think_length,
        think_truncated=rollout.think_truncated,
    )


def _generate(
    model_config,
    params,
    arrays: dict,
    steps: int,
    config: SamplingConfig,
    rng,
    special,
    mesh,
    rules,
    logits_processor,
    width,
    group: int = 1,
    compact: Compaction | None = None,
):
    """Prefill + decode from device arrays of a prefix; the assembled rollout."""
    arrays = dict(arrays)
    batch, prefix_width = arrays["prefix"].shape
    cache_sharding = None
    ctx = contextlib.nullcontext()
    if mesh is not None:
        cache_sharding = model_sharding.cache_shardings(
            model_config, mesh, batch, prefix_width + steps, rules
        )
        ctx = sharding.logical_constraint_context(mesh, rules)
    segment_ids, forced = arrays.pop("segment_ids"), arrays.pop("forced")
    sampled_prefix = dict(
        prefix_logprobs=arrays.pop("prefix_logprobs", None),
        prefix_sampled=arrays.pop("prefix_sampled", None),
    )
    with ctx:
        state = core.prefill(
            model_config,
            params,
            rng=rng,
            sampling=config,
            tokens_=special,
            num_steps=steps,
            cache_sharding=cache_sharding,
            group=group,
            **arrays,
        )
        decode = functools.partial(
            core.decode,
            model_config,
            sampling=config,
            tokens_=special,
            logits_processor=logits_processor,
        )
        if compact is None or batch <= compact.min_rows:
            state = decode(params, state)
        else:
            state = _decode_compacting(
                decode,
                fast_paths.decode_params(model_config, params),  # Stacked once for every chunk.
                state,
                steps,
                compact,
                mesh,
                rules,
                _cache_sharding_fn(model_config, mesh, rules, prefix_width + steps),
            )
    rollout = core.assemble(
        state,
        arrays["prefix"],
        segment_ids,
        forced,
        logprobs_of=config.logprobs_of,
        **sampled_prefix,
    )
    if width is None:
        return rollout
    pad = width - rollout.tokens.shape[1]
    if pad < 0:
        raise ValueError(f"rollout of {rollout.tokens.shape[1]} columns exceeds width={width}")
    return _left_pad(rollout, pad) if pad else rollout


def _cache_sharding_fn(model_config, mesh, rules, length: int):
    """Cache shardings by batch size (None without a mesh)."""
    if mesh is None:
        return lambda batch: None
    return lambda batch: model_sharding.cache_shardings(model_config, mesh, batch, length, rules)


def _decode_compacting(
    decode, params, state, steps: int, compact: Compaction, mesh, rules, cache_sharding
):
    """Decodes `compact.every` steps at a time, going on with the active rows alone in a
    smaller batch when they fit one (see `Compaction`); the outputs of every row."""
    mesh_rows = sharding.batch_shards(mesh, rules)
    replicated = (
        None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )
    levels = []  # (outputs of the larger batch, rows kept).
    done = 0
    while done < steps:
        until = min(done + compact.every, steps)
        state = decode(params, state, until)
        step, phase = sharding.to_host((state.step, state.phase))
        active = np.flatnonzero(phase != segments.PAD)
        if int(step) < until or not len(active):
            break  # Every row has finished.
        done = until
        rows = state.tokens.shape[0]
        size = _compact_size(len(active), rows, compact.min_rows, mesh_rows)
        if size == rows:
            continue
        idle = np.flatnonzero(phase == segments.PAD)[: size - len(active)]
        keep = np.sort(np.concatenate([active, idle])).astype(np.int32)
        keep = sharding.host_to_global(keep, replicated)
        state, outputs = core.take_rows(state, keep, cache_sharding=cache_sharding(size))
        levels.append((outputs, keep))
    for outputs, keep in reversed(levels):
        state = core.put_rows(outputs, keep, state)
    return state


def _compact_size(active: int, rows: int, min_rows: int, mesh_rows: int) -> int:
    """The smallest size 2^k or 3 * 2^k below `rows` that holds `active` rows, at least
    `min_rows` and a multiple of `mesh_rows`; `rows` when there is none."""
    need = max(active, min_rows)
    sizes = [
        s
        for k in range(rows.bit_length())
        for s in (1 << k, 3 << k)
        if need <= s < rows and s % mesh_rows == 0
    ]
    return min(sizes, default=rows)


@functools.partial(jax.jit, static_argnums=1)
def _left_pad(rollout: core.Rollout, pad: int) -> core.Rollout:
    """The rollout with `pad` PAD columns in front (token 0, segment PAD)."""
    cols = lambda x: jnp.pad(x, ((0, 0), (pad, 0)))  # noqa: E731
    return rollout.replace(
        tokens=cols(rollout.tokens),
        segment_ids=cols(rollout.segment_ids),
        logprobs=cols(rollout.logprobs),
        forced=cols(rollout.forced),
        sampled=cols(rollout.sampled),
        prefix_length=rollout.prefix_length + pad,
    )


def thinking_of(rollout: core.Rollout, end_think: int) -> tuple[list[list[int]], list[bool]]:
    """Per-row thinking tokens (tags excluded) and truncation flags.

    Feeds a rollout's thinking to another model with `sample(thinking=...)`.
    """
    tokens = np.asarray(rollout.tokens)
    segs = np.asarray(rollout.segment_ids)
    forced = np.asarray(rollout.forced)
    out = []
    for row, seg, frc in zip(tokens, segs, forced):
        think = row[(seg == segments.THINK) & ~frc]
        if len(think) and think[-1] == end_think:
            think = think[:-1]  # A natural closing tag.
        out.append([int(t) for t in think])
    return out, [bool(x) for x in np.asarray(rollout.think_truncated)]


def stopped_at_budget(rollout: core.Rollout) -> np.ndarray:
    """[B] bool: the rows that ended at their thinking budget with no response
    (``think_budget_mode="truncate"``; never with "force_end", where a truncated thinking
    is closed and a response of at least one token follows)."""
    return np.asarray(rollout.think_truncated) & (np.asarray(rollout.response_length) == 0)


def decode_segments(tokenizer, rollout: core.Rollout) -> list[dict]:
    """Decodes each row to text per segment, for logs and notebooks.

    The prompt keeps its special tokens (a chat template's markers show as
    rendered); the thinking is the text between the think tags, without them.
    """
    tokens = np.asarray(rollout.tokens)
    segs = np.asarray(rollout.segment_ids)
    tags = {getattr(tokenizer, "think_id", None), getattr(tokenizer, "end_think_id", None)}
    rows = []
    for i, (row, seg) in enumerate(zip(tokens, segs)):

        def text(kind, skip=True, row=row, seg=seg):
            ids = [int(t) for t in row[seg == kind]]
            if kind == segments.THINK:
                ids = [t for t in ids if t not in tags]
            return tokenizer.decode(ids, skip_special_tokens=skip)

        rows.append(
            dict(
                prompt=text(segments.PROMPT, skip=False),
                thinking=text(segments.THINK),
                response=text(segments.RESPONSE),
                think_truncated=bool(rollout.think_truncated[i]),
                response_truncated=bool(rollout.response_truncated[i]),
            )
        )
    return rows
