"""RL-shaped rollout throughput: `sampling.sample` as the trainer calls it, variable lengths.

Run from the repository root (the defaults took about 1 minute on this
project's busy 2-core CPU: ~6 s to build the checkpoint, ~10 s for the first
call with its compilation, then 5 timed rollouts of 6-9 s each):

    python -m experiments.bench_rollout [--model medium --prompts 4 --group 8 \\
        --think_budget 96 --response_budget 32 --repeats 5]

On a GPU, a bigger batch and bf16 compute (the figures are only meaningful
once the batch fills the device):

    python -m experiments.bench_rollout --prompts 64 --group 8 --think_budget 512 \\
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
`experiments.bench_rl_step`) gives the `SamplingConfig`, the rollout `width`
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
import json
import math
import os
import platform
import random
import statistics
import string
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tokenizers
from tokenizers import decoders, pre_tokenizers

from experiments.bench_common import print_table
from start_jax import models, sampling, segments, sharding
from start_jax.checkpoints import save_pretrained
from start_jax.train import config as config_lib
from start_jax.train.init_policy import initial_policy
from start_jax.train.spec import RunSpec

# Model shapes: "small" = 4,197,120 parameters, "medium" = 57,943,552.
MODELS = {
    "small": dict(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=768,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        tie_embeddings=True,
    ),
    "medium": dict(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1536,
        num_layers=8,
        num_heads=8,
        num_kv_heads=4,
        head_dim=64,
        tie_embeddings=False,
    ),
}
PAD_TOKEN, EOS_TOKEN, THINK_TOKEN, END_THINK_TOKEN = (
    "<|endoftext|>",
    "<|im_end|>",
    "<think>",
    "</think>",
)
PROMPT_TOKENS = (32, 39)  # Prompt lengths: with <think>, one prefix width (40) for all rows.
MAX_POSITIONS = 4096
FEATURE_SHIFT = 100.0  # c * (final-norm value of the constant dimension); see below.

# Dense peak FLOP/s per device by (device-kind substring, compute dtype); float32 on
# NVIDIA GPUs is the TF32 tensor-core peak (JAX's default matmul precision there).
KNOWN_PEAKS = (
    (("H100", "PCIe"), {"bfloat16": 756e12, "float32": 378e12}),
    (("H100",), {"bfloat16": 989e12, "float32": 495e12}),
    (("H200",), {"bfloat16": 989e12, "float32": 495e12}),
    (("A100",), {"bfloat16": 312e12, "float32": 156e12}),
)


# --------------------------------------------------------------------------- tokenizer


def write_tokenizer(directory: str, vocab_size: int) -> None:
    """A byte-level BPE `tokenizer.json` (+ config) of exactly `vocab_size` tokens.

    The BPE vocabulary is the 256-symbol byte alphabet, then merges that grow
    runs of lower-case letters (optionally after a space, 'Ġ') one letter at a
    time, shortest first; the four added tokens (pad, eos, think tags) come last.
    """
    added = (PAD_TOKEN, EOS_TOKEN, THINK_TOKEN, END_THINK_TOKEN)
    n_bpe = vocab_size - len(added)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if n_bpe < len(alphabet):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the byte alphabet + 4")
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = []
    frontier = list(string.ascii_lowercase) + ["Ġ"]
    while len(vocab) < n_bpe:
        grown = []
        for left in frontier:
            for ch in string.ascii_lowercase:
                if len(vocab) == n_bpe:
                    break
                vocab[left + ch] = len(vocab)
                merges.append((left, ch))
                grown.append(left + ch)
        frontier = grown
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in (PAD_TOKEN, EOS_TOKEN)]
    )
    tok.add_tokens(
        [
            tokenizers.AddedToken(t, special=False, normalized=False)
            for t in (THINK_TOKEN, END_THINK_TOKEN)
        ]
    )
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as fh:
        json.dump(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": EOS_TOKEN,
                "pad_token": PAD_TOKEN,
            },
            fh,
            indent=1,
        )


# --------------------------------------------------------------------------- prompts

_NAMES = ("maya", "liam", "zoe", "noah", "iris", "hugo", "tara", "finn", "rosa", "ben")
_ITEMS = ("apples", "marbles", "stickers", "books", "cookies", "pencils", "shells", "stamps")
_FILLER = (
    "please",
    "think",
    "carefully",
    "and",
    "then",
    "give",
    "the",
    "final",
    "answer",
    "as",
    "one",
    "number",
    "only",
    "check",
    "your",
    "work",
    "first",
)


def make_tasks(tokenizer, n: int, seed: int, lengths=PROMPT_TOKENS) -> list[dict]:
    """`n` word-problem rows {prompt, reference} of `lengths[0]`..`lengths[1]` tokens."""
    rng = random.Random(seed)
    lo, hi = lengths
    rows = []
    for _ in range(100 * n):
        if len(rows) == n:
            break
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        text = f"{name} has {a} {item} and gets {b} more. how many now?"
        target = rng.randint(lo, hi)
        while len(tokenizer.encode(text)) < target:
            text += " " + rng.choice(_FILLER)
        if lo <= len(tokenizer.encode(text)) <= hi:
            rows.append({"prompt": text, "reference": str(a + b)})
    if len(rows) < n:
        raise RuntimeError(f"could not write prompts of {lo}-{hi} tokens with this tokenizer")
    return rows


# --------------------------------------------------------------------------- checkpoint


def _rates(
    rest: np.ndarray, base: np.ndarray, h: np.ndarray, scales: tuple[float, float]
) -> tuple[float, float]:
    """Mean probabilities of the two biased tokens at each position, averaged.

    rest [P]: log-sum-exp of every other token's logit; base [P, 2]: the two
    tokens' logits without the bias; h [P]: the biased feature (logit += scale * h).
    """
    logits = base + np.outer(h, scales)
    top = np.maximum(rest, logits.max(axis=1))
    num = np.exp(logits - top[:, None])
    p = num / (num.sum(axis=1) + np.exp(rest - top))[:, None]
    return float(p[:, 0].mean()), float(p[:, 1].mean())


def _solve_scale(rate_of, target: float) -> float:
    """The scale s >= 0 with rate_of(s) == target (rate_of increases with s)."""
    lo, hi = 0.0, 1.0
    while rate_of(hi) < target:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise RuntimeError(f"cannot reach a rate of {target}")
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rate_of(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def write_checkpoint(
    path: str, shape: str, eos_rate: float, end_think_rate: float, seed: int = 0
) -> dict:
    """A random Qwen3 HF checkpoint (+ tokenizer) with calibrated eos / `</think>` rates.

    See the module docstring for the bias. Returns a description: parameter
    count, the ids, the scales and the rates measured on the calibration pass.
    """
    fields = MODELS[shape]
    vocab = fields["vocab_size"]
    write_tokenizer(path, vocab)
    tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    pad, eos, think, end_think = (
        tok.token_to_id(t) for t in (PAD_TOKEN, EOS_TOKEN, THINK_TOKEN, END_THINK_TOKEN)
    )
    config = models.ModelConfig(
        model_type="qwen3",
        max_position_embeddings=MAX_POSITIONS,
        eos_token_id=eos,
        pad_token_id=pad,
        **fields,
    )
    params = jax.tree.map(
        lambda x: np.array(x, np.float32),
        jax.device_get(models.init_params(config, jax.random.key(seed))),
    )
    d = config.hidden_size
    k = d - 1  # The constant residual dimension.
    emb = params["embed"]["embedding"]
    c = math.sqrt(d) * float(emb[:, :k].std())  # As large as a typical row's norm.
    emb[:, k] = c
    params["layers"]["attn"]["o_proj"][..., k] = 0.0  # Nothing writes to it.
    params["layers"]["mlp"]["down_proj"][..., k] = 0.0
    if config.tie_embeddings:
        head_k = emb[:, k]  # Head row k: the constant c for every token (cancels).
    else:
        head_k = params["lm_head"][k]
        head_k[:] = 0.0  # Head row k: nothing.
    gain = params["final_norm"]["scale"]

    rs = np.random.RandomState(seed + 1)
    tokens = jnp.asarray(rs.randint(0, vocab - 4, size=(8, 64)).astype(np.int32))

    def run():  # Logits without the bias, and the biased feature, on random tokens.
        out = models.forward(config, jax.tree.map(jnp.asarray, params), tokens, return_hidden=True)
        return (
            np.asarray(out.logits, np.float64).reshape(-1, vocab),
            np.asarray(out.hidden, np.float64)[..., k].reshape(-1),
        )

    # The final norm's gain on dimension k makes c * feature = FEATURE_SHIFT, so the
    # two head entries need only a small change (1/20 of c for a bias of 5 nats):
    # with tied embeddings they are also the input embeddings of eos and </think>.
    gain[k] *= FEATURE_SHIFT / (c * float(run()[1].mean()))
    logits, h = run()
    ids = [eos, end_think]
    base = logits[:, ids]
    others = np.delete(logits, ids, axis=1)
    top = others.max(axis=1)
    rest = top + np.log(np.exp(others - top[:, None]).sum(axis=1))
    scales = [0.0, 0.0]
    for _ in range(4):  # The two rates barely interact; alternate.
        scales[0] = _solve_scale(lambda s: _rates(rest, base, h, (s, scales[1]))[0], eos_rate)
        scales[1] = _solve_scale(lambda s: _rates(rest, base, h, (scales[0], s))[1], end_think_rate)
    head_k[eos] += scales[0]
    head_k[end_think] += scales[1]
    rates = _rates(rest, base, h, tuple(scales))
    save_pretrained(config, params, path)
    return dict(
        config=config,
        params=sum(x.size for x in jax.tree.leaves(params)),
        pad=pad,
        eos=eos,
        think=think,
        end_think=end_think,
        scales=tuple(scales),
        rates=rates,
        feature=(float(h.mean()), float(h.std())),
        constant=c,
        gain=float(gain[k]),
    )


# --------------------------------------------------------------------------- run config


def rl_config(
    ckpt: str, args, max_prompt_tokens: int, train_path: str = "", steps: int = 1
) -> ml_collections.ConfigDict:
    """`default_config()` modified: the checkpoint, JSONL data, budgets, one RL stage."""
    c = config_lib.default_config()
    c.seed = args.seed
    c.init_checkpoint = ckpt
    c.tokenizer = ""  # The checkpoint's own tokenizer.json.
    c.model.dtype = args.dtype
    c.model.remat = bool(getattr(args, "remat", False))
    c.data.source = "jsonl"
    c.data.train_path = train_path
    c.data.prompts_per_step = args.prompts
    c.data.max_prompt_tokens = max_prompt_tokens
    c.sampling.think_budget = args.think_budget
    c.sampling.response_budget = args.response_budget
    c.reward.name = getattr(args, "reward", "exact_match")
    c.algo.group_size = args.group
    c.algo.kl_coef = getattr(args, "kl_coef", 0.0)
    c.algo.ppo_epochs = getattr(args, "ppo_epochs", 1)
    c.algo.minibatches = getattr(args, "minibatches", 1)
    c.algo.micro_batches = getattr(args, "micro_batches", 1)
    if "length_groups" in c.algo:  # Trees before length groups have no such field.
        c.algo.length_groups = getattr(args, "length_groups", 2)
    c.stages = ml_collections.ConfigDict()
    c.stages.s1 = config_lib.stage(
        getattr(args, "train_segments", "think"),
        getattr(args, "responder", "self"),
        steps=steps,
        learning_rate=getattr(args, "learning_rate", 1e-5),
    )
    c.eval.every = 0
    c.checkpoint.every = 10**9
    c.checkpoint.export_hf = False
    c.log.samples_every = 0
    c.log.progress = False
    return c


# --------------------------------------------------------------------------- statistics


def rollout_stats(host, think_budget: int) -> dict:
    """Lengths, generated tokens and the decode-loop tail of a host copy of a rollout."""
    seg = np.asarray(host.segment_ids)
    # Per row: everything after the prompt but the prefix's <think> = the tokens the
    # decode loop wrote (thinking, </think>, the response with its eos) = its decode steps.
    generated = ((seg == segments.THINK) | (seg == segments.RESPONSE)).sum(1) - 1
    rows = len(generated)
    done = np.sort(generated)
    steps = int(done[-1])
    half = int(done[math.ceil(rows / 2) - 1])
    think = np.asarray(host.think_length)
    forced = np.asarray(host.think_truncated)
    response = np.asarray(host.response_length)
    return dict(
        rows=rows,
        generated=int(generated.sum()),
        decode_steps=steps,
        half_done_step=half,
        tail_fraction=(steps - half) / steps if steps else 0.0,
        idle_fraction=1.0 - generated.sum() / (rows * steps) if steps else 0.0,
        think=think,
        response=response,
        think_by_budget=float(np.mean(forced & (think >= think_budget))),
        think_by_eos=float(np.mean(forced & (think < think_budget))),
        response_truncated=float(np.mean(host.response_truncated)),
        real_tokens=int((seg != segments.PAD).sum()),
        columns=int(seg.size),
    )


def ending_summary(stats: list[dict]) -> tuple[str, str]:
    """How thinking and responses ended, over several rollouts' statistics."""
    budget = 100 * np.mean([s["think_by_budget"] for s in stats])
    eos = 100 * np.mean([s["think_by_eos"] for s in stats])
    resp = 100 * np.mean([s["response_truncated"] for s in stats])
    return (
        f"ended: </think> {100 - budget - eos:.0f} %, eos {eos:.0f} %, budget {budget:.0f} %",
        f"ended: eos {100 - resp:.0f} %, budget {resp:.0f} %",
    )


