"""RL-shaped sampling: one prefill per group of completions, and finished rows that
stop costing decode steps (`sampling.Compaction`); results equal the plain sampler."""

import jax
import numpy as np
import pytest

from start_jax import models, sampling, sharding
from start_jax.sampling import sampler as core

SPECIAL = sampling.SpecialTokens(think=3, end_think=4, eos=1, pad=0)
VOCAB = 12  # Small, so that a random model ends rows at many different lengths.


@pytest.fixture(scope="module")
def tiny():
    config = models.tiny_config(VOCAB, num_layers=2, max_position_embeddings=128)
    return config, models.init_params(config, jax.random.key(3))


def _prompts(groups, group, seed=0):
    rs = np.random.RandomState(seed)
    distinct = [list(rs.randint(5, VOCAB, size=rs.randint(2, 9))) for _ in range(groups)]
    return [p for p in distinct for _ in range(group)]


def _same(a, b):
    for name in (
        "tokens",
        "segment_ids",
        "forced",
        "sampled",
        "think_length",
        "response_length",
        "think_truncated",
        "response_truncated",
    ):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


CFG = sampling.SamplingConfig(temperature=1.0, think_budget=40, response_budget=12)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_group_prefill_equals_separate_prefills(tiny):
    config, params = tiny
    prompts = _prompts(4, 8)
    ref = sampling.sample(config, params, prompts, CFG, 5, SPECIAL)
    shared = sampling.sample(config, params, prompts, CFG, 5, SPECIAL, group_size=8)
    _same(shared, ref)
    with pytest.raises(ValueError, match=r"group_size=8: rows 0..7 do not share one prompt"):
        sampling.sample(config, params, _prompts(32, 1), CFG, 5, SPECIAL, group_size=8)
    with pytest.raises(ValueError, match=r"group_size=3 must be >= 1 and divide the 32 rows"):
        sampling.sample(config, params, prompts, CFG, 5, SPECIAL, group_size=3)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_compaction_equals_decoding_every_row_to_the_end(tiny, monkeypatch):
    config, params = tiny
    prompts = _prompts(4, 8)
    ref = sampling.sample(config, params, prompts, CFG, 7, SPECIAL)
    ends = np.asarray(ref.think_length) + np.asarray(ref.response_length)
    assert ends.min() < 10 and ends.max() > 30, ends  # Lengths vary: rows finish early.
    sizes = []
    take = core.take_rows

    def spy(state, rows, cache_sharding=None):
        sizes.append((state.tokens.shape[0], rows.shape[0]))
        return take(state, rows, cache_sharding=cache_sharding)

    monkeypatch.setattr(core, "take_rows", spy)
    out = sampling.sample(
        config, params, prompts, CFG, 7, SPECIAL, compact=sampling.Compaction(every=4, min_rows=8)
    )
    _same(out, ref)
    assert sizes and sizes[0][0] == 32 and sizes[-1][1] < 32, sizes  # It did shrink.
    # With given thinking (what a responder continues) and in plain generation too.
    thinking = [[7] * (i % 5) for i in range(len(prompts))]
    compact = sampling.Compaction(every=3, min_rows=16)
    _same(
        sampling.sample(
            config, params, prompts, CFG, 2, SPECIAL, thinking=thinking, compact=compact
        ),
        sampling.sample(config, params, prompts, CFG, 2, SPECIAL, thinking=thinking),
    )
    kw = dict(eos_id=1, pad_id=0, max_new_tokens=30)
    _same(
        sampling.generate(config, params, prompts, CFG, 4, **kw, compact=compact, group_size=8),
        sampling.generate(config, params, prompts, CFG, 4, **kw),
    )


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_compaction_on_a_mesh_keeps_a_row_per_shard(tiny, monkeypatch):
    config, params = tiny
    mesh = sharding.make_mesh(fsdp=8)
    sharded = models.shard_params(config, params, mesh)
    prompts = _prompts(4, 8)
    ref = sampling.sample(config, params, prompts, CFG, 9, SPECIAL)
    sizes = []
    take = core.take_rows
    monkeypatch.setattr(
        core,
        "take_rows",
        lambda s, r, cache_sharding=None: (
            sizes.append(r.shape[0]),
            take(s, r, cache_sharding=cache_sharding),
        )[1],
    )
    out = sampling.sample(
        config,
        sharded,
        prompts,
        CFG,
        9,
        SPECIAL,
        mesh=mesh,
        group_size=8,
        compact=sampling.Compaction(every=4, min_rows=1),
    )
    _same(out, ref)
    assert sizes and all(n % 8 == 0 for n in sizes), sizes


def test_compacted_batch_sizes():
    """Active rows go on in the smallest 2^k or 3 * 2^k rows that hold them (at least
    min_rows, a multiple of the mesh's batch shards); no smaller size keeps the batch."""
    from start_jax.sampling.api import _compact_size

    assert [_compact_size(n, 64, 8, 1) for n in (0, 3, 9, 13, 17, 25, 33, 48, 49, 63)] == [
        8,
        8,
        12,
        16,
        24,
        32,
        48,
        48,
        64,
        64,
    ]
    assert [_compact_size(n, 64, 1, 8) for n in (1, 9, 17, 25, 40)] == [8, 16, 24, 32, 48]
    assert _compact_size(5, 40, 8, 1) == 8 and _compact_size(9, 40, 8, 1) == 12
    assert _compact_size(5, 8, 8, 1) == 8  # Never below min_rows.
