"""RL-shaped rollout throughput: `sampling.sample` as the trainer calls it, variable lengths.

Run from the repository root (the defaults took about 1 minute on this
project's busy 2-core CPU: ~6 s to build the checkpoint, ~10 s for the first
call with its compilation, then 5 timed rollouts of 6-9 s each):

    python -m experiments.bench.rollout [--model medium --prompts 4 --group 8 \\
        --think_budget 96 --response_budget 32 --repeats 5]

On a GPU, a bigger batch and bf16 compute (the figures are only meaningful
once the batch fills the device):

    python -m experiments.bench.rollout --prompts 64 --group 8 --think_budget 512 \\
        --response_budget 128 --dtype bfloat16 --repeats 5

What it builds (all in a temporary directory, nothing downloaded):

* a random Qwen3-shaped checkpoint written with `checkpoints.save_pretrained`:
  `--model medium` = 57,943,552 parameters (vocab 32,000, hidden 512, MLP
  1,536, 8 layers, 8 query / 4 key-value heads of width 64, QK-norm, untied
  embeddings); `--model small` = 4,197,120 (vocab 4,096, hidden 256, MLP 768,
  4 layers, 4 / 2 heads of width 64, tied embeddings);
* beside it a byte-level BPE `tokenizer.json` with exactly the model's
  vocabulary (byte alphabet, merges of lower-case letter runs, then
  `<|endoftext|>` (pad), `<|im_end|>` (eos), `<think>`, `</think>`), so every
  token the model samples decodes;
* an eos bias through the weights, because a random model almost never draws
  eos or `</think>` and every rollout would run to its budgets: one residual
  dimension is made a constant c (its embedding column set to c, the attention
  and MLP output columns that write to it zeroed, the final norm's gain on it
  raised so that c times its final value is 100), and the head reads it only
  for eos and `</think>` (with tied embeddings every token's head entry is c,
  a shift that cancels, and those two get c plus a little), with two weights
  calibrated on a forward pass of random tokens so that eos has probability
  `--eos_rate` and `</think>` `--end_think_rate` per token on average.
  Thinking then ends at `</think>`, at an eos (the sampler writes `</think>`
  after it) or by budget forcing, with a per-token hazard of about eos_rate +
  end_think_rate; the response ends at eos (hazard eos_rate) or by its budget:
  geometric-ish lengths, reported below;
* P prompts of 32-39 tokens (one prefix width, so no recompilation between
  calls), each repeated `--group` times as the trainer does.

Each call is the trainer's (`Trainer._sample`, responder 'self'), in two modes
alternated call by call (`--modes plain,rl`): `plain` prefills every row and
decodes every row until the last one ends (the sampler before RL-shaped
batches), `rl` prefills each prompt once for its group and compacts finished
rows away (`group_size`, `sampling.Compaction`; the trainer's call now). Both
give the same rows up to float rounding (the number of rows whose tokens
differ and the largest log-probability gap elsewhere are printed). The
run's `RunSpec` (from `start_jax.train.config.default_config()` modified as in
`experiments.bench.rl_step`) gives the `SamplingConfig`, the rollout `width`
and the mesh; params come from `train.init_policy.initial_policy` (the
trainer's loader); `row_ids` are `arange(B) + step * B` and the key
`fold_in(key(seed), step)`. The first call (compilation) is timed on its own;
then `--repeats` calls are timed, each blocked on (`jax.block_until_ready`).

It prints the configuration, every timed call, and a table of medians:
generated tokens/s (real decoded tokens only: thinking, the closing tag and
the response with its eos; no padding, no prompt), rows/s, decode steps (the
decode loop stops when every row is done, so it runs max over rows of its
generated tokens), the thinking and response lengths, and how much a "stop
finished rows" optimisation could save: the fraction of decode steps run
after half the rows had finished, and the fraction of row-steps that were
idle (a finished row still rides along in every step until the last row ends).
Model FLOPs of a rollout = 2 * N * generated tokens (N = all parameters;
prefill and attention not counted); MFU = model FLOP/s / peak, printed when a
peak is known for the device and dtype or given with `--peak_tflops`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from experiments.bench.common import (
    PROMPT_TOKENS,
    add_model_args,
    ending_summary,
    length_summary,
    make_tasks,
    mfu,
    peak_flops,
    print_environment,
    print_model,
    print_table,
    rl_config,
    rollout_stats,
    si,
    write_checkpoint,
)
from start_jax import sampling, segments, sharding
from start_jax.train.init_policy import initial_policy
from start_jax.train.spec import RunSpec


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed calls per mode first (compilation of each batch size)",
    )
    parser.add_argument(
        "--modes",
        default="plain,rl",
        help="comma-separated, alternated each repeat: 'plain' = every row "
        "prefilled and decoded to the end; 'rl' = one prefill per group "
        "and finished rows compacted away (the trainer's call)",
    )
    parser.add_argument("--compact_every", type=int, default=8)
    parser.add_argument("--compact_min_rows", type=int, default=8)
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"plain", "rl"}:
        parser.error("--modes: a comma-separated list of 'plain' and 'rl'")
    if args.repeats < 1 or args.prompts < 1 or args.group < 1:
        parser.error("--repeats, --prompts and --group must be >= 1")

    print_environment()
    with tempfile.TemporaryDirectory(prefix="bench_rollout_") as tmp:
        ckpt = os.path.join(tmp, "checkpoint")
        start = time.perf_counter()
        info = write_checkpoint(ckpt, args.model, args.eos_rate, args.end_think_rate, args.seed)
        build_s = time.perf_counter() - start
        spec = RunSpec.from_config(rl_config(ckpt, args, PROMPT_TOKENS[1]))
        tokenizer = spec.load_tokenizer()
        mesh = sharding.make_mesh(spec.mesh)
        rules = sharding.ShardingRules(replicate_uneven=spec.replicate_uneven)
        model_config, params = initial_policy(spec, tmp, tokenizer, mesh, None)
    special = sampling.SpecialTokens.from_tokenizer(tokenizer)
    sampler_config = (
        model_config.replace(dtype=spec.sampling_dtype) if spec.sampling_dtype else model_config
    )
    sc, g = spec.sampling, spec.group_size
    tasks = make_tasks(tokenizer, args.prompts, args.seed)
    prompts = [np.asarray(tokenizer.encode(t["prompt"]), np.int32) for t in tasks for _ in range(g)]
    batch = len(prompts)
    n_params = info["params"]

    print("== configuration")
    print_model(info, args)
    print(f"checkpoint + tokenizer + calibration: {build_s:.1f} s")
    print(
        f"batch: {args.prompts} prompts x group {g} = {batch} rows; prompt tokens "
        f"{min(map(len, prompts))}-{max(map(len, prompts))}; think_budget={sc.think_budget} "
        f"response_budget={sc.response_budget}; temperature={sc.temperature} top_k={sc.top_k} "
        f"top_p={sc.top_p}; rollout width {spec.width} columns; mesh {dict(mesh.shape)}"
    )
    print(
        f"call: sampling.sample(sampler_config, params, prompts, spec.sampling, "
        f"fold_in(key({args.seed}), step), special, row_ids=arange({batch}) + step*{batch}, "
        f"mesh, rules, max_length={model_config.max_position_embeddings}, "
        f"width={spec.width}) as Trainer._sample; repeats={args.repeats}"
    )
    sys.stdout.flush()

    compact = sampling.Compaction(args.compact_every, args.compact_min_rows)
    shape = {"plain": {}, "rl": dict(group_size=g, compact=compact)}
    print(
        f"modes: plain = every row prefilled and decoded until the last ends; rl = "
        f"group_size={g} (one prefill per prompt), {compact}; alternated each repeat, "
        "tokens checked equal"
    )

    def call(step: int, mode: str):
        rng = jax.random.fold_in(jax.random.key(spec.seed), step)
        row_ids = np.arange(batch) + step * batch
        start = time.perf_counter()
        rollout = sampling.sample(
            sampler_config,
            params,
            prompts,
            sc,
            rng,
            special,
            row_ids=row_ids,
            mesh=mesh,
            rules=rules,
            max_length=model_config.max_position_embeddings,
            width=spec.width,
            **shape[mode],
        )
        jax.block_until_ready(rollout)
        seconds = time.perf_counter() - start
        host = jax.device_get(rollout)
        return seconds, rollout_stats(host, sc.think_budget), host

    for mode in modes:
        first_s, first, _ = call(0, mode)
        print(
            f"== first call, {mode} (compile + run): {first_s:.2f} s, {first['generated']} "
            f"tokens, {first['decode_steps']} decode steps"
        )
        # Compaction compiles the decode loop once per batch size it reaches; later calls
        # may reach sizes the first did not, so more untimed calls come first.
        for w in range(1, args.warmup):
            t, _, _ = call(10_000 + w, mode)
            print(f"== warm-up call {w + 1}, {mode}: {t:.2f} s")
    sys.stdout.flush()

    rows = [
        (
            "call",
            "mode",
            "seconds",
            "gen tokens",
            "tokens/s",
            "decode steps",
            "half done at",
            "tail frac",
            "idle frac",
            "think mean",
            "resp mean",
        )
    ]
    by_mode = {m: ([], []) for m in modes}
    divergence = []  # (rows whose tokens differ between the modes, max |dlogp| elsewhere).
    for i in range(1, args.repeats + 1):
        first_out = None
        for mode in modes if i % 2 else modes[::-1]:
            t, s, out = call(i, mode)
            if first_out is None:
                first_out = out
            else:  # Same rows up to float rounding (batch-size-dependent matmuls).
                differ = np.any(first_out.tokens != out.tokens, axis=1)
                agree = ~differ[:, None] & (out.segment_ids > segments.PROMPT)
                gap = np.abs(first_out.logprobs - out.logprobs)[agree]
                divergence.append((int(differ.sum()), float(gap.max() if gap.size else 0.0)))
            by_mode[mode][0].append(t)
            by_mode[mode][1].append(s)
            rows.append(
                (
                    str(i),
                    mode,
                    f"{t:.3f}",
                    str(s["generated"]),
                    f"{s['generated'] / t:,.1f}",
                    str(s["decode_steps"]),
                    str(s["half_done_step"]),
                    f"{s['tail_fraction']:.3f}",
                    f"{s['idle_fraction']:.3f}",
                    f"{s['think'].mean():.1f}",
                    f"{s['response'].mean():.1f}",
                )
            )
    print("== timed calls")
    print_table(rows)
    if divergence:
        print(
            f"== modes agree: rows with other tokens per call {[d for d, _ in divergence]} of "
            f"{batch}; max |log-prob difference| on the other rows "
            f"{max(g for _, g in divergence):.1e} (float rounding of batch-size-dependent "
            "matmuls; a draw that lands within it of a boundary changes a row's tokens)"
        )
    if len(modes) == 2:
        ratios = [b / a for a, b in zip(by_mode[modes[1]][0], by_mode[modes[0]][0])]
        print(
            f"== {modes[0]} time / {modes[1]} time per call: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f"; median {statistics.median(ratios):.2f}x"
        )
    for mode in modes:
        print(f"== mode {mode}")
        summarize(by_mode[mode][0], by_mode[mode][1], batch, sc, n_params, args)


def summarize(times, stats, batch, sc, n_params, args) -> None:
    """The table of medians of one mode's timed calls."""
    med = statistics.median(times)
    tps = statistics.median([s["generated"] / t for s, t in zip(stats, times)])
    peak, peak_src = peak_flops(args.dtype, args.peak_tflops)
    flops_s = 2.0 * n_params * tps
    think_end, response_end = ending_summary(stats)
    print("== summary (medians over the timed calls)")
    summary = [
        ("quantity", "value", "note"),
        ("rollout time", f"{med:.3f} s", f"min {min(times):.3f}, max {max(times):.3f}"),
        (
            "generated tokens/s",
            f"{tps:,.1f}",
            "thinking + </think> + response (eos incl.), no pad/prompt",
        ),
        ("rows/s", f"{statistics.median([batch / t for t in times]):,.2f}", f"{batch} rows a call"),
        (
            "generated tokens / call",
            f"{statistics.median([s['generated'] for s in stats]):,.0f}",
            f"of {batch} x {sc.think_budget + 1 + sc.response_budget} at most",
        ),
        (
            "decode steps / call",
            f"{statistics.median([s['decode_steps'] for s in stats]):.0f}",
            "loop stops when every row is done",
        ),
        (
            "steps after half the rows done",
            f"{100 * statistics.median([s['tail_fraction'] for s in stats]):.1f} %",
            "(max - median row end) / max",
        ),
        (
            "idle row-steps",
            f"{100 * statistics.median([s['idle_fraction'] for s in stats]):.1f} %",
            "1 - generated / (rows x decode steps)",
        ),
        ("think tokens", length_summary([s["think"] for s in stats]), think_end),
        ("response tokens", length_summary([s["response"] for s in stats]), response_end),
        ("model FLOP/s", si(flops_s, "FLOP/s"), f"2 * N * generated tokens/s, N = {n_params:,}"),
        ("peak", "n/a" if peak is None else si(peak, "FLOP/s"), peak_src),
        ("MFU", mfu(flops_s, peak), "model FLOP/s / peak"),
    ]
    print_table(summary)


if __name__ == "__main__":
    main()
