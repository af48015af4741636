"""Train-step throughput and model-FLOP utilisation on this machine's CPU.

Run from the repository root:

    python -m experiments.bench.train_step [--model bench --batch 16 --length 256 \
        --micro_batches 1 --chunk 0 --repeats 5]

The GRPO step on the medium model (batch 16 x (32 prompt + 64 generated)
tokens, no KL, as in the comparison with google-tunix):

    python -m experiments.bench.train_step --model medium --length 96 --prompt 32 --kl_coef 0

and the same with `--skip_prompt_head` (`TrainConfig.logprob_start` = the
prompt width: the vocabulary head does not run on the prompt columns).

`--model bench` (the default) builds a random ~10M-parameter Qwen3-shaped
policy (vocab 16384, hidden 256, MLP 768, 8 layers, 8 query / 4 key-value
heads of width 32, QK-norm, tied embeddings, float32); `--model small` and
`--model medium` are the shapes of `experiments.bench.rollout` (4.2M
parameters with a tied 4,096 vocabulary; 57.9M with an untied 32,000
vocabulary, hidden 512, MLP 1,536, 8 layers, 8 / 4 heads of width 64). The
rollout batch has `batch` rows x `length` tokens laid out like a thinking
rollout: a prompt region of `--prompt` tokens (default length/4; each row's
prompt takes between half and all of it, left-padded), a thinking region of
two thirds of the rest (`<think>` tag forced, and the closing `</think>`
forced by the budget in every other row) and a response region of the
remaining tokens (each row's response takes between half and all of it,
right-padded). Tokens, rewards and per-row advantages are random; old and
reference log-probabilities are the initial policy's own
(`rl.rollout_log_probs`), so PPO ratios start at 1. The loss is PPO
token-mean on the `joint` mask with `--kl_coef` (default 0.01).

`rl.jit_train_step` is lowered and compiled ahead of time (both timed), run
once as a warm-up, then `repeats` more times; every call is blocked on.

It prints the environment, the configuration, parameter counts, the compile
and warm-up times and every timed step, then an aligned table with:

* tokens/s = batch * length / median step time (padding positions included);
* model FLOPs per step = 6 * N_trunk * T + 6 * N_head * T_head + 12 * layers
  * L^2 * heads * head_dim * B, where N counts every matmul weight (embedding
  lookups are gathers, not matmuls), T = B * L, and T_head = B * (L - s) the
  positions the vocabulary head runs on (s = 1, or the prompt width with
  `--skip_prompt_head`); the attention term counts the full L x L score and
  value products, which the dense masked attention computes;
* hardware FLOPs per step = model FLOPs, + 2 * D * V * T_head when the head
  runs in chunks (`logprob_chunk` < its positions: the backward pass
  recomputes each chunk's logits); with fewer positions the head runs as one
  matmul and keeps its logits;
* XLA's own `cost_analysis()` flop count of the compiled step, for reference
  only: XLA counts each while-loop (scan) body once, not once per trip, so it
  undercounts the layer scan (and the chunk scan when the head is chunked);
* the achieved model and hardware FLOP/s, and this CPU's float32 matmul peak,
  measured in the same process as the median of `peak_repeats` jitted
  peak_size^3 matmuls on all cores, with the achieved fraction of that peak.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.common import MODELS, print_table
from start_jax import models, rl, segments
from start_jax.rl import logprobs

THINK_TAG, END_THINK_TAG = 3, 4


BENCH_MODEL = dict(
    vocab_size=16384,
    hidden_size=256,
    intermediate_size=768,
    num_layers=8,
    num_heads=8,
    num_kv_heads=4,
    head_dim=32,
    tie_embeddings=True,
)


def model_config(name: str = "bench") -> models.ModelConfig:
    fields = BENCH_MODEL if name == "bench" else MODELS[name]
    return models.ModelConfig(
        model_type="qwen3",
        max_position_embeddings=4096,
        cpu_fast_paths=jax.default_backend() == "cpu",  # As `model.cpu_fast_paths='auto'`.
        **fields,
    )


def regions(length: int, prompt: int | None = None) -> tuple[int, int, int]:
    """(prompt, think, response) widths of a rollout of `length` columns."""
    prompt = length // 4 if prompt is None else prompt
    think = (length - prompt) * 2 // 3
    return prompt, think, length - prompt - think


def build_batch(
    config: models.ModelConfig,
    params,
    batch: int,
    length: int,
    chunk: int,
    seed: int,
    prompt: int | None = None,
) -> rl.Batch:
    """A realistic thinking-rollout batch; see the module docstring."""
    rs = np.random.RandomState(seed)
    prompt, think, response = regions(length, prompt)
    if min(prompt, think, response) < 2:
        raise ValueError(f"--length {length} is too short for prompt/think/response regions")
    seg = np.zeros((batch, length), np.int32)
    forced = np.zeros((batch, length), bool)
    tokens = rs.randint(5, config.vocab_size, size=(batch, length)).astype(np.int32)
    for b in range(batch):
        p = rs.randint(prompt // 2, prompt + 1)  # Left-padded prompt.
        seg[b, prompt - p : prompt] = segments.PROMPT
        seg[b, prompt : prompt + think] = segments.THINK
        tokens[b, prompt] = THINK_TAG
        forced[b, prompt] = True  # `<think>` is written by rule.
        tokens[b, prompt + think - 1] = END_THINK_TAG
        forced[b, prompt + think - 1] = b % 2 == 0  # Budget-forced `</think>`.
        r = rs.randint(response // 2, response + 1)  # Right-padded response.
        seg[b, prompt + think : prompt + think + r] = segments.RESPONSE
    tokens[seg == segments.PAD] = 0
    seg_j, forced_j = jnp.asarray(seg), jnp.asarray(forced)
    mask = rl.loss_mask(seg_j, forced_j, "joint")
    kl = rl.kl_mask(seg_j, forced_j, "joint")
    rewards = rs.randint(0, 2, size=batch).astype(np.float32)
    adv_rows = rs.randn(batch).astype(np.float32)
    advantages = jnp.where(mask, jnp.asarray(adv_rows)[:, None], 0.0)
    tokens_j = jnp.asarray(tokens)
    old = rl.rollout_log_probs(config, params, tokens_j, seg_j, 1.0, chunk)
    zeros = jnp.zeros((batch, length), jnp.float32)
    return rl.Batch(
        tokens=tokens_j,
        segment_ids=seg_j,
        loss_mask=mask,
        kl_mask=kl,
        advantages=advantages,
        old_logprobs=old,
        ref_logprobs=old,
        returns=zeros,
        old_values=zeros,
        rewards=jnp.asarray(rewards),
    )


def matmul_peak(size: int, repeats: int) -> tuple[float, list[float]]:
    """Median float32 FLOP/s of a jitted [size, size] @ [size, size] matmul."""
    k1, k2 = jax.random.split(jax.random.key(123))
    a = jax.random.normal(k1, (size, size), jnp.float32)
    b = jax.random.normal(k2, (size, size), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(mm(a, b))  # Compile + warm-up.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(times), times


def flops_per_step(
    config: models.ModelConfig, batch: int, length: int, start: int = 1, head_chunked: bool = False
) -> dict[str, float]:
    """Model and hardware FLOPs of one step; the head runs on columns start..length-1."""
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    n, k, h, layers = config.num_heads, config.num_kv_heads, config.head_dim, config.num_layers
    per_layer = d * n * h + 2 * d * k * h + n * h * d + 3 * d * f
    n_trunk = layers * per_layer
    n_head = d * v
    t = batch * length
    t_head = batch * (length - start)
    dense = 6.0 * n_trunk * t + 6.0 * n_head * t_head
    attention = 12.0 * layers * length**2 * n * h * batch
    model = dense + attention
    return dict(
        n_trunk=n_trunk,
        n_head=n_head,
        dense=dense,
        attention=attention,
        model=model,
        hardware=model + (2.0 * n_head * t_head if head_chunked else 0.0),
    )


def fmt_times(times: list[float]) -> str:
    return ", ".join(f"{t:.3f}" for t in times)


def si(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bench", choices=["bench", *MODELS])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument(
        "--prompt", type=int, default=None, help="prompt region width (default length/4)"
    )
    parser.add_argument("--micro_batches", type=int, default=1)
    parser.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="logprob_chunk positions (0: auto, see rl.logprobs.auto_chunk)",
    )
    parser.add_argument("--kl_coef", type=float, default=0.01)
    parser.add_argument(
        "--skip_prompt_head",
        action="store_true",
        help="TrainConfig.logprob_start = the prompt width",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="compute dtype (parameters stay float32)",
    )
    parser.add_argument(
        "--remat", action="store_true", help="model.remat: blocks recomputed in the backward"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak_size", type=int, default=2048)
    parser.add_argument("--peak_repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.peak_repeats < 1:
        parser.error("--repeats and --peak_repeats must be >= 1")
    if args.batch % args.micro_batches:
        parser.error("--batch must be divisible by --micro_batches")
    prompt, think, response = regions(args.length, args.prompt)
    if min(prompt, think, response) < 2:
        parser.error(
            f"--length {args.length} with --prompt {prompt} is too short for "
            "prompt/think/response regions"
        )

    config = model_config(args.model).replace(dtype=args.dtype, remat=args.remat)
    params = models.init_params(config, jax.random.key(args.seed))
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    start = prompt if args.skip_prompt_head else 0
    head_positions = args.length - max(start, 1)
    rows = args.batch // args.micro_batches
    chunk = args.chunk or logprobs.auto_chunk(rows, config.vocab_size, head_positions)
    head_chunked = chunk < head_positions
    fl = flops_per_step(config, args.batch, args.length, max(start, 1), head_chunked)
    tx = rl.make_optimizer(learning_rate=1e-5, max_grad_norm=1.0)
    train_cfg = rl.TrainConfig(
        loss=rl.LossConfig(kl_coef=args.kl_coef),
        micro_batches=args.micro_batches,
        logprob_chunk=args.chunk,
        logprob_start=start,
    )
    batch = build_batch(config, params, args.batch, args.length, args.chunk, args.seed, prompt)
    seg = np.asarray(batch.segment_ids)
    state = rl.init_state(params, tx)
    rng = jax.random.key(args.seed + 1)
    tokens = args.batch * args.length

    print("== environment")
    print(f"python {platform.python_version()}  jax {jax.__version__}  numpy {np.__version__}")
    print(
        f"jax devices: {jax.devices()}  (backend {jax.default_backend()})  "
        f"os.cpu_count() = {os.cpu_count()}"
    )
    print(f"platform: {platform.platform()}  processor: {platform.processor() or '?'}")
    print("== configuration")
    tied = "tied" if config.tie_embeddings else "untied"
    print(
        f"model: {args.model}, random Qwen3 vocab={config.vocab_size} "
        f"hidden={config.hidden_size} mlp={config.intermediate_size} "
        f"layers={config.num_layers} heads={config.num_heads} kv_heads={config.num_kv_heads} "
        f"head_dim={config.head_dim} qk_norm {tied} embeddings, float32 parameters, "
        f"{args.dtype} compute{', remat' if args.remat else ''}"
    )
    print(
        f"parameters: {num_params:,} total; matmul weights: {fl['n_trunk']:,} trunk "
        f"+ {fl['n_head']:,} {tied} head = {fl['n_trunk'] + fl['n_head']:,}"
    )
    print(
        f"batch={args.batch} length={args.length} (prompt {prompt}, think {think}, response "
        f"{response}) micro_batches={args.micro_batches} logprob_chunk={args.chunk} "
        f"logprob_start={start} repeats={args.repeats}"
    )
    print(
        f"vocabulary head: {head_positions} positions per row, "
        + (
            f"chunks of {chunk} (logits recomputed in the backward pass)"
            if head_chunked
            else "one matmul (logits kept for the backward pass)"
        )
    )
    counts = {name: int((seg == sid).sum()) for sid, name in segments.NAMES.items()}
    print(f"segment tokens: {counts}; loss-mask tokens: {int(np.asarray(batch.loss_mask).sum())}")
    print(
        f"train: PPO token-mean, kl_coef={args.kl_coef} (k3), AdamW lr=1e-5, clip 1.0, 1 epoch "
        "x 1 minibatch (on-policy)"
    )
    sys.stdout.flush()

    print("== train step (rl.jit_train_step)")
    step = rl.jit_train_step(config, train_cfg, tx)
    start = time.perf_counter()
    lowered = step.lower(state, batch, rng)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    print(f"lower: {lower_s:.3f} s  compile: {compile_s:.3f} s")
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        xla_flops = float(cost.get("flops", float("nan")))
    except Exception as e:  # noqa: BLE001 - diagnostics only.
        print(f"cost_analysis unavailable: {e!r}")
        xla_flops = float("nan")

    def run(st, i):
        st, metrics = compiled(st, batch, jax.random.fold_in(rng, i))
        jax.block_until_ready((st, metrics))
        return st, metrics

    start = time.perf_counter()
    state, metrics = run(state, 0)
    warm_s = time.perf_counter() - start
    first = rl.check_finite(metrics, 0)
    print(
        f"warm-up step: {warm_s:.3f} s  (loss {first['loss']:.5f}, approx_kl "
        f"{first['approx_kl']:.2e}, l2_grads {first['l2_grads']:.4f})"
    )
    times = []
    for i in range(1, args.repeats + 1):
        start = time.perf_counter()
        state, metrics = run(state, i)
        times.append(time.perf_counter() - start)
    last = rl.check_finite(metrics, args.repeats)
    print(f"timed steps (s): {fmt_times(times)}  (last loss {last['loss']:.5f})")
    sys.stdout.flush()

    print(
        f"== float32 matmul peak ({args.peak_size}x{args.peak_size} @ "
        f"{args.peak_size}x{args.peak_size}, jitted)"
    )
    peak, peak_times = matmul_peak(args.peak_size, args.peak_repeats)
    print(f"timed matmuls (s): {fmt_times(peak_times)}")

    med = statistics.median(times)
    model_fs, hw_fs = fl["model"] / med, fl["hardware"] / med
    print("== summary")
    print(
        f"T = batch * length = {tokens} tokens per step; step time is the median of "
        f"{args.repeats} steps after the warm-up"
    )
    rows = [
        ("quantity", "value", "note"),
        ("compile (lower + compile)", f"{lower_s + compile_s:.2f} s", "ahead of time"),
        ("warm-up step", f"{warm_s:.3f} s", "first call, compiled"),
        ("median step time", f"{med:.3f} s", f"min {min(times):.3f}, max {max(times):.3f}"),
        ("train tokens/s", f"{tokens / med:,.0f}", "B*L / median step"),
        (
            "model FLOPs / step",
            si(fl["model"], "FLOP"),
            "6*N_trunk*T + 6*N_head*T_head + 12*layers*L^2*heads*head_dim*B",
        ),
        ("  of which 6*N*T", si(fl["dense"], "FLOP"), "N = all matmul weights incl. the head"),
        ("  of which attention", si(fl["attention"], "FLOP"), "full L x L (dense mask)"),
        (
            "hardware FLOPs / step",
            si(fl["hardware"], "FLOP"),
            "+ 2*D*V*T_head head remat" if head_chunked else "head not recomputed",
        ),
        ("XLA cost_analysis FLOPs", si(xla_flops, "FLOP"), "scan bodies counted once: undercount"),
        ("achieved model FLOP/s", si(model_fs, "FLOP/s"), ""),
        ("achieved hardware FLOP/s", si(hw_fs, "FLOP/s"), ""),
        (
            "f32 matmul peak (measured)",
            si(peak, "FLOP/s"),
            f"median of {args.peak_repeats}, {args.peak_size}^3",
        ),
        ("model FLOP utilisation", f"{100 * model_fs / peak:.1f} %", "model FLOP/s / peak"),
        ("hardware FLOP utilisation", f"{100 * hw_fs / peak:.1f} %", "hardware FLOP/s / peak"),
    ]
    print_table(rows)


if __name__ == "__main__":
    main()
