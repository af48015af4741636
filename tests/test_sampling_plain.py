"""Plain generation (no segment tags), banned tokens, a minimum response length, log-probs."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from start_jax import models, sampling, segments
from start_jax.checkpoints import load_pretrained
from start_jax.sampling import sampler as core
from tests import hf_fixtures

EOS, PAD = 1, 0
SPECIAL = sampling.SpecialTokens(think=3, end_think=4, eos=EOS, pad=PAD)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One-layer transformers checkpoints: (our config, our params, torch model) per family."""
    out = {}
    for family in ("qwen3", "llama3"):
        directory = str(tmp_path_factory.mktemp(family))
        model = hf_fixtures.make_checkpoint(family, directory, num_hidden_layers=1)
        out[family] = (*load_pretrained(directory), model)
    return out


@pytest.fixture(scope="module")
def tiny():
    """A 16-token one-layer model, and a copy of it that puts almost all mass on eos."""
    config = models.tiny_config(16)
    params = _random_params(config, seed=1)
    # Embedding dimension 0 dominates the residual stream, so the final-norm
    # hidden state has a large positive entry 0 at every position; the eos
    # column of the head reads it: p(eos) > 1 - 1e-6 after any token (the
    # minimum-length test checks this on its own rollout).
    eager = dict(
        params,
        embed={"embedding": params["embed"]["embedding"].at[:, 0].set(50.0)},
        lm_head=params["lm_head"].at[0, EOS].set(20.0),
    )
    return config, params, eager


