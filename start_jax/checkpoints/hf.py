"""Hugging Face model directories <-> our parameter pytree, via `safetensors`.

A directory holds `config.json` and either `model.safetensors` or several
shards listed in `model.safetensors.index.json`. Tensors are read with
`safetensors` into numpy (no torch), transposed into our layouts, stacked over
layers and, given a mesh, placed straight into their final sharding one
parameter at a time.

Layout conversion (HF torch `Linear.weight` is [out, in]):
    q_proj.weight [N*H, D]  <->  q_proj [D, N, H]
    k/v_proj.weight [K*H, D] <-> k/v_proj [D, K, H]
    o_proj.weight [D, N*H]  <->  o_proj [N, H, D]
    gate/up_proj.weight [F, D] <-> [D, F];  down_proj.weight [D, F] <-> [F, D]
    lm_head.weight [V, D]   <->  lm_head [D, V]
    score.weight [1, D]     <->  value_head [D]

The names are Llama's; a family whose names differ lists them
(`families.Family.tensor_names`: Gemma's four norms around each sub-layer).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import logging
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from start_jax.errors import UserError
from start_jax.models import families
from start_jax.models.config import ModelConfig, as_dtype
from start_jax.models.sharding import param_shardings

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Tensors that some checkpoints carry but that the model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(UserError):
    """A checkpoint directory that cannot be read into the model."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One parameter: where it lives in our tree and in the HF checkpoint."""

    path: tuple[str, ...]  # Key path in our params.
    hf_name: str  # HF name; '{i}' is the layer index.
    hf_shape: tuple[int, ...]  # Shape of one HF tensor (one layer).
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    per_layer: bool


def _layout(config: ModelConfig) -> list[_Entry]:
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    n, k, h = config.num_heads, config.num_kv_heads, config.head_dim
    same = lambda x: x  # noqa: E731
    t = lambda x: x.T  # noqa: E731

    def proj_in(heads):  # [heads*H, D] <-> [D, heads, H]
        return (lambda x: x.T.reshape(d, heads, h), lambda x: x.reshape(d, heads * h).T)

    layer = "model.layers.{i}."
    entries = [
        _Entry(("embed", "embedding"), "model.embed_tokens.weight", (v, d), same, same, False),
        _Entry(("final_norm", "scale"), "model.norm.weight", (d,), same, same, False),
    ]
    for name, heads in (("q_proj", n), ("k_proj", k), ("v_proj", k)):
        entries.append(
            _Entry(
                ("layers", "attn", name),
                f"{layer}self_attn.{name}.weight",
                (heads * h, d),
                *proj_in(heads),
                True,
            )
        )
        if config.qkv_bias:
            entries.append(
                _Entry(
                    ("layers", "attn", name[0] + "_bias"),
                    f"{layer}self_attn.{name}.bias",
                    (heads * h,),
                    lambda x, hd=heads: x.reshape(hd, h),
                    lambda x, hd=heads: x.reshape(hd * h),
                    True,
                )
            )
    entries.append(
        _Entry(
            ("layers", "attn", "o_proj"),
            f"{layer}self_attn.o_proj.weight",
            (d, n * h),
            lambda x: x.T.reshape(n, h, d),
            lambda x: x.reshape(n * h, d).T,
            True,
        )
    )
    if config.qk_norm:
        for name in ("q_norm", "k_norm"):
            entries.append(
                _Entry(
                    ("layers", "attn", name, "scale"),
                    f"{layer}self_attn.{name}.weight",
                    (h,),
                    same,
                    same,
                    True,
                )
            )
    entries += [
        _Entry(
            ("layers", "input_norm", "scale"),
            f"{layer}input_layernorm.weight",
            (d,),
            same,
            same,
            True,
        ),
        _Entry(
            ("layers", "post_attn_norm", "scale"),
            f"{layer}post_attention_layernorm.weight",
            (d,),
            same,
            same,
            True,
        ),
        _Entry(("layers", "mlp", "gate_proj"), f"{layer}mlp.gate_proj.weight", (f, d), t, t, True),
        _Entry(("layers", "mlp", "up_proj"), f"{layer}mlp.up_proj.weight", (f, d), t, t, True),
        _Entry(("layers", "mlp", "down_proj"), f"{layer}mlp.down_proj.weight", (d, f), t, t, True),
    ]
    names = families.get(config.model_type).tensor_names
    if config.sandwich_norm:
        for path in (("layers", "attn_out_norm", "scale"), ("layers", "mlp_out_norm", "scale")):
            entries.append(_Entry(path, names[path], (d,), same, same, True))
    entries = [dataclasses.replace(e, hf_name=names.get(e.path, e.hf_name)) for e in entries]
    if config.lm_head and not config.tie_embeddings:
        entries.append(_Entry(("lm_head",), "lm_head.weight", (v, d), t, t, False))
    if config.value_head:
        entries.append(
            _Entry(
                ("value_head",),
                "score.weight",
                (1, d),
                lambda x: x.reshape(d),
                lambda x: x.reshape(1, d),
                False,
            )
        )
    return entries


