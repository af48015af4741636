"""Response-only rewards: an interface, a registry and batched scoring.

A reward function sees the prompt and the response segment of each row,
never the thinking: `response_inputs` builds its inputs from the PROMPT and
RESPONSE segments only, so no verifier, judge or reward model can read (or be
gamed through) the thinking.

The one exception is opt-in and explicit: a reward class that sets
`reads_thinking = True` (the answer-likelihood reward, which scores the
reference answer after the thinking) gets `ThinkingInput`s, which add the
thinking to the same fields. `RewardInput` itself has no thinking field, and
every other reward keeps receiving plain `RewardInput`s.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from start_jax import segments


@dataclasses.dataclass(frozen=True)
class RewardInput:
    """What a reward function may read about one completion."""

    prompt: str                       # Prompt text.
    response: str                     # Response text (special tokens removed).
    prompt_ids: tuple[int, ...]       # Prompt token ids.
    response_ids: tuple[int, ...]     # Response token ids (eos included).
    reference: Any = None             # The row's reference answer, if any.
    truncated: bool = False           # The response hit its budget (no eos).
    metadata: dict | None = None      # Task-specific fields from the data.


@dataclasses.dataclass(frozen=True)
class ThinkingInput(RewardInput):
    """A `RewardInput` plus the thinking, given only to rewards with `reads_thinking = True`.

    Response-only rewards never receive one (`score` builds them only for a
    reward that declares it reads the thinking) and must not read these fields.
    """

    thinking_ids: tuple[int, ...] = ()  # Thinking token ids, the <think>/</think> tags excluded.
    thinking: str = ""                  # Thinking text (special tokens removed).
    thinking_truncated: bool = False    # </think> was forced by the thinking budget.


class RewardFn(Protocol):
    def __call__(self, inputs: Sequence[RewardInput]) -> np.ndarray:
        """Scores a batch: float32 [B]."""


_REGISTRY: dict[str, Callable[..., RewardFn]] = {}


def register(name: str):
    """Decorator adding a reward factory (a function or class) by name."""
    def wrap(factory):
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory
    return wrap


def make(name: str, **kwargs) -> RewardFn:
    """Builds a registered reward function."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def registered() -> list[str]:
    return sorted(_REGISTRY)


def _strip_tags(ids: tuple[int, ...], tokenizer) -> tuple[int, ...]:
    """The THINK segment's tokens without its leading <think> and closing </think>."""
    if ids and ids[0] == tokenizer.think_id:
        ids = ids[1:]
    if ids and ids[-1] == tokenizer.end_think_id:
        ids = ids[:-1]
    return ids


def response_inputs(rollout, tokenizer, references: Sequence[Any] | None = None,
                    metadata: Sequence[dict] | None = None, with_thinking: bool = False
                    ) -> list[RewardInput]:
    """Per-row reward inputs from a `Rollout`: prompt and response only.

    `with_thinking=True` (for a reward with `reads_thinking = True` only) gives
    `ThinkingInput`s that also carry the THINK segment, tags excluded.
    """
    tokens = np.asarray(rollout.tokens)
    segs = np.asarray(rollout.segment_ids)
    truncated = np.asarray(rollout.response_truncated)
    think_truncated = np.asarray(rollout.think_truncated) if with_thinking else None
    out = []
    for i, (row, seg) in enumerate(zip(tokens, segs)):
        prompt_ids = tuple(int(t) for t in row[seg == segments.PROMPT])
        response_ids = tuple(int(t) for t in row[seg == segments.RESPONSE])
        fields = dict(
            prompt=tokenizer.decode(prompt_ids, skip_special_tokens=True),
            response=tokenizer.decode(response_ids, skip_special_tokens=True),
            prompt_ids=prompt_ids, response_ids=response_ids,
            reference=None if references is None else references[i],
            truncated=bool(truncated[i]),
            metadata=None if metadata is None else metadata[i])
        if not with_thinking:
            out.append(RewardInput(**fields))
            continue
        thinking_ids = _strip_tags(tuple(int(t) for t in row[seg == segments.THINK]), tokenizer)
        out.append(ThinkingInput(
            **fields, thinking_ids=thinking_ids,
            thinking=tokenizer.decode(thinking_ids, skip_special_tokens=True),
            thinking_truncated=bool(think_truncated[i])))
    return out


def score(rollout, tokenizer, reward_fn: RewardFn, references=None, metadata=None) -> np.ndarray:
    """Rewards [B] float32 for a rollout: response-only, unless `reward_fn.reads_thinking`."""
    with_thinking = bool(getattr(reward_fn, "reads_thinking", False))
    rewards = np.asarray(reward_fn(response_inputs(rollout, tokenizer, references, metadata,
                                                   with_thinking=with_thinking)), np.float32)
    if rewards.shape != (tokens := np.asarray(rollout.tokens)).shape[:1]:
        raise ValueError(f"reward function returned shape {rewards.shape}, expected "
                         f"({tokens.shape[0]},)")
    return rewards


def normalize_answer(text: str) -> str:
    """Lower-case, collapse spaces, drop surrounding punctuation."""
    text = " ".join(text.strip().lower().split())
    return text.strip(" .,;:!?\"'")


@register("exact_match")
class ExactMatch:
    """1.0 when the normalised response equals the normalised reference."""

    def __call__(self, inputs: Sequence[RewardInput]) -> np.ndarray:
        return np.asarray([float(normalize_answer(x.response) == normalize_answer(str(x.reference)))
                           for x in inputs], np.float32)


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def _as_number(text: str) -> float | None:
    text = text.replace(",", "").strip()
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


@register("math")
class MathVerifier:
    """1.0 when the final answer equals the reference numerically.

    The answer is the last `\\boxed{...}` in the response, else its last
    number; integers, decimals and fractions compare within `tolerance`.
    """

    def __init__(self, tolerance: float = 1e-6):
        self.tolerance = tolerance

    def extract(self, response: str) -> float | None:
        boxed = _BOXED.findall(response)
        if boxed:
            return _as_number(boxed[-1])
        numbers = _NUMBER.findall(response.replace(",", ""))
        return _as_number(numbers[-1]) if numbers else None

    def __call__(self, inputs: Sequence[RewardInput]) -> np.ndarray:
        out = []
        for x in inputs:
            got, want = self.extract(x.response), _as_number(str(x.reference))
            out.append(float(got is not None and want is not None
                             and abs(got - want) <= self.tolerance * max(1.0, abs(want))))
        return np.asarray(out, np.float32)
