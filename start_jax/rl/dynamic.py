"""Dynamic sampling (DAPO), aware of the segment a stage trains.

A group (the G rollouts of one prompt) carries a policy gradient only when its rewards
differ. For START the test is on the rows that have tokens in the trained segment: in a
`response` stage a row stopped at its thinking budget has no response to train and does
not count; in a `think` stage with a frozen responder a group is uninformative when the
responder's answers all score the same. `Trainer.rl_step` samples further rounds of
prompts while fewer groups than the batch holds are informative (up to a cap of rounds),
and `select` picks the groups the update sees.
"""

from __future__ import annotations

import numpy as np

from start_jax.rl.masks import TRAIN_SEGMENTS, check_mode


def trained_rows(segment_ids, forced, train_segments: str) -> np.ndarray:
    """bool [B]: rows with at least one token in the loss mask of `train_segments`
    (host arrays; the same rule as `masks.loss_mask`)."""
    check_mode(train_segments)
    seg = np.asarray(segment_ids)
    keep = np.isin(seg, TRAIN_SEGMENTS[train_segments]) & ~np.asarray(forced, bool)
    return keep.any(axis=1)


def informative(reward, trained, group_size: int) -> np.ndarray:
    """bool [B / group_size]: groups whose trained rows (at least two) do not all have the
    same reward."""
    r = np.asarray(reward, np.float64).reshape(-1, group_size)
    t = np.asarray(trained, bool).reshape(-1, group_size)
    high = np.where(t, r, -np.inf).max(axis=1)
    low = np.where(t, r, np.inf).min(axis=1)
    return (t.sum(axis=1) >= 2) & (high > low)


def select(rounds: list[np.ndarray], wanted: int) -> list[tuple[int, int]]:
    """The (round, group) pairs an update sees, `wanted` of them: informative groups in
    sampling order (round 0 first), then, when too few were found, uninformative groups of
    round 0 in their order. `rounds[k]` is `informative(...)` of round k."""
    chosen = [(k, g) for k, flags in enumerate(rounds) for g in np.flatnonzero(flags)]
    chosen = chosen[:wanted]
    if len(chosen) < wanted:
        chosen += [(0, int(g)) for g in np.flatnonzero(~rounds[0])][: wanted - len(chosen)]
    return [(int(k), int(g)) for k, g in chosen]


def row_index(chosen: list[tuple[int, int]], groups_per_round: int, group_size: int):
    """Row indices, into the rounds' rows concatenated, of the chosen groups in order."""
    return np.concatenate(
        [(k * groups_per_round + g) * group_size + np.arange(group_size) for k, g in chosen]
    )