def length_summary(values) -> str:
    v = np.concatenate([np.ravel(x) for x in values])
    return f"mean {v.mean():.1f}, min {v.min()}, max {v.max()}"


def peak_flops(dtype: str, override_tflops: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where it came from), or (None, why not)."""
    if override_tflops:
        return override_tflops * 1e12, "--peak_tflops"
    kind = jax.devices()[0].device_kind
    for needles, peaks in KNOWN_PEAKS:
        if all(n in kind for n in needles) and dtype in peaks:
            return peaks[dtype], f"{kind} dense {dtype} peak (table)"
    return None, f"unknown for {kind!r} {dtype}; pass --peak_tflops"


def si(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}"


def mfu(flops_per_s: float, peak: float | None) -> str:
    return "n/a" if peak is None else f"{100 * flops_per_s / peak:.2f} %"


def print_environment() -> None:
    print("== environment")
    print(f"python {platform.python_version()}  jax {jax.__version__}  numpy {np.__version__}")
    print(
        f"jax devices: {jax.devices()}  (backend {jax.default_backend()}, device kind "
        f"{jax.devices()[0].device_kind!r})  os.cpu_count() = {os.cpu_count()}"
    )
    print(f"platform: {platform.platform()}  processor: {platform.processor() or '?'}")


def print_model(info: dict, args) -> None:
    c = info["config"]
    print(
        f"model: --model {args.model}: random Qwen3 vocab={c.vocab_size} hidden={c.hidden_size} "
        f"mlp={c.intermediate_size} layers={c.num_layers} heads={c.num_heads} "
        f"kv_heads={c.num_kv_heads} head_dim={c.head_dim} qk_norm "
        f"{'tied' if c.tie_embeddings else 'untied'} embeddings; {info['params']:,} parameters; "
        f"params float32, compute {args.dtype}"
    )
    print(
        f"tokenizer: byte-level BPE of {c.vocab_size} tokens; pad={info['pad']} "
        f"eos={info['eos']} <think>={info['think']} </think>={info['end_think']}"
    )
    print(
        f"eos bias: residual dim {c.hidden_size - 1} = {info['constant']:.3f} in every "
        f"embedding, final-norm gain {info['gain']:.1f} -> value mean {info['feature'][0]:.1f}, "
        f"std {info['feature'][1]:.1f}; head weights eos +{info['scales'][0]:.4f}, </think> "
        f"+{info['scales'][1]:.4f}; calibrated per-token "
        f"rates eos {info['rates'][0]:.4f}, </think> {info['rates'][1]:.4f} (targets "
        f"{args.eos_rate}, {args.end_think_rate})"
    )


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Options shared with `experiments.bench_rl_step`."""
    parser.add_argument("--model", choices=sorted(MODELS), default="medium")
    parser.add_argument("--prompts", type=int, default=4, help="distinct prompts per batch")
    parser.add_argument("--group", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--think_budget", type=int, default=96)
    parser.add_argument("--response_budget", type=int, default=32)
    parser.add_argument(
        "--eos_rate", type=float, default=0.02, help="calibrated per-token probability of eos"
    )
    parser.add_argument(
        "--end_think_rate",
        type=float,
        default=0.01,
        help="calibrated per-token probability of </think>",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype (model.dtype); parameters stay float32",
    )
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="peak TFLOP/s of one device for MFU (default: a table of GPUs)",
    )
    parser.add_argument("--seed", type=int, default=0)


# --------------------------------------------------------------------------- main


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
