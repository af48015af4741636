"""The benchmarks' own arithmetic (`experiments.bench.common`), against hand counts."""

from __future__ import annotations

import types

import numpy as np

from experiments.bench import common
from start_jax import models, segments


def test_decode_bytes_count_weights_per_step_and_each_tokens_cache():
    """Row 0: 3 prompt tokens, <think> + 3 thinking tokens, 2 response tokens: 5 decoded;
    row 1: 2 prompt tokens, <think> + 1, 1 response token: 2 decoded. The weights are read
    once a step of the longest row (5 x 100 parameters x 2 bytes); the cache reads are
    sum over decoded tokens of the row's length so far (3+1 .. 3+5 and 2+1, 2+2: 37
    positions), each 2 (K, V) x 2 layers x 1 head x 4 wide x 2 bytes = 32 bytes."""
    P, T, R, _ = segments.PROMPT, segments.THINK, segments.RESPONSE, segments.PAD
    seg = np.asarray([[P, P, P, T, T, T, T, R, R], [_, P, P, T, T, R, _, _, _]])
    config = models.tiny_config(16).replace(num_layers=2, num_kv_heads=1, head_dim=4)
    host = types.SimpleNamespace(segment_ids=seg)
    assert common.kv_bytes(config, 1, 1) == 32
    assert common.decode_bytes(host, config, n_params=100, itemsize=2) == 5 * 100 * 2 + 37 * 32
