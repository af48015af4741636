"""Metric outputs of a run: a JSONL file and TensorBoard event files.

With several JAX processes only process 0 writes (every process computes the
same metrics); in the others the writers do nothing.
"""

from __future__ import annotations

import json
import os

import jax
from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes `{"step": s, **metrics}` lines to metrics.jsonl and scalars to TensorBoard.

    On resume, lines for steps after the restored one (written by the killed
    run after its last checkpoint) are dropped, so the file reads as one
    uninterrupted run.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.active = jax.process_index() == 0
        if not self.active:
            return
        if os.path.exists(self.path):
            with open(self.path) as fh:
                kept = [
                    line
                    for line in fh
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step
                ]
            with open(self.path, "w") as fh:
                fh.writelines(kept)
        self._file = open(self.path, "a")
        self._tb = SummaryWriter(
            os.path.join(workdir, "tensorboard"),
            purge_step=resume_step + 1 if resume_step else None,
        )

    def write(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        self._file.write(json.dumps({"step": step, **metrics}, sort_keys=True) + "\n")
        self._file.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if not self.active:
            return
        self._file.close()
        self._tb.close()


def write_samples(workdir: str, step: int, rows: list[dict]) -> None:
    """Appends decoded rollouts (prompt / thinking / response / reward) to samples.jsonl;
    `step` counts from 1, as in metrics.jsonl."""
    if jax.process_index() != 0:
        return
    with open(os.path.join(workdir, "samples.jsonl"), "a") as fh:
        for row in rows:
            fh.write(json.dumps({"step": step, **row}) + "\n")
