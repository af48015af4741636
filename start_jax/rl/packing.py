"""Several rollouts packed into one row of the update.

A batch of rollouts is [B, L] with padding around each row's real tokens (left-padded
prompts, right-padded completions); short rollouts waste most of it. `plan` places each
row's real tokens, one contiguous run per row, into R rows of width W (first fit, longest
first); `pack` moves any [B, L, ...] array there and `unpack` moves [R, W, ...] results
back (`layout`, `to_packed` and `to_padded` do the same on device, by gathers). The packed
rows carry `documents` (int32 [R, W]: the index of the rollout each slot
holds; empty slots `B`), which `transformer.apply` and `logprobs.token_log_probs` read:
every token attends only to its own rollout, and positions restart at each rollout, so
each rollout gets exactly the values it gets alone in a padded row.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from start_jax import segments


@dataclasses.dataclass(frozen=True)
class Packing:
    """Where each of B rollouts goes: its real tokens `first[b]:first[b] + length[b]` of
    its padded row go to packed row `row[b]` at `start[b]`; R rows of width W."""

    first: np.ndarray  # int [B]
    length: np.ndarray  # int [B]
    row: np.ndarray  # int [B]
    start: np.ndarray  # int [B]
    rows: int
    width: int

    @property
    def documents(self) -> np.ndarray:
        """int32 [R, W]: the rollout each packed slot holds; `B` in empty slots."""
        b = len(self.length)
        docs = np.full((self.rows, self.width), b, np.int32)
        for i in range(b):
            docs[self.row[i], self.start[i] : self.start[i] + self.length[i]] = i
        return docs

    @property
    def fill(self) -> float:
        """The fraction of packed slots that hold tokens."""
        return float(self.length.sum()) / (self.rows * self.width)


def plan(valid: np.ndarray, width: int, rows: int | None = None) -> Packing:
    """A packing of the rows of bool `valid` [B, L] (each row's True slots one contiguous
    run) into rows of `width`: first fit, longest first. `rows` None: as many as first
    fit needs; a number: exactly that many (padding rows added), or a ValueError when
    the rollouts do not fit."""
    valid = np.asarray(valid, bool)
    b = valid.shape[0]
    length = valid.sum(1)
    first = np.where(length > 0, valid.argmax(1), 0)
    holes = [i for i in range(b) if not valid[i, first[i] : first[i] + length[i]].all()]
    if holes:
        raise ValueError(f"rows {holes[:5]} have padding between their tokens: not packable")
    if length.max(initial=0) > width:
        raise ValueError(f"a rollout of {length.max()} tokens does not fit a packed width {width}")
    row, start, used = np.zeros(b, int), np.zeros(b, int), []
    for i in sorted(range(b), key=lambda i: (-length[i], i)):
        r = next((r for r, u in enumerate(used) if u + length[i] <= width), len(used))
        if r == len(used):
            used.append(0)
        row[i], start[i] = r, used[r]
        used[r] += length[i]
    need = max(len(used), 1)
    if rows is not None and need > rows:
        raise ValueError(f"{b} rollouts need {need} packed rows of width {width}; got {rows}")
    return Packing(first, length, row, start, rows or need, width)


def pack(x: np.ndarray, p: Packing, fill=0) -> np.ndarray:
    """[B, L, ...] -> [R, W, ...]: each row's real tokens at their packed place."""
    x = np.asarray(x)
    out = np.full((p.rows, p.width) + x.shape[2:], fill, x.dtype)
    for i in range(len(p.length)):
        n = p.length[i]
        out[p.row[i], p.start[i] : p.start[i] + n] = x[i, p.first[i] : p.first[i] + n]
    return out


def unpack(y: np.ndarray, p: Packing, length: int, fill=0) -> np.ndarray:
    """[R, W, ...] -> [B, length, ...]: the inverse of `pack` (padding slots `fill`)."""
    y = np.asarray(y)
    b = len(p.length)
    out = np.full((b, length) + y.shape[2:], fill, y.dtype)
    for i in range(b):
        n = p.length[i]
        out[i, p.first[i] : p.first[i] + n] = y[p.row[i], p.start[i] : p.start[i] + n]
    return out


