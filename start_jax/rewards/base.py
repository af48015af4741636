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
import fractions
import importlib
import inspect
import numbers
import os
import re
import threading
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from start_jax import segments
from start_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RewardInput:
    """What a reward function may read about one completion."""

    prompt: str  # Prompt text.
    response: str  # Response text (special tokens removed).
    prompt_ids: tuple[int, ...]  # Prompt token ids.
    response_ids: tuple[int, ...]  # Response token ids (eos included).
    reference: Any = None  # The row's reference answer, if any.
    truncated: bool = False  # The response hit its budget (no eos).
    metadata: dict | None = None  # Task-specific fields from the data.


@dataclasses.dataclass(frozen=True)
class ThinkingInput(RewardInput):
    """A `RewardInput` plus the thinking, given only to rewards with `reads_thinking = True`.

    Response-only rewards never receive one (`score` builds them only for a
    reward that declares it reads the thinking) and must not read these fields.
    """

    thinking_ids: tuple[int, ...] = ()  # Thinking token ids, the <think>/</think> tags excluded.
    thinking: str = ""  # Thinking text (special tokens removed).
    thinking_truncated: bool = False  # </think> was forced by the thinking budget.


class RewardFn(Protocol):
    def __call__(self, inputs: Sequence[RewardInput]) -> np.ndarray:
        """Scores a batch: float32 [B]."""


_REGISTRY: dict[str, Callable[..., RewardFn]] = {}
# Rewards registered by a module of a higher layer (the embedded world's judges), by the
# module that registers them: it is imported when one of its names is first looked up.
BUILT_IN_ELSEWHERE = {
    "synthetic": "start_jax.world.judges",
    "synthetic_rubric": "start_jax.world.judges",
    "synthetic_correct": "start_jax.world.judges",
}


def _load(name: str | None = None) -> None:
    """Imports the module registering `name` (every such module when None)."""
    for reward, module in BUILT_IN_ELSEWHERE.items():
        if reward not in _REGISTRY and (name is None or name == reward):
            importlib.import_module(module)


def register(name: str):
    """Decorator adding a reward factory (a function or class) by name."""

    def wrap(factory):
        known = _REGISTRY.get(name)
        # The same definition loaded again (a config file executed twice, under another
        # module name) replaces itself.
        if known is not None and _origin(known) != _origin(factory):
            raise ValueError(
                f"reward {name!r} is already registered (by {_origin(known)[1]} "
                f"in {_origin(known)[0]})"
            )
        _REGISTRY[name] = factory
        return factory

    return wrap


def _origin(factory) -> tuple[str, str]:
    """(defining file, qualified name) of a reward factory."""
    try:
        path = inspect.getsourcefile(factory) or "?"
    except TypeError:
        path = "?"
    return os.path.abspath(path) if path != "?" else path, getattr(factory, "__qualname__", "?")


def check(name: str, /, _keys: tuple[str, str] = ("reward.name", "reward.kwargs"), **kwargs):
    """Raises the ConfigError `make` would for this name and these arguments, without
    building anything (a run checks its rewards before any work). `_keys`: the config
    keys of the name and the arguments, which the messages name."""
    name_key, kwargs_key = _keys
    _load(name)
    if name not in _REGISTRY:
        _load()
        raise ConfigError(
            f"config: unknown reward {name!r}; registered: {sorted(_REGISTRY)} "
            f"({name_key}; a config file can add one with "
            "@start_jax.rewards.register)"
        )
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        params = inspect.signature(factory).parameters
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        missing = [
            p
            for p, v in params.items()
            if v.kind in named and v.default is inspect.Parameter.empty and p not in kwargs
        ]
        unknown = sorted(set(kwargs) - set(params))
        what = (
            f"needs {kwargs_key}.{missing[0]}"
            if missing
            else f"takes no {kwargs_key}.{unknown[0]} (it takes {sorted(params)})"
            if unknown
            else str(e)
        )
        raise ConfigError(f"config: reward {name!r} {what}") from None


def make(name: str, **kwargs) -> RewardFn:
    """Builds a registered reward function.

    Raises:
      ConfigError: an unknown name, or keyword arguments the reward does not
        take or lacks (named as the ``reward.kwargs`` fields of a run's config).
    """
    check(name, **kwargs)
    return _REGISTRY[name](**kwargs)


def registered() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def _strip_tags(ids: tuple[int, ...], tokenizer) -> tuple[int, ...]:
    """The THINK segment's tokens without its leading <think> and closing </think>."""
    if ids and ids[0] == tokenizer.think_id:
        ids = ids[1:]
    if ids and ids[-1] == tokenizer.end_think_id:
        ids = ids[:-1]
    return ids


def response_inputs(
    rollout,
    tokenizer,
    references: Sequence[Any] | None = None,
    metadata: Sequence[dict] | None = None,
    with_thinking: bool = False,
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
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            reference=None if references is None else references[i],
            truncated=bool(truncated[i]),
            metadata=None if metadata is None else metadata[i],
        )
        if not with_thinking:
            out.append(RewardInput(**fields))
            continue
        thinking_ids = _strip_tags(tuple(int(t) for t in row[seg == segments.THINK]), tokenizer)
        out.append(
            ThinkingInput(
                **fields,
                thinking_ids=thinking_ids,
                thinking=tokenizer.decode(thinking_ids, skip_special_tokens=True),
                thinking_truncated=bool(think_truncated[i]),
            )
        )
    return out