def _random_params(config, seed):
    """Normal(0, 0.2) weights and unit norm scales, without compiling an initialiser."""
    rs = np.random.RandomState(seed)

    def fill(path, x):
        if "norm" in jax.tree_util.keystr(path):
            return jnp.ones(x.shape, x.dtype)
        return jnp.asarray(rs.normal(0.0, 0.2, x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(fill, models.param_shapes(config))


def _prompts(lengths, vocab, seed=0):
    rs = np.random.RandomState(seed)
    return [[int(t) for t in rs.randint(5, vocab, size=n)] for n in lengths]


def _until(tokens, stop):
    return tokens[: tokens.index(stop) + 1] if stop in tokens else tokens


def _generated(rollout):
    """Per row: the RESPONSE tokens, as a list."""
    tokens, segs = np.asarray(rollout.tokens), np.asarray(rollout.segment_ids)
    return [[int(t) for t in row[seg == segments.RESPONSE]] for row, seg in zip(tokens, segs)]


def _teacher_forced(config, params, rollout):
    """Model logits [B, L - 1, V] that predicted each token of the rollout."""
    out = models.forward(
        config,
        params,
        rollout.tokens,
        positions=rollout.positions(),
        attention_mask=rollout.attention_mask(),
    )
    return np.asarray(out.logits[:, :-1], np.float64)


def _log_softmax_at(logits, tokens):
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "cpu_fast_paths"])
@pytest.mark.parametrize("family", ["qwen3", "llama3"])
def test_plain_greedy_matches_transformers_generate(checkpoints, family, fast):
    """On the plain paths and on the CPU fast paths (`models.fast_paths`: fused decode
    projections, values slots-last in the cache, argmax as two reductions)."""
    config, params, hf_model = checkpoints[family]
    config = config.replace(cpu_fast_paths=fast)
    prompts = _prompts([3, 9, 14, 6], hf_fixtures.VOCAB)
    max_new = 10
    # An eos that some rows reach and others do not: a token row 0 generates
    # (without stopping) at its fifth step. Greedy rows that stop at eos are
    # the free rows cut after their first eos.
    free = hf_fixtures.greedy_generate(hf_model, prompts, max_new, eos=None)
    eos = free[0][4]
    assert eos != PAD
    expected = [_until(row, eos) for row in free]
    assert any(row[-1] == eos for row in expected) and any(row[-1] != eos for row in expected)

    cfg = sampling.SamplingConfig(temperature=0.0)
    rollout = sampling.generate(
        config, params, prompts, cfg, 0, eos_id=eos, pad_id=PAD, max_new_tokens=max_new
    )
    assert _generated(rollout) == expected
    segs = np.asarray(rollout.segment_ids)
    assert not np.any(segs == segments.THINK)
    for i, prompt in enumerate(prompts):
        assert list(np.asarray(rollout.tokens)[i][segs[i] == segments.PROMPT]) == prompt
    np.testing.assert_array_equal(rollout.response_length, [len(r) for r in expected])
    np.testing.assert_array_equal(rollout.response_truncated, [r[-1] != eos for r in expected])
    np.testing.assert_array_equal(rollout.think_length, 0)
    np.testing.assert_array_equal(rollout.sampled, segs == segments.RESPONSE)
    assert not np.asarray(rollout.forced).any() and rollout.logprobs_of == "model"
    if family != "qwen3" or fast:
        return  # The constraints do not depend on the model family or its fast paths.

    # Banned tokens and a minimum length equal transformers' suppress_tokens
    # and min_new_tokens: row 0 may not stop where it did, nor draw its most
    # frequent token.
    counts = np.bincount([t for t in free[0] if t != eos], minlength=hf_fixtures.VOCAB)
    banned = (int(np.argmax(counts)),)
    expected = [
        _until(row, eos)
        for row in hf_fixtures.greedy_generate(
            hf_model, prompts, max_new, eos=eos, suppress_tokens=list(banned), min_new_tokens=6
        )
    ]
    cfg = sampling.SamplingConfig(
        temperature=0.0, banned_tokens=banned, min_response_tokens=6, response_budget=max_new
    )
    rollout = sampling.generate(config, params, prompts, cfg, 0, eos_id=eos, pad_id=PAD)
    got = _generated(rollout)
    assert got == expected
    assert all(banned[0] not in row and eos not in row[:6] for row in got)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_banned_eos_gives_exactly_n_tokens_without_retracing(tiny, monkeypatch):
    config, _, eager = tiny
    chex.clear_trace_counter()
    # Count the traces of the very prefill and decode that generate() calls.
    monkeypatch.setattr(
        core,
        "prefill",
        jax.jit(
            chex.assert_max_traces(core.prefill.__wrapped__, n=1),
            static_argnames=(
                "model_config",
                "sampling",
                "tokens_",
                "num_steps",
                "cache_sharding",
                "group",
            ),
        ),
    )
    monkeypatch.setattr(
        core,
        "decode",
        jax.jit(
            chex.assert_max_traces(core.decode.__wrapped__, n=1),
            static_argnames=("model_config", "sampling", "tokens_", "logits_processor"),
            donate_argnames=("state",),
        ),
    )
    n = 7
    other = jax.tree.map(lambda x: x * 1.01, eager)
    try:
        for params, prompts, banned in [
            (eager, [[5, 6], [7], [8, 9, 10]], (EOS,)),
            (other, [[11] * 6, [12, 13], [14]], [EOS, EOS]),
        ]:
            # A new, equal config each call (a list of bans is stored as a tuple).
            cfg = sampling.SamplingConfig(temperature=1.0, banned_tokens=banned)
            rollout = sampling.generate(
                config, params, prompts, cfg, 0, eos_id=EOS, pad_id=PAD, max_new_tokens=n
            )
            np.testing.assert_array_equal(rollout.response_length, n)
            np.testing.assert_array_equal(rollout.response_truncated, True)
            assert all(len(row) == n and EOS not in row for row in _generated(rollout))
        # The guard is live: another config would trace decode a second time.
        with pytest.raises(AssertionError, match="traced > 1 times"):
            sampling.generate(
                config,
                eager,
                [[5]],
                cfg.replace(banned_tokens=(EOS, 2)),
                0,
                eos_id=EOS,
                pad_id=PAD,
                max_new_tokens=n,
            )
    finally:
        chex.clear_trace_counter()


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_min_response_tokens_delays_eos_in_plain_and_segmented_modes(tiny):
    config, _, eager = tiny
    prompts = _prompts([2, 5, 3, 7, 1, 4], 16, seed=3)
    m = 4
    cfg = sampling.SamplingConfig(
        temperature=1.0, think_budget=3, response_budget=8, min_response_tokens=m
    )
    rollout = sampling.generate(config, eager, prompts, cfg, 0, eos_id=EOS, pad_id=PAD)
    for row in _generated(rollout):
        assert len(row) == m + 1 and row[-1] == EOS and EOS not in row[:-1]
    np.testing.assert_array_equal(rollout.response_truncated, False)
    logits = _teacher_forced(config, eager, rollout)
    sampled = np.asarray(rollout.sampled)[:, 1:]
    # Unconstrained, the model ends every response at once: p(eos) ~ 1 everywhere.
    eos_logp = _log_softmax_at(logits, np.full(sampled.shape, EOS))
    assert eos_logp[sampled].min() > -1e-6
    # "model" log-probabilities ignore the minimum: the eos-blocked steps report
    # the (tiny) model probability of the token drawn, as a forward pass does.
    ref = _log_softmax_at(logits, np.asarray(rollout.tokens)[:, 1:])
    ours = np.asarray(rollout.logprobs)[:, 1:]
    assert ours[sampled].min() < -50
    np.testing.assert_allclose(ours[sampled], ref[sampled], rtol=1e-5)

    # Segmented: an eos drawn in the thinking still closes it (forced
    # </think>); the minimum holds for the response only.
    think = sampling.sample(config, eager, prompts, cfg, 0, SPECIAL)
    np.testing.assert_array_equal(think.think_length, 1)
    np.testing.assert_array_equal(think.think_truncated, True)
    for row in _generated(think):
        assert len(row) == m + 1 and row[-1] == EOS and EOS not in row[:-1]


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_banned_tokens_never_appear_and_sampled_logprobs_are_of_the_banned_distribution(tiny):
    config, params, _ = tiny
    banned = (2, 6, 7, 9, 12)
    temperature = 1.5
    cfg = sampling.SamplingConfig(
        temperature=temperature, response_budget=8, banned_tokens=banned, logprobs_of="sampled"
    )
    prompts = _prompts([1 + i % 6 for i in range(48)], 16, seed=4)
    rollout = sampling.generate(config, params, prompts, cfg, 5, eos_id=EOS, pad_id=PAD)
    assert rollout.logprobs_of == "sampled"
    tokens = np.asarray(rollout.tokens)
    sampled = np.asarray(rollout.sampled)
    assert not np.isin(tokens[sampled], banned).any()

    logits = _teacher_forced(config, params, rollout) / temperature
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    # Not vacuous: without the ban, about this many banned tokens were expected.
    assert probs[..., list(banned)].sum(-1)[sampled[:, 1:]].sum() > 50
    logits[..., list(banned)] = -np.inf
    ref = _log_softmax_at(logits, tokens[:, 1:])
    ours = np.asarray(rollout.logprobs)[:, 1:]
    np.testing.assert_allclose(ours[sampled[:, 1:]], ref[sampled[:, 1:]], atol=2e-5)
    assert np.all(ours[~sampled[:, 1:]] == 0)


