"""Device mesh and the one rules table that maps logical axes to mesh axes.

Mesh axes:
    data    pure data parallelism (parameters replicated);
    fsdp    data parallelism with parameters sharded along their `embed` axis;
    tensor  tensor parallelism over heads, MLP width and vocabulary.

Parameters carry logical axis names (`start_jax.models.param_logical_axes`; their
shardings are built in `start_jax.models.sharding`); `ShardingRules`
turns a tuple of names into a `PartitionSpec`, raising when two axes of one
array would land on the same mesh axis. A dimension that the mesh axes do not
divide evenly is an error naming it, unless the rules are built with
``replicate_uneven=True`` (``--config.mesh.replicate_uneven=True``): then it is
replicated (logged).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from start_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")


class ShardingError(UserError):
    """A dimension does not divide over its mesh axes (and replication was not asked for)."""


MeshAxes = str | tuple[str, ...] | None

# logical axis -> mesh axes. Activations use the `act_*` names and `batch`.
DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape; one axis may be -1 to take the remaining devices."""

    data: int = 1  # Replicated-parameter data parallelism.
    fsdp: int = -1  # Sharded-parameter data parallelism.
    tensor: int = 1  # Tensor parallelism.
    devices: int = 0  # The first this many devices (one process only); 0 = every device.