def score(rollout, tokenizer, reward_fn: RewardFn, references=None, metadata=None) -> np.ndarray:
    """Rewards [B] float32 for a rollout: response-only, unless `reward_fn.reads_thinking`."""
    with_thinking = bool(getattr(reward_fn, "reads_thinking", False))
    rewards = np.asarray(
        reward_fn(
            response_inputs(rollout, tokenizer, references, metadata, with_thinking=with_thinking)
        ),
        np.float32,
    )
    if rewards.shape != (tokens := np.asarray(rollout.tokens)).shape[:1]:
        raise ValueError(
            f"reward function returned shape {rewards.shape}, expected ({tokens.shape[0]},)"
        )
    return rewards


def normalize_answer(text: str) -> str:
    """Lower-case, collapse spaces, drop surrounding punctuation."""
    text = " ".join(text.strip().lower().split())
    return text.strip(" .,;:!?\"'")


@register("exact_match")
class ExactMatch:
    """1.0 when the normalised response equals the normalised reference."""

    @staticmethod
    def extract_answer(response: str) -> str:
        """The answer a majority vote counts (`start_jax.eval.sampled`)."""
        return normalize_answer(response)

    def __call__(self, inputs: Sequence[RewardInput]) -> np.ndarray:
        return np.asarray(
            [
                float(normalize_answer(x.response) == normalize_answer(str(x.reference)))
                for x in inputs
            ],
            np.float32,
        )


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_DELIMITED = re.compile(r"\$|\\\(|\\\[|\\boxed|\\fbox")


def _last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{...}` (or `\\fbox{...}`), braces balanced."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[match.end() : i]
    return None


def _math_verify():
    """The `math_verify` module; a clear ImportError when it is not installed."""
    try:
        import math_verify
    except ImportError as e:
        raise ImportError(
            "the 'math' reward needs the math-verify library: pip install math-verify"
        ) from e
    return math_verify


@register("math")
class MathVerifier:
    """1.0 when the response's final answer equals the reference, by math-verify.

    Built on math-verify (`pip install math-verify`; imported only when this
    reward is constructed). The final answer is the content of the last
    complete `\\boxed{...}` in the response; without one it is whatever
    `math_verify.parse` extracts from the whole response (its LaTeX and plain
    expression extractors: `$...$`, "the answer is 42", the last number, ...).
    Only `RewardInput.response` and `.reference` are read.

    The reference may be a number (written out in full, no exponent) or a
    string; either is read as the content of `\\boxed{...}` (so `\\frac{1}{2}`,
    `2\\pi`, `50\\%`, `1,000` and `x = 5` all parse) unless the string has LaTeX
    delimiters of its own (`$`, `\\(`, `\\[`, `\\boxed`), when it is parsed as
    it is. Answer and reference are compared by `math_verify.verify`: symbolic
    equality, sets, intervals and equations; when either side is a decimal,
    numbers are equal after rounding both to `float_rounding` decimal places
    (1/3 equals 0.333333 and 2\\pi equals 6.283185 at the default 6),
    otherwise they must be exactly equal. A reference that math-verify cannot
    parse into a maths expression (empty, or text such as "?" or "東京") falls
    back to `normalize_answer` string equality with the final answer (the
    last boxed content, else the whole response). A missing reference
    scores 0.

    math-verify bounds each parse and comparison by `timeout_seconds` with
    SIGALRM, which only works in the main thread; called from another thread
    this reward runs them without a time limit (math-verify's own advice).
    """

    def __init__(self, float_rounding: int = 6, timeout_seconds: int | None = 5):
        self._mv = _math_verify()
        self.float_rounding = float_rounding
        self.timeout_seconds = timeout_seconds

    @staticmethod
    def extract_answer(response: str) -> str:
        """The answer a majority vote counts: the last boxed content, else the response,
        normalised (`start_jax.eval.sampled`)."""
        boxed = _last_boxed(response)
        return normalize_answer(response if boxed is None else boxed)

    @staticmethod
    def final_answer(response: str) -> str:
        """The text math-verify parses as the answer: `\\boxed{last}` if any, else the response."""
        boxed = _last_boxed(response)
        return response if boxed is None else f"\\boxed{{{boxed}}}"

    @staticmethod
    def reference_text(reference: Any) -> str | None:
        """The text math-verify parses as the reference (None when there is none)."""
        if reference is None or isinstance(reference, bool):
            return None
        if isinstance(reference, numbers.Integral):
            text = str(int(reference))
        elif isinstance(reference, fractions.Fraction):
            text = f"{reference.numerator}/{reference.denominator}"
        elif isinstance(reference, numbers.Real):
            text = np.format_float_positional(float(reference), trim="-")
        else:
            text = str(reference).strip()
            if _DELIMITED.search(text):
                return text
        return f"\\boxed{{{text}}}"

    def _timeout(self) -> int | None:
        main = threading.current_thread() is threading.main_thread()
        return self.timeout_seconds if main else None

    def score_one(self, response: str, reference: Any) -> float:
        gold_text = self.reference_text(reference)
        if gold_text is None:
            return 0.0
        timeout = self._timeout()
        gold = self._mv.parse(gold_text, parsing_timeout=timeout)
        if all(isinstance(g, str) for g in gold):  # Nothing parsed into a maths expression.
            boxed = _last_boxed(response)
            got = response if boxed is None else boxed
            return float(
                normalize_answer(got) == normalize_answer(str(reference))
                and bool(normalize_answer(got))
            )
        answer = self._mv.parse(self.final_answer(response), parsing_timeout=timeout)
        return float(
            self._mv.verify(
                gold, answer, float_rounding=self.float_rounding, timeout_seconds=timeout
            )
        )

    def __call__(self, inputs: Sequence[RewardInput]) -> np.ndarray:
        return np.asarray([self.score_one(x.response, x.reference) for x in inputs], np.float32)
