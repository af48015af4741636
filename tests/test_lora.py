"""LoRA adapters: a fresh adapter changes nothing, the adapted forward equals the merged
kernels', the adapters shard like the base, and only they train."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from start_jax import models, sampling, sharding
from start_jax.models import lora

CONFIG = models.tiny_config(40, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
TOKENS = np.random.RandomState(0).randint(1, 40, size=(3, 11)).astype(np.int32)


def _adapters(config, lc, seed=1, b_scale=0.0):
    ad = lora.init(models.param_shapes(config), lc, jax.random.key(seed))
    if b_scale:  # Trained-looking adapters: B away from 0.
        leaves, tree = jax.tree.flatten_with_path(ad)
        rs = np.random.RandomState(seed)
        ad = jax.tree.unflatten(
            tree,
            [
                x + b_scale * rs.randn(*x.shape).astype(np.float32)
                if str(path[-1]).endswith(f"{lora.B}']")
                else x
                for path, x in leaves
            ],
        )
    return ad


@pytest.mark.parametrize("fast", [False, True])
def test_fresh_adapters_give_the_base_logits_bitwise(fast):
    config = CONFIG.replace(cpu_fast_paths=fast)
    base = models.init_params(config, jax.random.key(0))
    lc = lora.LoraConfig(rank=4, alpha=8.0)
    adapted = lora.combine(base, _adapters(config, lc), lc)
    want = models.apply(config, base, TOKENS).logits
    np.testing.assert_array_equal(models.apply(config, adapted, TOKENS).logits, want)


@pytest.mark.parametrize("targets", [lora.ALL_TARGETS, ("q_proj", "v_proj"), ("down_proj",)])
def test_the_adapted_forward_equals_the_merged_kernels(targets):
    base = models.init_params(CONFIG, jax.random.key(0))
    lc = lora.LoraConfig(rank=3, alpha=6.0, targets=targets)
    ad = _adapters(CONFIG, lc, b_scale=0.05)
    adapted = models.apply(CONFIG, lora.combine(base, ad, lc), TOKENS).logits
    merged = models.apply(CONFIG, lora.merge(base, ad, lc), TOKENS).logits
    base_logits = models.apply(CONFIG, base, TOKENS).logits
    assert float(jnp.max(jnp.abs(adapted - base_logits))) > 1e-3  # The adapters act.
    np.testing.assert_allclose(adapted, merged, atol=1e-5, rtol=0)
    # The base is untouched by merging.
    again = models.apply(CONFIG, base, TOKENS).logits
    np.testing.assert_array_equal(again, base_logits)


def test_the_merge_is_w_plus_scaled_a_b():
    base = models.init_params(CONFIG, jax.random.key(0))
    lc = lora.LoraConfig(rank=2, alpha=3.0, targets=("o_proj", "gate_proj"))
    ad = _adapters(CONFIG, lc, b_scale=0.1)
    merged = lora.merge(base, ad, lc)
    a = np.asarray(ad["layers"]["attn"]["o_proj" + lora.A])  # [L, N, H, r]
    b = np.asarray(ad["layers"]["attn"]["o_proj" + lora.B])  # [L, r, D]
    want = np.asarray(base["layers"]["attn"]["o_proj"]) + 1.5 * np.einsum("lnhr,lrd->lnhd", a, b)
    np.testing.assert_allclose(merged["layers"]["attn"]["o_proj"], want, atol=1e-6)
    a = np.asarray(ad["layers"]["mlp"]["gate_proj" + lora.A])
    b = np.asarray(ad["layers"]["mlp"]["gate_proj" + lora.B])
    want = np.asarray(base["layers"]["mlp"]["gate_proj"]) + 1.5 * np.einsum("ldr,lrf->ldf", a, b)
    np.testing.assert_allclose(merged["layers"]["mlp"]["gate_proj"], want, atol=1e-6)
    mlp = "layers", "mlp", "up_proj"
    np.testing.assert_array_equal(merged[mlp[0]][mlp[1]][mlp[2]], base[mlp[0]][mlp[1]][mlp[2]])


def test_adapters_shard_like_their_kernels():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=4, tensor=2))
    config = CONFIG.replace(hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64)
    lc = lora.LoraConfig(rank=4)
    got = models.adapter_shardings(config, lc, mesh)
    kernels = models.param_shardings(config, mesh)
    cases = (("attn", "q_proj", 1), ("attn", "o_proj", 2), ("mlp", "down_proj", 1))
    for module, kernel, k in cases:
        w = kernels["layers"][module][kernel].spec
        a = got["layers"][module][kernel + lora.A].spec
        b = got["layers"][module][kernel + lora.B].spec
        assert tuple(a) == tuple(w)[: 1 + k] + (None,), (kernel, a, w)
        assert tuple(b)[2:] == tuple(w)[1 + k :] and tuple(b)[1] is None, (kernel, b, w)


def test_the_gradient_reaches_the_adapters_only_and_decoding_reads_them():
    base = models.init_params(CONFIG, jax.random.key(0))
    lc = lora.LoraConfig(rank=2)
    ad = _adapters(CONFIG, lc, b_scale=0.05)

    def loss(adapters):
        return jnp.mean(models.apply(CONFIG, lora.combine(base, adapters, lc), TOKENS).logits ** 2)

    grads = jax.grad(loss)(ad)
    assert jax.tree.structure(grads) == jax.tree.structure(ad)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    # Greedy decoding with adapters (unfused, whatever the fast paths) equals the merged model's.
    special = sampling.SpecialTokens(think=3, end_think=4, eos=1, pad=0)
    cfg = sampling.SamplingConfig(temperature=0.0, think_budget=5, response_budget=3)
    fast = CONFIG.replace(cpu_fast_paths=True)
    got = sampling.sample(fast, lora.combine(base, ad, lc), [[5, 6, 7]] * 2, cfg, 0, special)
    want = sampling.sample(fast, lora.merge(base, ad, lc), [[5, 6, 7]] * 2, cfg, 0, special)
    np.testing.assert_array_equal(got.tokens, want.tokens)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="rank=-1 must be an integer >= 0"):
        lora.LoraConfig(rank=-1)
    with pytest.raises(ValueError, match="alpha=0"):
        lora.LoraConfig(rank=2, alpha=0)
    with pytest.raises(ValueError, match=r"targets=\['wq'\]: each must be one of"):
        lora.LoraConfig(rank=2, targets=("wq",))


def test_the_run_config_reads_lora_and_names_bad_fields():
    from start_jax import train
    from start_jax.errors import ConfigError
    from tests.fixtures import smoke_config

    c = smoke_config()
    assert train.RunSpec.from_config(c).train.lora is None  # Off by default.
    c.lora.rank, c.lora.alpha, c.lora.targets = 8, 4.0, "q_proj, v_proj"
    got = train.RunSpec.from_config(c).train.lora
    assert got == lora.LoraConfig(rank=8, alpha=4.0, targets=("q_proj", "v_proj"))
    assert got.scale == 0.5
    for field, value, message in (
        ("targets", "q,v", "config: lora.targets=['q', 'v']: each must be one of"),
        ("alpha", 0.0, "config: lora.alpha=0.0 must be > 0"),
        ("rank", -2, "config: lora.rank=-2 must be an integer >= 0"),
    ):
        c = smoke_config()
        c.lora.rank = 4
        c.lora[field] = value
        with pytest.raises(ConfigError, match=re.escape(message)):
            train.RunSpec.from_config(c)