def make_mesh(
    config: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None, **sizes
) -> Mesh:
    """Builds a ('data', 'fsdp', 'tensor') mesh.

    Either pass a `MeshConfig` or the sizes as keywords (`make_mesh(fsdp=8)`).
    Axes not given default to 1, except that one -1 axis absorbs the rest; by
    default `fsdp` takes all devices.
    """
    if config is None:
        fields = {"data": 1, "fsdp": 1, "tensor": 1}
        fields.update(sizes)
        if not sizes:
            fields["fsdp"] = -1
        config = MeshConfig(**fields)
    if devices is None:
        devices = jax.devices()
        if config.devices:
            if jax.process_count() > 1 or not 0 < config.devices <= len(devices):
                raise ValueError(
                    f"mesh {config}: devices={config.devices} must be 1 to the "
                    f"{len(devices)} devices of a single process (0: every device)"
                )
            devices = devices[: config.devices]
    devices = list(devices)
    shape = [config.data, config.fsdp, config.tensor]
    if sum(s == -1 for s in shape) > 1:
        raise ValueError(f"mesh {config}: at most one axis may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh {config}: {len(devices)} devices are not divisible by {known}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
            f"but {len(devices)} are available"
        )
    # jax.make_mesh orders devices by the physical topology (TPU/GPU links);
    # Auto axes keep GSPMD propagation (no explicit-sharding types).
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices
    )


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Maps logical axis names to mesh axes."""

    rules: tuple[tuple[str, MeshAxes], ...] = DEFAULT_RULES
    replicate_uneven: bool = False  # Replicate, rather than reject, a dimension not divisible.

    def __post_init__(self):
        names = [name for name, _ in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sharding rules name these logical axes twice: {dupes}")
        for name, axes in self.rules:
            for a in _as_tuple(axes):
                if a not in MESH_AXES:
                    raise ValueError(
                        f"sharding rule {name!r} -> {axes!r}: unknown mesh axis {a!r}; "
                        f"mesh axes are {MESH_AXES}"
                    )

    def replace(self, **updates: MeshAxes) -> "ShardingRules":
        """A copy with some logical axes remapped (`rules.replace(vocab=None)`)."""
        table = dict(self.rules)
        table.update(updates)
        return ShardingRules(tuple(table.items()), self.replicate_uneven)

    def mesh_axes(self, logical: str | None) -> tuple[str, ...]:
        if logical is None:
            return ()
        table = dict(self.rules)
        if logical not in table:
            raise KeyError(f"no sharding rule for logical axis {logical!r}; known: {sorted(table)}")
        return _as_tuple(table[logical])

    def spec(
        self,
        logical_axes: Sequence[str | None],
        shape: Sequence[int] | None = None,
        mesh: Mesh | None = None,
    ) -> PartitionSpec:
        """PartitionSpec for an array with the given logical axes.

        Raises if two of its dimensions map to the same mesh axis. With `shape`
        and `mesh`, a dimension that is not divisible by its mesh axes' size is
        an error, or replicated when `replicate_uneven`.
        """
        used: dict[str, str] = {}
        out = []
        for dim, name in enumerate(logical_axes):
            axes = self.mesh_axes(name)
            for a in axes:
                if a in used:
                    raise ValueError(
                        f"logical axes {tuple(logical_axes)}: {used[a]!r} and {name!r} both map "
                        f"to mesh axis {a!r}"
                    )
                used[a] = name
            if axes and shape is not None and mesh is not None:
                size = math.prod(mesh.shape[a] for a in axes)
                if shape[dim] % size:
                    if not self.replicate_uneven:
                        raise ShardingError(
                            f"dimension {dim} ({name}, size {shape[dim]}) of an array with axes "
                            f"{tuple(logical_axes)} does not divide over mesh axes {axes} of size "
                            f"{size}; change the mesh (--config.mesh.*) or allow replication "
                            "(--config.mesh.replicate_uneven=True)"
                        )
                    logging.info(
                        "replicating dim %d (%s, size %d) of %s: not divisible by %d",
                        dim,
                        name,
                        shape[dim],
                        tuple(logical_axes),
                        size,
                    )
                    axes = ()
            out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
        return PartitionSpec(*out)

    def sharding(
        self, mesh: Mesh, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None
    ) -> NamedSharding:
        return NamedSharding(mesh, self.spec(logical_axes, shape, mesh))

    def tree_shardings(self, mesh: Mesh, logical_tree, shape_tree):
        """Maps a pytree of logical-axis tuples (+ matching shapes) to shardings."""
        return jax.tree.map(
            lambda axes, s: self.sharding(mesh, axes, s.shape),
            logical_tree,
            shape_tree,
            is_leaf=lambda x: isinstance(x, tuple),
        )


def batch_sharding(
    mesh: Mesh, ndim: int = 2, rules: ShardingRules | None = None, batch_size: int | None = None
) -> NamedSharding:
    """Sharding of a [B, ...] input: batch over the data axes, rest replicated."""
    rules = rules or ShardingRules()
    shape = None if batch_size is None else (batch_size,) + (1,) * (ndim - 1)
    return rules.sharding(mesh, ("batch",) + (None,) * (ndim - 1), shape)


def batch_shards(mesh: Mesh | None, rules: ShardingRules | None = None) -> int:
    """How many shards the batch axis has on `mesh` (1 without a mesh)."""
    if mesh is None:
        return 1
    return math.prod(mesh.shape[a] for a in (rules or ShardingRules()).mesh_axes("batch"))


def logical_constraint_context(mesh: Mesh, rules: ShardingRules | None = None):
    """Context under which `nn.with_logical_constraint` calls take effect."""
    rules = rules or ShardingRules()
    stack = contextlib.ExitStack()
    set_mesh = getattr(jax, "set_mesh", None) or getattr(jax.sharding, "use_mesh", None)
    stack.enter_context(set_mesh(mesh) if set_mesh is not None else mesh)
    stack.enter_context(nn.logical_axis_rules(rules.rules))
    return stack


# ------------------------------------------------------------------ several processes
# With `jax.distributed` a mesh spans the devices of every process: an array on it is
# global, and each process holds only its own shards. The helpers below are what
# single-process code written with `jax.device_put` / `jax.device_get` needs instead;
# with one process they are exactly those calls.


def like_trees(tree, known: Sequence[tuple], default):
    """Shardings for `tree`: a subtree with the structure of a known tree takes its
    shardings (an optimizer's moments take their parameters'), every other leaf
    `default`.

    Args:
      tree: a pytree (abstract or concrete arrays), e.g. an optimizer state.
      known: (tree structure, shardings pytree of that structure) pairs.
      default: the sharding of every other leaf (step counts, scalars).
    """

    def match(x):
        s = jax.tree.structure(x)
        return next((sh for d, sh in known if d == s), None)

    return jax.tree.map(lambda x: match(x) or default, tree, is_leaf=lambda x: match(x) is not None)


def host_to_global(x, sharding: jax.sharding.Sharding | None):
    """A host array placed in `sharding`; every process passes the same full value.

    One process (or a sharding of this process's devices only): `jax.device_put`.
    Several: each process puts its own shards of `x` (`jax.make_array_from_callback`),
    without the cross-process equality check that `device_put` would run.
    """
    if sharding is None or sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(tree):
    """A numpy copy of a pytree of arrays (`jax.device_get` in one process).

    With several processes an array split across them is gathered from all: a
    collective, so every process must call this at the same point, and each gets
    the full values.
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    leaves, treedef = jax.tree.flatten(tree)
    split = [
        i
        for i, x in enumerate(leaves)
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated
    ]
    if split:
        gathered = multihost_utils.process_allgather([leaves[i] for i in split], tiled=True)
        for i, value in zip(split, gathered):
            leaves[i] = value
    return jax.tree.unflatten(treedef, jax.device_get(leaves))


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True when `flag` is true in any process (every process must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def primary_value(value):
    """Process 0's `value` (a numpy-able pytree), in every process (a collective)."""
    if jax.process_count() == 1:
        return value
    return multihost_utils.broadcast_one_to_all(value)
