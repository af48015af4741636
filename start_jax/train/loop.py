"""The loop of a run: steps of `Trainer.rl_step` over the stage schedule, with resume
from the newest readable checkpoint, SIGTERM (a checkpoint, then a clean stop),
metrics, samples, evaluations and the Hugging Face export.

`run(trainer)` takes any object with the `Trainer` interface (`Trainer.run` calls it).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import jax
import numpy as np
import tqdm
from absl import logging

from start_jax import segments, sharding
from start_jax.checkpoints import save_pretrained
from start_jax.data.pipeline import PromptIterator
from start_jax.train import checkpointing
from start_jax.train.spec import StageSpec
from start_jax.train.writers import MetricWriter


class _SigtermFlag:
    """Turns SIGTERM into a flag checked between steps (main thread only)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            logging.warning(
                "not on the main thread: SIGTERM will not save a checkpoint before "
                "the process ends (the last periodic checkpoint is kept)"
            )
            return self
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def run(trainer) -> dict:
    spec = trainer.spec
    ckpt = checkpointing.Checkpointer(
        os.path.join(trainer.workdir, "checkpoints"), spec.checkpoint.keep
    )
    iterator = PromptIterator(trainer.train_data, spec.data.prompts_per_step, spec.seed)
    start, state = 0, None
    latest, state, meta, target = _restore_latest(trainer, ckpt)
    if latest is not None:
        resumed = trainer.stage_at(latest)
        if resumed.needs_snapshot and latest != resumed.start:  # Inside the stage.
            trainer.snapshot = ckpt.restore_snapshot(latest, target.params)
        iterator.restore(meta["data"])
        start = latest
        logging.info("resumed from %s/checkpoints at step %d", trainer.workdir, latest)
        if trainer.primary:
            print(f"resuming from step {latest} ({trainer.workdir}/checkpoints)")
    writer = MetricWriter(
        trainer.workdir,
        resume_step=start,
        wandb=spec.log.wandb,
        config=json.loads(spec.config_json),
    )
    summary = {"first": None, "last": None, "eval": {}}
    began = time.perf_counter()
    stopped = False
    with (
        _SigtermFlag() as sigterm,
        tqdm.trange(
            start,
            trainer.total_steps,
            initial=start,
            total=trainer.total_steps,
            desc="rl",
            unit="step",
            disable=not (spec.log.progress and trainer.primary),
        ) as bar,
    ):
        for step in bar:
            stage = trainer.stage_at(step)
            if step in (stage.start, start) and trainer.primary:
                bar.write(_stage_line(trainer, stage, resumed=step != stage.start))
            if step == stage.start:  # A fresh (or carried) optimizer, a snapshot.
                state = trainer.stage_state(stage, state)
            examples = iterator.next_batch()
            state, host, reward, _, metrics, examples = trainer.rl_step(
                state, examples, step, stage, more=iterator.next_batch
            )
            write = bool(spec.log.samples_every) and step % spec.log.samples_every == 0
            rows = _rows_to_decode(trainer, host, examples, write)
            metrics.update(_rollout_metrics(trainer, host), stage=trainer.stages.index(stage))
            metrics.update(trainer.behaviour_metrics(rows))
            if write:  # Numbered as in metrics.jsonl: the step just taken, from 1.
                _write_samples(trainer, writer, step + 1, rows, reward)
            done = step + 1
            if spec.eval.every and (done % spec.eval.every == 0 or done == trainer.total_steps):
                metrics.update(trainer.evaluate(state.params, done, stage))
            writer.write(done, metrics)
            summary["last"] = metrics
            summary["first"] = summary["first"] or metrics
            bar.set_postfix(
                stage=stage.name,
                mode=stage.train_segments,
                reward=f"{metrics['reward_mean']:.3f}",
            )
            # Every process stops at the same step when any of them received SIGTERM.
            term = sharding.any_process(sigterm.raised)
            if done % spec.checkpoint.every == 0 or done == trainer.total_steps or term:
                ckpt.save(
                    done,
                    state,
                    _meta(trainer, done, iterator),
                    force=True,
                    snapshot=trainer.snapshot if done < stage.end else None,
                )
            if term:
                stopped = True
                break
    ckpt.close()
    writer.close()
    summary["seconds"] = time.perf_counter() - began
    summary["stopped"] = stopped
    summary["params"] = trainer.full_params(state.params)  # With LoRA: merged.
    # After a stage with a frozen thinker the trained system is two models: the
    # snapshot thinks, the policy responds.
    thinks_apart = trainer.stages[-1].thinker == "frozen"
    summary["thinker_params"] = (
        trainer.full_params(trainer.snapshot) if thinks_apart else summary["params"]
    )
    if not stopped and spec.checkpoint.export_hf:
        export = os.path.join(trainer.workdir, "export")
        _export(trainer, summary["params"], export)
        summary["export"] = export
        if thinks_apart:
            summary["export_thinker"] = os.path.join(trainer.workdir, "export_thinker")
            _export(trainer, summary["thinker_params"], summary["export_thinker"])
    return summary


