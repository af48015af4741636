r"""The segmented sampler: prefill, then one `lax.while_loop` of decode steps.

Each row is laid out as

    [left padding] prompt <think> (given thinking </think>) | decoded tokens ...
    \____________________ prefix, P columns ______________/   \__ N columns __/

and the decode loop writes one token per row per step. A row moves through
phases THINK -> RESPONSE -> DONE:

* THINK: sampled tokens are thinking. `</think>` ends it. When the thinking
  budget is spent, or right after an eos sampled inside the thinking, the
  sampler writes `</think>` itself (budget forcing), marks that token
  `forced` and sets `think_truncated`. With
  `SamplingConfig.think_budget_mode="truncate"` a row whose budget is spent
  ends there instead (DONE, no `</think>`, no response; `think_truncated`).
* RESPONSE: sampled tokens are the response; eos or the response budget ends
  it (`response_truncated` when the budget did).
* DONE: PAD is written and the row no longer enters the cache.

Continuation modes follow from the prefix: a row without given thinking
starts in THINK after `<think>`; a row with given thinking (possibly empty,
i.e. `<think></think>`) starts in RESPONSE, so another parameter set (a
responder or an answerer) can write the response. A plain row
(`build_plain_prefix`: the bare prompt, no tags) also starts in RESPONSE, so
its tokens carry the RESPONSE segment; `SpecialTokens` then needs only eos
and pad. Params are a traced argument, so switching parameter sets of the
same shapes does not recompile.

Banned tokens and the minimum response length of the `SamplingConfig`
mask the logits inside the loop (`ops.constrain`) before the draw;
`SamplingConfig.logprobs_of` says which log-probability is recorded.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from start_jax import segments
from start_jax.models import fast_paths, transformer
from start_jax.models.config import ModelConfig
from start_jax.sampling import ops
from start_jax.sampling.ops import SamplingConfig


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Ids the sampler needs; build from a tokenizer with `from_tokenizer`.

    `think` and `end_think` are needed by the segmented modes only; plain
    generation (`SpecialTokens(eos=..., pad=...)`) leaves them None. Keyword
    arguments throughout (eos and pad are the only positional ones).
    """

    eos: int
    pad: int
    think: int | None = dataclasses.field(default=None, kw_only=True)
    end_think: int | None = dataclasses.field(default=None, kw_only=True)
    # Further ids that end a row as eos does (Llama 3 and Qwen3 list several:
    # `<|eot_id|>`, `<|eom_id|>`, `<|end_of_text|>`); stored sorted, without eos.
    stop: tuple[int, ...] = dataclasses.field(default=(), kw_only=True)

    def __post_init__(self):
        stop = tuple(sorted({int(t) for t in self.stop} - {int(self.eos)}))
        object.__setattr__(self, "stop", stop)

    @property
    def segmented(self) -> bool:
        """Whether the thinking tags are known (needed to write `<think>` rows)."""
        return self.think is not None and self.end_think is not None

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a row: eos, then the `stop` ids."""
        return (self.eos, *self.stop)

    @property
    def tags(self) -> tuple[int, ...]:
        """The think tags' ids (empty for plain generation)."""
        return tuple(t for t in (self.think, self.end_think) if t is not None)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialTokens":
        return cls(
            think=getattr(tokenizer, "think_id", None),
            end_think=getattr(tokenizer, "end_think_id", None),
            eos=tokenizer.eos_id,
            pad=tokenizer.pad_id,
            stop=tuple(getattr(tokenizer, "stop_ids", ())),
        )


def is_eos(token: jax.Array, tok: SpecialTokens) -> jax.Array:
    """Whether each of `token` is one of the ids that end a row."""
    return functools.reduce(jnp.logical_or, [token == t for t in tok.eos_ids])


