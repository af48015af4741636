"""Metric outputs of a run: a JSONL file, TensorBoard event files and, with
`log.wandb.project` set, a Weights & Biases run.

With several JAX processes only process 0 writes (every process computes the
same metrics); in the others the writers do nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import sys

import jax
from absl import logging
from tensorboardX import SummaryWriter

from start_jax.errors import ConfigError
from start_jax.train.spec import WandbSpec

WANDB_RUN_ID = "wandb_run_id"  # In the workdir: a resumed run logs to the same W&B run.


class MetricWriter:
    """Writes `{"step": s, **metrics}` lines to metrics.jsonl and scalars to TensorBoard.

    On resume, lines for steps after the restored one (written by the killed
    run after its last checkpoint) are dropped, so the file reads as one
    uninterrupted run.
    """

    def __init__(
        self,
        workdir: str,
        resume_step: int = 0,
        wandb: WandbSpec | None = None,
        config: dict | None = None,
    ):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.workdir = workdir
        self.active = jax.process_index() == 0
        self.wandb = None
        if not self.active:
            return
        if wandb is not None and wandb.project:
            self.wandb = WandbRun.start(wandb, workdir, config or {})
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
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        for key, value in scalars.items():
            self._tb.add_scalar(key, value, step)
        if self.wandb:
            self.wandb.log(step, scalars)

    def samples(self, step: int, rows: list[dict]) -> None:
        """Decoded rollouts of `step` to samples.jsonl and, with W&B, as a table."""
        if not self.active:
            return
        write_samples(self.workdir, step, rows)
        if self.wandb and rows:
            self.wandb.table(step, "samples", rows)

    def close(self) -> None:
        if not self.active:
            return
        self._file.close()
        self._tb.close()
        if self.wandb:
            self.wandb.finish()


def write_samples(workdir: str, step: int, rows: list[dict]) -> None:
    """Appends decoded rollouts (prompt / thinking / response / reward) to samples.jsonl;
    `step` counts from 1, as in metrics.jsonl."""
    if jax.process_index() != 0:
        return
    with open(os.path.join(workdir, "samples.jsonl"), "a") as fh:
        for row in rows:
            fh.write(json.dumps({"step": step, **row}) + "\n")


def import_wandb():
    """The wandb module; a ConfigError naming `log.wandb.project` when it is missing."""
    try:
        import wandb
    except ImportError as e:
        raise ConfigError(
            f"log.wandb.project is set, but the wandb package cannot be imported ({e}); "
            "pip install wandb, or set --config.log.wandb.project=''"
        ) from None
    return wandb


class WandbRun:
    """A Weights & Biases run beside metrics.jsonl: the same scalars at the same steps, the
    config, and the sample rollouts as tables. A run that cannot start (no network, no API
    key) or stops accepting data is one warning on stderr; training goes on without it.
    The run's id is kept in `<workdir>/wandb_run_id`, so a resumed run logs to it again."""

    def __init__(self, run, wandb):
        self.run, self._wandb = run, wandb

    @classmethod
    def start(cls, spec: WandbSpec, workdir: str, config: dict) -> WandbRun | None:
        wandb = import_wandb()
        id_path = os.path.join(workdir, WANDB_RUN_ID)
        if os.path.isfile(id_path):
            with open(id_path) as fh:
                run_id = fh.read().strip()
        else:
            run_id = secrets.token_hex(4)
        try:
            run = wandb.init(
                project=spec.project,
                entity=spec.entity or None,
                name=spec.name or os.path.basename(os.path.abspath(workdir)),
                mode=spec.mode,
                dir=workdir,
                id=run_id,
                resume="allow",
                config=config,
                settings=wandb.Settings(init_timeout=spec.init_timeout, console="off", silent=True),
            )
        except Exception as e:  # noqa: BLE001  (any failure: the run goes on without W&B)
            _warn(f"could not start a run ({type(e).__name__}: {_first_line(e)})")
            return None
        with open(id_path, "w") as fh:
            fh.write(run_id)
        logging.info("W&B run %s (%s mode) in %s", run_id, spec.mode, run.dir)
        return cls(run, wandb)

    def log(self, step: int, values: dict) -> None:
        self._call(lambda: self.run.log(values, step=step))

    def table(self, step: int, key: str, rows: list[dict]) -> None:
        columns = sorted({k for row in rows for k in row})
        data = [[row.get(c) for c in columns] for row in rows]
        self._call(
            lambda: self.run.log({key: self._wandb.Table(columns=columns, data=data)}, step=step)
        )

    def finish(self) -> None:
        self._call(lambda: self.run.finish())
        self.run = None

    def _call(self, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            _warn(f"stopped logging ({type(e).__name__}: {_first_line(e)})")
            self.run = None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _warn(what: str) -> None:
    line = f"warning: W&B {what}; metrics go to metrics.jsonl and TensorBoard only"
    logging.warning(line)
    print(line, file=sys.stderr, flush=True)
