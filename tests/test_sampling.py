"""The segmented sampler against transformers, exact distributions and rules."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from start_jax import models, sampling, segments, sharding
from start_jax.checkpoints import load_pretrained
from start_jax.models import fast_paths
from start_jax.sampling import sampler as core
from tests import hf_fixtures

SPECIAL = sampling.SpecialTokens(think=3, end_think=4, eos=1, pad=0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for family in ("qwen3", "llama3", "gemma3"):
        directory = str(tmp_path_factory.mktemp(family))
        model = hf_fixtures.make_checkpoint(family, directory)
        out[family] = (directory, model)
    return out


def _prompts(lengths, seed=0):
    rs = np.random.RandomState(seed)
    return [list(rs.randint(5, hf_fixtures.VOCAB, size=n)) for n in lengths]


def _until(tokens, stops):
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("family", ["qwen3", "llama3", "gemma3"])
def test_greedy_matches_transformers_generate(checkpoints, family):
    directory, hf_model = checkpoints[family]
    config, params = load_pretrained(directory)
    prompts = _prompts([3, 9, 14, 6])
    # transformers' reference may write a tag in the response; so may ours here.
    cfg = sampling.SamplingConfig(
        temperature=0.0, think_budget=12, response_budget=10, ban_tags_in_response=False
    )
    rollout = sampling.sample(config, params, prompts, cfg, 0, SPECIAL)
    tokens, segs = np.asarray(rollout.tokens), np.asarray(rollout.segment_ids)
    forced = np.asarray(rollout.forced)

    hf_think = hf_fixtures.greedy_generate(
        hf_model, [p + [SPECIAL.think] for p in prompts], cfg.think_budget, eos=SPECIAL.end_think
    )
    thinking, truncated = sampling.thinking_of(rollout, SPECIAL.end_think)
    hf_response_inputs = []
    for i, prompt in enumerate(prompts):
        ours = list(tokens[i][(segs[i] == segments.THINK) & ~forced[i]])
        expected = _until(hf_think[i], {SPECIAL.end_think, SPECIAL.eos})
        assert ours == expected, f"row {i} thinking"
        assert truncated[i] == (expected[-1] != SPECIAL.end_think)
        hf_response_inputs.append(prompt + [SPECIAL.think] + thinking[i] + [SPECIAL.end_think])
    hf_resp = hf_fixtures.greedy_generate(
        hf_model, hf_response_inputs, cfg.response_budget, eos=SPECIAL.eos
    )
    for i in range(len(prompts)):
        ours = list(tokens[i][segs[i] == segments.RESPONSE])
        assert ours == _until(hf_resp[i], {SPECIAL.eos}), f"row {i} response"


def _teacher_forced_logprobs(config, params, rollout, temperature):
    out = models.forward(
        config,
        params,
        rollout.tokens,
        positions=rollout.positions(),
        attention_mask=rollout.attention_mask(),
    )
    logp = jax.nn.log_softmax(out.logits / temperature, axis=-1)
    nxt = jnp.take_along_axis(logp[:, :-1], rollout.tokens[:, 1:, None], axis=-1)[..., 0]
    return np.asarray(nxt)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_logprobs_equal_teacher_forced_forward(checkpoints):
    config, params = load_pretrained(checkpoints["qwen3"][0])
    cfg = sampling.SamplingConfig(
        temperature=0.7,
        top_k=20,
        top_p=0.9,
        think_budget=10,
        response_budget=8,
        ban_tags_in_response=False,
    )
    rollout = sampling.sample(config, params, _prompts([4, 11, 7]), cfg, 3, SPECIAL)
    ref = _teacher_forced_logprobs(config, params, rollout, 0.7)
    sampled = np.asarray(rollout.sampled)[:, 1:]
    assert sampled.sum() > 20
    ours = np.asarray(rollout.logprobs)[:, 1:]
    assert np.abs(ours - ref)[sampled].max() <= 1e-5
    assert np.all(ours[~sampled] == 0)


# ---------------------------------------------------------------- distributions


def _np_filtered_probs(logits, temperature, top_k, top_p):
    """Independent float64 reference of the top-k then top-p distribution."""
    z = logits.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    keep = np.zeros_like(z, bool)
    kk = len(z) if top_k == 0 else top_k
    keep[order[:kk]] = True
    if top_p < 1.0:
        zk = z[order[:kk]]
        p = np.exp(zk - zk.max())
        p /= p.sum()
        before = np.cumsum(p) - p
        keep[:] = False
        keep[order[:kk][before < top_p]] = True
    probs = np.where(keep, np.exp(z - z.max()), 0.0)
    return probs / probs.sum()


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.0, 0, 0.8), (1.3, 8, 0.9)]
)
@pytest.mark.slow  # Seconds: out of the fast tier.
def test_first_token_frequencies_match_exact_filtered_distribution(temperature, top_k, top_p):
    config = models.tiny_config(24)
    params = models.init_params(config, jax.random.key(0))
    params["lm_head"] = params["lm_head"] * 20.0  # Uneven: top probabilities 0.30, 0.17, 0.12, ...
    prompt = [7, 9, 11]
    n = 4000
    cfg = sampling.SamplingConfig(
        temperature=temperature, top_k=top_k, top_p=top_p, think_budget=1, response_budget=0
    )
    rollout = sampling.sample(config, params, [prompt] * n, cfg, 11, SPECIAL)
    first = np.asarray(rollout.tokens)[:, rollout.prefix_length]
    logits = np.asarray(
        models.forward(config, params, jnp.asarray([prompt + [SPECIAL.think]])).logits[0, -1]
    )
    exact = _np_filtered_probs(logits, temperature, top_k, top_p)
    counts = np.bincount(first, minlength=config.vocab_size)
    assert counts[exact == 0].sum() == 0, "sampled a token the filter removes"
    assert (exact > 0).sum() >= 3  # The test distribution is not degenerate.
    tv = 0.5 * np.abs(counts / n - exact).sum()
    # TV of an exact sampler is ~sqrt(k / n) / 2 at most; 0.05 fails a filter
    # that keeps or drops even one token of mass >= 0.1.
    assert tv < 0.05, f"total variation {tv:.4f}"
    support = exact > 0
    chi2 = ((counts[support] - n * exact[support]) ** 2 / (n * exact[support])).sum()
    assert chi2 < 3 * support.sum() + 30


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_filter_logits_matches_reference_on_random_rows():
    rs = np.random.RandomState(0)
    logits = rs.randn(6, 30).astype(np.float32) * 3
    for top_k, top_p in [(0, 0.5), (4, 1.0), (10, 0.7), (1, 1.0), (0, 1.0)]:
        ours = np.asarray(sampling.filter_logits(jnp.asarray(logits), top_k, top_p))
        for row, out in zip(logits, ours):
            expect = _np_filtered_probs(row, 1.0, top_k, top_p) > 0
            np.testing.assert_array_equal(np.isfinite(out), expect)
            np.testing.assert_array_equal(out[expect], row[expect])


def test_first_argmax_equals_argmax_with_ties_and_infinities():
    rs = np.random.RandomState(1)
    x = rs.randint(-3, 4, size=(64, 37)).astype(np.float32)  # Many ties.
    x[0] = -np.inf
    x[1, 5] = x[1, 30] = np.inf
    x[2] = 7.0
    for fast in (True, False):
        ours = np.asarray(jax.jit(fast_paths.argmax, static_argnums=1)(jnp.asarray(x), fast))
        assert ours.dtype == np.int32
        np.testing.assert_array_equal(ours, np.argmax(x, axis=-1))


# ---------------------------------------------------------------- segment rules


def _scripted(script):
    """A logits processor that makes row i emit script[i, step] at each step."""
    script = jnp.asarray(script, jnp.int32)

    def processor(logits, step):
        want = jax.lax.dynamic_index_in_dim(script, step, axis=1, keepdims=False)
        return jnp.where(jnp.arange(logits.shape[-1])[None] == want[:, None], 0.0, -1e9)

    return processor


def _reference_rollout(script, think_budget, response_budget, given=None):
    """Pure-python statement of the segment rules for one row."""
    tokens, segs, forced = [], [], []
    think, resp, trunc_t, trunc_r = 0, 0, False, False
    phase = "think" if given is None else ("response" if response_budget > 0 else "done")
    if given is not None:
        think = len(given)
    close_next = False
    for t in script:
        if phase == "done":
            break
        if phase == "think":
            if close_next or think >= think_budget:
                tokens.append(SPECIAL.end_think)
                segs.append(2)
                forced.append(True)
                trunc_t = True
                phase = "response" if response_budget > 0 else "done"
                continue
            tokens.append(t)
            segs.append(2)
            forced.append(False)
            if t == SPECIAL.end_think:
                phase = "response" if response_budget > 0 else "done"
            else:
                think += 1
                close_next = t == SPECIAL.eos
            continue
        tokens.append(t)
        segs.append(3)
        forced.append(False)
        resp += 1
        if t == SPECIAL.eos:
            phase = "done"
        elif resp >= response_budget:
            phase, trunc_r = "done", True
    return dict(
        tokens=tokens,
        segs=segs,
        forced=forced,
        think=think,
        resp=resp,
        trunc_t=trunc_t,
        trunc_r=trunc_r,
    )


def _check_against_reference(rollout, scripts, cfg, given=None):
    tokens, segs = np.asarray(rollout.tokens), np.asarray(rollout.segment_ids)
    forced = np.asarray(rollout.forced)
    p = rollout.prefix_length
    for i, script in enumerate(scripts):
        ref = _reference_rollout(
            list(script), cfg.think_budget, cfg.response_budget, None if given is None else given[i]
        )
        n = len(ref["tokens"])
        assert list(tokens[i, p : p + n]) == ref["tokens"], f"row {i}"
        assert list(segs[i, p : p + n]) == ref["segs"], f"row {i}"
        assert list(forced[i, p : p + n]) == ref["forced"], f"row {i}"
        assert np.all(segs[i, p + n :] == segments.PAD) and np.all(
            tokens[i, p + n :] == SPECIAL.pad
        )
        assert int(rollout.think_length[i]) == ref["think"]
        assert int(rollout.response_length[i]) == ref["resp"]
        if given is None:
            assert bool(rollout.think_truncated[i]) == ref["trunc_t"]
        assert bool(rollout.response_truncated[i]) == ref["trunc_r"]


@pytest.fixture(scope="module")
def tiny():
    config = models.tiny_config(16)
    return config, models.init_params(config, jax.random.key(1))


E, T, Z = SPECIAL.eos, SPECIAL.end_think, 9  # eos, </think>, an ordinary token.

CASES = {
    # name: (think_budget, response_budget, script rows)
    "natural_close_then_eos": (5, 4, [[7, 8, T, 6, E, Z, Z, Z, Z, Z, Z]]),
    "forced_close": (3, 4, [[7, 8, 9, 10, 6, E, Z, Z, Z, Z, Z]]),
    "response_budget_hit": (2, 3, [[7, T, 6, 6, 6, 6, Z, Z, Z, Z, Z]]),
    "eos_inside_thinking": (5, 2, [[7, E, 8, 6, E, Z, Z, Z, Z, Z, Z]]),
    "zero_think_budget": (0, 3, [[7, 6, E, Z, Z, Z, Z, Z, Z, Z, Z]]),
    "thinking_only": (4, 0, [[7, T, 6, Z, Z, Z, Z, Z, Z, Z, Z]]),
}


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("name", list(CASES))
def test_segment_rules_in_each_case(tiny, name):
    config, params = tiny
    think_budget, response_budget, scripts = CASES[name]
    cfg = sampling.SamplingConfig(
        temperature=1.0, think_budget=think_budget, response_budget=response_budget
    )
    steps = sampling.num_decode_steps(cfg, True)
    script = np.asarray(scripts)[:, :steps]
    rollout = sampling.sample(
        config, params, [[5, 6]], cfg, 0, SPECIAL, logits_processor=_scripted(script)
    )
    _check_against_reference(rollout, script, cfg)
    lp = np.asarray(rollout.logprobs)
    assert np.all(lp[np.asarray(rollout.forced)] == 0)
    assert np.all(lp[np.asarray(rollout.sampled)] < 0)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_given_thinking_and_no_thinking_modes(tiny):
    config, params = tiny
    cfg = sampling.SamplingConfig(temperature=1.0, think_budget=4, response_budget=3)
    given = [[7, 8, 9], [], [10]]
    script = np.asarray([[6, E, Z], [6, 6, 6], [E, Z, Z]])
    rollout = sampling.sample(
        config,
        params,
        [[5, 6], [5], [6, 6, 6]],
        cfg,
        0,
        SPECIAL,
        thinking=given,
        thinking_truncated=[False, False, True],
        logits_processor=_scripted(script),
    )
    assert rollout.tokens.shape[1] == rollout.prefix_length + cfg.response_budget
    _check_against_reference(rollout, script, cfg, given=given)
    np.testing.assert_array_equal(rollout.think_truncated, [False, False, True])
    tokens, segs = np.asarray(rollout.tokens), np.asarray(rollout.segment_ids)
    forced = np.asarray(rollout.forced)
    for i, g in enumerate(given):
        think = tokens[i][segs[i] == segments.THINK]
        assert list(think) == [SPECIAL.think] + g + [SPECIAL.end_think]
        # The opening tag is forced; the closing one only for truncated thinking.
        assert list(forced[i][segs[i] == segments.THINK]) == [True] + [False] * len(g) + [i == 2]
    assert sampling.thinking_of(rollout, SPECIAL.end_think) == (given, [False, False, True])

    none = sampling.sample(
        config,
        params,
        [[5, 6]],
        cfg,
        0,
        SPECIAL,
        no_thinking=True,
        logits_processor=_scripted(script[:1]),
    )
    segs = np.asarray(none.segment_ids)[0]
    assert list(np.asarray(none.tokens)[0][segs == segments.THINK]) == [
        SPECIAL.think,
        SPECIAL.end_think,
    ]
    assert list(np.asarray(none.tokens)[0][segs == segments.RESPONSE]) == [6, E]


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_random_scripts_follow_the_segment_rules(tiny):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    config, params = tiny
    alphabet = st.sampled_from([E, T, 6, 7, 8])

    @hypothesis.settings(max_examples=6, deadline=None, derandomize=True)
    @hypothesis.given(
        budgets=st.sampled_from([(0, 2), (2, 3), (4, 1), (3, 0)]),
        rows=st.lists(st.lists(alphabet, min_size=8, max_size=8), min_size=3, max_size=3),
        prompt_lengths=st.lists(st.integers(1, 9), min_size=3, max_size=3),
    )
    def check(budgets, rows, prompt_lengths):
        # The scripts may ask for </think> in the response, which the reference writes.
        cfg = sampling.SamplingConfig(
            temperature=1.0,
            think_budget=budgets[0],
            response_budget=budgets[1],
            ban_tags_in_response=False,
        )
        steps = sampling.num_decode_steps(cfg, True)
        script = np.asarray(rows)[:, :steps]
        prompts = [[5] * n for n in prompt_lengths]
        rollout = sampling.sample(
            config, params, prompts, cfg, 0, SPECIAL, logits_processor=_scripted(script)
        )
        _check_against_reference(rollout, script, cfg)

    check()


# ---------------------------------------------------------------- sharding, traces


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_sharded_sampling_equals_unsharded_and_rows_are_independent(checkpoints):
    directory = checkpoints["qwen3"][0]
    config, params = load_pretrained(directory)
    prompts = _prompts([3, 5, 8, 2, 9, 4, 6, 7], seed=5)
    cfg = sampling.SamplingConfig(temperature=1.0, top_p=0.95, think_budget=6, response_budget=5)
    ref = sampling.sample(config, params, prompts, cfg, 7, SPECIAL)
    for shape in (dict(data=2, fsdp=2, tensor=2), dict(fsdp=8)):
        mesh = sharding.make_mesh(**shape)
        _, sharded_params = load_pretrained(directory, mesh=mesh)
        out = sampling.sample(config, sharded_params, prompts, cfg, 7, SPECIAL, mesh=mesh)
        np.testing.assert_array_equal(out.tokens, ref.tokens)
        np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
        rows_per_shard = out.tokens.sharding.shard_shape(out.tokens.shape)[0]
        assert rows_per_shard == 8 // (mesh.shape["data"] * mesh.shape["fsdp"])
    # A row's sample depends on its row id, not on its batch neighbours.
    subset = [2, 6]
    alone = sampling.sample(
        config, params, [prompts[i] for i in subset], cfg, 7, SPECIAL, row_ids=subset
    )
    full = np.asarray(ref.tokens)
    for j, i in enumerate(subset):
        a = np.asarray(alone.tokens)[j]
        a, b = a[a != SPECIAL.pad], full[i][full[i] != SPECIAL.pad]
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_one_compilation_per_shape(tiny):
    config, params = tiny
    other = jax.tree.map(lambda x: x * 1.01, params)
    prefill = jax.jit(
        chex.assert_max_traces(core.prefill.__wrapped__, n=1),
        static_argnames=("model_config", "sampling", "tokens_", "num_steps", "cache_sharding"),
    )
    decode = jax.jit(
        chex.assert_max_traces(core.decode.__wrapped__, n=1),
        static_argnames=("model_config", "sampling", "tokens_", "logits_processor"),
        donate_argnames=("state",),
    )
    cfg = sampling.SamplingConfig(think_budget=3, response_budget=2)
    for p, prompts, seed in [
        (params, [[5, 6], [7]], 0),
        (other, [[8], [9, 9, 9]], 1),
        (params, [[6, 6, 6, 6], [5]], 2),
    ]:
        pre = core.build_prefix(prompts, SPECIAL)
        state = prefill(
            config,
            p,
            pre.tokens,
            pre.mask,
            pre.start_phase,
            pre.think_count,
            pre.think_truncated,
            jax.random.key(seed),
            np.arange(2, dtype=np.uint32),
            sampling=cfg,
            tokens_=SPECIAL,
            num_steps=6,
        )
        state = decode(config, p, state, sampling=cfg, tokens_=SPECIAL)
        assert int(state.step) > 0
    chex.clear_trace_counter()


def test_prompt_longer_than_context_is_an_error(tiny):
    config, params = tiny
    cfg = sampling.SamplingConfig(think_budget=8, response_budget=8)
    with pytest.raises(
        ValueError,
        match=r"prompt \+ thinking \(41 tokens\) \+ 17 decode steps "
        r"exceed the context of 50 tokens",
    ):
        sampling.sample(config, params, [[5] * 40], cfg, 0, SPECIAL, max_length=50)
