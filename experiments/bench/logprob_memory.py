"""Memory of chunked log-probabilities vs full [B, L, V] logits, for a 150k vocabulary.

Run from the repository root:

    python -m experiments.bench.logprob_memory [--batch 8 --length 1024 --vocab 151936 --chunk 256
        --sweep_chunks 64,128,512 --sweep_lengths 2048,4096 --max_run_gib 8
        --attention auto --attention_lengths 1024,2048,4096,8192,32768 --dense_max_length 32768]

It takes a Qwen3-shaped policy with a Qwen-sized vocabulary (vocab 151936,
hidden 256, MLP 768, 2 layers, 8 query / 4 key-value heads of width 32,
QK-norm, tied embeddings, float32) and a batch of `batch` x `length` tokens,
and compiles, without running, with abstract `jax.ShapeDtypeStruct` arguments:

* (a) train step: `rl.jit_train_step` (PPO token-mean, kl_coef 0.01, AdamW,
  micro_batches 1, logprob_chunk `chunk`; the state is donated);
* (b) chunked grad: `jax.grad` of sum(w * logp) with logp from
  `rl.token_log_probs` (the vocabulary head runs on `chunk` positions at a
  time inside a rematerialised scan);
* (c) naive grad: the same loss with logp from full
  `models.forward(...).logits` [B, L, V], `jax.nn.log_softmax` and a gather;
* (d) trunk-only grad: the same kind of loss on the final hidden states
  (`models.apply(..., heads=False)`), i.e. the trunk's share of (b) and (c)
  (with dense attention, `--attention xla`, it keeps [B, heads, L, L] float32
  scores; the default `auto` picks blockwise attention on CPU for L >= 128,
  whose memory is linear in L);
* and, for reference, the forward passes alone: (b') chunked logp
  (`rl.token_log_probs`) and (c') naive logp (full logits + log_softmax).

For each it prints XLA's compile-time `memory_analysis()` (argument, output,
alias and temporary bytes; the CPU backend's `peak_memory_in_bytes` leaves the
temporaries out, so it is not shown) in an aligned table next to the size of
one full [B, L, V] float32 logits array (B * L * V * 4 bytes) and of one
[B, chunk, V] chunk, with the ratio temp / full logits. Nothing is allocated
for these compilations, so the naive rows need not fit in memory.

A second table repeats (a) to (d) for other chunk sizes at `length`
(`--sweep_chunks`) and for longer sequences at `chunk` (`--sweep_lengths`),
with the ratios to one full logits array and what the chunked head adds to
the trunk-only peak, ((b) - (d)) / (B * chunk * V * 4), in [B, chunk, V]
arrays (temps are peaks, not sums: 0 where the trunk's peak dominates). The
head's addition follows B * chunk * V, the naive one B * L * V; the trunk's
dense-attention temporaries grow with L^2.

Then, if its predicted footprint (arguments + output + temp) is below
`max_run_gib`, it really runs (b) once on random parameters and tokens and
prints the wall time and the process peak RSS (`resource.getrusage`) before
and after the run (`--max_run_gib 0` skips it; the naive path is never run).
It ends with a one-line conclusion giving the temp / full-logits ratios of
(a), (b) and (c), and of the head's share ((b) - (d) and (c) - (d)).

Last, the attention table: (a)'s temporaries at each of `--attention_lengths`
(compile only, at `chunk`) with the attention implementation that
`attention_impl='auto'` picks on this backend (`models.attention.choose_impl`;
blockwise on CPU) and with the dense 'xla' implementation for comparison,
the latter up to `--dense_max_length` (nothing is allocated: its [B, heads, L,
L] scores need not fit; it compiled in about 6 s at every length here), with
the ratio dense / auto and the temporaries per token of the batch.
`--attention_lengths ''` skips it.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.common import abstract_batch, print_table
from start_jax import models, rl, segments
from start_jax.models import attention

GIB = 1024**3


REMAT = True  # Set from --remat: recompute each block in the backward pass.
ATTENTION = "auto"  # Set from --attention: ModelConfig.attention_impl.


def model_config(vocab: int, layers: int, attention_impl: str | None = None) -> models.ModelConfig:
    return models.ModelConfig(
        model_type="qwen3",
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=768,
        num_layers=layers,
        num_heads=8,
        num_kv_heads=4,
        head_dim=32,
        tie_embeddings=True,
        max_position_embeddings=1024,
        remat=REMAT,
        attention_impl=attention_impl or ATTENTION,
        cpu_fast_paths=jax.default_backend() == "cpu",  # As `model.cpu_fast_paths='auto'`.
    )


def naive_log_probs(config: models.ModelConfig, params, tokens, segment_ids):
    """logp [B, L - 1] of tokens[:, 1:] from full [B, L, V] logits (the reference path)."""
    mask = segment_ids != segments.PAD
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    logits = models.forward(
        config, params, tokens, positions=positions, attention_mask=mask
    ).logits  # [B, L, V] float32.
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def trunk_hidden(config: models.ModelConfig, params, tokens, segment_ids):
    """Final-norm hidden states [B, L, D], no vocabulary head (the trunk's share)."""
    mask = segment_ids != segments.PAD
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    return models.apply(
        config, params, tokens, positions=positions, attention_mask=mask, heads=False
    ).hidden


def chunked_log_probs(config, params, tokens, segment_ids, chunk):
    """logp [B, L - 1] of tokens[:, 1:] (the first, always-0 column dropped)."""
    return rl.token_log_probs(config, params, tokens, segment_ids, 1.0, chunk)[0][:, 1:]


def make_variants(config: models.ModelConfig, chunk: int):
    """name -> (function to jit, whether it is differentiated)."""

    def loss(logp_fn):
        def fn(params, tokens, segment_ids, weights):
            return jnp.sum(weights[:, 1:] * logp_fn(params, tokens, segment_ids))

        return fn

    chunked = lambda p, t, s: chunked_log_probs(config, p, t, s, chunk)  # noqa: E731
    naive = lambda p, t, s: naive_log_probs(config, p, t, s)  # noqa: E731
    trunk = lambda p, t, s: trunk_hidden(config, p, t, s)[:, :-1].sum(-1)  # noqa: E731
    return {
        "(b) chunked grad": jax.grad(loss(chunked)),
        "(c) naive grad": jax.grad(loss(naive)),
        "(d) trunk-only grad": jax.grad(loss(trunk)),
        "(b') chunked logp fwd": lambda p, t, s, w: chunked(p, t, s),
        "(c') naive logp fwd": lambda p, t, s, w: naive(p, t, s),
    }


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def shapes(b: int, l: int):
    """Abstract int32 tokens, int32 segment ids and float32 weights [B, L]."""
    return (
        jax.ShapeDtypeStruct((b, l), jnp.int32),
        jax.ShapeDtypeStruct((b, l), jnp.int32),
        jax.ShapeDtypeStruct((b, l), jnp.float32),
    )


def compile_train_step(config: models.ModelConfig, b: int, l: int, chunk: int):
    """(a): `rl.jit_train_step` compiled on abstract state and batch (state donated)."""
    tx = rl.make_optimizer(learning_rate=1e-5, max_grad_norm=1.0)
    train_cfg = rl.TrainConfig(
        loss=rl.LossConfig(kl_coef=0.01), micro_batches=1, logprob_chunk=chunk
    )
    state = jax.eval_shape(lambda p: rl.init_state(p, tx), models.param_shapes(config))
    batch = abstract_batch(b, l)
    return rl.jit_train_step(config, train_cfg, tx).lower(state, batch, jax.random.key(0)).compile()


def compile_variant(fn, param_shapes, b: int, l: int):
    return jax.jit(fn).lower(param_shapes, *shapes(b, l)).compile()


def memory_stats(compiled) -> dict[str, float]:
    m = compiled.memory_analysis()
    out = {
        name: float(getattr(m, f"{name}_size_in_bytes", float("nan")))
        for name in ("argument", "output", "alias", "temp")
    }
    return out


def gib(x: float) -> str:
    return "n/a" if x != x else f"{x / GIB:.3f}"


def max_rss_bytes() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Linux: KiB.


def random_inputs(config, batch: int, length: int, seed: int):
    """Tokens, segment ids (left-padded prompt, think, right-padded response) and weights."""
    rs = np.random.RandomState(seed)
    prompt, think = length // 4, length // 2
    seg = np.zeros((batch, length), np.int32)
    for b in range(batch):
        p = rs.randint(prompt // 2, prompt + 1)
        r = rs.randint((length - prompt - think) // 2, length - prompt - think + 1)
        seg[b, prompt - p : prompt] = segments.PROMPT
        seg[b, prompt : prompt + think] = segments.THINK
        seg[b, prompt + think : prompt + think + r] = segments.RESPONSE
    tokens = rs.randint(5, config.vocab_size, size=(batch, length)).astype(np.int32)
    tokens[seg == segments.PAD] = 0
    weights = ((seg == segments.THINK) | (seg == segments.RESPONSE)).astype(np.float32)
    weights *= rs.randn(batch, 1).astype(np.float32)
    return jnp.asarray(tokens), jnp.asarray(seg), jnp.asarray(weights)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument(
        "--chunk",
        type=int,
        default=16,
        help="head chunk (the library's auto choice for these shapes is 16)",
    )
    parser.add_argument("--remat", type=int, default=1, help="1: remat the decoder blocks")
    parser.add_argument(
        "--max_run_gib",
        type=float,
        default=8.0,
        help="run (b) for real only if args + output + temp is below this (0: never)",
    )
    parser.add_argument(
        "--sweep_chunks",
        default="64,128,512",
        help="extra chunk sizes compiled at --length ('' for none)",
    )
    parser.add_argument(
        "--sweep_lengths",
        default="2048,4096",
        help="extra lengths compiled at --chunk ('' for none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--attention",
        default="auto",
        choices=attention.IMPLS,
        help="ModelConfig.attention_impl of every compile above the attention table",
    )
    parser.add_argument(
        "--attention_lengths",
        default="1024,2048,4096,8192,32768",
        help="lengths of the attention table: (a) with 'auto' vs dense 'xla' "
        "attention ('' for none)",
    )
    parser.add_argument(
        "--dense_max_length",
        type=int,
        default=32768,
        help="longest length the attention table compiles dense attention at",
    )
    args = parser.parse_args(argv)
    global REMAT, ATTENTION
    REMAT = bool(args.remat)
    ATTENTION = args.attention

    config = model_config(args.vocab, args.layers)
    b, l, v = args.batch, args.length, args.vocab
    full_logits = float(b * l * v * 4)
    chunk_logits = float(b * min(args.chunk, l - 1) * v * 4)
    param_shapes = models.param_shapes(config)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(param_shapes))

    print("== environment")
    print(f"python {platform.python_version()}  jax {jax.__version__}  numpy {np.__version__}")
    print(
        f"jax devices: {jax.devices()}  (backend {jax.default_backend()})  "
        f"os.cpu_count() = {os.cpu_count()}"
    )
    print("== configuration")
    print(
        f"model: Qwen3-shaped vocab={v} hidden={config.hidden_size} "
        f"mlp={config.intermediate_size} layers={config.num_layers} heads={config.num_heads} "
        f"kv_heads={config.num_kv_heads} head_dim={config.head_dim} qk_norm tied embeddings, "
        f"float32; {num_params:,} parameters ({num_params * 4 / GIB:.3f} GiB)"
    )
    print(
        f"batch={b} length={l} chunk={args.chunk} remat={REMAT} attention={ATTENTION} "
        f"(at length {l} this runs "
        f"{attention.choose_impl(ATTENTION, l, config.jnp_dtype, q_slots_given=False)})"
    )
    print(
        f"one full [B, L, V] float32 logits array: {b}*{l}*{v}*4 = {full_logits:,.0f} bytes "
        f"= {gib(full_logits)} GiB; one [B, chunk, V] chunk: {gib(chunk_logits)} GiB"
    )
    sys.stdout.flush()

    results = {}
    print("== compile (memory_analysis; nothing is run)")
    start = time.perf_counter()
    results["(a) train step"] = memory_stats(compile_train_step(config, b, l, args.chunk))
    print(f"(a) train step: compiled in {time.perf_counter() - start:.1f} s")
    compiled_b = None
    for name, fn in make_variants(config, args.chunk).items():
        start = time.perf_counter()
        compiled = compile_variant(fn, param_shapes, b, l)
        results[name] = memory_stats(compiled)
        print(f"{name}: compiled in {time.perf_counter() - start:.1f} s")
        if name == "(b) chunked grad":
            compiled_b = compiled
        sys.stdout.flush()

    print("== compile-time memory (GiB)")
    rows = [("variant", "arguments", "output", "alias", "temp", "temp/full logits")]
    for name, m in results.items():
        rows.append(
            (
                name,
                gib(m["argument"]),
                gib(m["output"]),
                gib(m["alias"]),
                gib(m["temp"]),
                f"{m['temp'] / full_logits:.3f}",
            )
        )
    rows.append(("one [B, L, V] f32 logits", "", "", "", gib(full_logits), "1.000"))
    rows.append(
        (
            "one [B, chunk, V] f32 chunk",
            "",
            "",
            "",
            gib(chunk_logits),
            f"{chunk_logits / full_logits:.3f}",
        )
    )
    print_table(rows)
    sys.stdout.flush()

    sweep = [(l, c) for c in parse_ints(args.sweep_chunks) if c != args.chunk]
    sweep += [(n, args.chunk) for n in parse_ints(args.sweep_lengths) if n != l]
    if sweep:
        print(
            "== sweep: temp (GiB) of (a) to (d) vs length and chunk "
            f"(batch {b}, vocab {v}; compile only)"
        )
        rows = [
            (
                "length",
                "chunk",
                "full logits",
                "(a) train",
                "(b) chunked",
                "(c) naive",
                "(d) trunk",
                "(a)/full",
                "(b)/full",
                "(c)/full",
                "(b-d)/chunk",
            )
        ]
        for length, chunk in sorted(set([(l, args.chunk)] + sweep)):
            full = float(b * length * v * 4)
            if (length, chunk) == (l, args.chunk):
                temps = [
                    results[k]["temp"]
                    for k in (
                        "(a) train step",
                        "(b) chunked grad",
                        "(c) naive grad",
                        "(d) trunk-only grad",
                    )
                ]
            else:
                start = time.perf_counter()
                variants = make_variants(config, chunk)
                temps = [memory_stats(compile_train_step(config, b, length, chunk))["temp"]]
                for name in ("(b) chunked grad", "(c) naive grad", "(d) trunk-only grad"):
                    compiled = compile_variant(variants[name], param_shapes, b, length)
                    temps.append(memory_stats(compiled)["temp"])
                print(
                    f"length {length} chunk {chunk}: compiled in "
                    f"{time.perf_counter() - start:.1f} s"
                )
                sys.stdout.flush()
            one_chunk = float(b * min(chunk, length - 1) * v * 4)
            rows.append(
                (
                    str(length),
                    str(chunk),
                    gib(full),
                    *(gib(t) for t in temps),
                    *(f"{t / full:.3f}" for t in temps[:3]),
                    f"{(temps[1] - temps[3]) / one_chunk:.2f}",
                )
            )
        print_table(rows)
        sys.stdout.flush()

    print("== run (b) chunked grad once")
    m = results["(b) chunked grad"]
    need = m["argument"] + m["output"] + m["temp"]
    if need >= args.max_run_gib * GIB:
        print(f"skipped: predicted {gib(need)} GiB >= --max_run_gib {args.max_run_gib}")
    else:
        params = models.init_params(config, jax.random.key(args.seed))
        tokens, seg, weights = random_inputs(config, b, l, args.seed)
        jax.block_until_ready((params, tokens, seg, weights))
        before = max_rss_bytes()
        start = time.perf_counter()
        grads = jax.block_until_ready(compiled_b(params, tokens, seg, weights))
        run_s = time.perf_counter() - start
        after = max_rss_bytes()
        gnorm = float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))))
        print(f"predicted footprint (arguments + output + temp): {gib(need)} GiB")
        print(f"wall time {run_s:.2f} s; grad norm {gnorm:.4f} (finite: {np.isfinite(gnorm)})")
        print(
            f"process peak RSS: {gib(before)} GiB before the run (params, inputs, compiled "
            f"programs), {gib(after)} GiB after; increase {gib(after - before)} GiB "
            f"= {(after - before) / full_logits:.3f} x one full logits array"
        )
    print("(the naive path is not run: its temp above is what it would need)")

    a, bb, c, d = (
        results[k]["temp"]
        for k in ("(a) train step", "(b) chunked grad", "(c) naive grad", "(d) trunk-only grad")
    )
    print(
        f"conclusion: temp / one full [B, L, V] logits array ({gib(full_logits)} GiB) = "
        f"{a / full_logits:.3f} train step, {bb / full_logits:.3f} chunked grad, "
        f"{c / full_logits:.3f} naive grad ({c / max(bb, 1.0):.1f}x the chunked); the head's "
        f"share (minus trunk-only {gib(d)} GiB) is {(bb - d) / full_logits:.3f} chunked "
        f"(= {(bb - d) / chunk_logits:.2f} [B, chunk, V] arrays) vs {(c - d) / full_logits:.3f} "
        f"naive"
    )

    lengths = parse_ints(args.attention_lengths)
    if lengths:
        attention_table(args, lengths)


