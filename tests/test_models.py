"""Logit parity with `transformers`, KV-cache decoding, heads and dtypes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from start_jax import models
from start_jax.checkpoints import load_pretrained
from start_jax.models import layers
from tests import hf_fixtures

TOL = 1e-4  # float32 max abs logit difference allowed against transformers.
CAUSAL = ("qwen2", "qwen3", "llama3", "gemma3")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> (directory, torch model), written once for the module."""
    out = {}
    for family in hf_fixtures.FAMILIES:
        directory = str(tmp_path_factory.mktemp(family))
        out[family] = (directory, hf_fixtures.make_checkpoint(family, directory))
    return out


def _tokens(batch, length, seed=0):
    return np.random.RandomState(seed).randint(3, hf_fixtures.VOCAB, size=(batch, length))


def _torch_logits(model, tokens, attention_mask=None, position_ids=None):
    kwargs = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.tensor(attention_mask, dtype=torch.long)
    if position_ids is not None:
        kwargs["position_ids"] = torch.tensor(position_ids, dtype=torch.long)
    with torch.no_grad():
        return model(torch.tensor(tokens), **kwargs).logits.numpy()


@pytest.mark.parametrize("family", CAUSAL)
def test_full_forward_matches_transformers(checkpoints, family):
    directory, hf_model = checkpoints[family]
    config, params = load_pretrained(directory, dtype=jnp.float32)
    tokens = _tokens(3, 48)  # Past llama3's original context of 32 positions.
    ours = np.asarray(models.forward(config, params, jnp.asarray(tokens)).logits)
    ref = _torch_logits(hf_model, tokens)
    assert ours.shape == ref.shape == (3, 48, hf_fixtures.VOCAB)
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize("family", CAUSAL)
def test_left_padded_forward_matches_transformers(checkpoints, family):
    directory, hf_model = checkpoints[family]
    config, params = load_pretrained(directory)
    tokens = _tokens(3, 20, seed=1)
    mask = np.ones_like(tokens, dtype=bool)
    mask[1, :5] = False
    mask[2, :11] = False
    tokens = np.where(mask, tokens, 0)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ours = np.asarray(
        models.forward(config, params, jnp.asarray(tokens), attention_mask=jnp.asarray(mask)).logits
    )
    ref = _torch_logits(hf_model, tokens, mask, positions)
    assert np.abs(ours - ref)[mask].max() <= TOL


@pytest.mark.slow  # Seconds: out of the fast tier.
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "cpu_fast_paths"])
@pytest.mark.parametrize("family", CAUSAL)
def test_prefill_then_decode_matches_full_forward_and_transformers(checkpoints, family, fast):
    """Decoding steps run on the plain paths or on the CPU fast paths (`models.fast_paths`:
    the fused projection layout, values slots-last in the cache, `project`'s backward)."""
    directory, hf_model = checkpoints[family]
    config, params = load_pretrained(directory)
    config = config.replace(cpu_fast_paths=fast)
    step_params = models.fast_paths.decode_params(config, params)
    assert ("qkv_proj" in step_params["layers"]["attn"]) == fast
    tokens = _tokens(2, 24, seed=2)
    prefill = 10
    ref = _torch_logits(hf_model, tokens)
    full = np.asarray(models.forward(config, params, jnp.asarray(tokens)).logits)
    cache = models.init_cache(config, batch_size=2, max_length=32)
    out = models.forward(config, params, jnp.asarray(tokens[:, :prefill]), cache=cache)
    steps = [np.asarray(out.logits)]
    cache = out.cache
    for t in range(prefill, tokens.shape[1]):
        out = models.forward(config, step_params, jnp.asarray(tokens[:, t : t + 1]), cache=cache)
        cache = out.cache
        steps.append(np.asarray(out.logits))
    decoded = np.concatenate(steps, axis=1)
    assert int(cache.end) == tokens.shape[1]
    assert np.abs(decoded - full).max() <= 1e-5
    assert np.abs(decoded - ref).max() <= TOL


