"""Sampling: segmented (thinking + response) and plain generation from one jitted decode loop.

* `sample(model_config, params, prompts, config, rng, special, ...)`: the model
  writes `<think> thinking </think> response` after each prompt (or only the
  response after given thinking, or after `<think></think>` with
  `no_thinking=True`); `special` holds the tag, eos and pad ids.
* `respond(...)`: the response after a thinking-only rollout, on device.
* RL-shaped batches: `group_size=G` prefills each of G identical prompts once
  and shares its cache; `compact=Compaction(...)` stops spending decode steps
  on finished rows (each row's draws stay its own, so results are unchanged).
* `generate(model_config, params, prompts, config, rng, eos_id=..., pad_id=...,
  max_new_tokens=...)`: plain generation, the bare prompt continued with no
  tags (base models, judges, parity checks); generated tokens carry the
  RESPONSE segment and a row stops at eos.
* `Sampler(model_config, special, mesh=..., width=..., compact=...)`: the three
  above bound to one model and placement, so that a call passes only the
  parameters, prompts, sampling config and key.

`SamplingConfig` (hashable, a static jit argument: an equal config never
recompiles) holds the temperature, top-k/top-p, the segment budgets,
`banned_tokens` (never drawn), `min_response_tokens` (eos not drawn before the
response has that many tokens) and `logprobs_of`, which `Rollout.logprobs_of`
repeats: "model" (default) = log softmax(logits / T) of the unprocessed,
unfiltered model (T = 1 when greedy), "sampled" = the log-probability under the
processed and filtered distribution each token was drawn from (0 when greedy).
"""

from start_jax.sampling.api import (
    Compaction,
    decode_segments,
    generate,
    num_decode_steps,
    respond,
    sample,
    stopped_at_budget,
    thinking_of,
)
from start_jax.sampling.ops import (
    LOGPROBS_OF,
    SamplingConfig,
    filter_logits,
    sampled_token_log_probs,
)
from start_jax.sampling.sampler import (
    DecodeState,
    Prefix,
    Rollout,
    SpecialTokens,
    assemble,
    build_plain_prefix,
    build_prefix,
    decode,
    prefill,
)
from start_jax.sampling.session import Sampler

__all__ = [
    "Compaction",
    "DecodeState",
    "LOGPROBS_OF",
    "Prefix",
    "Rollout",
    "Sampler",
    "SamplingConfig",
    "SpecialTokens",
    "assemble",
    "build_plain_prefix",
    "build_prefix",
    "decode",
    "decode_segments",
    "filter_logits",
    "generate",
    "num_decode_steps",
    "prefill",
    "respond",
    "sample",
    "sampled_token_log_probs",
    "stopped_at_budget",
    "thinking_of",
]
