"""A generative judge reward: a language model grades each response with a rubric.

For every row the rubric template is filled with the question, the response
and the reference answer, rendered as one user message with the judge
tokenizer's chat template (or used as a bare prompt), and continued by the
judge checkpoint through the project's own sampler (`sampling.generate`,
plain generation: greedy by default, at most `max_new_tokens` tokens, stopping
at the judge's eos). The judge's output text is searched with `score_pattern`;
the LAST match's group is the score, which is mapped linearly to a reward in
[0, 1]:

    reward = clip((score - min_score) / (max_score - min_score), 0, 1)

A score outside [min_score, max_score] is clipped to the nearest end (0 or 1)
and counted in `last_out_of_range`. An output without a match (or whose match
is not a finite number) raises `JudgeError` with the output and the pattern
(`on_unparsable="error"`, the default), or scores 0 and is counted in
`unparsable_count` (`on_unparsable="zero"`).

The judge never sees the thinking: it reads `RewardInput.response`, the
reference, and the question, which is `metadata["question"]` when the task row
carries one and the prompt text otherwise.

Rows are judged `batch_size` at a time; every batch is padded to exactly
`batch_size` rows (repeats of its first row, whose outputs are dropped) and the
prompt width to a multiple of `LENGTH_MULTIPLE` tokens, so a run compiles the
sampler once per prompt-width bucket, not once per batch.

The last call's judge outputs (`last_outputs`), rendered prompts
(`last_prompts`), parsed scores (`last_scores`, NaN where unparsable) and the
counts stay on the object for debugging a rubric.

Example: a run's config file (launch.py overrides only keys the file has, so
the reward's kwargs are set there and may then be changed on the command line):

    # my_judge.py
    import ml_collections
    from start_jax.train.config import default_config

    def get_config():
        c = default_config()
        c.reward.name = "judge"
        c.reward.kwargs = ml_collections.ConfigDict(dict(
            checkpoint="/models/Qwen3-1.7B", template_kwargs={"enable_thinking": False},
            max_new_tokens=32, batch_size=16, dtype="bfloat16"))
        return c

    python launch.py --config=my_judge.py --workdir=/tmp/judge_run \
        --config.reward.name=judge --config.reward.kwargs.checkpoint=/models/Qwen3-4B \
        --config.reward.kwargs.max_new_tokens=16

In Python: `rewards.make("judge", checkpoint="/models/Qwen3-1.7B", on_unparsable="zero")`,
then `fn(inputs)`; `fn.last_outputs` shows what the judge wrote.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Sequence

import jax
import numpy as np

from start_jax import sampling, segments
from start_jax.errors import ConfigError, UserError
from start_jax.rewards import own_model
from start_jax.rewards.base import RewardInput, register

LENGTH_MULTIPLE = 64  # Judge prompts are left-padded to a multiple of this many tokens.
QUOTE_CHARS = 200  # How much of an unparsable output an error message quotes.
NO_REFERENCE = "(none)"  # What {reference} becomes for a row without a reference.

DEFAULT_RUBRIC = (
    "You are grading the answer to a question.\n\n"
    "Question:\n{question}\n\n"
    "Reference answer:\n{reference}\n\n"
    "Answer to grade:\n{response}\n\n"
    "Judge how correct and complete the answer is, using the reference answer. "
    'Reply with one line of the form "Score: N", where N is an integer from 0 '
    "(wrong) to 10 (fully correct), and nothing else."
)
DEFAULT_SCORE_PATTERN = r"Score:\s*(-?\d+(?:\.\d+)?)"
ON_UNPARSABLE = ("error", "zero")
_PLACEHOLDER = re.compile(r"\{(question|response|reference)\}")


class JudgeError(UserError):
    """The judge's output has no score the pattern can read."""


