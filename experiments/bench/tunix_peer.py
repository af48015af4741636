"""google-tunix on the same work as this project's benchmarks: decoding and the GRPO update.

What it measures, on a random-initialised Qwen3 of one of `experiments.bench.common.MODELS`'s
shapes built with tunix's own classes (`tunix.models.qwen3.model.ModelConfig` and `Qwen3`,
weights from `nnx.Rngs(--seed)`; nothing is downloaded):

* decode: `tunix.Sampler` (`tunix.generate.sampler.Sampler` with a `CacheConfig` of exactly
  prompt + new tokens slots) called on `--batch` random prompts of `--prompt_len` token ids
  each, generating `--new_tokens` tokens a row with temperature 1 (`top_p=1.0`, `top_k=None`:
  tunix's plain categorical draw; without `top_p` it decodes greedily). The eos id given
  (`eos_tokens=[vocab_size]`) is outside the vocabulary, so no row stops early and every
  row decodes every step. The sampler takes text: a tokenizer of decimal id words
  (`IdTokenizer`, the encode/decode/bos_id/eos_id/pad_id interface that
  `tunix.TokenizerAdapter` accepts) turns the ids into strings and back, so each call also
  pays tunix's own host work (tokenising, the final `device_get`, detokenising). Reported:
  generated tokens/s = batch x new_tokens / median call seconds (prefill included), and the
  fraction of the HBM bandwidth roofline (`--hbm_gbps`, or `--hbm_tbps` as `rl_step` takes
  it; by default the device table of `experiments.bench.common.hbm_bandwidth`).
* update: tunix's GRPO loss (`tunix.rl.function_registry.get_policy_loss_fn("grpo")`, i.e.
  `tunix.rl.algo_core.grpo_loss_fn`) with a `tunix.GRPOConfig`, differentiated and applied
  by tunix's RL trainer (`tunix.rl.trainer.Trainer`, the actor trainer `tunix.RLCluster`
  builds for `tunix.GRPOLearner`, wired with `with_loss_fn(..., has_aux=True)` and
  `with_gen_model_input_fn` as `GRPOLearner.__init__` wires it) and its public jitted step
  `Trainer.jit_train_and_eval_step(cache_nnx_graph=True)` (what `Trainer.train` calls each
  step: `nnx.value_and_grad` of the loss, the global norm and `nnx.Optimizer.update`).
  The GRPO learner itself needs an `RLCluster` with rollout and reward models and a data
  loop, so it is not used; the step timed is the same compiled function its `train` runs,
  without the data iterator, metric buffering, progress bar and checkpoint calls around it.
  Optimizer: `optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5,
  weight_decay=0))` (the project's `rl.make_optimizer` defaults); `--micro_batches k` sets
  `TrainingConfig.gradient_accumulation_steps = k` (tunix's `optax.MultiSteps`) and one
  update is k calls of the step on batch/k rows. The batch is laid out like
  `experiments.bench.train_step`'s: a prompt region of `--prompt` columns (each row's prompt
  takes between half and all of it, left-padded), then the completion: a thinking region of
  two thirds of the rest, always full, and a response region of the remaining columns
  (each row's response takes between half and all of it, right-padded). The completion mask
  is the completion's real tokens; tokens and per-row advantages are random; the update is
  on-policy (`old_per_token_logps=None`, as `GRPOLearner` passes with `num_iterations=1`);
  with `--kl_coef` > 0 (tunix's beta) the reference log-probabilities are the initial
  policy's own (`tunix.rl.common.compute_per_token_logps`, not timed). Reported: tokens/s =
  batch x length / median update seconds (padding included, as train_step's), the real
  (non-pad) tokens/s, and MFU = 6 x N x batch x length / seconds / peak, with N = every
  parameter of the model and the peak `--peak_tflops` (by default the device table of
  `experiments.bench.common.peak_flops` for the compute dtype).

Each phase runs `--warmup` untimed calls (default 2: the first compiles, and tunix's sampler
compiles one more small op, the `jnp.array` of the eos ids, on its second call), then
`--repeats` timed calls, each blocked on (the sampler returns host arrays; the update waits
for the loss, metrics and the model's state). Compile seconds are read from `jax.monitoring`
and a timed call that compiled is flagged. Attention and prefill FLOPs are not counted.

Decode roofline (the same count as `experiments.bench.rl_step`'s decode bytes): with N
parameters, s the compute dtype's bytes (2 for bfloat16, 4 for float32), B rows, P prompt
tokens, G new tokens, layers Ly, KV heads K and head width D, one decode step reads at least

    bytes/step = N * s + B * (P + (G + 1) / 2) * 2 * Ly * K * D * s

(the weights once, and every row's keys and values at the mean context length P + (G+1)/2),
and the fraction is G * bytes/step / seconds / the HBM bytes/s. tunix keeps the
parameters in `--param_dtype` (float32 by default, as this project does) and casts them
in each step, and its dense decode attention reads all P + G cache slots every step; the
table also shows the fraction with the whole cache read (B * (P + G) slots a step).

Run from the repository root with the Python that has tunix (a separate environment; tunix
is not one of this project's requirements), e.g. on this project's 2-core CPU (about 20 s,
half of it compiling):

    python -m venv /work/tunix_venv && /work/tunix_venv/bin/pip install google-tunix==0.1.7
    cd /work/main && /work/tunix_venv/bin/python -m experiments.bench.tunix_peer \\
        --model small --batch 4 --prompt_len 32 --new_tokens 32 --repeats 3

and on one H200 (the update on 64 x 1280 tokens in 8 micro-batches; alternate it with
`python -m experiments.bench.rl_step` / `train_step` on the same shapes):

    python -m experiments.bench.tunix_peer --model qwen3_1_7b --dtype bfloat16 --batch 64 \\
        --prompt_len 256 --new_tokens 1024 --micro_batches 8 --repeats 3 \\
        --hbm_gbps 4800 --peak_tflops 989

(`--phases decode` or `--phases update` runs one half; `--remat block` or more micro-batches
if the update does not fit.)

Carrying tunix to a machine without internet (here pip works, there it does not): download
the wheels into a folder that git ignores (e.g. `.whl/`, listed in `.git/info/exclude`), carry
it with the repository, and there run `python3 -m pip install -q --no-index --no-deps
--target /tmp/site .whl/*.whl` and `export PYTHONPATH=/tmp/site` before this script:

    pip download google-tunix==0.1.7 --no-deps -d .whl/

plus those of its modules and this project's that the machine lacks (`--no-deps` fetches
none). This script imports tunix's package `__init__`, which loads most of tunix: jax,
flax, optax, orbax-checkpoint, numpy, etils, jaxtyping, sentencepiece, safetensors,
huggingface_hub, tensorstore, treescope, pandas, pyarrow, pillow, protobuf, rich, tqdm,
msgpack, simplejson, humanize, uvloop, wrapt, PyYAML, and clu, google-metrax, perfetto,
tensorboardX; `experiments.bench.common` (shapes, tables, printing) loads this project's
runtime requirements. A GPU image with jax, flax, optax, orbax-checkpoint, tokenizers,
transformers and the usual scientific stack (as on the H200 of docs/benchmarks.md) lacks only
these, all pure-Python wheels, 6.6 MiB together (checked here: an environment holding only
that image's packages plus these ran this script). tunix's side:

    google_tunix-0.1.7-py3-none-any.whl                493 KiB
    clu-0.0.12-py3-none-any.whl                         99 KiB
    google_metrax-0.2.4-py3-none-any.whl                46 KiB
    perfetto-0.59.1-py3-none-any.whl                   347 KiB
    tensorboardx-2.6.5-py3-none-any.whl                 85 KiB
    googleapis_common_protos-1.76.0-py3-none-any.whl   300 KiB

this project's side (its own benchmarks need these there too):

    ml_collections-1.1.0-py3-none-any.whl               75 KiB
    tensorflow_datasets-4.9.10-py3-none-any.whl       5213 KiB
    tensorflow_metadata-1.21.0-py3-none-any.whl         30 KiB
    immutabledict-4.3.1-py3-none-any.whl                 5 KiB
    promise-2.3-py3-none-any.whl                        21 KiB  (PyPI has only an sdist:
    toml-0.10.2-py2.py3-none-any.whl                    16 KiB   `pip wheel --no-deps`)

(`pip download --no-deps -d .whl/ NAME==VERSION` for each; tunix's other requirements,
e.g. grain, datasets, qwix, kagglehub, omegaconf, are not imported on this path).
That image's jax (0.11.x) is newer than the 0.10.2 this script was checked with here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tunix
from flax import nnx
from tunix.models.qwen3 import model as qwen3_lib
from tunix.rl import common as rl_common
from tunix.rl import function_registry
from tunix.rl import trainer as rl_trainer
from tunix.rl.grpo import grpo_learner
from tunix.sft import peft_trainer

from experiments.bench.common import (
    MODELS,
    CompileClock,
    hbm_bandwidth,
    peak_flops,
    print_table,
    si,
)

PAD_ID, EOS_ID = 0, 1  # Random tokens are drawn from FIRST_ID.. so neither occurs in a prompt.
FIRST_ID = 2


class IdTokenizer:
    """Token ids as decimal words: the interface `tunix.TokenizerAdapter` takes from a
    tokenizer that is neither SentencePiece nor Hugging Face."""

    def encode(self, text: str, **kwargs) -> list[int]:
        del kwargs
        return [int(word) for word in text.split()]

    def decode(self, ids, **kwargs) -> str:
        del kwargs
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self):
        return None  # No BOS is prepended.

    def eos_id(self) -> int:
        return EOS_ID

    def pad_id(self) -> int:
        return PAD_ID


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def tunix_config(args, remat: str = "none") -> qwen3_lib.ModelConfig:
    """tunix's Qwen3 config of `MODELS[args.model]` (Qwen3's rope theta and norm epsilon)."""
    shape = MODELS[args.model]
    return qwen3_lib.ModelConfig(
        num_layers=shape["num_layers"],
        vocab_size=shape["vocab_size"],
        embed_dim=shape["hidden_size"],
        hidden_dim=shape["intermediate_size"],
        num_heads=shape["num_heads"],
        head_dim=shape["head_dim"],
        num_kv_heads=shape["num_kv_heads"],
        rope_theta=1_000_000,
        norm_eps=1e-6,
        use_tied_embedding=shape["tie_embeddings"],
        remat_config=qwen3_lib.RematConfig[remat.upper()],
        dtype=jnp.dtype(args.dtype),
        param_dtype=jnp.dtype(args.param_dtype),
    )


def timed(fn, warmup: int, repeats: int, clock: CompileClock, label: str) -> dict:
    """`warmup` calls of fn(i), then `repeats` timed calls; each call's seconds printed."""
    records = []
    for i in range(warmup + repeats):
        compiled, n = clock.seconds, clock.compiles
        start = time.perf_counter()
        note = fn(i)
        seconds = time.perf_counter() - start
        rec = dict(seconds=seconds, compile=clock.seconds - compiled, compiles=clock.compiles - n)
        records.append(rec)
        kind = "warm-up" if i < warmup else "timed"
        print(
            f"{label} call {i} ({kind}): {seconds:.3f} s (compiling {rec['compile']:.2f} s, "
            f"{rec['compiles']} programs){note}"
        )
        sys.stdout.flush()
    timed_records = records[warmup:]
    times = [r["seconds"] for r in timed_records]
    if any(r["compiles"] for r in timed_records):
        print(f"WARNING: a timed {label} call compiled; its time includes that")
    return dict(
        warm=dict(
            seconds=sum(r["seconds"] for r in records[:warmup]),
            compile=sum(r["compile"] for r in records[:warmup]),
        ),
        times=times,
        median=statistics.median(times),
        min=min(times),
    )


