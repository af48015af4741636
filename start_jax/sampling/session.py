"""`Sampler`: the sampling functions bound to one model and one placement.

A run samples many batches with the same model config, mesh, sharding rules,
special tokens, rollout width, context limit and compaction; only the
parameters, prompts, sampling config and key change. `Sampler` holds the former
so that a call passes only the latter:

    sampler = Sampler(model_config, special, mesh=mesh, width=run_width,
                      compact=Compaction(8, 8))
    rollout = sampler.sample(params, prompts, config, key, group_size=8)
    answers = sampler.respond(responder_params, thinking_rollout, config, key, row_ids=ids)
    plain = sampler.generate(params, prompts, config, key, max_new_tokens=32)

Each method is the module function of the same name (`sampling.sample`,
`respond`, `generate`) with the held arguments filled in; keyword arguments
given to a call override them for that call. Equal arguments compile the same
programs, so a `Sampler` adds nothing to the jit caches.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax

from start_jax.models.config import ModelConfig
from start_jax.sampling import api
from start_jax.sampling import sampler as core
from start_jax.sampling.ops import SamplingConfig


@dataclasses.dataclass(frozen=True)
class Sampler:
    """One model's sampling setup (see the module docstring)."""

    model_config: ModelConfig
    special: core.SpecialTokens
    mesh: jax.sharding.Mesh | None = None
    rules: object = None  # sharding.ShardingRules; None: the default table.
    width: int | None = None  # Columns of every rollout (None: as needed).
    max_length: int | None = None  # Context limit (None: the model's).
    compact: api.Compaction | None = None  # Finished rows stop costing decode steps.

    def _placement(self, overrides: dict, width: bool = True) -> dict:
        held = dict(
            mesh=self.mesh, rules=self.rules, max_length=self.max_length, compact=self.compact
        )
        if width:
            held["width"] = self.width
        return {**held, **overrides}

    def sample(
        self,
        params,
        prompts: Sequence[Sequence[int]],
        config: SamplingConfig,
        rng: jax.Array | int,
        **kwargs,
    ) -> core.Rollout:
        """`sampling.sample` with this model, its special tokens and placement."""
        return api.sample(
            self.model_config, params, prompts, config, rng, self.special, **self._placement(kwargs)
        )

    def respond(
        self,
        params,
        thinking: core.Rollout,
        config: SamplingConfig,
        rng: jax.Array,
        *,
        row_ids: Sequence[int],
        **kwargs,
    ) -> core.Rollout:
        """`sampling.respond`: `params` answer after a thinking-only rollout."""
        return api.respond(
            self.model_config,
            params,
            thinking,
            config,
            rng,
            self.special,
            row_ids=row_ids,
            **self._placement(kwargs),
        )

    def generate(
        self,
        params,
        prompts: Sequence[Sequence[int]],
        config: SamplingConfig,
        rng: jax.Array | int,
        **kwargs,
    ) -> core.Rollout:
        """`sampling.generate` (no tags): stops at any of the special tokens' eos ids."""
        return api.generate(
            self.model_config,
            params,
            prompts,
            config,
            rng,
            eos_id=self.special.eos_ids,
            pad_id=self.special.pad,
            **self._placement(kwargs),
        )
