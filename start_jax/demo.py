"""The embedded default job: sample segmented rollouts from a tiny model.

`run(config, workdir)` is importable from notebooks; `launch.py` calls it.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
import tqdm

from start_jax import models, sampling, sharding
from start_jax.tokenizer import load_tokenizer

_PROMPTS = ("a=3; b=a+4; c=b*2; c?", "Ann likes tea. Bob is Ann's friend. What does Bob like?",
            "x=7; y=x-2; y?", "Cat is red. Dog is Cat's twin. What color is Dog?")


def build_model(config, tokenizer, mesh):
    """(model_config, params) from config.checkpoint or a random init on `mesh`."""
    if config.checkpoint:
        return models.load_pretrained(config.checkpoint, dtype=config.model.param_dtype,
                                      compute_dtype=config.model.dtype, mesh=mesh)
    model_config = models.ModelConfig(vocab_size=tokenizer.vocab_size, qk_norm=True,
                                      **config.model.to_dict())
    params = sharding.init_sharded(model_config, jax.random.key(config.seed), mesh)
    return model_config, params


def run(config, workdir: str) -> dict:
    """Samples `config.rounds` batches; writes rollouts.jsonl; returns the summary."""
    os.makedirs(workdir, exist_ok=True)
    tokenizer = load_tokenizer(config.tokenizer)
    mesh = sharding.make_mesh(sharding.MeshConfig(**config.mesh.to_dict()))
    model_config, params = build_model(config, tokenizer, mesh)
    special = sampling.SpecialTokens.from_tokenizer(tokenizer)
    sampling_config = sampling.SamplingConfig(**config.sampling.to_dict())
    n_params = sum(x.size for x in jax.tree.leaves(params))

    stats = {"think": [], "response": [], "think_truncated": [], "response_truncated": []}
    decoded_tokens, decode_time = 0, 0.0
    out_file = os.path.join(workdir, "rollouts.jsonl")
    with open(out_file, "w") as fh:
        for r in tqdm.trange(config.rounds, desc="sampling", unit="batch"):
            ids = np.arange(config.batch_size) + r * config.batch_size
            prompts = [tokenizer.encode(_PROMPTS[i % len(_PROMPTS)]) for i in ids]
            start = time.perf_counter()
            rollout = sampling.sample(model_config, params, prompts, sampling_config,
                                      config.seed, special, row_ids=ids, mesh=mesh)
            jax.block_until_ready(rollout.tokens)
            if r > 0:  # Round 0 includes compilation.
                decode_time += time.perf_counter() - start
                decoded_tokens += int(rollout.tokens.shape[0]) * (
                    rollout.tokens.shape[1] - rollout.prefix_length)
            stats["think"] += list(np.asarray(rollout.think_length))
            stats["response"] += list(np.asarray(rollout.response_length))
            stats["think_truncated"] += list(np.asarray(rollout.think_truncated))
            stats["response_truncated"] += list(np.asarray(rollout.response_truncated))
            for row in sampling.decode_segments(tokenizer, rollout):
                fh.write(json.dumps(row) + "\n")

    summary = {
        "parameters": n_params,
        "mesh": dict(mesh.shape),
        "rollouts": len(stats["think"]),
        "mean thinking tokens": float(np.mean(stats["think"])),
        "mean response tokens": float(np.mean(stats["response"])),
        "thinking truncated": float(np.mean(stats["think_truncated"])),
        "response truncated": float(np.mean(stats["response_truncated"])),
        "decode tokens/s": decoded_tokens / decode_time if decode_time else float("nan"),
    }
    print_table(summary)
    print(f"rollouts written to {out_file}")
    return summary


def print_table(summary: dict) -> None:
    width = max(len(k) for k in summary)
    print("\n" + "-" * (width + 24))
    for key, value in summary.items():
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text:>20}")
    print("-" * (width + 24))