# --------------------------------------------------------------------------- decode


def build_model(args, remat: str) -> qwen3_lib.Qwen3:
    """The random model (the same weights for every `remat`: one seed), built eagerly."""
    start = time.perf_counter()
    model = qwen3_lib.Qwen3(tunix_config(args, remat), rngs=nnx.Rngs(args.seed))
    jax.block_until_ready(nnx.state(model))
    print(f"model built in {time.perf_counter() - start:.1f} s (remat {remat})")
    return model


def run_decode(args, config, clock) -> dict:
    rows, p, g = args.batch, args.prompt_len, args.new_tokens
    # tunix's sampler cannot run a rematerialised model (nnx.remat inside its jax.jit
    # raises a TraceContextError), so decoding always uses RematConfig.NONE.
    model = build_model(args, "none")
    cache = tunix.CacheConfig(
        cache_size=p + g,
        num_layers=config.num_layers,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
    )
    sampler = tunix.Sampler(transformer=model, tokenizer=IdTokenizer(), cache_config=cache)
    rs = np.random.RandomState(args.seed)
    generated = []

    def call(i: int) -> str:
        ids = rs.randint(FIRST_ID, config.vocab_size, size=(rows, p))
        out = sampler(
            [" ".join(map(str, row)) for row in ids],
            max_generation_steps=g,
            max_prompt_length=p,
            temperature=1.0,
            top_p=1.0,
            top_k=None,
            eos_tokens=[config.vocab_size],  # Outside the vocabulary: no row stops early.
            seed=args.seed + i,
        )
        lengths = [len(t) for t in out.tokens]
        generated.append(sum(lengths))
        return f", {sum(lengths)} tokens generated (rows {min(lengths)}-{max(lengths)})"

    print(f"== decode (tunix.Sampler: {rows} rows x {p} prompt + {g} new tokens, cache {p + g})")
    result = timed(call, args.warmup, args.repeats, clock, "decode")
    if any(n != rows * g for n in generated):
        print(f"WARNING: a call generated other than {rows} x {g} tokens: {generated}")
    result["generated"] = rows * g
    return result


