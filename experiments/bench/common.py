"""What the benchmark scripts share: model shapes, a tokenizer and checkpoint written on the
spot, word-problem prompts, the run config, rollout statistics, device peaks and printing.

No benchmark imports another's script; each imports what it needs from here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import string

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tokenizers
from tokenizers import decoders, pre_tokenizers

from start_jax import models, rl, segments
from start_jax.checkpoints import save_pretrained
from start_jax.train import config as config_lib


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Prints rows as aligned columns: the first left-aligned, the rest right-aligned.

    rows[0] is the header; a dashed rule follows it.
    """
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for j, row in enumerate(rows):
        print(
            "  ".join(
                cell.ljust(w) if c == 0 else cell.rjust(w)
                for c, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()
        )
        if j == 0:
            print("  ".join("-" * w for w in widths))


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
# Real Qwen3 shapes (each checkpoint's config.json; tied embeddings), random weights: for
# the memory plans (`real_shapes`, `lora`) and for accelerator runs of the benchmarks.
REAL_SHAPES = {
    name: dict(vocab_size=151936, tie_embeddings=True, num_kv_heads=8, head_dim=128, **shape)
    for name, shape in {
        "qwen3_0_6b": dict(hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16),
        "qwen3_1_7b": dict(hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16),
        "qwen3_4b": dict(hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32),
    }.items()
}
MODELS.update(REAL_SHAPES)
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


# HBM bandwidth of one device, bytes/s, by device kind (SXM parts; the first match wins).
KNOWN_BANDWIDTH = (
    (("H100", "PCIe"), 2.0e12),
    (("H100",), 3.35e12),
    (("H200",), 4.8e12),
    (("A100",), 2.0e12),
)


def hbm_bandwidth(override_tbps: float | None) -> tuple[float | None, str]:
    """(HBM bytes/s of one device, where it came from), or (None, why not)."""
    if override_tbps:
        return override_tbps * 1e12, "--hbm_tbps"
    kind = jax.devices()[0].device_kind
    for needles, bandwidth in KNOWN_BANDWIDTH:
        if all(n in kind for n in needles):
            return bandwidth, f"{kind} HBM bandwidth (table)"
    return None, f"unknown for {kind!r}; pass --hbm_tbps"


def kv_bytes(config, rows: int, slots: int, itemsize: int = 2) -> int:
    """Bytes of the keys and values of `rows` x `slots` positions over every layer."""
    return 2 * config.num_layers * rows * config.num_kv_heads * slots * config.head_dim * itemsize


def decode_bytes(host, config, n_params: int, itemsize: int) -> float:
    """HBM bytes the decode loops of a host rollout read at the least: the weights once a
    decode step (the longest row's steps) and, for each generated token, the cache of
    its row so far (prompt included). Prefill, activations and the responder's own
    weights in a separate loop are not counted, so bytes / seconds is a lower bound."""
    seg = np.asarray(host.segment_ids)
    prompt = (seg == segments.PROMPT).sum(1)
    generated = ((seg == segments.THINK) | (seg == segments.RESPONSE)).sum(1) - 1
    positions = float(np.sum(generated * prompt + generated * (generated + 1) / 2))
    return float(generated.max()) * n_params * itemsize + positions * kv_bytes(
        config, 1, 1, itemsize
    )


class CompileClock:
    """Seconds jax spends tracing, lowering and compiling (from `jax.monitoring`)."""

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self):
        self.seconds = 0.0
        self.compiles = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        del kwargs
        if event in self.EVENTS:
            self.seconds += duration
            self.compiles += event == self.EVENTS[-1]


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
        # Real shapes keep Qwen3's context (budgets of 8k thinking tokens fit).
        max_position_embeddings=40960 if shape in REAL_SHAPES else MAX_POSITIONS,
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
    if getattr(args, "pack_rows", False):
        c.algo.pack_rows = True
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
    """Options shared with `experiments.bench.rl_step`."""
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


GIB = 2**30


def tree_bytes(tree) -> int:
    """Bytes of a pytree of arrays or `jax.ShapeDtypeStruct`s."""
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def tree_count(tree) -> int:
    """Elements of a pytree of arrays or `jax.ShapeDtypeStruct`s (parameters)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_batch(b: int, length: int) -> rl.Batch:
    """A train step's `rl.Batch` of b rows x `length` columns as `jax.ShapeDtypeStruct`s
    (for compiling without data)."""
    i32 = jax.ShapeDtypeStruct((b, length), jnp.int32)
    f32 = jax.ShapeDtypeStruct((b, length), jnp.float32)
    boolean = jax.ShapeDtypeStruct((b, length), jnp.bool_)
    return rl.Batch(
        tokens=i32,
        segment_ids=i32,
        loss_mask=boolean,
        kl_mask=boolean,
        advantages=f32,
        old_logprobs=f32,
        ref_logprobs=f32,
        returns=f32,
        old_values=f32,
        rewards=jax.ShapeDtypeStruct((b,), jnp.float32),
    )