@flax.struct.dataclass
class DecodeState:
    """Carry of the decode loop (B rows, N decode columns)."""

    cache: transformer.KVCache
    hidden: jax.Array  # [B, D] final-norm hidden state of each row's last token.
    tokens: jax.Array  # [B, N] int32 decoded tokens; pad where none.
    segment_ids: jax.Array  # [B, N] int32 segment of each decoded token.
    logprobs: jax.Array  # [B, N] float32 log p_T(token); 0 if not sampled.
    forced: jax.Array  # [B, N] bool: written by rule, not sampled.
    phase: jax.Array  # [B] int32: THINK, RESPONSE or PAD (= done).
    think_count: jax.Array  # [B] int32 thinking tokens so far (tags excluded).
    response_count: jax.Array  # [B] int32 response tokens so far (eos included).
    close_think: jax.Array  # [B] bool: next token is a forced </think> (eos seen).
    think_truncated: jax.Array  # [B] bool: </think> was forced.
    response_truncated: jax.Array  # [B] bool: the response budget ran out.
    uniforms: jax.Array  # [B, N] float32 in [0, 1): the draw of each row and step.
    step: jax.Array  # [] int32 decode steps taken.


@flax.struct.dataclass
class Rollout:
    """A batch of segmented completions, prefix and decoded part joined.

    Arrays are [B, L] with L = prefix columns + decode columns; rows are
    left-padded before the prompt and right-padded after their last token.
    """

    tokens: jax.Array  # [B, L] int32.
    segment_ids: jax.Array  # [B, L] int32 PAD/PROMPT/THINK/RESPONSE.
    logprobs: jax.Array  # [B, L] float32 log-prob of sampled tokens (see logprobs_of).
    forced: jax.Array  # [B, L] bool: tags and forced </think>.
    sampled: jax.Array  # [B, L] bool: drawn from the policy here.
    think_length: jax.Array  # [B] thinking tokens, tags excluded.
    response_length: jax.Array  # [B] response tokens, eos included.
    think_truncated: jax.Array  # [B] bool.
    response_truncated: jax.Array  # [B] bool.
    prefix_length: int = flax.struct.field(pytree_node=False, default=0)
    # What `logprobs` holds (`SamplingConfig.logprobs_of`): "model" = log
    # softmax(logits / T) of the unprocessed, unfiltered model (T = 1 when
    # greedy), which a forward pass at temperature T recomputes; "sampled" =
    # log-probability under the processed, filtered distribution each token
    # was drawn from (0 when greedy). 0 for tokens that were not sampled.
    logprobs_of: str = flax.struct.field(pytree_node=False, default="model")

    def attention_mask(self) -> jax.Array:
        return self.segment_ids != segments.PAD

    def positions(self) -> jax.Array:
        return jnp.maximum(jnp.cumsum(self.attention_mask(), axis=-1) - 1, 0)


def _prefill(model_config: ModelConfig, params, prefix, prefix_mask, cache_length, cache_sharding):
    """Runs the prefix through the model; returns the cache and last hidden states."""
    batch = prefix.shape[0]
    cache = transformer.init_cache(model_config, batch, cache_length)
    if cache_sharding is not None:
        cache = jax.lax.with_sharding_constraint(cache, cache_sharding)
    out = transformer.apply(
        model_config, params, prefix, cache=cache, attention_mask=prefix_mask, heads=False
    )
    # Rows are left-padded, so the last column is every row's last token.
    return out.cache, out.hidden[:, -1]