# --------------------------------------------------------------------------- update


def regions(length: int, prompt: int) -> tuple[int, int, int]:
    """(prompt, think, response) widths, as `experiments.bench.train_step.regions`."""
    think = (length - prompt) * 2 // 3
    return prompt, think, length - prompt - think


def build_example(args, config, length: int, prompt: int) -> grpo_learner.TrainExample:
    """The random update batch described in the module docstring (no reference yet)."""
    rs = np.random.RandomState(args.seed + 1)
    rows = args.batch
    prompt, think, response = regions(length, prompt)
    prompt_ids = np.full((rows, prompt), PAD_ID, np.int32)
    completion_ids = np.full((rows, length - prompt), PAD_ID, np.int32)
    for b in range(rows):
        n = rs.randint(prompt // 2, prompt + 1)  # Left-padded prompt.
        prompt_ids[b, prompt - n :] = rs.randint(FIRST_ID, config.vocab_size, n)
        n = think + rs.randint(response // 2, response + 1)  # Right-padded completion.
        completion_ids[b, :n] = rs.randint(FIRST_ID, config.vocab_size, n)
    return grpo_learner.TrainExample(
        prompt_ids=jnp.asarray(prompt_ids),
        prompt_mask=jnp.asarray(prompt_ids != PAD_ID, jnp.int32),
        completion_ids=jnp.asarray(completion_ids),
        completion_mask=jnp.asarray(completion_ids != PAD_ID, jnp.int32),
        advantages=jnp.asarray(rs.randn(rows).astype(np.float32)),
        ref_per_token_logps=None,
        old_per_token_logps=None,
    )


def run_update(args, config, clock, length: int, prompt: int) -> dict:
    k = args.micro_batches
    model = build_model(args, args.remat)
    example = build_example(args, config, length, prompt)
    if args.kl_coef > 0:  # The initial policy's own log-probabilities as the reference.
        graphdef, state = nnx.split(model)
        ref = rl_common.compute_per_token_logps(
            graphdef,
            state,
            prompt_tokens=example.prompt_ids,
            completion_tokens=example.completion_ids,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
        )
        example = example.replace(ref_per_token_logps=ref)
    algo = tunix.GRPOConfig(
        num_generations=8,  # Unused by the loss (the advantages are given).
        num_iterations=1,
        beta=args.kl_coef,
        epsilon=0.2,
        loss_agg_mode=args.loss_agg_mode,
    )
    algo.temperature = 1.0  # What GRPOLearner copies from the rollout config.
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(args.learning_rate, weight_decay=0.0)
    )
    trainer = rl_trainer.Trainer(
        model=model,
        optimizer=tx,
        training_config=peft_trainer.TrainingConfig(
            eval_every_n_steps=10**9, gradient_accumulation_steps=k if k > 1 else None
        ),
        custom_checkpoint_metadata_fn=dict,
    )
    policy_loss = function_registry.get_policy_loss_fn("grpo")
    trainer.with_loss_fn(
        lambda model, train_example, algo_config: policy_loss(
            model, train_example, algo_config=algo_config, pad_id=PAD_ID, eos_id=EOS_ID
        ),
        has_aux=True,
    )
    trainer.with_gen_model_input_fn(lambda x: {"train_example": x, "algo_config": algo})
    train_step, _ = trainer.jit_train_and_eval_step(cache_nnx_graph=True)
    micro = args.batch // k
    parts = [jax.tree.map(lambda x, j=j: x[j * micro : (j + 1) * micro], example) for j in range(k)]
    real = int(np.asarray(example.prompt_mask).sum() + np.asarray(example.completion_mask).sum())
    loss_tokens = int(np.asarray(example.completion_mask).sum())

    def call(i: int) -> str:
        del i
        for part in parts:
            loss, aux, grad_norm = train_step(part)
        jax.block_until_ready((loss, aux, grad_norm, nnx.state(model)))
        return (
            f", loss {float(loss):.5f}, grad_norm {float(grad_norm):.4f}, "
            f"entropy {float(aux['entropy']):.4f}"
        )

    print(
        f"== update (tunix GRPO loss + grad + AdamW: {args.batch} rows x {length} tokens "
        f"in {k} micro-batch(es))"
    )
    result = timed(call, args.warmup, args.repeats, clock, "update")
    result.update(tokens=args.batch * length, real=real, loss_tokens=loss_tokens)
    return result


# --------------------------------------------------------------------------- main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype"
    )
    parser.add_argument(
        "--param_dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="parameter storage dtype (float32, as the project keeps them)",
    )
    parser.add_argument("--phases", choices=("both", "decode", "update"), default="both")
    parser.add_argument("--batch", type=int, default=4, help="rows (decode and update)")
    parser.add_argument("--prompt_len", type=int, default=32, help="decode prompt tokens")
    parser.add_argument("--new_tokens", type=int, default=32, help="decode tokens per row")
    parser.add_argument(
        "--length",
        type=int,
        default=None,
        help="update columns (default prompt_len + new_tokens)",
    )
    parser.add_argument(
        "--prompt",
        type=int,
        default=None,
        help="update prompt region width, as train_step's --prompt (default prompt_len)",
    )
    parser.add_argument("--micro_batches", type=int, default=1, help="update micro-batches")
    parser.add_argument(
        "--remat",
        choices=("none", "block", "decoder"),
        default="none",
        help="tunix's RematConfig of the update's model (the sampler's has none)",
    )
    parser.add_argument("--kl_coef", type=float, default=0.0, help="GRPOConfig.beta")
    parser.add_argument(
        "--loss_agg_mode",
        default="token-mean",
        help="GRPOConfig.loss_agg_mode (token-mean: the project's default aggregation)",
    )
    parser.add_argument("--learning_rate", type=float, default=1e-5)
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed calls per phase first (the sampler compiles a small op on its 2nd call)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per phase")
    parser.add_argument(
        "--hbm_gbps", type=float, default=None, help="HBM GB/s (default: a table of GPUs)"
    )
    parser.add_argument("--hbm_tbps", type=float, default=None, help="the same in TB/s")
    parser.add_argument(
        "--peak_tflops", type=float, default=None, help="peak TFLOP/s (default: a table)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    length = args.length or args.prompt_len + args.new_tokens
    prompt = args.prompt if args.prompt is not None else args.prompt_len
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be >= 1 (the first call compiles)")
    if args.batch % args.micro_batches:
        parser.error("--batch must be divisible by --micro_batches")
    if args.phases != "decode" and min(regions(length, prompt)) < 2:
        parser.error(f"--length {length} with --prompt {prompt} leaves a region under 2")

    clock = CompileClock()
    print("== environment")
    print(
        f"python {platform.python_version()}  jax {jax.__version__}  jaxlib "
        f"{version('jaxlib')}  tunix {version('google-tunix')}  flax {version('flax')}  "
        f"optax {version('optax')}  numpy {np.__version__}"
    )
    print(
        f"jax devices: {jax.devices()}  (backend {jax.default_backend()}, device kind "
        f"{jax.devices()[0].device_kind!r})  os.cpu_count() = {os.cpu_count()}"
    )
    print(f"platform: {platform.platform()}  processor: {platform.processor() or '?'}")

    config = tunix_config(args)
    abstract = nnx.eval_shape(lambda: qwen3_lib.Qwen3(config, rngs=nnx.Rngs(args.seed)))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    itemsize = jnp.dtype(args.dtype).itemsize
    kv_position = 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize

    print("== configuration")
    print(
        f"model: --model {args.model}: random tunix Qwen3 vocab={config.vocab_size} "
        f"hidden={config.embed_dim} mlp={config.hidden_dim} layers={config.num_layers} "
        f"heads={config.num_heads} kv_heads={config.num_kv_heads} head_dim={config.head_dim} "
        f"{'tied' if config.use_tied_embedding else 'untied'} embeddings; {n_params:,} "
        f"parameters; params {args.param_dtype}, compute {args.dtype}; update remat "
        f"{args.remat}; each phase builds its own copy (one seed: the same weights)"
    )
    if args.phases != "update":
        print(
            f"decode: {args.batch} rows, {args.prompt_len} prompt + {args.new_tokens} new "
            "tokens, temperature 1 (top_p 1.0, no top_k), eos outside the vocabulary"
        )
    if args.phases != "decode":
        p, t, r = regions(length, prompt)
        print(
            f"update: {args.batch} rows x {length} columns (prompt {p}, think {t}, response "
            f"{r}), micro_batches={args.micro_batches}; GRPO beta={args.kl_coef} epsilon=0.2 "
            f"loss_agg_mode={args.loss_agg_mode}, on-policy; AdamW lr={args.learning_rate:g}, "
            "clip 1.0"
        )
    print(f"calls: {args.warmup} warm-up + {args.repeats} timed per phase")
    sys.stdout.flush()

    decode = update = None
    if args.phases != "update":
        decode = run_decode(args, config, clock)
    if args.phases != "decode":
        update = run_update(args, config, clock, length, prompt)

    rows = [("quantity", "value", "note")]
    if decode:
        g, p, b = args.new_tokens, args.prompt_len, args.batch
        med = decode["median"]
        step_bytes = n_params * itemsize + b * (p + (g + 1) / 2) * kv_position
        whole_bytes = n_params * itemsize + b * (p + g) * kv_position
        if args.hbm_gbps:
            bandwidth, bandwidth_src = args.hbm_gbps * 1e9, "--hbm_gbps"
        else:
            bandwidth, bandwidth_src = hbm_bandwidth(args.hbm_tbps)
        rows += [
            (
                "decode warm-up calls",
                f"{decode['warm']['seconds']:.3f} s",
                f"compiling {decode['warm']['compile']:.2f} s",
            ),
            (
                "decode median call",
                f"{med:.3f} s",
                f"min {decode['min']:.3f}, max {max(decode['times']):.3f}; prefill included",
            ),
            ("generated tokens/s", f"{decode['generated'] / med:,.1f}", f"{b} x {g} / median"),
            (
                "decode steps/s",
                f"{g / med:,.2f}",
                f"{g} token steps a call (1 in the prefill)",
            ),
            (
                "bytes / decode step",
                si(step_bytes, "B"),
                f"N*s + B*(P+(G+1)/2)*KV/pos, s={itemsize}, KV/pos={kv_position} B",
            ),
            (
                "decode HBM fraction",
                "n/a" if bandwidth is None else f"{100 * g * step_bytes / med / bandwidth:.2f} %",
                bandwidth_src
                if bandwidth is None
                else f"of {si(bandwidth, 'B/s')} ({bandwidth_src})",
            ),
            (
                "  with the whole cache read",
                "n/a" if bandwidth is None else f"{100 * g * whole_bytes / med / bandwidth:.2f} %",
                f"N*s + B*(P+G)*KV/pos = {si(whole_bytes, 'B')} a step (tunix's dense attention)",
            ),
        ]
    if update:
        med = update["median"]
        flops = 6.0 * n_params * update["tokens"]
        peak, peak_src = peak_flops(args.dtype, args.peak_tflops)
        rows += [
            (
                "update warm-up calls",
                f"{update['warm']['seconds']:.3f} s",
                f"compiling {update['warm']['compile']:.2f} s",
            ),
            (
                "update median call",
                f"{med:.3f} s",
                f"min {update['min']:.3f}, max {max(update['times']):.3f}; "
                f"{args.micro_batches} step call(s)",
            ),
            (
                "update tokens/s",
                f"{update['tokens'] / med:,.1f}",
                f"{args.batch} x {length} / median (padding included)",
            ),
            (
                "update real tokens/s",
                f"{update['real'] / med:,.1f}",
                f"{update['real']:,} non-pad tokens; {update['loss_tokens']:,} in the loss mask",
            ),
            ("model FLOPs / update", si(flops, "FLOP"), "6 * N * batch * length"),
            ("achieved FLOP/s", si(flops / med, "FLOP/s"), ""),
            (
                "MFU",
                "n/a" if peak is None else f"{100 * flops / med / peak:.2f} %",
                peak_src if peak is None else f"of {si(peak, 'FLOP/s')} ({peak_src})",
            ),
        ]
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU.
    if "peak_bytes_in_use" in stats:
        rows.append(
            (
                "peak device memory",
                f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB",
                f"of {stats.get('bytes_limit', 0) / 2**30:.1f} GiB (the whole run)",
            )
        )
    print(
        f"== summary: google-tunix {version('google-tunix')}, --model {args.model} "
        f"({n_params:,} parameters), {args.dtype}; medians of {args.repeats} timed calls"
    )
    print_table(rows)


if __name__ == "__main__":
    main()