def attention_table(args, lengths: list[int]) -> None:
    """(a)'s temporaries vs length with 'auto' attention and with dense 'xla' attention."""
    b, v = args.batch, args.vocab
    dtype = model_config(v, args.layers).jnp_dtype
    print(
        f"== attention: (a) train step temp (GiB) vs length (batch {b}, chunk {args.chunk}, "
        f"backend {jax.default_backend()}; compile only)"
    )
    rows = [
        (
            "length",
            "auto runs",
            "(a) auto",
            "(a) dense xla",
            "dense/auto",
            "auto KiB/token",
            "compile auto s",
            "compile dense s",
        )
    ]
    for length in lengths:
        picked = attention.choose_impl("auto", length, dtype, q_slots_given=False)
        temps, secs = {}, {}
        for impl in ("auto", "xla"):
            if impl == "xla" and length > args.dense_max_length:
                continue
            start = time.perf_counter()
            compiled = compile_train_step(model_config(v, args.layers, impl), b, length, args.chunk)
            temps[impl] = memory_stats(compiled)["temp"]
            secs[impl] = time.perf_counter() - start
            print(
                f"length {length} attention {impl}: temp {gib(temps[impl])} GiB, compiled in "
                f"{secs[impl]:.1f} s"
            )
            sys.stdout.flush()
        dense = temps.get("xla", float("nan"))
        rows.append(
            (
                str(length),
                picked,
                gib(temps["auto"]),
                gib(dense),
                f"{dense / temps['auto']:.1f}" if dense == dense else "n/a",
                f"{temps['auto'] / (b * length) / 1024:.1f}",
                f"{secs['auto']:.1f}",
                f"{secs['xla']:.1f}" if "xla" in secs else "-",
            )
        )
    print_table(rows)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
