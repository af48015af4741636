"""The CPU fast paths (`ModelConfig.cpu_fast_paths`, `start_jax.models.fast_paths`) against
the plain paths: the same train step and greedy decoding, timed in alternating rounds.

  python -m experiments.bench.fast_paths [--model small] [--rounds 3]

For one random-init model (`common.MODELS`) it compiles, for each side, one RL update
(`rl.jit_train_step`, AdamW, a [batch, length] rollout batch with prompt, thinking and
response columns) and one greedy `sampling.generate` call; then it times `--rounds`
rounds, each running the plain side and the fast side in turn (the order alternating by
round), and prints the median and range of each side with the ratio of the medians.
Before timing it checks that the two sides agree: the largest difference of the updated
parameters and of the loss, and whether the greedy tokens are identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.common import MODELS, print_environment, print_table
from start_jax import models, rl, sampling, segments


def make_batch(config: models.ModelConfig, batch: int, length: int, seed: int) -> rl.Batch:
    """Rows of a quarter prompt, then half thinking, then a response, with random advantages."""
    rs = np.random.RandomState(seed)
    prompt, think = length // 4, length // 2
    seg = np.full((batch, length), segments.RESPONSE, np.int32)
    seg[:, :prompt] = segments.PROMPT
    seg[:, prompt : prompt + think] = segments.THINK
    tokens = jnp.asarray(rs.randint(5, config.vocab_size, size=(batch, length)), jnp.int32)
    seg = jnp.asarray(seg)
    forced = jnp.zeros((batch, length), bool)
    mask = rl.loss_mask(seg, forced, "joint")
    zeros = jnp.zeros((batch, length), jnp.float32)
    return rl.Batch(
        tokens=tokens,
        segment_ids=seg,
        loss_mask=mask,
        kl_mask=rl.kl_mask(seg, forced, "joint"),
        advantages=jnp.where(mask, jnp.asarray(rs.randn(batch, 1), jnp.float32), 0.0),
        old_logprobs=zeros,
        ref_logprobs=zeros,
        returns=zeros,
        old_values=zeros,
        rewards=jnp.zeros((batch,), jnp.float32),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--batch", type=int, default=8, help="rows of the update and the decode")
    parser.add_argument("--length", type=int, default=128, help="columns of the update's batch")
    parser.add_argument("--prompt_len", type=int, default=16, help="decode prompt tokens")
    parser.add_argument("--new_tokens", type=int, default=64, help="greedy tokens per row")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print_environment()

    plain = models.ModelConfig(
        model_type="qwen3", max_position_embeddings=4096, **MODELS[args.model]
    )
    params = models.init_params(plain, jax.random.key(args.seed))
    configs = {"plain": plain, "fast": plain.replace(cpu_fast_paths=True)}
    batch = make_batch(plain, args.batch, args.length, args.seed)
    tx = rl.make_optimizer(1e-4)
    rs = np.random.RandomState(args.seed + 1)
    prompts = [
        [int(t) for t in rs.randint(5, plain.vocab_size, size=args.prompt_len)]
        for _ in range(args.batch)
    ]
    # Token 1 ends a row and is banned: every row decodes `new_tokens`.
    greedy = sampling.SamplingConfig(temperature=0.0, banned_tokens=(1,))
    steps = {name: rl.jit_train_step(c, rl.TrainConfig(), tx) for name, c in configs.items()}

    def update(name):
        state = rl.init_state(jax.tree.map(jnp.copy, params), tx)  # The step donates it.
        return jax.block_until_ready(steps[name](state, batch, jax.random.key(0)))

    def decode(name):
        rollout = sampling.generate(
            configs[name],
            params,
            prompts,
            greedy,
            0,
            eos_id=1,
            pad_id=0,
            max_new_tokens=args.new_tokens,
        )
        return jax.block_until_ready(rollout)

    out = {name: (update(name), decode(name)) for name in configs}  # Compiles both.
    (s0, m0), r0 = out["plain"]
    (s1, m1), r1 = out["fast"]
    param_diff = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(s0.params), jax.tree.leaves(s1.params))
    )
    loss_diff = abs(float(m0["loss"]) - float(m1["loss"]))
    same_tokens = bool(np.array_equal(np.asarray(r0.tokens), np.asarray(r1.tokens)))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(
        f"model {args.model} ({n_params / 1e6:.1f}M params), update batch "
        f"{args.batch} x {args.length}, greedy decode {args.batch} x {args.new_tokens} tokens"
    )
    print(
        f"agreement: updated parameters max |diff| {param_diff:.2e}, loss |diff| "
        f"{loss_diff:.2e}, greedy tokens identical: {same_tokens}"
    )

    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        order = ("plain", "fast") if r % 2 == 0 else ("fast", "plain")
        for name in order:
            for what, fn in (("update", update), ("decode", decode)):
                began = time.perf_counter()
                fn(name)
                times.setdefault((what, name), []).append(time.perf_counter() - began)

    rows = [("", "plain (ms)", "fast (ms)", "plain / fast")]
    for what in ("update", "decode"):
        p, f = times[(what, "plain")], times[(what, "fast")]
        mp, mf = statistics.median(p), statistics.median(f)
        rows.append(
            (
                what,
                f"{mp * 1e3:.0f} [{min(p) * 1e3:.0f}-{max(p) * 1e3:.0f}]",
                f"{mf * 1e3:.0f} [{min(f) * 1e3:.0f}-{max(f) * 1e3:.0f}]",
                f"{mp / mf:.2f}x",
            )
        )
    print(f"median [range] over {args.rounds} alternating rounds")
    print_table(rows)


if __name__ == "__main__":
    main()
