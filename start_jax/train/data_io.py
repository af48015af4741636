"""What a run reads: tokenizer, data sets, prompts and the initial policy."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
from absl import logging

from start_jax import checkpoints
from start_jax import models
from start_jax.checkpoints import read_config
from start_jax.data import behaviours, pipeline, world
from start_jax.data.pipeline import PromptIterator  # noqa: F401  (re-exported)

from start_jax.train import sft


def tokenizer_of(config):
    """The run's tokenizer; one without think tags fails here, naming the file."""
    return world.load_tokenizer(config.tokenizer)


def datasets(config, workdir: str):
    """(train, test) sources of example dicts."""
    d = config.data
    data_dir = d.data_dir or os.path.join(workdir, "data")
    if d.source == "synthetic":
        load = lambda split: pipeline.load_synthetic(d.name, data_dir, split)  # noqa: E731
    else:
        if not d.train_path:
            raise ValueError("config: data.source='jsonl' needs data.train_path")
        load = lambda split: pipeline.load_jsonl(  # noqa: E731
            d.train_path, d.test_path or d.train_path, data_dir, split)
    return pipeline.TaskSource(load("train")), pipeline.TaskSource(load("test"))


def encode_prompts(tokenizer, examples, max_tokens: int) -> list[list[int]]:
    out = []
    for e in examples:
        ids = tokenizer.encode(e["prompt"])
        if len(ids) > max_tokens:
            raise ValueError(
                f"prompt has {len(ids)} tokens, more than data.max_prompt_tokens={max_tokens}: "
                f"{e['prompt'][:60]!r}")
        out.append(ids)
    return out


def initial_policy(config, workdir: str, tokenizer, mesh, train_data):
    """(model_config, params): a HF checkpoint, or a random init after cold-start SFT.

    The SFT result is written to <workdir>/init_policy once and loaded from
    there on resume, so the reference policy and the frozen responder are the
    same in every process of a run.
    """
    dtype = config.model.param_dtype
    if config.init_checkpoint:
        model_config, params = checkpoints.load_pretrained(
            config.init_checkpoint, dtype=dtype, compute_dtype=config.model.dtype, mesh=mesh,
            remat=config.model.remat)
        if model_config.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"{config.init_checkpoint}: vocab_size {model_config.vocab_size} is "
                             f"smaller than the tokenizer's {tokenizer.vocab_size}")
        return model_config, params
    path = os.path.join(workdir, "init_policy")
    if not os.path.isfile(os.path.join(path, "config.json")):
        model_config = model_config_of(config, tokenizer)
        params = models.init_sharded(model_config, jax.random.key(config.seed), mesh)
        if config.sft.steps:
            n = min(len(train_data), config.sft.examples)
            examples = [train_data[i] for i in range(n)]
            params, losses = sft.train_sft(
                model_config, params, tokenizer, sft_traces(config, examples),
                config.sft.steps, config.sft.batch_size, config.sft.learning_rate,
                seed=config.seed, progress=config.log.progress)
            logging.info("cold-start SFT: final losses %s", np.round(losses, 3))
        tmp = path + ".tmp"
        checkpoints.save_pretrained(model_config, params, tmp)
        with open(os.path.join(tmp, SFT_RECORD), "w") as fh:
            json.dump(sft_fields(config), fh, indent=1, sort_keys=True)
        shutil.rmtree(path, ignore_errors=True)  # A partial directory from a killed run.
        os.replace(tmp, path)
    _check_cached(path, config, tokenizer)
    model_config, params = checkpoints.load_pretrained(
        path, dtype=dtype, compute_dtype=config.model.dtype, mesh=mesh, remat=config.model.remat)
    return model_config.replace(max_position_embeddings=config.model.max_position_embeddings), params


def model_config_of(config, tokenizer) -> models.ModelConfig:
    """The model a random-init run trains, from `config.model` and the tokenizer."""
    return models.ModelConfig(
        vocab_size=tokenizer.vocab_size, qk_norm=config.model.model_type == "qwen3",
        qkv_bias=config.model.model_type == "qwen2",
        eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
        **{k: v for k, v in config.model.to_dict().items() if k != "remat"})


def sft_traces(config, examples) -> list[dict]:
    """Cold-start traces: the behaviour mixture on synthetic data, gold traces on JSONL."""
    if config.data.source != "synthetic":
        return [{**e, "response": world.golden_response(world.Example.from_row(e))}
                for e in examples]
    try:
        mixture = behaviours.Mixture(**config.sft.mixture.to_dict())
    except (TypeError, ValueError) as e:
        raise ValueError(f"config: sft.{e}") from None
    return behaviours.mixture_traces(examples, mixture, seed=config.seed, draws=config.sft.draws)


SFT_RECORD = "start_jax_sft.json"


def sft_fields(config) -> dict:
    """What the cold start of a random init depends on beyond the model shape."""
    return {"tokenizer": config.tokenizer, "data": [config.data.source, config.data.name],
            "seed": config.seed, **config.sft.to_dict()}


def _check_cached(path: str, config, tokenizer) -> None:
    """The cached initial policy must have the shape and cold start the config asks for."""
    record = os.path.join(path, SFT_RECORD)
    if os.path.isfile(record):
        with open(record) as fh:
            made = json.load(fh)
        want = json.loads(json.dumps(sft_fields(config), sort_keys=True))
        diffs = [f"{k}: {made.get(k)!r} != {v!r}" for k, v in want.items() if made.get(k) != v]
        if diffs:
            raise ValueError(f"{path} was made by another cold start ({'; '.join(diffs)}); "
                             "use another --workdir or the matching config")
    cached = read_config(path)
    want = dict(model_type=config.model.model_type, hidden_size=config.model.hidden_size,
                intermediate_size=config.model.intermediate_size,
                num_layers=config.model.num_layers, num_heads=config.model.num_heads,
                num_kv_heads=config.model.num_kv_heads, head_dim=config.model.head_dim,
                vocab_size=tokenizer.vocab_size)
    diffs = [f"{k}: {getattr(cached, k)!r} != {v!r}" for k, v in want.items()
             if getattr(cached, k) != v]
    if diffs:
        raise ValueError(f"{path} was made for a different model ({'; '.join(diffs)}); "
                         "use another --workdir or the matching config")
