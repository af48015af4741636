"""Decode throughput: our jitted sampler vs `transformers` `generate`.

Run from the repository root:

    python -m experiments.bench.sampler [--batch 16 --new_tokens 64 --prompt_len 32 --repeats 7]

It builds a ~10M-parameter random Qwen3-shaped checkpoint in a temporary
directory with `transformers`, loads it with `start_jax.checkpoints.load_pretrained`
(float32), and times, on the same checkpoint, batch, prompt ids and token
counts, with sampling on (temperature 1.0, no top-k / top-p) and fixed lengths
(no early stopping):

* ours: `start_jax.sampling.sample` with think_budget = new_tokens - 2 and
  response_budget = 1 (exactly `new_tokens` decode steps) and a logits
  processor that bans `</think>` and eos; the prefix is the prompt plus the
  forced `<think>` token;
* transformers: `model.generate` on the same prompt plus the `<think>` id
  (prompt_len + 1 tokens) with max_new_tokens = min_new_tokens = new_tokens,
  under `torch.no_grad()`.

After one warm-up call per side (ours' includes jit compilation), the timed
calls alternate, ours then transformers, `--repeats` times: a shared machine
whose speed drifts then slows both sides alike instead of whichever ran
during the slow stretch.

It prints the parameter count, jax / torch / transformers versions, devices,
torch threads and the exact configuration; then ours' compile + first-call
time, each side's warm-up and timed call wall times; and finally a table with
the median end-to-end wall time of one call (prefill included) per side,
decode tokens/s = batch * new_tokens / median time, the ratio
ours / transformers in tokens/s (> 1: ours is faster), and the range of the
ratios of the alternating pairs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from experiments.bench.common import print_table
from start_jax import checkpoints, sampling

SPECIAL = sampling.SpecialTokens(think=3, end_think=4, eos=1, pad=0)


def ban_end_think_and_eos(logits, step):
    """Fixed lengths: `</think>` and eos are never drawn.

    Module level, so the same object (a static jit argument) is passed to
    every call and the sampler does not recompile.
    """
    del step
    return logits.at[:, [SPECIAL.end_think, SPECIAL.eos]].set(-jnp.inf)


def build_checkpoint(path: str) -> tuple[transformers.PreTrainedModel, int]:
    config = transformers.Qwen3Config(
        vocab_size=16384,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        eos_token_id=SPECIAL.eos,
        pad_token_id=SPECIAL.pad,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(config).eval()
    model.save_pretrained(path)
    num_params = sum(p.numel() for p in model.parameters())  # Tied weights counted once.
    return model, num_params


def elapsed(fn, i: int) -> float:
    """Wall time of one call fn(i), in seconds."""
    start = time.perf_counter()
    fn(i)
    return time.perf_counter() - start


def fmt_times(times: list[float]) -> str:
    return ", ".join(f"{t:.3f}" for t in times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.new_tokens < 3:
        parser.error("--new_tokens must be >= 3 (think_budget = new_tokens - 2 >= 1)")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)

    with tempfile.TemporaryDirectory(prefix="bench_sampler_") as ckpt:
        hf_model, num_params = build_checkpoint(ckpt)
        # float32; the CPU fast paths where a run's `model.cpu_fast_paths='auto'` takes them.
        config, params = checkpoints.load_pretrained(
            ckpt, cpu_fast_paths=jax.default_backend() == "cpu"
        )
    params = jax.block_until_ready(params)
    num_jax_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))

    rs = np.random.RandomState(args.seed)
    prompt_ids = rs.randint(5, config.vocab_size, size=(args.batch, args.prompt_len))
    prompts = [[int(t) for t in row] for row in prompt_ids]
    think_budget, response_budget = args.new_tokens - 2, 1
    cfg = sampling.SamplingConfig(
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        think_budget=think_budget,
        response_budget=response_budget,
    )
    steps = sampling.num_decode_steps(cfg, any_thinking=True)
    assert steps == args.new_tokens, (steps, args.new_tokens)
    prefix_width = sampling.build_prefix(
        prompts, SPECIAL, response_budget=response_budget
    ).tokens.shape[1]

    hf_input = torch.tensor(
        np.concatenate([prompt_ids, np.full((args.batch, 1), SPECIAL.think)], axis=1),
        dtype=torch.long,
    )
    hf_mask = torch.ones_like(hf_input)

    print("== environment")
    print(
        f"python {platform.python_version()}  jax {jax.__version__}  torch {torch.__version__}"
        f"  transformers {transformers.__version__}"
    )
    print(f"jax devices: {jax.devices()}  (backend {jax.default_backend()})")
    print(
        f"torch device: cpu  torch.get_num_threads() = {torch.get_num_threads()}"
        f"  (os.cpu_count() = {os.cpu_count()})"
    )
    print(f"platform: {platform.platform()}  processor: {platform.processor() or '?'}")
    print("== configuration")
    print(
        f"model: random Qwen3 vocab={config.vocab_size} hidden={config.hidden_size} "
        f"mlp={config.intermediate_size} layers={config.num_layers} heads={config.num_heads} "
        f"kv_heads={config.num_kv_heads} head_dim={config.head_dim} tied embeddings, float32"
    )
    print(f"parameters: {num_params:,} (transformers), {num_jax_params:,} (ours)")
    print(
        f"batch={args.batch} prompt_len={args.prompt_len} new_tokens={args.new_tokens} "
        f"repeats={args.repeats} seed={args.seed}"
    )
    print("sampling: temperature=1.0 top_k=0 top_p=1.0; fixed lengths (no early stop)")
    print(
        f"ours: think_budget={think_budget} response_budget={response_budget} -> {steps} "
        f"decode steps; </think> and eos banned; prefix = prompt + <think> = "
        f"{args.prompt_len + 1} tokens, left-padded to {prefix_width}; KV cache "
        f"{prefix_width + steps} slots"
    )
    print(
        f"transformers: generate(input [{args.batch}, {args.prompt_len + 1}] = prompt + <think>, "
        f"do_sample=True, temperature=1.0, top_k=0, top_p=1.0, "
        f"max_new_tokens=min_new_tokens={args.new_tokens}, pad_token_id={SPECIAL.pad})"
    )
    sys.stdout.flush()

    # --- ours -----------------------------------------------------------------
    def run_ours(i: int):
        rollout = sampling.sample(
            config,
            params,
            prompts,
            cfg,
            args.seed + i,
            SPECIAL,
            logits_processor=ban_end_think_and_eos,
        )
        jax.block_until_ready(rollout.tokens)
        return rollout

    print("== ours (start_jax.sampling.sample)")
    start = time.perf_counter()
    rollout = run_ours(1000)
    ours_first = time.perf_counter() - start
    tokens = np.asarray(rollout.tokens)
    assert tokens.shape == (args.batch, prefix_width + args.new_tokens), tokens.shape
    decoded = tokens[:, prefix_width:]
    assert (decoded != SPECIAL.pad).all(), "a row stopped early"
    assert (np.asarray(rollout.think_length) == think_budget).all()
    print(f"compile + first call: {ours_first:.3f} s")
    sys.stdout.flush()

    # --- transformers ---------------------------------------------------------
    def run_hf(i: int):
        torch.manual_seed(args.seed + i)
        with torch.no_grad():
            return hf_model.generate(
                hf_input,
                attention_mask=hf_mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=SPECIAL.pad,
            )

    print("== transformers (generate)")
    start = time.perf_counter()
    out = run_hf(1000)
    hf_first = time.perf_counter() - start
    assert tuple(out.shape) == (args.batch, args.prompt_len + 1 + args.new_tokens), out.shape
    print(f"warm-up call: {hf_first:.3f} s")
    sys.stdout.flush()

    # --- alternating timed calls ----------------------------------------------
    ours_times, hf_times = [], []
    for i in range(args.repeats):
        ours_times.append(elapsed(run_ours, i))
        hf_times.append(elapsed(run_hf, i))
    print("== timed calls, alternating ours / transformers")
    print(f"ours (s):         {fmt_times(ours_times)}")
    print(f"transformers (s): {fmt_times(hf_times)}")

    # --- summary --------------------------------------------------------------
    decode_tokens = args.batch * args.new_tokens
    ours_med, hf_med = statistics.median(ours_times), statistics.median(hf_times)
    ours_tps, hf_tps = decode_tokens / ours_med, decode_tokens / hf_med
    print("== summary")
    print(
        f"decode tokens per call = batch * new_tokens = {decode_tokens}; times are the median "
        f"of {args.repeats} end-to-end calls (prefill included)"
    )
    rows = [
        ("sampler", "first call s", "median s", "tokens/s"),
        ("ours (jax)", f"{ours_first:.3f}", f"{ours_med:.3f}", f"{ours_tps:.1f}"),
        ("transformers", f"{hf_first:.3f}", f"{hf_med:.3f}", f"{hf_tps:.1f}"),
    ]
    print_table(rows)
    print(f"ratio ours/transformers (tokens/s): {ours_tps / hf_tps:.2f}x")
    pairs = [h / o for o, h in zip(ours_times, hf_times)]
    print(
        f"ratios of the {len(pairs)} alternating pairs: {min(pairs):.2f}x to {max(pairs):.2f}x "
        f"(median {statistics.median(pairs):.2f}x)"
    )
    print("(ours' first call includes jit compilation; transformers' is its warm-up call)")


if __name__ == "__main__":
    main()
