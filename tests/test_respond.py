"""`sampling.respond` continues a thinking rollout on device exactly as the host path does."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from start_jax import models, sampling, segments
from start_jax.tokenizer import CharTokenizer


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_respond_matches_sampling_with_decoded_thinking(temperature):
    tok = CharTokenizer()
    config = models.tiny_config(tok.vocab_size, max_position_embeddings=128)
    thinker = models.init_params(config, jax.random.key(0))
    responder = models.init_params(config, jax.random.key(1))
    special = sampling.SpecialTokens.from_tokenizer(tok)
    prompts = [tok.encode(p) for p in ("a=1;b=a+2;b?", "Al likes tea.", "x", "c=4;c?")]
    sc = sampling.SamplingConfig(temperature=temperature, think_budget=6, response_budget=5)
    rows = np.arange(4) + 40
    thinking = sampling.sample(
        config,
        thinker,
        prompts,
        sc.replace(response_budget=0),
        jax.random.key(2),
        special,
        row_ids=rows,
        width=40,
    )
    assert bool(np.asarray(thinking.think_truncated).any())  # Both closing kinds are covered.
    key = jax.random.key(3)
    got = jax.device_get(
        sampling.respond(config, responder, thinking, sc, key, special, row_ids=rows, width=48)
    )
    given, truncated = sampling.thinking_of(thinking, special.end_think)
    want = jax.device_get(
        sampling.sample(
            config,
            responder,
            prompts,
            sc,
            key,
            special,
            thinking=given,
            thinking_truncated=truncated,
            row_ids=rows,
        )
    )
    assert got.tokens.shape == (4, 48)
    for g_row, w_row, kind in (
        (got.tokens, want.tokens, "tokens"),
        (got.forced, want.forced, "forced"),
    ):
        for i in range(4):
            g = g_row[i][got.segment_ids[i] != segments.PAD]
            w = w_row[i][want.segment_ids[i] != segments.PAD]
            np.testing.assert_array_equal(g, w, err_msg=f"{kind}, row {i}")
    for i in range(4):
        np.testing.assert_array_equal(
            got.segment_ids[i][got.segment_ids[i] != segments.PAD],
            want.segment_ids[i][want.segment_ids[i] != segments.PAD],
        )
    # The thinking keeps the thinker's sampled flags and log-probabilities.
    think = jax.device_get(thinking)
    for i in range(4):
        drawn = got.sampled[i] & (got.segment_ids[i] == segments.THINK)
        np.testing.assert_array_equal(got.logprobs[i][drawn], think.logprobs[i][think.sampled[i]])
    np.testing.assert_array_equal(got.response_length, want.response_length)
    np.testing.assert_array_equal(got.think_truncated, want.think_truncated)
    np.testing.assert_array_equal(got.response_truncated, want.response_truncated)
