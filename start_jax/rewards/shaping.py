"""Length shaping per segment: reward terms added to the task's reward of each row.

* Soft overlong penalty (DAPO's form), one for the thinking and one for the response:
  with the segment's budget B and a buffer b, a row of length L gets

      0                    for L <= B - b
      (B - b - L) / b      for B - b < L <= B      (down to -1 at the budget)
      -1                   for L > B

  times `overlong_coef`. The thinking counts its tokens without the tags, the response
  its tokens with eos (`Rollout.think_length`, `Rollout.response_length`).
* A thinking-length target T: -think_target_coef * |L - T| / T.

Every term is off by default (a buffer or coefficient of 0), and each term is logged
apart (`reward/<term>`) beside the task's own reward (`reward/task`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def soft_overlong(length, budget: int, buffer: int) -> np.ndarray:
    """DAPO's soft overlong penalty in [-1, 0] of each length (see the module doc)."""
    length = np.asarray(length, np.float64)
    start = budget - buffer
    ramp = (start - length) / max(buffer, 1)
    return np.where(length <= start, 0.0, np.where(length <= budget, ramp, -1.0))


@dataclasses.dataclass(frozen=True)
class LengthShaping:
    """The length terms of a run's reward (the run config's ``shaping`` section)."""

    think_overlong_buffer: int = 0  # Tokens before the thinking budget where it ramps; 0 = off.
    response_overlong_buffer: int = 0  # The same for the response budget; 0 = off.
    overlong_coef: float = 1.0  # Weight of both overlong terms.
    think_target: int = 0  # Target thinking length in tokens; 0 = off.
    think_target_coef: float = 0.0  # Weight of the target term.

    def __post_init__(self):
        for name in ("think_overlong_buffer", "response_overlong_buffer", "think_target"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0 (0 = off)")
        for name in ("overlong_coef", "think_target_coef"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value!r} must be a number >= 0")
        if self.think_target_coef and not self.think_target:
            raise ValueError(
                f"think_target_coef={self.think_target_coef!r} needs think_target > 0 "
                "(the target thinking length)"
            )

    @classmethod
    def options(cls) -> dict:
        """The fields and their defaults (each a ``shaping.<field>`` key of the run config)."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    def check_budgets(self, think_budget: int, response_budget: int) -> None:
        """Raises ValueError when a buffer is longer than its segment's budget."""
        for name, buffer, budget, key in (
            ("think_overlong_buffer", self.think_overlong_buffer, think_budget, "think_budget"),
            (
                "response_overlong_buffer",
                self.response_overlong_buffer,
                response_budget,
                "response_budget",
            ),
        ):
            if buffer > budget:
                raise ValueError(f"{name}={buffer} is longer than sampling.{key}={budget}")

    @property
    def active(self) -> bool:
        return bool(
            (self.overlong_coef and (self.think_overlong_buffer or self.response_overlong_buffer))
            or (self.think_target and self.think_target_coef)
        )

    def terms(
        self, think_length, response_length, think_budget: int, response_budget: int
    ) -> dict[str, np.ndarray]:
        """Each active term's reward per row [B], by name."""
        out = {}
        if self.overlong_coef and self.think_overlong_buffer:
            out["think_overlong"] = self.overlong_coef * soft_overlong(
                think_length, think_budget, self.think_overlong_buffer
            )
        if self.overlong_coef and self.response_overlong_buffer:
            out["response_overlong"] = self.overlong_coef * soft_overlong(
                response_length, response_budget, self.response_overlong_buffer
            )
        if self.think_target and self.think_target_coef:
            length = np.asarray(think_length, np.float64)
            out["think_target"] = (
                -self.think_target_coef * np.abs(length - self.think_target) / self.think_target
            )
        return out

    def shape(
        self, task_reward, think_length, response_length, think_budget: int, response_budget: int
    ) -> tuple[np.ndarray, dict[str, float]]:
        """(the task's reward plus every term, float32 [B]; the means logged per step:
        ``reward/task`` and ``reward/<term>``)."""
        task = np.asarray(task_reward, np.float64)
        terms = self.terms(think_length, response_length, think_budget, response_budget)
        total = task + sum(terms.values(), np.zeros_like(task))
        metrics = {"reward/task": float(task.mean())}
        metrics.update({f"reward/{name}": float(v.mean()) for name, v in terms.items()})
        return total.astype(np.float32), metrics