@pytest.mark.parametrize("family", CAUSAL)
def test_fused_projections_stack_the_separate_weights(checkpoints, family):
    config, params = load_pretrained(checkpoints[family][0])
    fused = models.fuse_projections(params)
    attn, mlp = params["layers"]["attn"], params["layers"]["mlp"]
    fattn, fmlp = fused["layers"]["attn"], fused["layers"]["mlp"]
    n, k = config.num_heads, config.num_kv_heads
    assert fattn["qkv_proj"].shape == (
        config.num_layers,
        config.hidden_size,
        n + 2 * k,
        config.head_dim,
    )
    for name, part in [
        ("q_proj", slice(0, n)),
        ("k_proj", slice(n, n + k)),
        ("v_proj", slice(n + k, n + 2 * k)),
    ]:
        np.testing.assert_array_equal(fattn["qkv_proj"][:, :, part], attn[name])
        assert name not in fattn
    assert ("qkv_bias" in fattn) == config.qkv_bias
    if config.qkv_bias:
        np.testing.assert_array_equal(fattn["qkv_bias"][:, n : n + k], attn["k_bias"])
    np.testing.assert_array_equal(fmlp["gate_up_proj"][:, :, 0], mlp["gate_proj"])
    np.testing.assert_array_equal(fmlp["gate_up_proj"][:, :, 1], mlp["up_proj"])
    assert set(fmlp) == {"gate_up_proj", "down_proj"}
    tokens = jnp.asarray(_tokens(3, 12, seed=5))
    np.testing.assert_allclose(
        models.forward(config, fused, tokens).logits,
        models.forward(config, params, tokens).logits,
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_gemma3_sliding_window_and_local_rope_are_applied(checkpoints):
    """The Gemma 3 parity above could not hold without its sliding-window layers, their
    RoPE base or the global layer's linear scaling: each changes the logits."""
    directory, hf_model = checkpoints["gemma3"]
    config, params = load_pretrained(directory)
    assert config.sliding_layers == (True, False, True) and config.sliding_window == 4
    assert config.local_rope_theta == 10_000.0 and config.rope_factor == 2.0
    tokens = jnp.asarray(_tokens(2, 24, seed=7))
    ref = _torch_logits(hf_model, np.asarray(tokens))
    ours = np.asarray(models.forward(config, params, tokens).logits)
    assert np.abs(ours - ref).max() <= TOL
    for change in (
        dict(sliding_window=None, sliding_layers=()),
        dict(local_rope_theta=None),
        dict(rope_factor=1.0),
        dict(query_scale=None),
    ):
        other = np.asarray(models.forward(config.replace(**change), params, tokens).logits)
        assert np.abs(other - ref).max() > 1e-2, change
    # Within the window the sliding layers see everything: the first 4 tokens agree with a
    # model whose window is longer than the input, and only those.
    plain = config.replace(sliding_window=1000)
    assert np.abs(np.asarray(models.forward(plain, params, tokens).logits) - ref).max() > 1e-2
    np.testing.assert_allclose(
        models.forward(plain, params, tokens[:, :4]).logits, ours[:, :4], atol=1e-5
    )


def test_decode_with_left_padded_prompts_uses_row_positions(checkpoints):
    directory, hf_model = checkpoints["qwen3"]
    config, params = load_pretrained(directory)
    tokens = _tokens(2, 14, seed=3)
    mask = np.ones_like(tokens, dtype=bool)
    mask[1, :4] = False  # Row 1 has a shorter prompt, left-padded.
    tokens = np.where(mask, tokens, 0)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ref = _torch_logits(hf_model, tokens, mask, positions)
    cache = models.init_cache(config, 2, 16)
    out = models.forward(
        config,
        params,
        jnp.asarray(tokens[:, :8]),
        attention_mask=jnp.asarray(mask[:, :8]),
        cache=cache,
    )
    logits = [np.asarray(out.logits)]
    for t in range(8, 14):
        out = models.forward(config, params, jnp.asarray(tokens[:, t : t + 1]), cache=out.cache)
        logits.append(np.asarray(out.logits))
    logits = np.concatenate(logits, axis=1)
    assert np.abs(logits - ref)[mask].max() <= TOL
    np.testing.assert_array_equal(out.cache.next_positions(), mask.sum(1))


def test_llama3_rope_frequencies_match_transformers(checkpoints):
    directory, hf_model = checkpoints["llama3"]
    config = load_pretrained(directory)[0]
    assert config.rope_scaling is not None
    ours = layers.rope_inverse_frequencies(config)
    ref = hf_model.model.rotary_emb.inv_freq.numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    plain = layers.rope_inverse_frequencies(config.replace(rope_scaling=None))
    assert not np.allclose(ours, plain)  # The scaling really changes something.


@pytest.mark.parametrize("family", ["qwen2_score", "llama_score", "gemma3_score"])
def test_sequence_classification_score_matches_transformers(checkpoints, family):
    directory, hf_model = checkpoints[family]
    config, params = load_pretrained(directory)
    assert config.value_head and not config.lm_head
    tokens = _tokens(3, 12, seed=4)
    mask = np.ones_like(tokens, dtype=bool)
    mask[1, 9:] = False  # Right padding with pad id 0, which HF pools past.
    mask[2, 5:] = False
    tokens = np.where(mask, tokens, hf_fixtures._COMMON["pad_token_id"])
    with torch.no_grad():
        ref = hf_model(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(int))).logits
    out = models.forward(config, params, jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
    assert out.logits is None and out.values.shape == (3, 12)
    scores = np.asarray(models.sequence_scores(out.values, jnp.asarray(mask)))
    assert np.abs(scores - ref.numpy()[:, 0]).max() <= TOL


def test_value_model_from_policy_is_a_separate_parameter_set(checkpoints):
    config, params = load_pretrained(checkpoints["qwen3"][0])
    value_config, value_params = models.value_model_from_policy(config, params, jax.random.key(0))
    assert value_config.value_head and not value_config.lm_head
    tokens = jnp.asarray(_tokens(2, 7))
    out = models.forward(value_config, value_params, tokens, return_hidden=True)
    assert out.logits is None and out.values.shape == (2, 7)
    policy_hidden = models.forward(config, params, tokens, return_hidden=True).hidden
    np.testing.assert_allclose(out.hidden, policy_hidden, atol=1e-6)
    # The trunk is copied, not shared.
    a = value_params["layers"]["mlp"]["up_proj"]
    b = params["layers"]["mlp"]["up_proj"]
    assert a is not b and a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_policy_and_value_heads_on_one_trunk():
    config = models.ModelConfig(value_head=True)
    params = models.init_params(config, jax.random.key(0))
    tokens = jnp.asarray(_tokens(2, 5))
    out = models.forward(config, params, tokens, return_hidden=True)
    assert out.logits.shape == (2, 5, config.vocab_size) and out.values.shape == (2, 5)
    np.testing.assert_allclose(
        models.head_logits(config, params, out.hidden), out.logits, atol=1e-6
    )
    np.testing.assert_allclose(
        models.head_values(config, params, out.hidden), out.values, atol=1e-6
    )
    trunk_only = models.forward(config, params, tokens, heads=False)
    assert trunk_only.logits is None and trunk_only.hidden.shape == (2, 5, config.hidden_size)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_param_and_compute_dtypes_are_separate(checkpoints):
    directory, _ = checkpoints["qwen3"]
    config32, params32 = load_pretrained(directory)
    config, params = load_pretrained(directory, dtype=jnp.float32, compute_dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    tokens = jnp.asarray(_tokens(2, 9))
    out = models.forward(config, params, tokens, return_hidden=True)
    assert out.hidden.dtype == jnp.bfloat16 and out.logits.dtype == jnp.float32
    ref = models.forward(config32, params32, tokens).logits
    err = float(jnp.abs(out.logits - ref).max())
    assert 0 < err < 0.1  # bfloat16 arithmetic really happened, and is close.

    config_bf, params_bf = load_pretrained(directory, dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params_bf))
    assert config_bf.dtype == "bfloat16"
    out_bf = models.forward(config_bf, params_bf, tokens)
    assert float(jnp.abs(out_bf.logits - ref).max()) < 0.1
    cache = models.init_cache(config_bf, 2, 12)
    assert cache.k.dtype == jnp.bfloat16


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_remat_gives_same_gradients():
    config = models.ModelConfig()
    params = models.init_params(config, jax.random.key(0))
    tokens = jnp.asarray(_tokens(2, 6))

    def loss(p, cfg):
        return jnp.mean(models.apply(cfg, p, tokens).logits ** 2)

    g1 = jax.grad(loss)(params, config)
    g2 = jax.grad(loss)(params, config.replace(remat=True))
    diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g1, g2)
    assert max(jax.tree.leaves(diff)) <= 1e-6
