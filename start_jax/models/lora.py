"""Low-rank adapters (LoRA) on the attention and MLP projections.

A projection with kernel W [*in, *out] gains A [*in, r] and B [r, *out] and computes
x W + s (x A) B with s = alpha / r. A starts random, B at zero, so a fresh adapter
leaves the model's outputs exactly as they were. The adapters are a pytree of their
own, shaped like the base's layer tree (a leading layer axis): the base stays frozen
and is never copied. `combine` puts base and adapters into one parameter tree that
`transformer.apply` reads (the projections pick their adapters up by name); `merge`
folds them into the kernels (W + s A B) for export; the base alone is the model with
its adapters off (the reference policy of a LoRA run).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# Adapter parameter names beside a kernel `name`: `name` + suffix.
A, B = "_lora_a", "_lora_b"
# The projections that can carry adapters: module -> kernel -> number of input axes.
PROJECTIONS = {
    "attn": {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2},
    "mlp": {"gate_proj": 1, "up_proj": 1, "down_proj": 1},
}
ALL_TARGETS = tuple(k for kernels in PROJECTIONS.values() for k in kernels)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r (0 = off), alpha (the update is scaled by alpha / r) and the kernels that
    get adapters (names of `ALL_TARGETS`)."""

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = ALL_TARGETS

    def __post_init__(self):
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
            raise ValueError(f"rank={self.rank!r} must be an integer >= 0 (0 = off)")
        if not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha!r} must be > 0")
        unknown = sorted(set(self.targets) - set(ALL_TARGETS))
        if unknown or not self.targets:
            raise ValueError(
                f"targets={list(self.targets)!r}: each must be one of {list(ALL_TARGETS)} "
                "(at least one)"
            )

    @property
    def active(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _kernels(lora: LoraConfig):
    for module, kernels in PROJECTIONS.items():
        for name, k in kernels.items():
            if name in lora.targets:
                yield module, name, k


def adapter_shapes(base_shapes, lora: LoraConfig) -> dict:
    """`jax.ShapeDtypeStruct`s of the adapters of a base with these shapes (the base's
    `param_shapes`); the adapters take the kernels' dtype."""
    layers = base_shapes["layers"]
    out: dict = {}
    for module, name, k in _kernels(lora):
        w = layers[module][name]  # [L, *in, *out]
        n_in = 1 + k
        out.setdefault(module, {})[name + A] = jax.ShapeDtypeStruct(
            w.shape[:n_in] + (lora.rank,), w.dtype
        )
        out.setdefault(module, {})[name + B] = jax.ShapeDtypeStruct(
            w.shape[:1] + (lora.rank,) + w.shape[n_in:], w.dtype
        )
    return {"layers": out}


def logical_axes(base_axes, lora: LoraConfig) -> dict:
    """Logical axis names of the adapters: A keeps its kernel's input axes, B its output
    axes, and the rank axis is replicated (None), so they shard like the base."""
    layers = base_axes["layers"]
    out: dict = {}
    for module, name, k in _kernels(lora):
        axes = tuple(layers[module][name])
        n_in = 1 + k
        out.setdefault(module, {})[name + A] = axes[:n_in] + (None,)
        out.setdefault(module, {})[name + B] = axes[:1] + (None,) + axes[n_in:]
    return {"layers": out}


def init(base_shapes, lora: LoraConfig, rng: jax.Array) -> dict:
    """Fresh adapters: A ~ N(0, 1 / fan_in) (fan_in: the kernel's input size), B = 0."""
    shapes = adapter_shapes(base_shapes, lora)
    out: dict = {"layers": {}}
    keys = iter(jax.random.split(rng, len(ALL_TARGETS)))
    for module, name, _ in _kernels(lora):
        a, b = shapes["layers"][module][name + A], shapes["layers"][module][name + B]
        fan_in = 1
        for n in a.shape[1:-1]:
            fan_in *= n
        std = fan_in**-0.5
        out["layers"].setdefault(module, {})[name + A] = (
            jax.random.normal(next(keys), a.shape, jnp.float32) * std
        ).astype(a.dtype)
        out["layers"][module][name + B] = jnp.zeros(b.shape, b.dtype)
    return out


def combine(base, adapters, lora: LoraConfig):
    """One parameter tree: the base's, each adapted module with its A and s * B beside
    the kernels (no array of the base is copied)."""
    layers = dict(base["layers"])
    for module, names in adapters["layers"].items():
        merged = dict(layers[module])
        for key, value in names.items():
            merged[key] = value * jnp.asarray(lora.scale, value.dtype) if key.endswith(B) else value
        layers[module] = merged
    return {**base, "layers": layers}


def merge(base, adapters, lora: LoraConfig):
    """The base with W + s A B in each adapted kernel (a plain model: for export)."""
    layers = dict(base["layers"])
    for module, name, _ in _kernels(lora):
        a = adapters["layers"][module][name + A].astype(jnp.float32)
        b = adapters["layers"][module][name + B].astype(jnp.float32)
        w = layers[module][name]
        # [L, *in, r] x [L, r, *out] -> [L, *in, *out], batched over the layer axis.
        delta = jax.lax.dot_general(a, b, (((a.ndim - 1,), (1,)), ((0,), (0,))))
        layers[module] = {
            **layers[module],
            name: (w.astype(jnp.float32) + lora.scale * delta.reshape(w.shape)).astype(w.dtype),
        }
    return {**base, "layers": layers}


def has_adapters(params) -> bool:
    """Whether a parameter tree carries adapters (from `combine`)."""
    tree = params.get("layers", params)
    modules = [m for m in tree.values() if isinstance(m, dict)]
    return any(key.endswith(A) for module in modules for key in module)
