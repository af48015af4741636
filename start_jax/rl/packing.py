"""Several rollouts packed into one row of the update (host side).

A batch of rollouts is [B, L] with padding around each row's real tokens (left-padded
prompts, right-padded completions); short rollouts waste most of it. `plan` places each
row's real tokens, one contiguous run per row, into R rows of width W (first fit, longest
first); `pack` moves any [B, L, ...] array there and `unpack` moves [R, W, ...] results
back. The packed rows carry `documents` (int32 [R, W]: the index of the rollout each slot
holds; empty slots `B`), which `transformer.apply` and `logprobs.token_log_probs` read:
every token attends only to its own rollout, and positions restart at each rollout, so
each rollout gets exactly the values it gets alone in a padded row.
"""

from __future__ import annotations

import dataclasses

import jax
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


def pack_batch(batch, p: Packing):
    """An `rl.Batch` of B padded rollouts as R packed rows (host copies, then placed like
    the input): every [B, L] field packed, `documents` set, `rewards` kept per rollout.
    The update on it equals the padded batch's with `algo.aggregation='token-mean'`."""
    fills = dict(segment_ids=segments.PAD)
    fields = {}
    for f in dataclasses.fields(batch):
        x = getattr(batch, f.name)
        if x is None or f.name in ("rewards", "documents"):
            continue
        fields[f.name] = jax.numpy.asarray(pack(jax.device_get(x), p, fills.get(f.name, 0)))
    return batch.replace(documents=jax.numpy.asarray(p.documents), **fields)
