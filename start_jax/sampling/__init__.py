"""Segmented sampling: thinking and response from one jitted decode loop."""

from start_jax.sampling.api import decode_segments, num_decode_steps, respond, sample, thinking_of
from start_jax.sampling.ops import SamplingConfig, filter_logits, sampled_token_log_probs
from start_jax.sampling.sampler import (
    DecodeState,
    Prefix,
    Rollout,
    SpecialTokens,
    assemble,
    build_prefix,
    decode,
    prefill,
)
