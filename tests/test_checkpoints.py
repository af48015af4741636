"""Hugging Face directories: round trips and clear errors on bad input."""

from __future__ import annotations

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from start_jax import checkpoints, models
from start_jax.checkpoints import CheckpointError
from tests import hf_fixtures


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("qwen3"))
    hf_fixtures.make_checkpoint("qwen3", directory)
    return directory


def _copy(src, tmp_path, name="copy"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def _state_dict(directory, model_cls):
    model = model_cls.from_pretrained(directory, dtype=torch.float32)
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "family,cls",
    [
        ("qwen2", transformers.Qwen2ForCausalLM),
        ("qwen3", transformers.Qwen3ForCausalLM),
        ("llama3", transformers.LlamaForCausalLM),
        ("qwen2_score", transformers.Qwen2ForSequenceClassification),
        ("llama_score", transformers.LlamaForSequenceClassification),
        ("gemma3", transformers.Gemma3ForCausalLM),
        ("gemma3_score", transformers.Gemma3TextForSequenceClassification),
    ],
)
def test_round_trip_through_transformers_is_exact(tmp_path, family, cls):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    hf_fixtures.make_checkpoint(family, src)
    config, params = checkpoints.load_pretrained(src)
    checkpoints.save_pretrained(config, params, dst)
    before, after = _state_dict(src, cls), _state_dict(dst, cls)
    assert sorted(before) == sorted(after)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    config2, params2 = checkpoints.load_pretrained(dst)
    assert config2 == config


def test_sharded_checkpoint_with_index_round_trips(tmp_path, qwen3_dir):
    config, params = checkpoints.load_pretrained(qwen3_dir)
    dst = str(tmp_path / "sharded")
    checkpoints.save_pretrained(config, params, dst, max_shard_bytes=40_000)
    files = sorted(f for f in os.listdir(dst) if f.endswith(".safetensors"))
    assert len(files) > 2 and os.path.isfile(os.path.join(dst, "model.safetensors.index.json"))
    _, params2 = checkpoints.load_pretrained(dst)
    for a, b in zip(
        np.asarray(params["layers"]["attn"]["q_proj"]),
        np.asarray(params2["layers"]["attn"]["q_proj"]),
    ):
        np.testing.assert_array_equal(a, b)
    hf = transformers.Qwen3ForCausalLM.from_pretrained(dst)
    ref = _state_dict(qwen3_dir, transformers.Qwen3ForCausalLM)
    for name, value in hf.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), ref[name], err_msg=name)


def test_bfloat16_export_keeps_dtype(tmp_path, qwen3_dir):
    config, params = checkpoints.load_pretrained(qwen3_dir, dtype="bfloat16")
    dst = str(tmp_path / "bf16")
    checkpoints.save_pretrained(config, params, dst)
    tensors = load_file(os.path.join(dst, "model.safetensors"))
    assert all(str(t.dtype) == "bfloat16" for t in tensors.values())
    hf = transformers.Qwen3ForCausalLM.from_pretrained(dst, dtype=torch.bfloat16)
    ours = np.asarray(params["embed"]["embedding"]).astype(np.float32)
    np.testing.assert_array_equal(hf.model.embed_tokens.weight.detach().float().numpy(), ours)


def test_truncated_safetensors_file_is_a_clear_error(tmp_path, qwen3_dir):
    d = _copy(qwen3_dir, tmp_path)
    file = os.path.join(d, "model.safetensors")
    data = open(file, "rb").read()
    with open(file, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError,
        match=re.escape(file) + r": unreadable safetensors "
        r"file .*truncated or corrupt",
    ):
        checkpoints.load_pretrained(d)


def _rewrite(directory, edit):
    file = os.path.join(directory, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})
    return file


def test_missing_tensor_names_the_tensor(tmp_path, qwen3_dir):
    d = _copy(qwen3_dir, tmp_path)
    _rewrite(d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            f"{d}: missing tensor 'model.layers.1.mlp.up_proj.weight' (expected shape (96, 48))"
        ),
    ):
        checkpoints.load_pretrained(d)


def test_wrong_shape_names_tensor_file_and_shapes(tmp_path, qwen3_dir):
    d = _copy(qwen3_dir, tmp_path)
    name = "model.layers.0.self_attn.k_proj.weight"
    file = _rewrite(d, lambda t: t.__setitem__(name, np.zeros((16, 48), np.float32)))
    with pytest.raises(
        CheckpointError,
        match=re.escape(f"{file}: tensor '{name}' has shape (16, 48), expected (32, 48)"),
    ):
        checkpoints.load_pretrained(d)


def test_unknown_model_type_lists_supported(tmp_path, qwen3_dir):
    d = _copy(qwen3_dir, tmp_path)
    cfg_file = os.path.join(d, "config.json")
    cfg = json.load(open(cfg_file))
    cfg["model_type"] = "gpt2"
    json.dump(cfg, open(cfg_file, "w"))
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{cfg_file}: unsupported model_type 'gpt2'; "
            "supported: gemma3_text, llama, qwen2, qwen3"
        ),
    ):
        checkpoints.load_pretrained(d)


def test_missing_shard_file_and_missing_weights(tmp_path, qwen3_dir):
    config, params = checkpoints.load_pretrained(qwen3_dir)
    d = str(tmp_path / "sharded")
    checkpoints.save_pretrained(config, params, d, max_shard_bytes=40_000)
    victim = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))[1]
    os.remove(os.path.join(d, victim))
    with pytest.raises(
        CheckpointError, match=re.escape(f"{os.path.join(d, victim)}: file not found")
    ):
        checkpoints.load_pretrained(d)

    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(os.path.join(qwen3_dir, "config.json"), empty / "config.json")
    with pytest.raises(
        CheckpointError,
        match="neither model.safetensors nor "
        r"model.safetensors.index.json found \(files present: \['config.json'\]\)",
    ):
        checkpoints.load_pretrained(str(empty))
    with pytest.raises(CheckpointError, match="no config.json"):
        checkpoints.load_pretrained(str(tmp_path / "nowhere"))


