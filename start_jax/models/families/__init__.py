"""Model families: what differs between Llama, Qwen and Gemma checkpoints, one module each.

A `Family` holds everything family-specific: the `ModelConfig` fields the
family fixes (its architecture: biases, norms, activation), how its Hugging
Face `config.json` maps to the other fields and back, and the names of its
tensors. The core layers (`models.layers`) have one parameter layout and read
only `ModelConfig` fields; `ModelConfig` and `checkpoints.hf` look families up
here. A new family is one module that calls `register` (imported below).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family (a Hugging Face `model_type`)."""

    model_type: str
    # Hugging Face architecture names, per head: "lm" (causal LM) and "score"
    # (sequence classification; absent if the family has none).
    architectures: Mapping[str, str]
    # ModelConfig fields this family fixes: a config leaving one None gets the
    # value, a config contradicting it is refused (it could not be saved as
    # this family). A value of None leaves the field free.
    fixed: Mapping[str, Any]
    # Family-specific ModelConfig fields read from a config.json dict
    # (hf, source) -> {field: value}; the common fields are read by ModelConfig.
    from_hf: Callable[[Mapping[str, Any], str], dict] = lambda hf, source: {}
    # Family-specific config.json keys written for a config: config -> dict.
    to_hf: Callable[[Any], dict] = lambda config: {}
    # Tensor names that differ from the Llama names: our parameter path
    # (a tuple of keys, '{i}' per layer in the HF name) -> HF name.
    tensor_names: Mapping[tuple[str, ...], str] = dataclasses.field(default_factory=dict)


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Adds `family` under its `model_type` (a second registration of the same name
    replaces the first)."""
    _FAMILIES[family.model_type] = family
    return family


def get(model_type: str, source: str = "") -> Family:
    """The family of `model_type`; ValueError naming the supported ones otherwise."""
    if model_type not in _FAMILIES:
        where = f"{source}: " if source else ""
        raise ValueError(
            f"{where}unsupported model_type {model_type!r}; supported: {', '.join(supported())}"
        )
    return _FAMILIES[model_type]


def supported() -> tuple[str, ...]:
    return tuple(_FAMILIES)


from start_jax.models.families import gemma3, llama, qwen  # noqa: E402,F401  (they register)