def _hf_names(entry: _Entry, num_layers: int) -> list[str]:
    if not entry.per_layer:
        return [entry.hf_name]
    return [entry.hf_name.format(i=i) for i in range(num_layers)]


def read_config(path: str, **overrides) -> ModelConfig:
    """Reads `config.json` of a HF model directory into a `ModelConfig`."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise CheckpointError(f"{path}: no {CONFIG_FILE} (is this a Hugging Face model directory?)")
    try:
        with open(file) as fh:
            hf = json.load(fh)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: invalid JSON: {e}") from None
    try:
        return ModelConfig.from_hf_dict(hf, source=file, **overrides)
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from None


def _weight_files(path: str) -> dict[str, str]:
    """Maps each tensor name to the file that holds it."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as fh:
            try:
                weight_map = json.load(fh)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
        return {name: os.path.join(path, f) for name, f in weight_map.items()}
    single = os.path.join(path, SINGLE_FILE)
    if not os.path.isfile(single):
        present = sorted(os.listdir(path))
        raise CheckpointError(
            f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE} found (files present: {present})"
        )
    names = {}
    with _open(single) as fh:
        for name in fh.keys():
            names[name] = single
    return names


def _open(file: str):
    if not os.path.isfile(file):
        raise CheckpointError(f"{file}: file not found")
    try:
        return safe_open(file, framework="numpy")
    except SafetensorError as e:
        raise CheckpointError(
            f"{file}: unreadable safetensors file ({e}); the file may be truncated or corrupt"
        ) from None