@functools.partial(
    jax.jit,
    static_argnames=("model_config", "sampling", "tokens_", "num_steps", "cache_sharding", "group"),
)
def prefill(
    model_config,
    params,
    prefix,
    prefix_mask,
    start_phase,
    think_count,
    think_truncated,
    rng,
    row_ids,
    *,
    sampling: SamplingConfig,
    tokens_: SpecialTokens,
    num_steps: int,
    cache_sharding=None,
    group: int = 1,
) -> DecodeState:
    """Jitted prefill: builds the initial `DecodeState`.

    `group` > 1: rows come in consecutive groups of `group` identical prefixes
    (G completions of one prompt); each prefix is run once and its cache and
    last hidden state are shared by the rows of its group.
    """
    batch = prefix.shape[0]
    if group > 1:
        cache, hidden = _prefill(
            model_config,
            params,
            prefix[::group],
            prefix_mask[::group],
            prefix.shape[1] + num_steps,
            None,
        )
        cache, hidden = repeat_rows((cache, hidden), group)
        if cache_sharding is not None:
            cache = jax.lax.with_sharding_constraint(cache, cache_sharding)
    else:
        cache, hidden = _prefill(
            model_config, params, prefix, prefix_mask, prefix.shape[1] + num_steps, cache_sharding
        )
    zeros = jnp.zeros((batch, num_steps), jnp.int32)
    false = jnp.zeros((batch,), bool)
    return DecodeState(
        cache=cache,
        hidden=hidden,
        tokens=jnp.full((batch, num_steps), tokens_.pad, jnp.int32),
        segment_ids=zeros,
        logprobs=jnp.zeros((batch, num_steps), jnp.float32),
        forced=jnp.zeros((batch, num_steps), bool),
        phase=start_phase.astype(jnp.int32),
        think_count=think_count.astype(jnp.int32),
        response_count=jnp.zeros((batch,), jnp.int32),
        close_think=false,
        think_truncated=think_truncated.astype(bool),
        response_truncated=false,
        uniforms=ops.step_uniforms(ops.row_keys(rng, row_ids), num_steps),
        step=jnp.zeros((), jnp.int32),
    )


def _advance(state: DecodeState, drawn, logp, sampling: SamplingConfig, tok: SpecialTokens):
    """Applies the segment rules to the drawn tokens [B]; pure, no model call.

    Returns (token, segment, logprob, forced, active, new state fields).
    Without thinking tags (plain generation) no row is ever in THINK.
    """
    responding = state.phase == segments.RESPONSE
    if tok.end_think is None:
        thinking = jnp.zeros_like(responding)
        end_think = -1  # Never written: no row thinks.
    else:
        thinking = state.phase == segments.THINK
        end_think = tok.end_think
    spent = thinking & (state.think_count >= sampling.think_budget)
    if sampling.think_budget_mode == "truncate":  # The row ends at the budget: no tag.
        stop, thinking = spent, thinking & ~spent
        force_close = thinking & state.close_think
    else:
        stop = jnp.zeros_like(spent)
        force_close = thinking & (state.close_think | spent)
    active = thinking | responding
    token = jnp.where(force_close, end_think, drawn)
    token = jnp.where(active, token, tok.pad)
    segment = jnp.where(active, state.phase, segments.PAD)
    logprob = jnp.where(active & ~force_close, logp, 0.0)

    ends_think = thinking & (token == end_think)
    think_content = thinking & ~ends_think
    think_count = state.think_count + think_content
    close_think = think_content & is_eos(token, tok)
    response_count = state.response_count + responding
    eos = responding & is_eos(token, tok)
    out_of_budget = responding & ~eos & (response_count >= sampling.response_budget)
    after_think = segments.RESPONSE if sampling.response_budget > 0 else segments.PAD
    phase = jnp.where(ends_think, after_think, state.phase)
    phase = jnp.where(eos | out_of_budget | stop, segments.PAD, phase)
    fields = dict(
        phase=phase,
        think_count=think_count,
        response_count=response_count,
        close_think=close_think,
        think_truncated=state.think_truncated | force_close | stop,
        response_truncated=state.response_truncated | out_of_budget,
    )
    return token, segment, logprob, force_close, active, fields


LogitsProcessor = Callable[[jax.Array, jax.Array], jax.Array]


