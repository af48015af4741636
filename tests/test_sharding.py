"""Sharded forward on 8 simulated CPU devices equals the unsharded forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from start_jax import checkpoints, models, sharding
from tests import hf_fixtures

MESHES = [dict(data=2, fsdp=2, tensor=2), dict(fsdp=8), dict(data=4, tensor=2)]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("llama3"))
    hf_fixtures.make_checkpoint("llama3", directory)
    return directory


def test_eight_simulated_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize(
    "mesh_shape", MESHES, ids=lambda m: "-".join(f"{k}{v}" for k, v in m.items())
)
@pytest.mark.slow  # Seconds: out of the fast tier.
def test_sharded_forward_equals_unsharded(llama_dir, mesh_shape):
    config, params = checkpoints.load_pretrained(llama_dir)
    tokens = jnp.asarray(np.random.RandomState(0).randint(3, hf_fixtures.VOCAB, (8, 16)))
    ref = np.asarray(models.forward(config, params, tokens).logits)

    mesh = sharding.make_mesh(**mesh_shape)
    config_s, params_s = checkpoints.load_pretrained(llama_dir, mesh=mesh)
    spec = lambda *path: _get(params_s, path).sharding.spec  # noqa: E731
    fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
    # Parameters carry the specs of the rules table (size-1 mesh axes included) ...
    assert spec("layers", "mlp", "up_proj") == P(None, "fsdp", "tensor")
    assert spec("layers", "attn", "q_proj") == P(None, "fsdp", "tensor", None)
    assert spec("lm_head") == P("fsdp", "tensor")
    assert spec("layers", "input_norm", "scale") == P(None, None)
    # ... and each device holds only its slice.
    up = _get(params_s, ("layers", "mlp", "up_proj"))
    shard_shape = up.addressable_shards[0].data.shape
    assert shard_shape == (
        config.num_layers,
        config.hidden_size // fsdp,
        config.intermediate_size // tensor,
    )

    tokens_s = jax.device_put(tokens, sharding.batch_sharding(mesh))
    with sharding.logical_constraint_context(mesh):
        out = models.forward(config_s, params_s, tokens_s)
    assert np.abs(np.asarray(out.logits) - ref).max() <= 1e-5

    # Keys [L, B, K, S, H]; values the same, or [L, B, K, H, S] with the CPU fast paths:
    # heads over `tensor`. The plain layout (the model's) decodes below.
    for fast in (True, False):
        c = config.replace(cpu_fast_paths=fast)
        cache = jax.device_put(models.init_cache(c, 8, 20), models.cache_shardings(c, mesh, 8, 20))
        k_shard = cache.k.addressable_shards[0].data.shape
        v_shard = cache.v.addressable_shards[0].data.shape
        assert k_shard[2] == config.num_kv_heads // tensor and k_shard[3] == 20
        assert v_shard[2] == config.num_kv_heads // tensor and v_shard[4 if fast else 3] == 20
    with sharding.logical_constraint_context(mesh):
        step = models.forward(config_s, params_s, tokens_s[:, :12], cache=cache)
        step = models.forward(config_s, params_s, tokens_s[:, 12:13], cache=step.cache)
    assert np.abs(np.asarray(step.logits[:, 0]) - ref[:, 12]).max() <= 1e-5


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_init_sharded_places_params_directly():
    config = models.ModelConfig(num_layers=2)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    params = models.init_sharded(config, jax.random.key(0), mesh)
    reference = models.init_params(config, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert params["embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
    assert params["layers"]["mlp"]["down_proj"].sharding.spec == P(None, "tensor", "fsdp")


def test_rules_raise_on_colliding_axes():
    rules = sharding.ShardingRules().replace(mlp="fsdp")
    with pytest.raises(ValueError, match=r"'embed' and 'mlp' both map to mesh axis 'fsdp'"):
        rules.spec(("layers", "embed", "mlp"))
    with pytest.raises(ValueError, match="name these logical axes twice"):
        sharding.ShardingRules((("embed", "fsdp"), ("embed", "tensor")))
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        sharding.ShardingRules((("embed", "model"),))
    with pytest.raises(KeyError, match="no sharding rule for logical axis 'heads'"):
        sharding.ShardingRules().spec(("heads",))


def test_indivisible_dimension_is_replicated_when_asked():
    mesh = sharding.make_mesh(fsdp=8)
    spec = sharding.ShardingRules(replicate_uneven=True).spec(
        ("vocab", "embed"), shape=(10, 12), mesh=mesh
    )
    assert spec == P("tensor", None)  # tensor has size 1 here; fsdp=8 does not divide 12.
    with pytest.raises(sharding.ShardingError, match=r"dimension 1 \(embed, size 12\)"):
        sharding.ShardingRules().spec(("vocab", "embed"), shape=(10, 12), mesh=mesh)
    assert sharding.ShardingRules().spec(("vocab", "embed"), shape=(10, 16), mesh=mesh) == P(
        "tensor", "fsdp"
    )


def test_mesh_errors_name_the_problem():
    with pytest.raises(ValueError, match="needs 12 devices, but 8 are available"):
        sharding.make_mesh(data=3, fsdp=4)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=-1))
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=-1, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    # `devices`: the first N devices only.
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=-1, devices=2))
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 1}
    assert list(mesh.devices.flat) == jax.devices()[:2]
    for n in (-1, 9):
        with pytest.raises(ValueError, match=f"devices={n} must be 1 to the 8 devices"):
            sharding.make_mesh(sharding.MeshConfig(devices=n))


def test_batch_shards_follow_the_batch_rule():
    assert sharding.batch_shards(None) == 1
    assert sharding.batch_shards(sharding.make_mesh(data=2, fsdp=2, tensor=2)) == 4
    assert sharding.batch_shards(sharding.make_mesh(fsdp=8)) == 8
    rules = sharding.ShardingRules().replace(batch="data")
    assert sharding.batch_shards(sharding.make_mesh(data=2, fsdp=4), rules) == 2
