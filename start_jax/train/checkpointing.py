"""Orbax checkpoints of a run: train state plus JSON metadata.

A checkpoint holds the policy, its optimizer state, the critic and its
optimizer state, and a JSON record with the step, the stage, the data
iterator position, the seed and the model configuration; inside a stage that
reads a copy of the policy taken at its start (a frozen thinker, a
stage-start KL reference), that copy too (`snapshot`). Saves are atomic
(orbax writes to a temporary directory and renames), so a run killed in the
middle of a save resumes from the previous checkpoint.

With several JAX processes every process calls `save` and `restore` at the same
step (orbax coordinates them: each writes its own shards, process 0 the metadata,
into a directory they all see). A checkpoint restores into any mesh: one written
by two processes resumes in one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import orbax.checkpoint as ocp

from start_jax.errors import UserError


class CheckpointMismatch(UserError):
    """The checkpoint was written for a different model."""


class DamagedCheckpoint(UserError):
    """A checkpoint that cannot be read (the run falls back to the previous one)."""


class Checkpointer:
    """Saves every `every` steps, keeps `keep`, restores the latest."""

    def __init__(self, directory: str, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "meta", "snapshot"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, force: bool = False, snapshot=None) -> None:
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if snapshot is not None:
            items["snapshot"] = ocp.args.StandardSave(snapshot)
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore_snapshot(self, step: int, target):
        """The stage-start policy copy saved with checkpoint `step`, into `target`'s layout."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            return self.manager.restore(
                step, args=ocp.args.Composite(snapshot=ocp.args.StandardRestore(abstract))
            )["snapshot"]
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise CheckpointMismatch(
                f"checkpoint {self.directory}/{step} has no stage-start snapshot, which the "
                f"stage it is in needs (a frozen thinker or kl_reference='stage_start'): it was "
                f"written by a run with other stage options; use another --workdir ({e})"
            ) from None

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def set_aside(self, step: int, directory: str) -> None:
        """Moves checkpoint `step` (a damaged one) into `directory`, out of the run's way."""
        os.makedirs(directory, exist_ok=True)
        dest = os.path.join(directory, str(step))
        if os.path.exists(dest):
            shutil.rmtree(dest)
        shutil.move(os.path.join(self.directory, str(step)), dest)
        self.manager.reload()

    def restore(self, step: int, target_state, model_fields: dict, critic: bool | None = None):
        """Restores (state, meta) into the structure and shardings of `target_state`.

        Raises:
          DamagedCheckpoint: its metadata cannot be read (a killed writer, a full disk).
          CheckpointMismatch: it was written for another model or with(out) a critic.
        """
        where = f"checkpoint {self.directory}/{step}"
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
                "meta"
            ]
        except Exception as e:  # noqa: BLE001 - orbax and json raise many kinds.
            raise DamagedCheckpoint(
                f"{where}: its metadata cannot be read ({type(e).__name__}: {str(e)[:200]})"
            ) from None
        if not isinstance(meta, dict) or "data" not in meta:
            raise DamagedCheckpoint(f"{where}: its metadata has no data iterator position")
        saved = meta.get("model", {})
        diffs = [
            f"{k}: checkpoint {saved.get(k)!r} != config {v!r}"
            for k, v in model_fields.items()
            if saved.get(k) != v
        ]
        if diffs:
            raise CheckpointMismatch(
                f"{where} was written for a different model ("
                + "; ".join(diffs)
                + "); use another --workdir or the matching config"
            )
        if critic is not None and meta.get("critic", critic) != critic:
            has = "has a critic" if meta["critic"] else "has no critic"
            raise CheckpointMismatch(
                f"{where} {has} and this run's algo.advantage "
                f"{'needs one' if critic else 'does not'}; resume with the algo.advantage that "
                "wrote it, or train this one in another --workdir"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointMismatch(
                f"{where}: its train state does not match this run's (another optimizer, a "
                "critic added or removed with algo.advantage, or other stage options); resume "
                "with the config that wrote it, or use another --workdir "
                f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
            ) from None
        return restored, meta

    def restore_latest(self, target_of, model_fields: dict, critic: bool | None, damaged_dir: str):
        """(step, state, meta, target, set_aside) of the newest readable checkpoint.

        `target_of(step)` is the restore target of a step's checkpoint. A damaged
        newer checkpoint is moved to ``damaged_dir/<step>`` and the previous one is
        used; `set_aside` lists the messages of the ones moved. All Nones (and an
        empty list) when there is no checkpoint.

        Raises:
          DamagedCheckpoint: no checkpoint is readable (the message names them).
          CheckpointMismatch: the newest readable one belongs to another run.
        """
        damaged = []
        for step in reversed(self.all_steps()):
            target = target_of(step)
            try:
                state, meta = self.restore(step, target, model_fields, critic=critic)
            except DamagedCheckpoint as e:
                damaged.append((step, str(e)))
                continue
            for bad, _ in damaged:
                self.set_aside(bad, damaged_dir)
            return step, state, meta, target, [m for _, m in damaged]
        if damaged:
            raise DamagedCheckpoint(
                "; ".join(m for _, m in damaged) + "; no readable checkpoint is left: move "
                f"{self.directory} away to start again"
            )
        return None, None, None, None, []

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def model_fields(model_config) -> dict:
    """The fields of a model config that fix parameter shapes, JSON-ready."""
    keys = (
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "tie_embeddings",
        "param_dtype",
    )
    d = dataclasses.asdict(model_config)
    return {k: d[k] for k in keys}