def test_unsupported_config_features_are_rejected(tmp_path, qwen3_dir):
    d = _copy(qwen3_dir, tmp_path)
    cfg_file = os.path.join(d, "config.json")
    cfg = json.load(open(cfg_file))
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}
    json.dump(cfg, open(cfg_file, "w"))
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{cfg_file}: rope_type 'yarn' is not supported (supported: default, llama3)"
        ),
    ):
        checkpoints.load_pretrained(d)


def test_transformers4_style_config_is_read():
    hf = {
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    config = models.ModelConfig.from_hf_dict(hf)
    assert config.rope_theta == 500000.0 and config.rope_scaling.factor == 8.0
    assert config.head_dim == 4 and not config.qkv_bias and not config.qk_norm
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        models.ModelConfig(param_dtype="fp8")


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_family_fixes_qk_norm_and_qkv_bias(tmp_path):
    assert models.ModelConfig(model_type="qwen3").qk_norm
    assert models.ModelConfig(model_type="qwen2").qkv_bias
    assert not models.ModelConfig(model_type="llama").qk_norm
    with pytest.raises(ValueError, match=r"model_type='qwen3' needs qk_norm=True"):
        models.ModelConfig(model_type="qwen3", qk_norm=False)
    with pytest.raises(ValueError, match=r"model_type='qwen2' needs qkv_bias=True"):
        models.ModelConfig(model_type="qwen2", qkv_bias=False)
    # Every valid config survives save -> load unchanged.
    for family in ("qwen2", "qwen3", "llama"):
        config = models.tiny_config(
            16, model_type=family, hidden_size=16, intermediate_size=32, head_dim=8
        )
        checkpoints.save_pretrained(
            config, models.init_params(config, jax.random.key(0)), str(tmp_path / family)
        )
        assert checkpoints.load_pretrained(str(tmp_path / family))[0] == config


def test_growing_the_vocabulary_adds_mean_rows_and_keeps_the_old_tokens(tmp_path, qwen3_dir):
    config, params = checkpoints.load_pretrained(qwen3_dir)
    grown_config, grown = checkpoints.load_pretrained(qwen3_dir, vocab_size=config.vocab_size + 3)
    v = config.vocab_size
    assert grown_config.vocab_size == v + 3
    emb, new_emb = np.asarray(params["embed"]["embedding"]), np.asarray(grown["embed"]["embedding"])
    np.testing.assert_array_equal(new_emb[:v], emb)
    np.testing.assert_allclose(new_emb[v:], np.repeat(emb.mean(0, keepdims=True), 3, 0), atol=1e-7)
    if "lm_head" in params:  # Untied: new head columns, the mean column.
        head, new_head = np.asarray(params["lm_head"]), np.asarray(grown["lm_head"])
        np.testing.assert_array_equal(new_head[:, :v], head)
        np.testing.assert_allclose(
            new_head[:, v:], np.repeat(head.mean(1, keepdims=True), 3, 1), atol=1e-7
        )
    # The old tokens' logits are unchanged; a smaller or equal size changes nothing.
    tokens = np.asarray([[5, 9, 11, 2]])
    old = models.forward(config, params, tokens).logits
    new = models.forward(grown_config, grown, tokens).logits
    np.testing.assert_allclose(np.asarray(new)[..., :v], np.asarray(old), atol=1e-5)
    same_config, _ = checkpoints.load_pretrained(qwen3_dir, vocab_size=v - 1)
    assert same_config.vocab_size == v
    # Saved and read back at the new size.
    checkpoints.save_pretrained(grown_config, grown, str(tmp_path / "grown"))
    assert checkpoints.read_config(str(tmp_path / "grown")).vocab_size == v + 3


def test_restore_latest_sets_a_damaged_checkpoint_aside_and_uses_the_previous(tmp_path):
    from start_jax.train import checkpointing

    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), keep=3)
    fields = {"model_type": "qwen3"}
    for step in (2, 4):
        ckpt.save(
            step,
            {"w": np.full((3,), float(step), np.float32)},
            {"data": {"index": step}, "model": fields},
        )
    ckpt.manager.wait_until_finished()
    target = {"w": np.zeros((3,), np.float32)}
    step, state, meta, _, aside = ckpt.restore_latest(
        lambda s: target, fields, None, str(tmp_path / "damaged")
    )
    assert step == 4 and aside == [] and meta["data"] == {"index": 4}
    np.testing.assert_array_equal(state["w"], 4.0)
    meta_file = tmp_path / "checkpoints" / "4" / "meta" / "metadata"
    meta_file.write_bytes(meta_file.read_bytes()[:5])  # Cut short.
    step, state, meta, _, aside = ckpt.restore_latest(
        lambda s: target, fields, None, str(tmp_path / "damaged")
    )
    assert (
        step == 2 and len(aside) == 1 and "checkpoints/4: its metadata cannot be read" in aside[0]
    )
    np.testing.assert_array_equal(state["w"], 2.0)
    assert (tmp_path / "damaged" / "4").is_dir() and ckpt.all_steps() == [2]
    meta_file = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
    meta_file.write_bytes(b"{")
    with pytest.raises(checkpointing.DamagedCheckpoint, match="no readable checkpoint is left"):
        ckpt.restore_latest(lambda s: target, fields, None, str(tmp_path / "damaged"))
    empty = checkpointing.Checkpointer(str(tmp_path / "none"))
    assert empty.restore_latest(lambda s: target, fields, None, "x") == (None,) * 4 + ([],)