@functools.partial(
    jax.jit,
    static_argnames=("model_config", "sampling", "tokens_", "logits_processor"),
    donate_argnames=("state",),
)
def decode(
    model_config,
    params,
    state: DecodeState,
    until=None,
    *,
    sampling: SamplingConfig,
    tokens_: SpecialTokens,
    logits_processor: LogitsProcessor | None = None,
) -> DecodeState:
    """Jitted decode loop; `state` (cache and buffers) is donated.

    The loop ends when every row is done, after the last column, or once
    `state.step` reaches `until` (a traced int: a later call continues; None
    runs to the end).

    `logits_processor(logits [B, V], step []) -> logits` may reshape the
    distribution that tokens are drawn from; it is a static argument (a new
    function object recompiles), so fixed bans and a minimum response length
    are better set in `sampling` (`banned_tokens`, `min_response_tokens`),
    which are applied after the processor. The recorded log-probabilities
    follow `sampling.logprobs_of` (`ops.draw`).
    """
    num_steps = state.tokens.shape[1]
    # One wide matmul for q/k/v and one for gate/up: stacked once per call (unless
    # the caller passes them stacked, as `fused` does), then reused by every step.
    params = fast_paths.decode_params(model_config, params)

    last = num_steps if until is None else jnp.minimum(until, num_steps)

    def cond(s: DecodeState):
        return (s.step < last) & jnp.any(s.phase != segments.PAD)

    def body(s: DecodeState):
        # The head runs here rather than at the end of the previous step, so
        # that the [B, V] logits live within one step: carried in the state,
        # they would be copied between loop buffers every step.
        logits = transformer.head_logits(model_config, params, s.hidden[:, None])[:, 0]
        u = jax.lax.dynamic_index_in_dim(s.uniforms, s.step, 1, keepdims=False)
        responding = s.phase == segments.RESPONSE
        if sampling.ban_tags_in_response and tokens_.tags:
            # Part of the policy (its "model" log-probabilities), not a processing step.
            logits = ops.ban_tags(logits, tokens_.tags, responding)
        processed = logits if logits_processor is None else logits_processor(logits, s.step)
        eos_blocked = responding & (s.response_count < sampling.min_response_tokens)
        # Banned again after a processor, which may have written the tags' logits.
        processed = ops.constrain(
            processed,
            sampling,
            tokens_.eos_ids,
            eos_blocked,
            tokens_.tags if logits_processor is not None else (),
            responding,
        )
        drawn, logp = ops.draw(
            u,
            logits,
            sampling,
            None if processed is logits else processed,
            fast_argmax=fast_paths.enabled(model_config),
        )
        token, segment, logprob, forced, active, fields = _advance(
            s, drawn, logp, sampling, tokens_
        )
        column = lambda buf, x: jax.lax.dynamic_update_slice(  # noqa: E731
            buf, x[:, None].astype(buf.dtype), (0, s.step)
        )
        out = transformer.apply(
            model_config,
            params,
            token[:, None],
            cache=s.cache,
            attention_mask=active[:, None],
            heads=False,
        )
        return s.replace(
            cache=out.cache,
            hidden=out.hidden[:, 0],
            tokens=column(s.tokens, token),
            segment_ids=column(s.segment_ids, segment),
            logprobs=column(s.logprobs, logprob),
            forced=column(s.forced, forced),
            step=s.step + 1,
            **fields,
        )

    return jax.lax.while_loop(cond, body, state)


def repeat_rows(tree, group: int):
    """Each row of every array (batch axis 0; a `KVCache`'s own axes) repeated `group` times."""

    def rep(x):
        if isinstance(x, transformer.KVCache):
            return x.replace(
                k=jnp.repeat(x.k, group, axis=1),
                v=jnp.repeat(x.v, group, axis=1),
                valid=jnp.repeat(x.valid, group, axis=0),
            )
        return jnp.repeat(x, group, axis=0)

    return jax.tree.map(rep, tree, is_leaf=lambda x: isinstance(x, transformer.KVCache))


@flax.struct.dataclass
class DecodeOutputs:
    """What `assemble` reads of a `DecodeState`: the decoded columns and row counters."""

    tokens: jax.Array
    segment_ids: jax.Array
    logprobs: jax.Array
    forced: jax.Array
    think_count: jax.Array
    response_count: jax.Array
    think_truncated: jax.Array
    response_truncated: jax.Array

    @classmethod
    def of(cls, state) -> "DecodeOutputs":
        return cls(**{f.name: getattr(state, f.name) for f in dataclasses.fields(cls)})


