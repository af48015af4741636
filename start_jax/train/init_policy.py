"""The initial policy of a run: a HF checkpoint, or a cold start (SFT on thinking traces).

The cold start begins from a random init, or from `init_checkpoint` with
`sft.from_checkpoint` (think tags added to the tokenizer then get embedding
rows). It is trained once and written to ``<workdir>/init_policy`` (a HF
directory plus `SFT_RECORD`, the settings that made it); every later process
of the run loads it from there, so the reference policy and the frozen
responder are the same across restarts. A cached policy made by other
settings is an error naming them.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
from absl import logging

from start_jax import models, sharding, tasks
from start_jax.checkpoints import load_pretrained, read_config, save_pretrained
from start_jax.errors import ConfigError
from start_jax.train import sft
from start_jax.train.spec import ModelSpec, RunSpec

SFT_RECORD = "start_jax_sft.json"


def initial_policy(spec: RunSpec, workdir: str, tokenizer, mesh, train_data):
    """(model_config, params) of the run's starting point, sharded on `mesh`."""
    m = spec.model
    if not spec.cold_start:
        check_vocab(spec, tokenizer)
        return load_pretrained(
            spec.init_checkpoint,
            dtype=m.param_dtype,
            compute_dtype=m.dtype,
            mesh=mesh,
            **m.runtime(),
        )
    path = os.path.join(workdir, "init_policy")
    # With several processes, all train the cold start together (its steps are global
    # programs on the mesh) when process 0 finds none; process 0 writes it.
    if not sharding.primary_value(np.bool_(os.path.isfile(os.path.join(path, "config.json")))):
        if spec.init_checkpoint:
            model_config, params = load_pretrained(
                spec.init_checkpoint,
                dtype=m.param_dtype,
                compute_dtype=m.dtype,
                mesh=mesh,
                vocab_size=tokenizer.vocab_size,
                **m.runtime(),
            )
        else:
            model_config = model_config_of(spec, tokenizer)
            params = models.init_sharded(model_config, jax.random.key(spec.seed), mesh)
        if spec.sft.steps:
            n = min(len(train_data), spec.sft.examples)
            examples = [train_data[i] for i in range(n)]
            params, losses = sft.train_sft(
                model_config,
                params,
                tokenizer,
                sft_traces(spec, examples),
                spec.sft.steps,
                spec.sft.batch_size,
                spec.sft.learning_rate,
                seed=spec.seed,
                progress=spec.log.progress and jax.process_index() == 0,
            )
            logging.info("cold-start SFT: final losses %s", np.round(losses, 3))
        params = sharding.to_host(params)
        if jax.process_index() == 0:
            _write(path, model_config, params, spec)
        sharding.barrier("start_jax.train.init_policy")
        if not os.path.isfile(os.path.join(path, "config.json")):
            _write(path, model_config, params, spec)  # A workdir process 0 does not share.
    _check_cached(path, spec, tokenizer)
    model_config, params = load_pretrained(
        path, dtype=m.param_dtype, compute_dtype=m.dtype, mesh=mesh, **m.runtime()
    )
    if spec.init_checkpoint:  # The context is the checkpoint's, as without SFT.
        return model_config, params
    return model_config.replace(max_position_embeddings=m.max_position_embeddings), params


def check_vocab(spec: RunSpec, tokenizer) -> None:
    """An init_checkpoint used without a cold start needs a row for every token."""
    size = read_config(spec.init_checkpoint).vocab_size
    if size < tokenizer.vocab_size:
        added = " (with the think tags prompt.add_tags added)" if spec.tags[2] else ""
        raise ConfigError(
            f"{spec.init_checkpoint}: vocab_size {size} is smaller than the "
            f"tokenizer's {tokenizer.vocab_size}{added}; set "
            "sft.from_checkpoint=True to add rows for the new tokens and teach "
            "them by cold-start SFT, or name tags the tokenizer has with "
            "prompt.think_tag and prompt.end_think_tag"
        )


def _write(path: str, model_config, params, spec: RunSpec) -> None:
    """The cold start as a HF directory plus its `SFT_RECORD`, renamed into place."""
    tmp = path + ".tmp"
    save_pretrained(model_config, params, tmp)
    with open(os.path.join(tmp, SFT_RECORD), "w") as fh:
        json.dump(sft_fields(spec), fh, indent=1, sort_keys=True)
    shutil.rmtree(path, ignore_errors=True)  # A partial directory from a killed run.
    os.replace(tmp, path)


def model_config_of(spec: RunSpec, tokenizer) -> models.ModelConfig:
    """The model a random-init run trains, from `spec.model` and the tokenizer."""
    fields = {k: v for k, v in vars(spec.model).items() if k not in ModelSpec.RUNTIME}
    return models.ModelConfig(
        vocab_size=tokenizer.vocab_size,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
        **fields,
        **spec.model.runtime(),
    )


def sft_traces(spec: RunSpec, examples) -> list[dict]:
    """Cold-start traces of the run's task (`tasks.Task.sft_traces`)."""
    return tasks.get(spec.data.source).sft_traces(
        examples, spec.sft.mixture, spec.seed, spec.sft.draws
    )


def sft_fields(spec: RunSpec) -> dict:
    """What the cold start depends on beyond the model shape."""
    fields = {
        "tokenizer": spec.tokenizer,
        "data": [spec.data.source, spec.data.name],
        "seed": spec.seed,
        **spec.sft.record(),
    }
    if spec.init_checkpoint:
        fields["init_checkpoint"] = os.path.abspath(spec.init_checkpoint)
    return fields


def _check_cached(path: str, spec: RunSpec, tokenizer) -> None:
    """The cached initial policy must have the shape and cold start the spec asks for."""
    record = os.path.join(path, SFT_RECORD)
    if os.path.isfile(record):
        with open(record) as fh:
            made = json.load(fh)
        want = json.loads(json.dumps(sft_fields(spec), sort_keys=True))
        diffs = [f"{k}: {made.get(k)!r} != {v!r}" for k, v in want.items() if made.get(k) != v]
        if diffs:
            raise ConfigError(
                f"{path} was made by another cold start ({'; '.join(diffs)}); "
                "use another --workdir or the matching config"
            )
    cached = read_config(path)
    m = spec.model
    if spec.init_checkpoint:
        m = read_config(spec.init_checkpoint)
    want = dict(
        model_type=m.model_type,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.head_dim,
        vocab_size=max(tokenizer.vocab_size, m.vocab_size if spec.init_checkpoint else 0),
    )
    diffs = [
        f"{k}: {getattr(cached, k)!r} != {v!r}" for k, v in want.items() if getattr(cached, k) != v
    ]
    if diffs:
        raise ConfigError(
            f"{path} was made for a different model ({'; '.join(diffs)}); "
            "use another --workdir or the matching config"
        )