class _Reader:
    """Opens each shard once and reads tensors by name with clear errors."""

    def __init__(self, path: str):
        self.path = path
        self.where = _weight_files(path)
        self._handles = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.where:
            raise CheckpointError(f"{self.path}: missing tensor {name!r} (expected shape {shape})")
        file = self.where[name]
        if file not in self._handles:
            self._handles[file] = _open(file)
        try:
            array = self._handles[file].get_tensor(name)
        except SafetensorError as e:
            raise CheckpointError(f"{file}: cannot read tensor {name!r}: {e}") from None
        if tuple(array.shape) != tuple(shape):
            raise CheckpointError(
                f"{file}: tensor {name!r} has shape {tuple(array.shape)}, expected {tuple(shape)}"
            )
        return array


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def load_pretrained(
    path: str,
    dtype=jnp.float32,
    mesh=None,
    rules=None,
    compute_dtype=None,
    vocab_size: int | None = None,
    **config_overrides,
):
    """Loads a HF model directory.

    Args:
        path: directory with `config.json` and safetensors weights.
        dtype: parameter dtype (name or dtype).
        mesh: optional `jax.sharding.Mesh`; each parameter is placed directly in
            its sharding from the rules table.
        rules: optional `sharding.ShardingRules`.
        compute_dtype: activation dtype; defaults to `dtype`.
        vocab_size: grow the vocabulary to this many tokens (new tokens added
            to a tokenizer): the embedding gets new rows and an untied head new
            columns, each the mean of the checkpoint's (so a new token starts
            as an average token; `resize_token_embeddings` in transformers
            starts near the same mean). None or no larger than the
            checkpoint's: unchanged.
        **config_overrides: extra `ModelConfig` fields (e.g. `remat=True`).

    Returns:
        (config, params).
    """
    param_dtype = as_dtype(dtype).name
    compute = param_dtype if compute_dtype is None else as_dtype(compute_dtype).name
    stored = read_config(path, param_dtype=param_dtype, dtype=compute, **config_overrides)
    config = stored
    if vocab_size is not None and vocab_size > stored.vocab_size:
        config = stored.replace(vocab_size=int(vocab_size))
    reader = _Reader(path)
    shardings = None
    if mesh is not None:
        shardings = param_shardings(config, mesh, rules)
    np_dtype = np.dtype(ml_dtypes.bfloat16) if param_dtype == "bfloat16" else np.dtype(param_dtype)
    params: dict = {}
    used = set()
    for entry in _layout(stored):
        names = _hf_names(entry, config.num_layers)
        arrays = [
            entry.to_ours(reader.get(name, entry.hf_shape)).astype(np_dtype) for name in names
        ]
        used.update(names)
        value = np.stack(arrays) if entry.per_layer else arrays[0]
        if config is not stored and entry.path in (("embed", "embedding"), ("lm_head",)):
            value = _grow_vocab(value, config.vocab_size, axis=0 if entry.path[0] == "embed" else 1)
        if shardings is not None:
            value = jax.device_put(value, _get(shardings, entry.path))
        else:
            value = jnp.asarray(value)
        _set(params, entry.path, value)
    unused = sorted(
        n
        for n in reader.where
        if n not in used
        and not n.endswith(_IGNORED_SUFFIXES)
        and not (n == "lm_head.weight" and config.tie_embeddings)
    )
    if unused:
        logging.warning(
            "%s: %d tensors not used by the model: %s",
            path,
            len(unused),
            ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else ""),
        )
    return config, params


def _grow_vocab(value: np.ndarray, vocab_size: int, axis: int) -> np.ndarray:
    """`value` with entries along its vocabulary `axis` added up to `vocab_size`,
    each the mean of the existing ones (computed in float32)."""
    mean = value.astype(np.float32).mean(axis=axis, keepdims=True).astype(value.dtype)
    extra = np.repeat(mean, vocab_size - value.shape[axis], axis=axis)
    return np.concatenate([value, extra], axis=axis)


def _to_host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def save_pretrained(
    config: ModelConfig, params, path: str, max_shard_bytes: int | None = None
) -> None:
    """Writes a HF model directory (config.json + safetensors) for `params`.

    Tensors keep the parameter dtype. With `max_shard_bytes`, weights are split
    over several files with a `model.safetensors.index.json`. In a multi-host
    run every process must call this (arrays are gathered); only process 0
    writes.
    """
    tensors: dict[str, np.ndarray] = {}
    for entry in _layout(config):
        value = _to_host(_get(params, entry.path))
        names = _hf_names(entry, config.num_layers)
        slices = list(value) if entry.per_layer else [value]
        for name, array in zip(names, slices):
            tensors[name] = np.ascontiguousarray(entry.to_hf(array))
    if jax.process_index() != 0:
        return
    os.makedirs(path, exist_ok=True)
    hf_config = config.to_hf_dict()
    with open(os.path.join(path, CONFIG_FILE), "w") as fh:
        json.dump(hf_config, fh, indent=2)
    metadata = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(tensors, os.path.join(path, SINGLE_FILE), metadata=metadata)
        return
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, file), metadata=metadata)
        weight_map.update({name: file for name in shard})
    index = {
        "metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
        "weight_map": weight_map,
    }
    with open(os.path.join(path, INDEX_FILE), "w") as fh:
        json.dump(index, fh, indent=2)
