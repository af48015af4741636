"""`sampling.Sampler` equals the module functions it binds."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from start_jax import models, sampling, sharding

SPECIAL = sampling.SpecialTokens(think=3, end_think=4, eos=1, pad=0, stop=(11,))


def _same(a, b):
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.segment_ids), np.asarray(b.segment_ids))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-6)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_sampler_methods_equal_the_functions_with_the_held_arguments():
    config = models.tiny_config(16)
    params = models.init_params(config, jax.random.key(1))
    mesh = sharding.make_mesh(data=2, fsdp=4)
    compact = sampling.Compaction(2, 2)
    cfg = sampling.SamplingConfig(temperature=1.0, think_budget=5, response_budget=4)
    prompts = [[5, 6], [7], [5, 6, 7, 8], [9, 9], [6], [7, 7], [8], [5]]
    s = sampling.Sampler(config, SPECIAL, mesh=mesh, width=24, compact=compact)
    held = dict(mesh=mesh, width=24, compact=compact)

    _same(
        s.sample(params, prompts, cfg, 3),
        sampling.sample(config, params, prompts, cfg, 3, SPECIAL, **held),
    )
    assert s.sample(params, prompts, cfg, 3).tokens.shape[1] == 24
    # A call's keyword overrides the held one.
    assert s.sample(params, prompts, cfg, 3, width=32).tokens.shape[1] == 32

    thinking = s.sample(params, prompts, cfg.replace(response_budget=0), 3, width=16)
    ids = list(range(len(prompts)))
    _same(
        s.respond(params, thinking, cfg, jax.random.key(4), row_ids=ids),
        sampling.respond(
            config, params, thinking, cfg, jax.random.key(4), SPECIAL, row_ids=ids, **held
        ),
    )

    plain = s.generate(params, prompts, cfg, 5, width=None, max_new_tokens=6)
    _same(
        plain,
        sampling.generate(
            config,
            params,
            prompts,
            cfg,
            5,
            eos_id=[1, 11],
            pad_id=0,
            mesh=mesh,
            compact=compact,
            max_new_tokens=6,
        ),
    )
