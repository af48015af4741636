"""Per-token loss masks from segment ids: what each training mode trains.

| mode       | loss mask          | used for                       |
|------------|--------------------|--------------------------------|
| `joint`    | THINK + RESPONSE   | standard RL; RLVR              |
| `think`    | THINK only         | START stage 1                  |
| `response` | RESPONSE only      | START stage 2                  |

Tokens the sampler wrote by rule (`forced`: the `<think>` tag, a `</think>`
forced by the thinking budget) are never in a loss mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from start_jax import segments

TRAIN_SEGMENTS = {
    "joint": (segments.THINK, segments.RESPONSE),
    "think": (segments.THINK,),
    "response": (segments.RESPONSE,),
}

KL_SCOPES = ("mask", "completion", "think", "response")


def check_mode(train_segments: str) -> None:
    if train_segments not in TRAIN_SEGMENTS:
        raise ValueError(
            f"unknown train_segments {train_segments!r}; expected one of {sorted(TRAIN_SEGMENTS)}"
        )


def loss_mask(segment_ids: jax.Array, forced: jax.Array, train_segments: str) -> jax.Array:
    """bool [B, L]: tokens whose log-probability the policy loss trains."""
    check_mode(train_segments)
    keep = jnp.zeros(segment_ids.shape, bool)
    for seg in TRAIN_SEGMENTS[train_segments]:
        keep = keep | (segment_ids == seg)
    return keep & ~forced.astype(bool)


def kl_mask(
    segment_ids: jax.Array, forced: jax.Array, train_segments: str, scope: str = "mask"
) -> jax.Array:
    """bool [B, L]: tokens that carry the KL penalty.

    `scope='mask'` (default) uses the loss mask; `'completion'` every sampled
    thinking and response token whatever the mode; `'think'` / `'response'` the
    sampled tokens of that segment only, whatever the mode (for example a
    `response` stage that anchors its thinking to a snapshot with `'think'`).
    """
    if scope == "mask":
        return loss_mask(segment_ids, forced, train_segments)
    if scope == "completion":
        return loss_mask(segment_ids, forced, "joint")
    if scope in ("think", "response"):
        return loss_mask(segment_ids, forced, scope)
    raise ValueError(f"unknown kl scope {scope!r}; expected one of {KL_SCOPES}")