def test_bad_configs_and_special_tokens_raise_clear_errors(tiny):
    config, params, _ = tiny
    cases = [
        (dict(min_response_tokens=-1), r"min_response_tokens must be an integer >= 0, got -1"),
        (dict(min_response_tokens=2.5), r"min_response_tokens must be an integer"),
        (dict(banned_tokens=(3, -2)), r"banned_tokens must be integer token ids >= 0, got \[-2\]"),
        (dict(banned_tokens=(1.5,)), r"banned_tokens must be integer token ids"),
        (dict(banned_tokens=7), r"banned_tokens must be a sequence of token ids, got 7"),
        (
            dict(min_response_tokens=9, response_budget=4),
            r"min_response_tokens=9 exceeds response_budget=4",
        ),
        (dict(logprobs_of="filtered"), r"logprobs_of must be one of \('model', 'sampled'\)"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            sampling.SamplingConfig(**kwargs)
    # A thinking-only config may keep the minimum of the full one.
    assert sampling.SamplingConfig(min_response_tokens=9, response_budget=0).response_budget == 0
    # Bans are a set: order and repeats do not make a new (recompiling) config.
    assert sampling.SamplingConfig(banned_tokens=[5, 3, 5]) == sampling.SamplingConfig(
        banned_tokens=(3, 5)
    )
    assert hash(sampling.SamplingConfig(banned_tokens=[5, 3])) == hash(
        sampling.SamplingConfig(banned_tokens=(3, 5))
    )

    def gen(cfg, **kw):
        return sampling.generate(
            config, params, [[5, 6]], cfg, 0, **{"eos_id": EOS, "pad_id": PAD, **kw}
        )

    with pytest.raises(
        ValueError,
        match=r"banned_tokens \[16, 40\] are outside the vocabulary "
        r"of 16 tokens",
    ):
        gen(sampling.SamplingConfig(banned_tokens=(3, 16, 40)))
    with pytest.raises(ValueError, match="cover all 16 tokens"):
        gen(
            sampling.SamplingConfig(
                banned_tokens=[t for t in range(16) if t != EOS], min_response_tokens=1
            )
        )
    with pytest.raises(ValueError, match="eos_id=16 is outside the vocabulary of 16 tokens"):
        gen(sampling.SamplingConfig(), eos_id=16)
    with pytest.raises(ValueError, match="max_new_tokens .* must be >= 1"):
        gen(sampling.SamplingConfig(), max_new_tokens=0)
    with pytest.raises(ValueError, match=r"banned_tokens \[20\] are outside"):
        sampling.sample(
            config, params, [[5]], sampling.SamplingConfig(banned_tokens=(20,)), 0, SPECIAL
        )
    # The segmented modes need the thinking tags; plain generation does not.
    with pytest.raises(ValueError, match="SpecialTokens needs think and end_think ids"):
        sampling.sample(
            config,
            params,
            [[5]],
            sampling.SamplingConfig(),
            0,
            sampling.SpecialTokens(eos=EOS, pad=PAD),
        )
