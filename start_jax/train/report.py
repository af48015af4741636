"""The report of a run: the final table printed when it ends."""

from __future__ import annotations

import json
import os

import numpy as np

SUMMARY_WINDOW = 3  # Steps averaged at each end of the run in the final table.


def _window_mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return float(np.mean(values)) if values else float("nan")


def print_summary(trainer, summary: dict) -> None:
    """The final table of a run: its schedule, the reward and the task's rates from the
    first to the last steps (`metrics.jsonl`), the last eval, wall time and outputs.
    `trainer` is the run's `Trainer`; `summary` what its `run` returned."""
    history = []
    path = os.path.join(trainer.workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as fh:
            history = [json.loads(line) for line in fh if line.strip()]
    k = SUMMARY_WINDOW
    head, tail = history[:k], history[-k:]

    def move(key: str, fmt: str = ".3f") -> str:
        return f"{_window_mean(head, key):{fmt}} -> {_window_mean(tail, key):{fmt}}"

    last = summary["last"] or {}
    rows = [
        ("schedule", trainer.spec.schedule),
        (
            "stages",
            ", ".join(
                f"{s.name}:{s.train_segments}/{s.responder}x{s.steps}" for s in trainer.stages
            ),
        ),
        ("steps", str(trainer.total_steps)),
        (f"train reward (first {k} -> last {k} steps)", move("reward_mean")),
    ]
    rows += trainer.task.summary_rows(history, move)
    rows += [
        ("eval reward (last)", f"{last.get('eval/reward', float('nan')):.3f}"),
        (f"thinking tokens (first {k} -> last {k})", move("think_tokens", ".1f")),
        ("response tokens (last)", f"{last.get('response_tokens', float('nan')):.1f}"),
        ("wall time", f"{summary['seconds']:.1f} s"),
        ("workdir", trainer.workdir),
    ]
    if summary.get("export"):
        rows.append(("exported policy", summary["export"]))
    if summary["stopped"]:
        rows.append(("status", "stopped by SIGTERM; rerun the same command to resume"))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 50)
    print("\n" + line)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(line)
    print(
        f"metrics: {trainer.workdir}/metrics.jsonl, tensorboard: {trainer.workdir}/tensorboard, "
        f"samples: {trainer.workdir}/samples.jsonl"
    )
