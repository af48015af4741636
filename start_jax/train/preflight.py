"""What is checked before a run does any work: the workdir, the mesh, the tokenizer, the
init checkpoint and the JSONL files (`preflight`), and the options set that the run's
path does not read (`ignored_options`)."""

from __future__ import annotations

import os

import jax

from start_jax import sharding
from start_jax.checkpoints import read_config
from start_jax.data.builders.jsonl_tasks import read_jsonl
from start_jax.errors import ConfigError
from start_jax.train.config import default_config
from start_jax.train.init_policy import check_vocab
from start_jax.train.spec import RunSpec, check_context
from start_jax.train.writers import import_wandb


def ignored_options(spec: RunSpec) -> list[str]:
    """Options set away from their defaults that the run's path does not read."""
    out = []
    defaults = default_config()
    if not spec.cold_start:
        changed = [
            f"sft.{k}"
            for k in ("steps", "batch_size", "learning_rate", "examples", "draws")
            if getattr(spec.sft, k) != defaults.sft[k]
        ]
        if changed:
            out.append(
                f"{', '.join(changed)} set, but a run from init_checkpoint trains no "
                "cold-start SFT unless sft.from_checkpoint=True: ignored"
            )
    if spec.sft.from_checkpoint and not spec.init_checkpoint:
        out.append(
            "sft.from_checkpoint set without init_checkpoint (a random init always "
            "trains its cold start): ignored"
        )
    if spec.sft.from_checkpoint and spec.init_checkpoint and not spec.sft.steps:
        out.append(
            "sft.from_checkpoint set with sft.steps=0: no SFT step runs (tags added "
            "to the tokenizer keep their untrained mean rows)"
        )
    if (
        not spec.advantage.needs_critic
        and spec.optim.critic_learning_rate != defaults.algo.critic_learning_rate
    ):
        out.append(
            f"algo.critic_learning_rate set, but algo.advantage="
            f"{spec.advantage.estimator!r} trains no critic: ignored"
        )
    return out


def preflight(spec: RunSpec, workdir: str):
    """What can be checked before any work, without writing anything: the workdir, the
    mesh, the tokenizer, the init checkpoint's config (family, context) and the JSONL
    files (every line). Returns (mesh, tokenizer); raises a UserError naming the field,
    flag, file or line."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir {workdir} is an existing file, not a directory")
    if spec.log.wandb.project:
        import_wandb()
    try:
        mesh = sharding.make_mesh(spec.mesh)
    except ValueError as e:
        raise ConfigError(
            f"config: mesh.data={spec.mesh.data}, mesh.fsdp={spec.mesh.fsdp}, "
            f"mesh.tensor={spec.mesh.tensor}, mesh.devices={spec.mesh.devices} does not fit "
            f"the {jax.device_count()} devices ({e})"
        ) from None
    tokenizer = spec.load_tokenizer()
    if spec.init_checkpoint:
        check_context(
            spec.width,
            spec.data.max_prompt_tokens,
            spec.sampling,
            read_config(spec.init_checkpoint).max_position_embeddings,
            f"max_position_embeddings of {spec.init_checkpoint}/config.json",
        )
        if not spec.cold_start:
            check_vocab(spec, tokenizer)
    if spec.data.source == "jsonl":
        for path in (spec.data.train_path, spec.data.test_path):
            if path:
                if not os.path.isfile(path):
                    raise ConfigError(
                        f"JSONL file {os.path.abspath(path)} not found "
                        "(data.train_path / data.test_path)"
                    )
                rows = read_jsonl(path)
                if (
                    path == spec.data.train_path
                    and spec.init_checkpoint
                    and spec.sft.from_checkpoint
                    and spec.sft.steps
                    and not any(row["thinking"] for _, row in rows)
                ):
                    raise ConfigError(
                        f"{path}: no row has a 'thinking' trace, which sft.from_checkpoint="
                        "True trains on (with 'response'); add them, or set "
                        "sft.from_checkpoint=False"
                    )
    return mesh, tokenizer
