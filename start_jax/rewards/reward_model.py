"""A reward-model judge: a value-head model loaded from a sequence-classification checkpoint."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from start_jax import checkpoints, models
from start_jax.rewards.base import RewardInput, register
from start_jax.tokenizer import HFTokenizer


@register("reward_model")
class RewardModelJudge:
    """Scores `prompt + response` with a Hugging Face `*ForSequenceClassification` model.

    The directory holds config.json, safetensors weights and tokenizer.json.
    The score is the value head at the last token (as the HF model pools);
    the judge re-tokenizes the texts with its own tokenizer, and never sees
    the thinking. `separator` is placed between prompt and response.
    """

    def __init__(
        self,
        path: str,
        separator: str = "\n",
        batch_size: int = 32,
        scale: float = 1.0,
        shift: float = 0.0,
    ):
        self.config, self.params = checkpoints.load_pretrained(path)
        if not self.config.value_head:
            raise ValueError(
                f"{path}: reward_model needs a sequence-classification checkpoint "
                "(a 'score' head); this one has a language-model head"
            )
        self.tokenizer = HFTokenizer.from_pretrained(path)
        self.separator, self.batch_size = separator, batch_size
        self.scale, self.shift = scale, shift

    def __call__(self, inputs: Sequence[RewardInput]) -> np.ndarray:
        out = []
        for i in range(0, len(inputs), self.batch_size):
            chunk = inputs[i : i + self.batch_size]
            ids = [
                self.tokenizer.encode(x.prompt + self.separator + x.response) or [0] for x in chunk
            ]
            width = max(len(r) for r in ids)
            tokens = np.full((len(ids), width), self.tokenizer.pad_id, np.int32)
            mask = np.zeros((len(ids), width), bool)
            for j, r in enumerate(ids):
                tokens[j, : len(r)] = r
                mask[j, : len(r)] = True
            values = models.forward(
                self.config, self.params, jnp.asarray(tokens), attention_mask=jnp.asarray(mask)
            ).values
            out.append(np.asarray(models.sequence_scores(values, jnp.asarray(mask))))
        return (np.concatenate(out) * self.scale + self.shift).astype(np.float32)