@functools.partial(jax.jit, static_argnames=("cache_sharding",))
def take_rows(
    state: DecodeState, rows: jax.Array, cache_sharding=None
) -> tuple[DecodeState, DecodeOutputs]:
    """The decode state of rows `rows` only (a smaller batch that goes on decoding,
    each row with its own cache, counters and draws), and the outputs of all rows."""
    outputs = DecodeOutputs.of(state)
    take = lambda x: jnp.take(x, rows, axis=0)  # noqa: E731
    cache = state.cache
    cache = cache.replace(
        k=jnp.take(cache.k, rows, axis=1),
        v=jnp.take(cache.v, rows, axis=1),
        valid=take(cache.valid),
    )
    if cache_sharding is not None:
        cache = jax.lax.with_sharding_constraint(cache, cache_sharding)
    small = state.replace(
        cache=cache,
        **{
            f.name: take(getattr(state, f.name))
            for f in dataclasses.fields(state)
            if f.name not in ("cache", "step")
        },
    )
    return small, outputs


@jax.jit
def put_rows(outputs: DecodeOutputs, rows: jax.Array, part) -> DecodeOutputs:
    """`outputs` with rows `rows` replaced by those of `part` (a state or outputs)."""
    part = DecodeOutputs.of(part)
    return jax.tree.map(lambda full, x: full.at[rows].set(x), outputs, part)


@functools.partial(jax.jit, static_argnames=("logprobs_of",))
def assemble(
    state: DecodeState | DecodeOutputs,
    prefix,
    prefix_segments,
    prefix_forced,
    logprobs_of: str = "model",
    prefix_logprobs=None,
    prefix_sampled=None,
) -> Rollout:
    """Joins the prefix and the decoded columns into a `Rollout`.

    A prefix that was itself sampled (the thinking a responder continues) may
    bring its log-probabilities and sampled flags; by default the prefix has
    none (zeros, False).
    """
    if prefix_logprobs is None:
        prefix_logprobs = jnp.zeros(prefix.shape, jnp.float32)
    if prefix_sampled is None:
        prefix_sampled = jnp.zeros(prefix.shape, bool)
    return Rollout(
        tokens=jnp.concatenate([prefix, state.tokens], axis=1),
        segment_ids=jnp.concatenate([prefix_segments, state.segment_ids], axis=1),
        logprobs=jnp.concatenate([prefix_logprobs, state.logprobs], axis=1),
        forced=jnp.concatenate([prefix_forced, state.forced], axis=1),
        sampled=jnp.concatenate(
            [prefix_sampled, (state.segment_ids != segments.PAD) & ~state.forced], axis=1
        ),
        think_length=state.think_count,
        response_length=state.response_count,
        think_truncated=state.think_truncated,
        response_truncated=state.response_truncated,
        prefix_length=prefix.shape[1],
        logprobs_of=logprobs_of,
    )


@dataclasses.dataclass(frozen=True)
class Prefix:
    """Host-built, left-padded prefixes of one batch."""

    tokens: np.ndarray  # [B, P] int32.
    mask: np.ndarray  # [B, P] bool.
    segment_ids: np.ndarray  # [B, P] int32.
    forced: np.ndarray  # [B, P] bool.
    start_phase: np.ndarray  # [B] int32 THINK or RESPONSE (or PAD: nothing to do).
    think_count: np.ndarray  # [B] int32 length of the given thinking.
    think_truncated: np.ndarray  # [B] bool: the given thinking was truncated.