def _export(trainer, params, path: str) -> None:
    params = sharding.to_host(params)  # Gathered by all, written by process 0.
    if trainer.primary:
        save_pretrained(trainer.model_config, params, path)
        if hasattr(trainer.tokenizer, "save_pretrained"):
            trainer.tokenizer.save_pretrained(path)


def _rows_to_decode(trainer, host, examples, write: bool) -> list[dict]:
    """Decoded once, only for what reads the text: the task's behaviour metrics (every
    row, when it reads them) and written samples (the first `log.samples` rows)."""
    if trainer.task.decodes_every_row:
        return trainer.decoded_rows(host, examples, trainer.spec.group_size)
    if not write:
        return []
    first = jax.tree.map(lambda x: x[: trainer.spec.log.samples], host)
    return trainer.decoded_rows(first, examples, trainer.spec.group_size)


def _stage_line(trainer, stage: StageSpec, resumed: bool) -> str:
    i = trainer.stages.index(stage)
    extra = "".join(
        (
            ", thinker frozen at the stage start" if stage.thinker == "frozen" else "",
            f", KL {stage.kl_coef:g} to the {stage.kl_reference.replace('_', '-')} policy on "
            f"{stage.kl_scope}"
            if stage.kl_coef
            else "",
            f", warmup {stage.warmup_steps}" if stage.warmup_steps else "",
            ", optimizer carried" if stage.carry_optimizer else "",
        )
    )
    return (
        f"stage {stage.name} ({i + 1}/{len(trainer.stages)}"
        f"{', resumed' if resumed else ''}): train {stage.train_segments}, "
        f"{stage.responder} responder, steps {stage.start}-{stage.end - 1}, "
        f"lr {stage.learning_rate:g}{extra}"
    )


def _restore_latest(trainer, ckpt):
    """(step, state, meta, restore target) of the newest readable checkpoint, or Nones
    (`Checkpointer.restore_latest`); says which damaged ones were set aside."""
    damaged_dir = os.path.join(trainer.workdir, "checkpoints_damaged")
    step, state, meta, target, set_aside = ckpt.restore_latest(
        lambda s: trainer.states.restore_target(trainer.stage_at(s)),
        checkpointing.model_fields(trainer.model_config),
        trainer.critic_config is not None,
        damaged_dir,
    )
    if state is not None:  # The rates of the configuration, not of the checkpoint.
        state = trainer.states.with_rates(state, trainer.stage_at(step))
    for message in set_aside:
        logging.info("warning: %s; resuming from step %d", message, step)  # Printed below.
        if trainer.primary:
            print(f"warning: {message}; moved to {damaged_dir}; resuming from step {step}")
    return step, state, meta, target


def _meta(trainer, step: int, iterator) -> dict:
    return {
        "step": step,
        "data": iterator.state(),
        "seed": trainer.spec.seed,
        "critic": trainer.critic_config is not None,
        "model": checkpointing.model_fields(trainer.model_config),
        "config": json.loads(trainer.spec.config_json),
    }


def _rollout_metrics(trainer, host) -> dict:
    return {
        "think_tokens": float(np.mean(host.think_length)),
        "response_tokens": float(np.mean(host.response_length)),
        "think_truncated": float(np.mean(host.think_truncated)),
        "response_truncated": float(np.mean(host.response_truncated)),
        "rollout_think_tokens": float((host.segment_ids == segments.THINK).sum()),
    }


def _write_samples(trainer, writer, step: int, rows: list[dict], reward) -> None:
    rows = [{**row, "reward": float(r)} for row, r in zip(rows[: trainer.spec.log.samples], reward)]
    writer.samples(step, rows)