def bucket_rows(need: int, total: int, multiple: int = 1) -> int:
    """A packed-row count for `need` rows out of `total` padded ones: the smallest 2^k or
    3 * 2^k that is >= need and a multiple of `multiple` (the mesh's batch shards times
    minibatches and micro-batches), capped at `total`, so that a run compiles its update
    for a few row counts only (two per halving). `total` must be a multiple itself."""
    if total % multiple:
        raise ValueError(f"{total} rows are not a multiple of {multiple}")
    sizes = sorted({m << k for m in (1, 3) for k in range(total.bit_length() + 1)})
    return next((s for s in sizes if need <= s < total and s % multiple == 0), total)


class Layout(NamedTuple):
    """A `Packing` as gather indices for device code (`layout`): `index` (int32 [R, W]) of
    each packed slot in the flattened [B * L] padded rows; `back` (int32 [B, L]) of each
    padded slot in the flattened [R * W] packed rows and `filled` (bool [B, L]) whether it
    holds a token; and `documents` (a packed slot holds a token where it is < B)."""

    index: Any
    back: Any
    filled: Any
    documents: Any


def layout(p: Packing, length: int) -> Layout:
    """The gather indices (numpy) of `p` for padded rows of `length` columns."""
    b = len(p.length)
    index = np.zeros((p.rows, p.width), np.int32)
    back = np.zeros((b, length), np.int32)
    filled = np.zeros((b, length), bool)
    for i in range(b):
        n, s, f = p.length[i], p.start[i], p.first[i]
        index[p.row[i], s : s + n] = i * length + f + np.arange(n)
        back[i, f : f + n] = p.row[i] * p.width + s + np.arange(n)
        filled[i, f : f + n] = True
    return Layout(index, back, filled, p.documents)


def _take(x, index, where, fill):
    flat = x.reshape((-1,) + x.shape[2:])[index]
    where = where.reshape(where.shape + (1,) * (flat.ndim - where.ndim))
    return jnp.where(where, flat, jnp.asarray(fill, x.dtype))


def to_packed(x: jax.Array, lay: Layout, fill=0) -> jax.Array:
    """[B, L, ...] -> [R, W, ...] on device (`pack`): empty slots `fill`."""
    return _take(x, lay.index, lay.documents < lay.back.shape[0], fill)


def to_padded(y: jax.Array, lay: Layout, fill=0) -> jax.Array:
    """[R, W, ...] -> [B, L, ...] on device (`unpack`): padding slots `fill`."""
    return _take(y, lay.back, lay.filled, fill)


@functools.partial(jax.jit, static_argnames=("shardings",))
def _pack_batch(batch, lay: Layout, shardings=None):
    def move(name, x):
        if name == "documents":
            x = lay.documents
        elif x is None or name == "rewards":
            return x
        else:
            x = to_packed(x, lay, segments.PAD if name == "segment_ids" else 0)
        if shardings is not None:
            x = jax.lax.with_sharding_constraint(x, getattr(shardings, name))
        return x

    return batch.replace(
        **{f.name: move(f.name, getattr(batch, f.name)) for f in dataclasses.fields(batch)}
    )


def pack_batch(batch, p: Packing | Layout, shardings=None):
    """An `rl.Batch` of B padded rollouts as R packed rows, gathered on device (placed as
    `shardings`, an `rl.Batch` of shardings with `documents`, when given): every [B, L]
    field packed, `documents` set, `rewards` kept per rollout. The update on it equals the
    padded batch's with `algo.aggregation='token-mean'`. `p`: a plan, or its `layout`."""
    lay = layout(p, batch.tokens.shape[1]) if isinstance(p, Packing) else p
    return _pack_batch(batch.replace(documents=None), lay, shardings)
