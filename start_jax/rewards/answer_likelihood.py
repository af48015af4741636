"""An answer-likelihood reward for the thinking (the VeriFree / NOVER family).

The reward of a rollout is how likely an answerer model finds the reference
answer after the rollout's thinking:

    log p(reference <eos> | prompt <think> thinking </think> [answer_prefix])

teacher-forced, summed over the reference tokens (`reduce="sum"`) or averaged
over them (`reduce="mean"`). It reads the prompt, the thinking and the
reference, never the sampled response, so it fits START stage 1 (train the
thinking only). The answerer is frozen: a Hugging Face checkpoint directory, or
a given `(model_config, params, tokenizer)` such as the initial policy.

Rows are laid out left-padded as `PROMPT | THINK (tags included) | RESPONSE`
and scored with one jitted `rl.rollout_log_probs` per batch; lengths are padded
to multiples of 16 and batch sizes to multiples of 8, so a run compiles once
per shape bucket, not once per batch.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from start_jax import rl, segments
from start_jax.errors import ConfigError
from start_jax.rewards import own_model
from start_jax.rewards.base import RewardInput, ThinkingInput, register

LENGTH_MULTIPLE = 16  # Row widths are padded up to a multiple of this.
BATCH_MULTIPLE = 8  # Batch sizes are padded up to a multiple of this.
REDUCTIONS = ("sum", "mean")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@register("answer_likelihood")
class AnswerLikelihood:
    """log p(reference answer | prompt, thinking) under a frozen answerer.

    Args:
      checkpoint: a Hugging Face model directory (config.json, safetensors
        weights with a language-model head). Give either this or
        `model_config` and `params`.
      tokenizer: the answerer's tokenizer: a `Tokenizer`, or a name or
        directory (`"char"`, `"world"`, a directory with tokenizer.json).
        Defaults to the checkpoint's own tokenizer.json.
      model_config, params: an answerer already in memory (the initial
        policy); `tokenizer` is then required.
      reduce: `"sum"` (log-probability of the whole reference) or `"mean"`
        (per scored token).
      temperature: the answerer's distribution is softmax(logits / temperature).
      include_eos: score the eos token after the reference as well (the
        answer is the reference and nothing more).
      answer_prefix: text placed between `</think>` and the reference (for
        example "\\n\\n" for a chat model); it is context, not scored.
      retokenize: encode the prompt and thinking texts with the answerer's
        tokenizer instead of reusing the rollout's ids (for an answerer whose
        tokenizer differs from the policy's). Without it, ids are reused when
        present and the text is encoded when they are empty.
      batch_size: rows per forward.
      dtype: parameter dtype when loading `checkpoint`.

    Raises:
      MissingFile: `checkpoint` (or `tokenizer`, a directory) does not exist.
      CheckpointError: the checkpoint cannot be read.
      ConfigError: a bad option, no tokenizer, or a checkpoint without a
        language-model head.
    """

    reads_thinking = True  # `rewards.score` gives it `ThinkingInput`s.

    def __init__(
        self,
        checkpoint: str | None = None,
        *,
        tokenizer: Any = None,
        model_config=None,
        params=None,
        reduce: str = "sum",
        temperature: float = 1.0,
        include_eos: bool = True,
        answer_prefix: str = "",
        retokenize: bool = False,
        batch_size: int = 32,
        dtype: str = "float32",
    ):
        if reduce not in REDUCTIONS:
            raise ConfigError(f"answer_likelihood: reduce={reduce!r} is not one of {REDUCTIONS}")
        if not (
            isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
        ):
            raise ConfigError(
                f"answer_likelihood: temperature={temperature!r} must be a finite number > 0"
            )
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError(
                f"answer_likelihood: batch_size={batch_size!r} must be an integer >= 1"
            )
        given = model_config is not None or params is not None
        if (checkpoint is not None) == given or (
            given and (model_config is None or params is None)
        ):
            raise ConfigError(
                "answer_likelihood: give either checkpoint=<Hugging Face "
                "directory> or both model_config= and params="
            )
        if checkpoint is not None:
            model_config, params = own_model.load_model("answer_likelihood", str(checkpoint), dtype)
        if not model_config.lm_head:
            raise ConfigError(
                f"answer_likelihood: the answerer {checkpoint or 'model_config'} "
                "has no language-model head (a sequence-classification "
                "checkpoint?); it needs a *ForCausalLM checkpoint"
            )
        self.config, self.params = model_config, params
        self.tokenizer = own_model.load_tokenizer("answer_likelihood", checkpoint, tokenizer)
        if self.tokenizer.vocab_size > self.config.vocab_size:
            raise ConfigError(
                f"answer_likelihood: the tokenizer has {self.tokenizer.vocab_size} "
                f"tokens, more than the answerer's {self.config.vocab_size} "
                "embedding rows; pass the answerer's own tokenizer="
            )
        self.reduce, self.temperature = reduce, float(temperature)
        self.include_eos, self.retokenize, self.batch_size = include_eos, retokenize, batch_size
        self.prefix_ids = list(self.tokenizer.encode(answer_prefix)) if answer_prefix else []

    # ------------------------------------------------------------------ rows

    def _ids(self, ids: tuple[int, ...], text: str) -> list[int]:
        if ids and not self.retokenize:
            return [int(t) for t in ids]
        return list(self.tokenizer.encode(text)) if text else []

    def row(self, x: RewardInput, index: int = 0) -> tuple[list[int], list[int], list[bool]]:
        """(tokens, segment ids, scored) of one input, unpadded."""
        if not isinstance(x, ThinkingInput):
            raise ValueError(
                f"row {index}: answer_likelihood reads the thinking and got a "
                f"{type(x).__name__}; give it ThinkingInputs (rewards.score builds "
                "them from a rollout for a reward with reads_thinking = True)"
            )
        if x.reference is None:
            raise ValueError(
                f"row {index}: answer_likelihood needs the reference answer (reference is None)"
            )
        tok = self.tokenizer
        prompt = self._ids(x.prompt_ids, x.prompt)
        if not prompt:
            raise ValueError(f"row {index}: the prompt is empty")
        thinking = self._ids(x.thinking_ids, x.thinking)
        answer = list(tok.encode(str(x.reference))) + ([tok.eos_id] if self.include_eos else [])
        if not answer:
            raise ValueError(f"row {index}: the reference {x.reference!r} has no tokens to score")
        tokens = prompt + [tok.think_id] + thinking + [tok.end_think_id] + self.prefix_ids + answer
        segs = (
            [segments.PROMPT] * len(prompt)
            + [segments.THINK] * (len(thinking) + 2)
            + [segments.RESPONSE] * (len(self.prefix_ids) + len(answer))
        )
        scored = [False] * (len(tokens) - len(answer)) + [True] * len(answer)
        if max(tokens) >= self.config.vocab_size or min(tokens) < 0:
            raise ValueError(
                f"row {index}: token ids outside the answerer's vocabulary "
                f"(0..{self.config.vocab_size - 1}); with a different tokenizer "
                "from the policy's, pass retokenize=True"
            )
        if len(tokens) > self.config.max_position_embeddings:
            raise ValueError(
                f"row {index}: prompt + thinking + reference is {len(tokens)} "
                f"tokens, more than the answerer's context "
                f"({self.config.max_position_embeddings})"
            )
        return tokens, segs, scored

    def arrays(self, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Left-padded int32 tokens, segment ids and bool scored [B', L'] of rows,
        B' and L' rounded up to their buckets (extra rows repeat the first)."""
        width = _round_up(max(len(r[0]) for r in rows), LENGTH_MULTIPLE)
        batch = _round_up(len(rows), BATCH_MULTIPLE)
        tokens = np.full((batch, width), self.tokenizer.pad_id, np.int32)
        segs = np.full((batch, width), segments.PAD, np.int32)
        scored = np.zeros((batch, width), bool)
        for i in range(batch):
            row_tokens, row_segs, row_scored = rows[i] if i < len(rows) else rows[0]
            n = len(row_tokens)
            tokens[i, width - n :] = row_tokens
            segs[i, width - n :] = row_segs
            scored[i, width - n :] = row_scored
        return tokens, segs, scored

    def __call__(self, inputs: Sequence[RewardInput]) -> np.ndarray:
        rows = [self.row(x, i) for i, x in enumerate(inputs)]
        out = np.zeros(len(rows), np.float32)
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            tokens, segs, scored = self.arrays(chunk)
            logp = np.asarray(
                rl.rollout_log_probs(
                    self.config, self.params, tokens, segs, temperature=self.temperature
                ),
                np.float64,
            )[: len(chunk)]
            mask = scored[: len(chunk)]
            total = (logp * mask).sum(axis=1)
            if self.reduce == "mean":
                total = total / mask.sum(axis=1)
            out[start : start + len(chunk)] = total
        return out