def parse_score(text: str, pattern: str | re.Pattern) -> float | None:
    """The number in the first group of the LAST match of `pattern` in `text`.

    None when nothing matches, or the group is not a finite number.
    """
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    matches = list(regex.finditer(text))
    if not matches:
        return None
    group = matches[-1].group(1)
    try:
        value = float(group)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def score_to_reward(score: float, min_score: float, max_score: float) -> float:
    """`score` mapped linearly from [min_score, max_score] to [0, 1], clipped."""
    return float(np.clip((score - min_score) / (max_score - min_score), 0.0, 1.0))


def fill_rubric(rubric: str, question: str, response: str, reference: str) -> str:
    """The rubric with its `{question}`, `{response}` and `{reference}` placeholders filled.

    Only these three placeholders are replaced, in one pass: other braces in
    the rubric (LaTeX, JSON) stay as they are, and placeholder-like text inside
    the filled values is not substituted again.
    """
    values = dict(question=question, response=response, reference=reference)
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], rubric)


@register("judge")
class GenerativeJudge:
    """Rewards from a generative judge model that writes a score for each response.

    Args:
      checkpoint: the judge, a Hugging Face directory (config.json, safetensors
        weights with a language-model head).
      tokenizer: the judge's tokenizer: a directory with tokenizer.json, a name
        (`"char"`, `"world"`) or a `Tokenizer`; default the checkpoint's own.
      rubric: the judge prompt, with `{question}`, `{response}` and
        `{reference}` placeholders (`{response}` is required); other braces are
        kept literally. A missing reference renders as "(none)".
      chat_template: render the filled rubric as one user message with the
        judge tokenizer's chat template and its generation prompt; default True
        when the tokenizer has a chat template, else the rubric is the bare prompt.
      template_kwargs: extra chat-template variables, e.g.
        `{"enable_thinking": false}` for a Qwen3 judge.
      score_pattern: a regular expression with exactly one capturing group, the
        score; the last match in the judge's output is used.
      min_score, max_score: the rubric's score range, mapped to rewards 0 and 1
        (outside scores are clipped to it).
      max_new_tokens: tokens the judge may write (eos included).
      batch_size: rows per `sampling.generate` call (every call has exactly
        this many rows).
      on_unparsable: "error" (raise `JudgeError`) or "zero" (reward 0, counted
        in `unparsable_count`).
      temperature: the judge's sampling temperature; 0 (the default) is greedy.
      seed: the sampling seed when temperature > 0 (each call folds in its
        call number, each row its position in the call).
      dtype: parameter dtype for the checkpoint ("float32", "bfloat16").

    Raises:
      MissingFile: `checkpoint` (or a `tokenizer` directory) does not exist.
      CheckpointError: the checkpoint cannot be read.
      ConfigError: a bad option, a checkpoint without a language-model head or
        a tokenizer larger than the judge's vocabulary.
    """

    def __init__(
        self,
        checkpoint: str,
        *,
        tokenizer: Any = None,
        rubric: str = DEFAULT_RUBRIC,
        chat_template: bool | None = None,
        template_kwargs: dict | None = None,
        score_pattern: str = DEFAULT_SCORE_PATTERN,
        min_score: float = 0.0,
        max_score: float = 10.0,
        max_new_tokens: int = 64,
        batch_size: int = 16,
        on_unparsable: str = "error",
        temperature: float = 0.0,
        seed: int = 0,
        dtype: str = "float32",
    ):
        self._check_options(
            rubric,
            score_pattern,
            min_score,
            max_score,
            max_new_tokens,
            batch_size,
            on_unparsable,
            temperature,
            seed,
            template_kwargs,
        )
        self.config, self.params = own_model.load_model("judge", str(checkpoint), dtype)
        if not self.config.lm_head:
            raise ConfigError(
                f"judge: checkpoint {checkpoint!r} has no language-model head "
                "(a sequence-classification checkpoint? use reward 'reward_model'); "
                "the judge needs a *ForCausalLM checkpoint"
            )
        self.tokenizer = own_model.load_tokenizer("judge", str(checkpoint), tokenizer)
        if self.tokenizer.vocab_size > self.config.vocab_size:
            raise ConfigError(
                f"judge: the tokenizer has {self.tokenizer.vocab_size} tokens, "
                f"more than the judge's {self.config.vocab_size} embedding rows; "
                "pass the judge's own tokenizer="
            )
        has_template = bool(getattr(self.tokenizer, "has_chat_template", False))
        if chat_template is None:
            chat_template = has_template
        elif chat_template and not has_template:
            raise ConfigError(
                "judge: chat_template=True but the judge tokenizer has no chat "
                "template; pass chat_template=False to use the rubric as a bare "
                "prompt"
            )
        self.chat_template = bool(chat_template)
        self.template_kwargs = dict(template_kwargs or {})
        self.rubric = rubric
        self.score_pattern = score_pattern
        self._regex = re.compile(score_pattern)
        self.min_score, self.max_score = float(min_score), float(max_score)
        self.max_new_tokens, self.batch_size = int(max_new_tokens), int(batch_size)
        self.on_unparsable = on_unparsable
        self.seed = int(seed)
        self.sampling_config = sampling.SamplingConfig(
            temperature=float(temperature), response_budget=self.max_new_tokens
        )
        self._calls = 0
        # Inspection of the last call (one entry per input row).
        self.last_prompts: list[str] = []
        self.last_outputs: list[str] = []
        self.last_scores = np.zeros(0, np.float64)
        self.unparsable_count = 0
        self.last_out_of_range = 0
        self.total_unparsable = 0  # Over all calls.

    # --------------------------------------------------------------- set-up

    @staticmethod
    def _check_options(
        rubric,
        score_pattern,
        min_score,
        max_score,
        max_new_tokens,
        batch_size,
        on_unparsable,
        temperature,
        seed,
        template_kwargs,
    ):
        if not isinstance(rubric, str) or "{response}" not in rubric:
            raise ConfigError(
                "judge: rubric must be a string with a {response} placeholder "
                "(and optionally {question} and {reference})"
            )
        try:
            groups = re.compile(score_pattern).groups
        except (re.error, TypeError) as e:
            raise ConfigError(
                f"judge: score_pattern={score_pattern!r} is not a regular expression: {e}"
            ) from None
        if groups != 1:
            raise ConfigError(
                f"judge: score_pattern={score_pattern!r} has {groups} capturing "
                "groups; it needs exactly one, around the number (use (?:...) "
                "for other groups)"
            )
        for name, value in (("min_score", min_score), ("max_score", max_score)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ConfigError(f"judge: {name}={value!r} must be a finite number")
        if not max_score > min_score:
            raise ConfigError(
                f"judge: max_score={max_score!r} must be greater than min_score={min_score!r}"
            )
        for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"judge: {name}={value!r} must be an integer >= 1")
        if on_unparsable not in ON_UNPARSABLE:
            raise ConfigError(
                f"judge: on_unparsable={on_unparsable!r} is not one of {ON_UNPARSABLE}"
            )
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
            or temperature < 0
        ):
            raise ConfigError(f"judge: temperature={temperature!r} must be a finite number >= 0")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"judge: seed={seed!r} must be an integer")
        if template_kwargs is not None and not isinstance(template_kwargs, Mapping):
            raise ConfigError(
                f"judge: template_kwargs={template_kwargs!r} must be a dict of "
                "chat-template variables"
            )

    # ---------------------------------------------------------------- prompts

    @staticmethod
    def question(x: RewardInput) -> str:
        """The question shown to the judge: metadata["question"], else the prompt text."""
        if x.metadata and x.metadata.get("question") is not None:
            return str(x.metadata["question"])
        return x.prompt

    def render(self, x: RewardInput) -> str:
        """The judge's prompt text for one row."""
        reference = NO_REFERENCE if x.reference is None else str(x.reference)
        text = fill_rubric(self.rubric, self.question(x), x.response, reference)
        if not self.chat_template:
            return text
        messages = [{"role": "user", "content": text}]
        try:
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, **self.template_kwargs
            )
        except TypeError as e:
            raise ConfigError(
                f"judge: the judge tokenizer's apply_chat_template does not take "
                f"template_kwargs={self.template_kwargs!r}: {e}"
            ) from None

    def encode(self, text: str, index: int = 0) -> list[int]:
        """Token ids of a rendered prompt; ValueError when it does not fit the judge."""
        ids = [int(t) for t in self.tokenizer.encode(text)]
        if not ids:
            raise ValueError(f"row {index}: the judge prompt is empty")
        limit = self.config.max_position_embeddings
        if len(ids) + self.max_new_tokens > limit:
            raise ValueError(
                f"row {index}: the judge prompt is {len(ids)} tokens; with "
                f"max_new_tokens={self.max_new_tokens} it exceeds the judge's "
                f"context of {limit} tokens (shorten the rubric or the responses)"
            )
        return ids

    # ---------------------------------------------------------------- judging

    def generate(
        self, prompts: Sequence[Sequence[int]], row_ids: Sequence[int], rng: jax.Array
    ) -> list[str]:
        """The judge's output texts for at most `batch_size` token-id prompts."""
        n = len(prompts)
        padded = list(prompts) + [prompts[0]] * (self.batch_size - n)
        ids = list(row_ids) + [
            int(row_ids[0]) + self.batch_size + j for j in range(self.batch_size - n)
        ]
        rollout = sampling.generate(
            self.config,
            self.params,
            padded,
            self.sampling_config,
            rng,
            eos_id=(self.tokenizer.eos_id, *getattr(self.tokenizer, "stop_ids", ())),
            pad_id=self.tokenizer.pad_id,
            row_ids=ids,
            pad_multiple=LENGTH_MULTIPLE,
        )
        tokens = np.asarray(rollout.tokens)[:n]
        segs = np.asarray(rollout.segment_ids)[:n]
        return [
            self.tokenizer.decode(
                [int(t) for t in row[seg == segments.RESPONSE]], skip_special_tokens=True
            )
            for row, seg in zip(tokens, segs)
        ]

    def _unparsable_error(self, index: int, output: str) -> JudgeError:
        quoted = output if len(output) <= QUOTE_CHARS else output[:QUOTE_CHARS] + "..."
        return JudgeError(
            f"judge: row {index}: no score in the judge's output {quoted!r}: "
            f"score_pattern {self.score_pattern!r} does not match it (or its group is not a "
            "number). Fix the score_pattern, make the rubric ask for that format (or raise "
            "max_new_tokens if the output is cut off), or pass on_unparsable='zero' to score "
            "such rows 0"
        )

    def __call__(self, inputs: Sequence[RewardInput]) -> np.ndarray:
        prompts = [self.render(x) for x in inputs]
        ids = [self.encode(p, i) for i, p in enumerate(prompts)]
        rng = jax.random.fold_in(jax.random.key(self.seed), self._calls)
        self._calls += 1
        outputs: list[str] = []
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size]
            outputs.extend(self.generate(chunk, range(start, start + len(chunk)), rng))
        scores = np.full(len(outputs), np.nan)
        rewards = np.zeros(len(outputs), np.float32)
        unparsable = out_of_range = 0
        first_bad = None
        for i, text in enumerate(outputs):
            value = parse_score(text, self._regex)
            if value is None:
                unparsable += 1
                first_bad = i if first_bad is None else first_bad
                continue
            scores[i] = value
            out_of_range += not self.min_score <= value <= self.max_score
            rewards[i] = score_to_reward(value, self.min_score, self.max_score)
        self.last_prompts, self.last_outputs, self.last_scores = prompts, outputs, scores
        self.unparsable_count, self.last_out_of_range = unparsable, out_of_range
        self.total_unparsable += unparsable
        if first_bad is not None and self.on_unparsable == "error":
            raise self._unparsable_error(first_bad, outputs[first_bad])
        return rewards