def build_prefix(
    prompts: Sequence[Sequence[int]],
    tok: SpecialTokens,
    thinking: Sequence[Sequence[int] | None] | None = None,
    thinking_truncated: Sequence[bool] | None = None,
    response_budget: int = 1,
    pad_multiple: int = 8,
    max_prefix: int | None = None,
) -> Prefix:
    """Left-pads `prompt <think> [thinking </think>]` rows to a common width.

    `thinking[i]` is None for a row that thinks itself, else the thinking
    tokens to continue from (tags excluded; [] gives `<think></think>`). The
    closing tag after given thinking is marked forced when
    `thinking_truncated[i]`, so a trainer can leave it out of the loss.
    """
    if not tok.segmented:
        raise ValueError(
            "segmented sampling writes <think> tags: SpecialTokens needs think "
            "and end_think ids (sampling.generate continues bare prompts "
            "without them)"
        )
    batch = len(prompts)
    thinking = [None] * batch if thinking is None else list(thinking)
    truncated = [False] * batch if thinking_truncated is None else list(thinking_truncated)
    if len(thinking) != batch or len(truncated) != batch:
        raise ValueError(
            f"thinking/thinking_truncated have {len(thinking)}/{len(truncated)} "
            f"rows, prompts have {batch}"
        )
    rows, segs, forced, phase, counts = [], [], [], [], []
    for i, prompt in enumerate(prompts):
        prompt = _prompt(i, prompt)
        row = prompt + [tok.think]
        seg = [segments.PROMPT] * len(prompt) + [segments.THINK]
        frc = [False] * len(prompt) + [True]
        if thinking[i] is None:
            phase.append(segments.THINK)
            counts.append(0)
        else:
            given = [int(t) for t in thinking[i]]
            row += given + [tok.end_think]
            seg += [segments.THINK] * (len(given) + 1)
            frc += [False] * len(given) + [bool(truncated[i])]
            phase.append(segments.RESPONSE if response_budget > 0 else segments.PAD)
            counts.append(len(given))
        rows.append(row)
        segs.append(seg)
        forced.append(frc)
    return _pack(
        rows,
        segs,
        forced,
        phase,
        counts,
        [t is not None and bool(f) for t, f in zip(thinking, truncated)],
        tok.pad,
        pad_multiple,
        max_prefix,
        "prompt + thinking",
    )


def build_plain_prefix(
    prompts: Sequence[Sequence[int]],
    pad: int,
    response_budget: int = 1,
    pad_multiple: int = 8,
    max_prefix: int | None = None,
) -> Prefix:
    """Left-pads bare prompts (no tags): every row continues in RESPONSE."""
    rows = [_prompt(i, p) for i, p in enumerate(prompts)]
    start = segments.RESPONSE if response_budget > 0 else segments.PAD
    return _pack(
        rows,
        [[segments.PROMPT] * len(r) for r in rows],
        [[False] * len(r) for r in rows],
        [start] * len(rows),
        [0] * len(rows),
        [False] * len(rows),
        pad,
        pad_multiple,
        max_prefix,
        "prompt",
    )


def _prompt(i: int, prompt: Sequence[int]) -> list[int]:
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError(f"prompt {i} is empty")
    return prompt


def _pack(
    rows,
    segs,
    forced,
    phase,
    counts,
    truncated,
    pad: int,
    pad_multiple: int,
    max_prefix: int | None,
    what: str,
) -> Prefix:
    """Left-pads host rows into a `Prefix` of a width that is a multiple of `pad_multiple`."""
    batch = len(rows)
    width = max(len(r) for r in rows)
    width = -(-width // pad_multiple) * pad_multiple
    if max_prefix is not None and width > max_prefix:
        longest = int(np.argmax([len(r) for r in rows]))
        raise ValueError(
            f"row {longest}: {what} is {len(rows[longest])} tokens, "
            f"more than the context allows ({max_prefix})"
        )
    out = Prefix(
        tokens=np.full((batch, width), pad, np.int32),
        mask=np.zeros((batch, width), bool),
        segment_ids=np.zeros((batch, width), np.int32),
        forced=np.zeros((batch, width), bool),
        start_phase=np.asarray(phase, np.int32),
        think_count=np.asarray(counts, np.int32),
        think_truncated=np.asarray(truncated, bool),
    )
    for i, (row, seg, frc) in enumerate(zip(rows, segs, forced)):
        n = len(row)
        out.tokens[i, width - n :] = row
        out.mask[i, width - n :] = True
        out.segment_ids[i, width - n :] = seg
        out.forced[i, width - n :] = frc
    return out
