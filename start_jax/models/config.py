"""Model configuration: one frozen dataclass for every supported family.

`ModelConfig` is hashable, so it can be passed to `jax.jit` as a static
argument. It is built from a Hugging Face `config.json` with
`ModelConfig.from_hf_dict` and written back with `to_hf_dict`; what differs
between families (the fields each fixes, its config.json keys) lives in
`models.families`, one module a family. `tiny_config` gives a one-layer model
small enough for tests and examples.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from start_jax.models import families

SUPPORTED_MODEL_TYPES = families.supported()

# MLP gate activations (`ModelConfig.hidden_act`) and their Hugging Face names.
HIDDEN_ACTS = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}
# Fields a family fixes; a config that leaves one None and whose family leaves it
# free gets this value.
_FREE_DEFAULTS = dict(
    qkv_bias=False,
    qk_norm=False,
    hidden_act="silu",
    norm_offset=0.0,
    embed_scale=False,
    sandwich_norm=False,
)

# Values of `ModelConfig.attention_impl` (see `models.attention`).
ATTENTION_IMPLS = ("auto", "xla", "blockwise", "cudnn", "pallas")

_DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}
DTYPE_NAMES = tuple(_DTYPES)  # The names `as_dtype` (and a config's dtype fields) accept.


def as_dtype(dtype: Any) -> jnp.dtype:
    """Accepts a dtype object or its name ('float32', 'bfloat16', ...)."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
        return jnp.dtype(_DTYPES[dtype])
    return jnp.dtype(dtype)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling ('llama3' rope_type)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only transformer."""

    model_type: str = "qwen3"  # A key of `models.families`: 'llama', 'qwen2',
    # 'qwen3', 'gemma3_text'.
    vocab_size: int = 128  # Rows of the embedding table.
    hidden_size: int = 64  # Width of the residual stream, D.
    intermediate_size: int = 128  # Hidden width of the SwiGLU MLP, F.
    num_layers: int = 2  # Number of decoder blocks, L.
    num_heads: int = 4  # Query heads, N.
    num_kv_heads: int = 2  # Key/value heads, K (GQA: N % K == 0).
    head_dim: int = 16  # Width of one head, H.
    rope_theta: float = 10_000.0  # RoPE base frequency.
    rope_scaling: RopeScaling | None = None  # None: plain RoPE.
    rms_norm_eps: float = 1e-6  # Epsilon of every RMSNorm.
    # The fields down to `sandwich_norm` are the family's architecture: None takes the
    # family's value (`families.Family.fixed`), and a contradicting value is refused.
    qkv_bias: bool | None = None  # Bias on q/k/v (qwen2).
    qk_norm: bool | None = None  # RMSNorm on each q/k head before RoPE (qwen3, gemma).
    hidden_act: str | None = None  # MLP gate: 'silu' (SwiGLU) or 'gelu_tanh' (GeGLU).
    norm_offset: float | None = None  # RMSNorm scale offset + w: 0, or 1 (gemma: in float32).
    embed_scale: bool | None = None  # Embeddings times sqrt(hidden_size) (gemma).
    sandwich_norm: bool | None = None  # RMSNorm also on the attention and MLP outputs (gemma).
    query_scale: float | None = None  # Query multiplier; None: 1 / sqrt(head_dim).
    # Sliding-window attention: layer i with sliding_layers[i] sees the last
    # `sliding_window` cache slots (itself included), with RoPE base
    # `local_rope_theta`; the others see every earlier slot, with base `rope_theta`
    # and positions divided by `rope_factor`. None / (): no sliding layer.
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] = ()
    local_rope_theta: float | None = None
    rope_factor: float = 1.0
    tie_embeddings: bool = False  # Logits use the embedding table.
    lm_head: bool = True  # Policy head: per-token logits.
    value_head: bool = False  # Value head: one scalar per token.
    max_position_embeddings: int = 4096  # Informational; written back to HF.
    param_dtype: str = "float32"  # Storage dtype of the parameters.
    dtype: str = "float32"  # Compute dtype of activations/matmuls.
    remat: bool = False  # Recompute each block in the backward pass.
    # Attention kernel (`models.attention.attend`): 'auto' (dense for short
    # queries, else cuDNN on GPU, Pallas on TPU, blockwise elsewhere), 'xla'
    # (dense [T, S] scores), 'blockwise' (online softmax, memory linear in
    # length), 'cudnn' (GPU) or 'pallas' (TPU). Tiles of 'blockwise': None
    # takes the backend's default (128 on CPU, 512 elsewhere). Not saved to
    # config.json.
    attention_impl: str = "auto"
    attention_block_q: int | None = None  # Query tile of 'blockwise'; None: by backend.
    attention_block_k: int | None = None  # Key tile of 'blockwise'; None: by backend.
    # XLA:CPU fast paths (`models.fast_paths`): the same values, laid out for CPU. Not saved
    # to config.json.
    cpu_fast_paths: bool = False
    bos_token_id: int | None = None  # Carried through for export.
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        family = families.get(self.model_type)
        for name, default in _FREE_DEFAULTS.items():
            fixed = family.fixed.get(name)
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, default if fixed is None else fixed)
            elif fixed is not None and value != fixed:
                raise ValueError(f"model_type={self.model_type!r} needs {name}={fixed!r}")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(
                f"unknown hidden_act {self.hidden_act!r}; expected one of {', '.join(HIDDEN_ACTS)}"
            )
        layers = tuple(bool(x) for x in self.sliding_layers)
        object.__setattr__(self, "sliding_layers", layers)
        if self.sliding_window is not None or layers:
            if (
                isinstance(self.sliding_window, bool)
                or not isinstance(self.sliding_window, int)
                or self.sliding_window < 1
            ):
                raise ValueError(
                    "sliding_window must be a positive integer with sliding_layers, "
                    f"got {self.sliding_window!r}"
                )
            if len(layers) != self.num_layers:
                raise ValueError(
                    f"sliding_layers has {len(layers)} entries for {self.num_layers} layers"
                )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if not (self.lm_head or self.value_head):
            raise ValueError("a model needs lm_head=True or value_head=True")
        as_dtype(self.param_dtype)
        as_dtype(self.dtype)
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"unknown attention_impl {self.attention_impl!r}; expected one of "
                f"{', '.join(ATTENTION_IMPLS)}"
            )
        for name in ("attention_block_q", "attention_block_k"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")

    @property
    def windowed(self) -> bool:
        """Whether some layer attends through a sliding window."""
        return self.sliding_window is not None and any(self.sliding_layers)

    @property
    def jnp_param_dtype(self) -> jnp.dtype:
        return as_dtype(self.param_dtype)

    @property
    def jnp_dtype(self) -> jnp.dtype:
        return as_dtype(self.dtype)

    def replace(self, **kwargs) -> "ModelConfig":
        return dataclasses.replace(self, **kwargs)

    # ------------------------------------------------------------------ HF I/O

    @classmethod
    def from_hf_dict(
        cls, hf: Mapping[str, Any], *, source: str = "config.json", **overrides
    ) -> "ModelConfig":
        """Reads a Hugging Face `config.json` dict (transformers 4.x or 5.x)."""
        model_type = hf.get("model_type")
        if model_type == "gemma3":
            raise ValueError(
                f"{source}: model_type 'gemma3' is the multimodal Gemma 3; load "
                "a text-only checkpoint (model_type 'gemma3_text')"
            )
        family = families.get(model_type, source)

        def need(key):
            if key not in hf:
                raise ValueError(f"{source}: missing field {key!r}")
            return hf[key]

        for key in ("hidden_size", "num_attention_heads", "num_hidden_layers"):
            need(key)
        own = family.from_hf(hf, source)  # The family's own fields and checks.

        # transformers 5 keeps theta and scaling in `rope_parameters`; 4.x uses
        # `rope_theta` and `rope_scaling`.
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        scaling = None
        if "rope_theta" in own:
            pass  # The family reads its RoPE itself.
        elif rope_type == "llama3":
            try:
                scaling = RopeScaling(
                    factor=float(rope["factor"]),
                    low_freq_factor=float(rope["low_freq_factor"]),
                    high_freq_factor=float(rope["high_freq_factor"]),
                    original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
                )
            except KeyError as e:
                raise ValueError(f"{source}: llama3 rope scaling lacks field {e}") from None
        elif rope_type not in ("default", None):
            raise ValueError(
                f"{source}: rope_type {rope_type!r} is not supported (supported: default, llama3)"
            )

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        head_dim = hf.get("head_dim") or hidden // heads
        archs = hf.get("architectures") or []
        is_score = any(a.endswith("ForSequenceClassification") for a in archs)
        if is_score:
            num_labels = len(hf.get("id2label") or {}) or hf.get("num_labels", 1)
            if num_labels != 1:
                raise ValueError(
                    f"{source}: sequence-classification checkpoints need num_labels=1 "
                    f"for a scalar reward, found {num_labels}"
                )
        eos = hf.get("eos_token_id")
        if isinstance(eos, list):
            eos = tuple(eos)
        fields = dict(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rope_theta=float(theta),
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            lm_head=not is_score,
            value_head=is_score,
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos,
            pad_token_id=hf.get("pad_token_id"),
        )
        fields.update(own)
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` dict that transformers 4.x and 5.x both read."""
        head = "lm" if self.lm_head else "score"
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope = {
                "rope_type": "llama3",
                "rope_theta": self.rope_theta,
                **dataclasses.asdict(self.rope_scaling),
            }
        family = families.get(self.model_type)
        if head not in family.architectures:
            raise ValueError(f"model_type={self.model_type!r} has no {head!r} architecture")
        hf = {
            "architectures": [family.architectures[head]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": HIDDEN_ACTS[self.hidden_act],
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "rope_scaling": None if self.rope_scaling is None else rope,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "torch_dtype": self.param_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (
                list(self.eos_token_id)
                if isinstance(self.eos_token_id, tuple)
                else self.eos_token_id
            ),
            "pad_token_id": self.pad_token_id,
        }
        hf.update(family.to_hf(self))
        if self.value_head and not self.lm_head:
            hf["num_labels"] = 1
            hf["id2label"] = {"0": "LABEL_0"}
            hf["label2id"] = {"LABEL_0": 0}
        return hf


# Shape of `tiny_config`: one layer, width 32, two query heads sharing one
# key/value head of width 16.
_TINY = dict(
    hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16
)


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    """A tiny Qwen3-shaped `ModelConfig` for tests and examples.

    One decoder layer, hidden size 32, MLP width 64, 2 query heads and 1
    key/value head of width 16, float32; every other field keeps the
    `ModelConfig` default. `overrides` replace any field, e.g.
    `tiny_config(40, num_layers=2, model_type="llama")`.
    """
    return ModelConfig(**{**_TINY, "vocab_size": vocab_size, **overrides})
