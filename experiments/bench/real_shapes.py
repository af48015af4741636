"""A START stage-1 step at real model shapes on one accelerator: the memory plan from
`jax.eval_shape` and the compiler (no device, nothing allocated) and the roofline figures
a measured run is held to.

  python -m experiments.bench.real_shapes [--shapes qwen3_0_6b,qwen3_1_7b,qwen3_4b]
      [--budgets 1024,4096,8192 --prompts 8 --group 8 --prompt_tokens 256]
      [--response_tokens 256 --micro_rows 8 --hbm_gib 141 --hbm_tbps 4.8 --peak_tflops 989]

The step (as `Trainer.rl_step` runs it in a `think` stage with a frozen responder and a
KL term): the policy (float32 parameters, bfloat16 compute) samples `prompts x group`
rows of thinking up to the budget; the frozen responder (the initial policy, which is
also the KL reference, one copy) writes the responses; the update runs the PPO/GRPO loss
with the reference log-probabilities, in micro-batches of `micro_rows` rows, blocks
rematerialised.

Per shape and budget, in GiB: the policy's parameters, AdamW's moments, the frozen base
(responder and reference), the rollout's KV cache ([layers, rows, kv heads, prompt +
budget + response + 2, head dim] in bfloat16; the policy's lives inside its sampling call
and the responder's inside the next, so one at a time), and the
update's temporaries as XLA compiles one micro-batch's train step (on this machine's
backend: a CPU compile's fusion differs from a GPU's, so read it as an estimate); the
peak is the resident state plus the larger of the rollout's caches and the update's
temporaries. Against the device's memory (`--hbm_gib`) it says whether the step fits.

Roofline figures for the measured run to be held to (`--peak_tflops`, `--hbm_tbps`):
the update's model FLOPs per token (6 x non-embedding parameters + the head + causal
attention) and its time at 35% MFU; and one decode step's bytes (bfloat16 weights once,
plus every row's KV cache at mid-budget) with the tokens per second at 50% of the
bandwidth roofline.
"""

from __future__ import annotations

import argparse
import time

import jax

from experiments.bench.common import (
    GIB,
    REAL_SHAPES,
    abstract_batch,
    kv_bytes,
    print_environment,
    print_table,
    tree_bytes,
    tree_count,
)
from start_jax import models, rl


def model_config(shape: str, length: int) -> models.ModelConfig:
    return models.ModelConfig(
        model_type="qwen3",
        max_position_embeddings=max(length, 4096),
        dtype="bfloat16",
        param_dtype="float32",
        remat=True,
        **REAL_SHAPES[shape],
    )


def update_flops_per_token(config: models.ModelConfig, length: int) -> float:
    """Forward + backward model FLOPs per trained token: 6 x parameters (the shapes tie
    their embeddings, so the table counts once, as the head) + causal attention (12 x
    layers x query heads x head dim x mean context)."""
    attention = 12 * config.num_layers * config.num_heads * config.head_dim * (length / 2)
    return 6.0 * tree_count(models.param_shapes(config)) + attention


def plan(shape: str, budget: int, args) -> dict:
    rows = args.prompts * args.group
    length = -(-(args.prompt_tokens + budget + args.response_tokens + 2) // 128) * 128
    config = model_config(shape, length)
    shapes = models.param_shapes(config)
    n = tree_count(shapes)
    params = tree_bytes(shapes)  # float32
    tx = rl.make_optimizer(learning_rate=1e-6, max_grad_norm=1.0)
    state = jax.eval_shape(lambda p: rl.init_state(p, tx), shapes)
    opt = tree_bytes(state.opt_state)
    base = params  # The frozen responder and the KL reference: the initial policy, one copy.
    # One cache at a time: the policy's lives inside its sampling call, the responder's
    # (prompt and thinking prefilled, then the response) inside the next one.
    caches = kv_bytes(config, rows, length)
    micro = min(args.micro_rows, rows)
    train_cfg = rl.TrainConfig(loss=rl.LossConfig(kl_coef=0.01))
    began = time.perf_counter()
    step = rl.jit_train_step(config, train_cfg, tx)
    compiled = step.lower(state, abstract_batch(micro, length), jax.random.key(0)).compile()
    compile_s = time.perf_counter() - began
    temp = float(compiled.memory_analysis().temp_size_in_bytes)
    resident = params + opt + base
    peak = resident + max(caches, temp)
    tokens = rows * length
    flops = update_flops_per_token(config, length) * tokens
    update_s = flops / (0.35 * args.peak_tflops * 1e12)
    # One decode step at mid-budget: bfloat16 weights read once, every row's cache so far.
    mid = args.prompt_tokens + budget // 2
    step_bytes = 2 * n + kv_bytes(config, rows, mid)
    tps = rows / (step_bytes / (0.5 * args.hbm_tbps * 1e12))
    return dict(
        shape=shape,
        budget=budget,
        params=n,
        rows=rows,
        length=length,
        micro=micro,
        params_gib=params / GIB,
        opt_gib=opt / GIB,
        base_gib=base / GIB,
        caches_gib=caches / GIB,
        temp_gib=temp / GIB,
        peak_gib=peak / GIB,
        fits=peak / GIB <= args.hbm_gib,
        compile_s=compile_s,
        update_tflop=flops / 1e12,
        update_s_at_35=update_s,
        decode_tps_at_50=tps,
    )


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(REAL_SHAPES))
    p.add_argument("--budgets", default="1024,4096,8192")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompt_tokens", type=int, default=256)
    p.add_argument("--response_tokens", type=int, default=256)
    p.add_argument("--micro_rows", type=int, default=8, help="rows per update micro-batch")
    p.add_argument("--hbm_gib", type=float, default=141.0, help="device memory (H200: 141)")
    p.add_argument("--hbm_tbps", type=float, default=4.8, help="HBM bandwidth (H200: 4.8)")
    p.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 (H200: 989)")
    args = p.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = sorted(set(shapes) - set(REAL_SHAPES))
    if unknown:
        p.error(f"--shapes: unknown {unknown}; known: {sorted(REAL_SHAPES)}")
    try:
        budgets = [int(b) for b in args.budgets.split(",")]
    except ValueError:
        p.error(f"--budgets must be integers (got {args.budgets!r})")
    print_environment()
    results = []
    header = (
        "shape",
        "budget",
        "rows x length",
        "policy",
        "AdamW",
        "base",
        "KV cache",
        f"update temp ({args.micro_rows} rows)",
        "peak",
        "fits",
        "update TFLOP",
        "update s @35% MFU",
        "decode tok/s @50% BW",
    )
    table = [header]
    for shape in shapes:
        for budget in budgets:
            r = plan(shape, budget, args)
            results.append(r)
            table.append(
                (
                    f"{shape} ({r['params'] / 1e9:.2f}B)",
                    str(budget),
                    f"{r['rows']} x {r['length']}",
                    f"{r['params_gib']:.2f}",
                    f"{r['opt_gib']:.2f}",
                    f"{r['base_gib']:.2f}",
                    f"{r['caches_gib']:.2f}",
                    f"{r['temp_gib']:.2f}",
                    f"{r['peak_gib']:.2f}",
                    "yes" if r["fits"] else "NO",
                    f"{r['update_tflop']:.0f}",
                    f"{r['update_s_at_35']:.2f}",
                    f"{r['decode_tps_at_50']:,.0f}",
                )
            )
            print(f"  {shape} budget {budget}: compiled in {r['compile_s']:.0f} s", flush=True)
    print("== START stage-1 step, GiB (compile only; update temporaries from this backend)")
    print_table(table)
    return results


if __name__ == "__main__":
    main()
