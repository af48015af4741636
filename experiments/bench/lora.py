"""LoRA against full training: the memory of a train step at real shape (compile only) and
the step time on the CPU benchmark model (run, alternating).

  python -m experiments.bench.lora [--shape qwen3_1_7b --batch 8 --length 1024 --rank 16]
      [--model medium --time_batch 8 --time_length 128 --rounds 5]

Memory: a Qwen3-1.7B-shaped policy (28 layers, width 2048, MLP 6144, 16 query / 8
key-value heads of 128, vocabulary 151936, tied embeddings; float32 parameters, bfloat16
compute) and one `rl.jit_train_step` (PPO token-mean, AdamW, kl_coef 0.01, a [batch,
length] rollout batch), lowered and compiled on abstract arguments (`jax.eval_shape`;
nothing is allocated), once training every parameter and once training rank-`rank`
adapters on all 7 projections (`lora.rank`), the base passed frozen, each without and
with rematerialised blocks (`model.remat`). Printed per side:
trainable parameters, the bytes of the parameters (trainable and frozen), of the
optimizer state, XLA's compile-time temporaries and the sum. Time: the CPU benchmark
model (`common.MODELS`), the same step run `rounds` times per side, sides alternating,
median and range.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from experiments.bench.common import (
    GIB,
    MODELS,
    REAL_SHAPES,
    abstract_batch,
    print_environment,
    print_table,
    tree_bytes,
    tree_count,
)
from experiments.bench.fast_paths import make_batch
from start_jax import models, rl
from start_jax.models import lora

SHAPES = {"qwen3_1_7b": REAL_SHAPES["qwen3_1_7b"]}


def sides(config: models.ModelConfig, rank: int):
    """{side: (TrainConfig, trainable shapes, frozen shapes or None)}."""
    base = models.param_shapes(config)
    lc = lora.LoraConfig(rank=rank, alpha=2.0 * rank)
    loss = rl.LossConfig(kl_coef=0.01)
    return {
        "full": (rl.TrainConfig(loss=loss), base, None),
        f"lora r{rank}": (
            rl.TrainConfig(loss=loss, lora=lc),
            lora.adapter_shapes(base, lc),
            base,
        ),
    }


def memory(config: models.ModelConfig, rank: int, b: int, length: int) -> list[tuple]:
    tx = rl.make_optimizer(learning_rate=1e-5, max_grad_norm=1.0)
    rows = [
        (
            "side",
            "remat",
            "trainable",
            "params GiB (trainable + frozen)",
            "optimizer GiB",
            "temp GiB",
            "total GiB",
            "compile s",
        )
    ]
    for remat, (name, (train_cfg, trainable, frozen)) in (
        (remat, side) for remat in (False, True) for side in sides(config, rank).items()
    ):
        state = jax.eval_shape(lambda p: rl.init_state(p, tx), trainable)
        args = (state, abstract_batch(b, length), jax.random.key(0))
        args += (frozen,) if frozen is not None else ()
        began = time.perf_counter()
        step = rl.jit_train_step(config.replace(remat=remat), train_cfg, tx)
        compiled = step.lower(*args).compile()
        seconds = time.perf_counter() - began
        temp = float(compiled.memory_analysis().temp_size_in_bytes)
        params = tree_bytes(trainable) + (tree_bytes(frozen) if frozen is not None else 0)
        opt = tree_bytes(state.opt_state)
        rows.append(
            (
                name,
                "on" if remat else "off",
                f"{tree_count(trainable) / 1e6:.1f}M",
                f"{params / GIB:.2f} ({tree_bytes(trainable) / GIB:.3f} + "
                f"{(params - tree_bytes(trainable)) / GIB:.2f})",
                f"{opt / GIB:.3f}",
                f"{temp / GIB:.2f}",
                f"{(params + opt + temp) / GIB:.2f}",
                f"{seconds:.0f}",
            )
        )
    return rows


def step_times(config: models.ModelConfig, rank: int, b: int, length: int, rounds: int):
    params = models.init_params(config, jax.random.key(0))
    batch = make_batch(config, b, length, 0)
    tx = rl.make_optimizer(1e-4)
    runs = {}
    for name, (train_cfg, _, frozen) in sides(config, rank).items():
        step = rl.jit_train_step(config, train_cfg, tx)
        if frozen is None:
            init = lambda: jax.tree.map(jnp.copy, params)  # noqa: E731  (the step donates it)
            extra = ()
        else:
            adapters = lora.init(models.param_shapes(config), train_cfg.lora, jax.random.key(1))
            init = lambda a=adapters: jax.tree.map(jnp.copy, a)  # noqa: E731
            extra = (params,)

        def run(step=step, init=init, extra=extra):
            state = rl.init_state(init(), tx)
            began = time.perf_counter()
            jax.block_until_ready(step(state, batch, jax.random.key(0), *extra))
            return time.perf_counter() - began

        run()  # Compiles.
        runs[name] = run
    times = {name: [] for name in runs}
    for r in range(rounds):
        for name in runs if r % 2 == 0 else reversed(list(runs)):
            times[name].append(runs[name]())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3_1_7b")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--model", choices=sorted(MODELS), default="medium")
    parser.add_argument("--time_batch", type=int, default=8)
    parser.add_argument("--time_length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--skip_time", action="store_true")
    args = parser.parse_args()
    print_environment()
    if not args.skip_memory:
        config = models.ModelConfig(
            model_type="qwen3",
            max_position_embeddings=max(4096, args.length),
            dtype="bfloat16",
            param_dtype="float32",
            **SHAPES[args.shape],
        )
        print(
            f"== memory: {args.shape} ({tree_count(models.param_shapes(config)) / 1e9:.2f}B "
            f"parameters), train step on {args.batch} x {args.length} tokens, compile only"
        )
        print_table(memory(config, args.rank, args.batch, args.length))
    if args.skip_time:
        return
    config = models.ModelConfig(
        model_type="qwen3", max_position_embeddings=4096, **MODELS[args.model]
    )
    n = tree_count(models.param_shapes(config))
    print(
        f"== step time: {args.model} ({n / 1e6:.1f}M parameters, float32), "
        f"{args.time_batch} x {args.time_length} tokens, {args.rounds} alternating rounds"
    )
    times = step_times(config, args.rank, args.time_batch, args.time_length, args.rounds)
    rows = [("side", "median ms", "range ms")]
    for name, t in times.items():
        rows.append(
            (name, f"{statistics.median(t) * 1e3:.0f}", f"{min(t) * 1e3:.0f}-{max(t) * 1e3:.0f}")
        )
    print_table(rows)
    full, adapted = (statistics.median(t) for t in times.values())
    print(f"full / lora median step time: {full / adapted:.2f}x")


if __name__ == "__main__":
    main()
