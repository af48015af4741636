"""One RL step of the project's trainer, timed phase by phase, on a medium random Qwen3.

Run from the repository root (the defaults took 2.5-4 minutes on this
project's busy 2-core CPU: checkpoint and data set up in ~10 s, a warm-up step
with 11-15 s of compilation, then 3 measured steps of 20-60 s each, three
quarters of it the update):

    python -m experiments.bench.rl_step [--model medium --prompts 4 --group 8 \\
        --think_budget 96 --response_budget 32 --steps 3 --warmup 1 --responder self]

On a GPU, a bigger batch, bf16 compute and a known peak for the MFU column
(H100 / H200 / A100 are in the table; otherwise pass --peak_tflops):

    python -m experiments.bench.rl_step --prompts 64 --group 8 --think_budget 512 \\
        --response_budget 128 --dtype bfloat16 --steps 5 --warmup 2

What it builds, in a temporary directory (see `experiments.bench.rollout`,
whose helpers it shares): the random Qwen3 checkpoint (`--model medium`:
57,943,552 parameters, vocab 32,000, untied; `--model small`: 4,197,120,
vocab 4,096, tied) written with `checkpoints.save_pretrained`, with a byte-level
BPE tokenizer of exactly the model's vocabulary beside it and an eos /
`</think>` bias through the weights calibrated to `--eos_rate` /
`--end_think_rate` per token, so rollouts end at geometric-ish random lengths
(real eos and budget forcing); and a JSONL file of P * (warmup + steps)
word-problem tasks of 32-39 prompt tokens (so every step reads new prompts),
with integer references.

The trainer is `start_jax.train.trainer.Trainer` built from
`start_jax.train.config.default_config()` with: `init_checkpoint` = that
checkpoint (no SFT) and its tokenizer, `data.source='jsonl'`,
`prompts_per_step=--prompts`, `algo.group_size=--group`, the budgets, reward
`--reward` (exact_match or math), one stage (`--train_segments`,
`--responder`, lr `--learning_rate`) of warmup + steps steps, `--kl_coef`,
`--ppo_epochs`, `--minibatches`, `--micro_batches`, `--remat`, compute dtype
`--dtype` (parameters float32); no evaluation, checkpoints, samples or export.
All other settings are the defaults (GRPO, PPO token-mean, AdamW).

Each step mirrors one iteration of `Trainer.run` with the trainer's own
methods, and a `jax.block_until_ready` at each phase boundary (the run itself
overlaps dispatch of the batch builder and the update a little; on one device
the phases run in this order anyway):

  other host  `Trainer.states.fresh` at the stage start, `PromptIterator.next_batch`
  rollout     `trainer.rollouts` (prompt encoding, prefill + decode; frozen
              responder: thinking, then `sampling.respond`), until ready
  copy+score  `jax.device_get` of the rollout (`sharding.to_host` in `run`, the
              same call on one process) + `trainer.score` (decode + reward)
  make_batch  `trainer.make_batch`: masks, advantages, and the forwards the
              update reads (old log-probs unless on-policy, i.e. ppo_epochs =
              minibatches = 1; reference log-probs when kl_coef > 0)
  update      `trainer.update` (`rl.jit_train_step`)
  other host  metrics to the host, `rl.check_finite`, `check_health` (trainer module)
Not timed (not per-step costs of interest here, or file IO): the metric
writer, decoded samples, evaluation, checkpoints. If the trainer's method
names change, `run_step` below is the one place to update. A random model's
reward is about 0, so GRPO advantages and the loss are 0: that changes no
cost (every gradient and optimizer update is computed whatever the values).

Compilation is measured with `jax.monitoring` (tracing, lowering and backend
compile durations) and reported separately; the warm-up steps hold it, and a
measured step that compiles is flagged. The table reports, as means over the
measured steps, each phase's seconds and share of the step, rollout tokens/s
(generated tokens: thinking, `</think>`, response with eos; no padding or
prompt) and trained tokens/s (the batch's real tokens, prompt included, i.e.
what the update's forward and backward process; padded positions are also
shown), and model FLOPs: rollout 2 * N * generated, make_batch 2 * N * T per
forward, update 6 * N * T * ppo_epochs, with N = all parameters and T the
trained tokens (attention and prefill not counted), and MFU against a peak
when one is known or passed (`--peak_tflops`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

from experiments.bench.common import (
    PROMPT_TOKENS,
    CompileClock,
    add_model_args,
    decode_bytes,
    ending_summary,
    hbm_bandwidth,
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
from start_jax import rl
from start_jax.data.pipeline import PromptIterator
from start_jax.tokenizer import load_tokenizer
from start_jax.train.trainer import Trainer, check_health

PHASES = ("rollout", "copy+score", "make_batch", "pack", "update", "other host")


def run_step(trainer: Trainer, iterator: PromptIterator, state, step: int):
    """One iteration of `Trainer.run` (see the module docstring), timed by phase.

    Returns (state, seconds per phase, host rollout, rewards, batch, metrics).
    """
    t = dict.fromkeys(PHASES, 0.0)
    clock = time.perf_counter
    start = clock()
    stage = trainer.stage_at(step)
    if state is None or step == stage.start:  # Each stage starts its optimizer afresh.
        state = trainer.states.fresh(
            stage,
            trainer.init_params if state is None else state.params,
            None if state is None else state.critic_params,
        )
    examples = iterator.next_batch()
    t["other host"] += clock() - start
    if hasattr(trainer, "rl_step"):  # The trainer's own step, timed phase by phase.
        state, host, reward, batch, metrics, _ = trainer.rl_step(
            state, examples, step, stage, clock=t
        )
        return state, t, host, reward, batch, metrics

    # A library from before `Trainer.rl_step` (this script run against an older checkout).
    start = clock()
    rollout = jax.block_until_ready(trainer.rollouts(state.params, examples, step, stage))
    t["rollout"] = clock() - start

    start = clock()
    host = jax.device_get(rollout)  # Host view 1: the rollout.
    reward = trainer.score(host, examples, trainer.spec.group_size)
    t["copy+score"] = clock() - start

    start = clock()
    batch = jax.block_until_ready(trainer.make_batch(state, rollout, reward, stage))
    t["make_batch"] = clock() - start

    start = clock()
    # Length groups (`Trainer.widths_of`, as `Trainer.run` passes them; absent in older trees).
    widths = trainer.widths_of(host) if hasattr(trainer, "widths_of") else None
    extra = () if widths is None else (widths,)
    state, metrics = jax.block_until_ready(trainer.update(state, batch, step, stage, *extra))
    t["update"] = clock() - start

    start = clock()
    metrics = rl.check_finite(jax.device_get(metrics), step)  # Host view 2.
    check_health(metrics, step, stage)
    t["other host"] += clock() - start
    return state, t, host, reward, batch, metrics


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--steps", type=int, default=3, help="measured steps")
    parser.add_argument("--warmup", type=int, default=1, help="steps before (compilation)")
    parser.add_argument("--responder", choices=("self", "frozen"), default="self")
    parser.add_argument("--train_segments", choices=("joint", "think", "response"), default="think")
    parser.add_argument("--reward", choices=("exact_match", "math"), default="exact_match")
    parser.add_argument("--learning_rate", type=float, default=1e-5)
    parser.add_argument(
        "--kl_coef", type=float, default=0.0, help="> 0 adds a reference forward to make_batch"
    )
    parser.add_argument("--ppo_epochs", type=int, default=1)
    parser.add_argument("--minibatches", type=int, default=1)
    parser.add_argument("--micro_batches", type=int, default=1)
    parser.add_argument("--remat", action="store_true", help="model.remat in the update")
    parser.add_argument(
        "--length_groups",
        type=int,
        default=2,
        help="algo.length_groups (1 = every row on every column)",
    )
    parser.add_argument(
        "--hbm_tbps",
        type=float,
        default=None,
        help="HBM bandwidth of one device, TB/s, for the decode roofline (default: a table)",
    )
    parser.add_argument(
        "--pack_rows",
        action="store_true",
        help="algo.pack_rows: rollouts packed into fewer rows for the update",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1 (the first step compiles)")

    clock = CompileClock()
    print_environment()
    tmp_dir = tempfile.TemporaryDirectory(prefix="bench_rl_step_")
    tmp = tmp_dir.name
    ckpt = os.path.join(tmp, "checkpoint")
    total_steps = args.warmup + args.steps
    start = time.perf_counter()
    info = write_checkpoint(ckpt, args.model, args.eos_rate, args.end_think_rate, args.seed)
    tasks = make_tasks(load_tokenizer(ckpt), args.prompts * total_steps, args.seed)
    train_path = os.path.join(tmp, "train.jsonl")
    with open(train_path, "w") as fh:
        fh.writelines(json.dumps(t) + "\n" for t in tasks)
    build_s = time.perf_counter() - start
    config = rl_config(ckpt, args, PROMPT_TOKENS[1], train_path, steps=total_steps)

    start, compiled = time.perf_counter(), clock.seconds
    trainer = Trainer(config, os.path.join(tmp, "workdir"))
    setup_s, setup_compile = time.perf_counter() - start, clock.seconds - compiled
    spec = trainer.spec
    iterator = PromptIterator(trainer.train_data, spec.data.prompts_per_step, spec.seed)
    n_params = info["params"]
    rows = spec.rows
    stage = spec.stages[0]
    forwards = (0 if spec.train.on_policy else 1) + (1 if spec.train.loss.kl_coef else 0)

    decode_itemsize = jax.numpy.dtype(trainer.sampler_config.dtype).itemsize
    print("== configuration")
    print_model(info, args)
    print(
        f"checkpoint + tokenizer + calibration + {len(tasks)} JSONL tasks: {build_s:.1f} s; "
        f"Trainer(config) (data set build, checkpoint load): {setup_s:.1f} s "
        f"(of which compiling {setup_compile:.1f} s)"
    )
    print(
        f"step: {spec.data.prompts_per_step} prompts x group {spec.group_size} = {rows} rows; "
        f"think_budget={spec.sampling.think_budget} "
        f"response_budget={spec.sampling.response_budget}; rollout width {spec.width}; "
        f"mesh {dict(trainer.mesh.shape)}; sampler dtype "
        f"{trainer.sampler_config.dtype}, update dtype {trainer.model_config.dtype}"
    )
    print(
        f"stage {stage.name}: train {stage.train_segments}, {stage.responder} responder, "
        f"lr {stage.learning_rate:g}; advantage {spec.advantage.estimator}, loss "
        f"{spec.train.loss.policy_loss} {spec.train.loss.aggregation}, kl_coef "
        f"{spec.train.loss.kl_coef}, ppo_epochs {spec.train.ppo_epochs}, minibatches "
        f"{spec.train.minibatches}, micro_batches {spec.train.micro_batches}, remat "
        f"{trainer.model_config.remat}, length_groups "
        f"{getattr(spec.train, 'length_groups', 1)}, logprob_start "
        f"{getattr(spec.train, 'logprob_start', 0)}, pack_rows "
        f"{getattr(spec.train, 'pack_rows', False)}; reward {spec.reward_name}"
    )
    print(
        f"make_batch runs {forwards} forward(s) (old log-probs: "
        f"{'no, on-policy' if spec.train.on_policy else 'yes'}; reference: "
        f"{'yes' if spec.train.loss.kl_coef else 'no, kl_coef = 0'})"
    )
    print(f"steps: {args.warmup} warm-up + {args.steps} measured")
    sys.stdout.flush()

    state, records = None, []
    for step in range(total_steps):
        compiled, n_compiles = clock.seconds, clock.compiles
        state, t, host, reward, batch, metrics = run_step(trainer, iterator, state, step)
        s = rollout_stats(host, spec.sampling.think_budget)
        s.update(
            t=t,
            total=sum(t.values()),
            compile=clock.seconds - compiled,
            compiles=clock.compiles - n_compiles,
            reward=float(np.mean(reward)),
            loss_tokens=int(np.asarray(jax.device_get(batch.loss_mask)).sum()),
            loss=float(metrics["loss"]),
            packed_rows=metrics.get("packing/rows", 0.0),
            decode_bytes=decode_bytes(host, info["config"], n_params, decode_itemsize),
            warmup=step < args.warmup,
        )
        records.append(s)
        print(
            f"step {step} ({'warm-up' if s['warmup'] else 'measured'}): {s['total']:.2f} s "
            f"(compiling {s['compile']:.2f} s, {s['compiles']} programs), "
            f"{s['generated']} generated, {s['real_tokens']} trained tokens, "
            f"loss {s['loss']:.4f}"
        )
        sys.stdout.flush()
    tmp_dir.cleanup()

    print("== every step (seconds)")
    table = [
        (
            "step",
            "kind",
            *PHASES,
            "total",
            "compiling",
            "generated",
            "trained",
            "think mean",
            "resp mean",
            "reward",
        )
    ]
    for i, s in enumerate(records):
        table.append(
            (
                str(i),
                "warm-up" if s["warmup"] else "measured",
                *(f"{s['t'][p]:.3f}" for p in PHASES),
                f"{s['total']:.3f}",
                f"{s['compile']:.2f}",
                str(s["generated"]),
                str(s["real_tokens"]),
                f"{s['think'].mean():.1f}",
                f"{s['response'].mean():.1f}",
                f"{s['reward']:.3f}",
            )
        )
    print_table(table)

    measured = [s for s in records if not s["warmup"]]
    if any(s["compiles"] for s in measured):
        print("WARNING: a measured step compiled (see 'compiling'); its times include that")
    mean = lambda key: float(np.mean([s[key] for s in measured]))  # noqa: E731
    phase = {p: float(np.mean([s["t"][p] for s in measured])) for p in PHASES}
    step_s = mean("total")
    generated, trained = mean("generated"), mean("real_tokens")
    flops = {
        "rollout": 2.0 * n_params * generated,
        "make_batch": 2.0 * n_params * trained * forwards,
        "update": 6.0 * n_params * trained * spec.train.ppo_epochs,
    }
    peak, peak_src = peak_flops(args.dtype, args.peak_tflops)
    bandwidth, bandwidth_src = hbm_bandwidth(args.hbm_tbps)

    print(f"== phases: means over {len(measured)} measured steps")
    table = [("phase", "seconds", "% of step", "min", "max", "model FLOPs", "FLOP/s", "MFU")]
    for p in PHASES:
        values = [s["t"][p] for s in measured]
        f = flops.get(p)
        table.append(
            (
                p,
                f"{phase[p]:.3f}",
                f"{100 * phase[p] / step_s:.1f}",
                f"{min(values):.3f}",
                f"{max(values):.3f}",
                "" if f is None else si(f, "FLOP"),
                "" if f is None else si(f / phase[p], "FLOP/s"),
                "" if f is None else mfu(f / phase[p], peak),
            )
        )
    total_flops = sum(flops.values())
    table.append(
        (
            "step",
            f"{step_s:.3f}",
            "100.0",
            f"{min(s['total'] for s in measured):.3f}",
            f"{max(s['total'] for s in measured):.3f}",
            si(total_flops, "FLOP"),
            si(total_flops / step_s, "FLOP/s"),
            mfu(total_flops / step_s, peak),
        )
    )
    print_table(table)
    print(
        f"model FLOPs: rollout 2*N*generated; make_batch 2*N*T x {forwards} forward(s); "
        f"update 6*N*T x {spec.train.ppo_epochs} epoch(s); N = {n_params:,} (all parameters), "
        f"T = trained tokens; attention and prefill not counted. Peak: "
        f"{'n/a' if peak is None else si(peak, 'FLOP/s')} ({peak_src})"
    )

    think_end, response_end = ending_summary(measured)
    print("== throughput and shapes (means over the measured steps)")
    summary = [
        ("quantity", "value", "note"),
        (
            "compile (warm-up steps)",
            f"{sum(s['compile'] for s in records if s['warmup']):.1f} s",
            f"+ {setup_compile:.1f} s in Trainer(config); not in the step times",
        ),
        ("step time", f"{step_s:.3f} s", "sum of the phases"),
        (
            "rollout tokens/s",
            f"{generated / phase['rollout']:,.1f}",
            "generated tokens / rollout seconds",
        ),
        (
            "decode HBM bandwidth fraction",
            "n/a"
            if bandwidth is None
            else f"{100 * mean('decode_bytes') / phase['rollout'] / bandwidth:.1f} %",
            f"at least {si(mean('decode_bytes'), 'B')} read / rollout seconds / {bandwidth_src} "
            "(weights once a decode step, each token's cache so far)",
        ),
        (
            "trained tokens/s",
            f"{trained / phase['update']:,.1f}",
            "trained tokens / update seconds",
        ),
        ("generated tokens/s of the step", f"{generated / step_s:,.1f}", "generated / step"),
        ("trained tokens/s of the step", f"{trained / step_s:,.1f}", "trained / step"),
        (
            "generated tokens / step",
            f"{generated:,.0f}",
            f"of {rows} x {spec.sampling.think_budget + 1 + spec.sampling.response_budget} at most",
        ),
        (
            "trained tokens / step",
            f"{trained:,.0f}",
            f"real tokens, prompt incl.; padded positions {rows} x {spec.width} = "
            f"{rows * spec.width:,}"
            + (
                f"; packed into {mean('packed_rows'):.1f} rows (mean)"
                if mean("packed_rows")
                else ""
            ),
        ),
        (
            "loss-mask tokens / step",
            f"{mean('loss_tokens'):,.0f}",
            f"train_segments={stage.train_segments}",
        ),
        ("think tokens", length_summary([s["think"] for s in measured]), think_end),
        ("response tokens", length_summary([s["response"] for s in measured]), response_end),
        (
            "reward mean",
            f"{mean('reward'):.3f}",
            "a random model: about 0 (advantages 0; costs unchanged)",
        ),
    ]
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU.
    if "peak_bytes_in_use" in stats:
        summary.append(
            (
                "peak device memory",
                f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB",
                f"of {stats.get('bytes_limit', 0) / 2**30:.1f} GiB on device 0 (the whole run)",
            )
        )
    print_table(summary)


if __name__ == "__main__":
    main()
