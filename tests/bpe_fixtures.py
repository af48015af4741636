"""A Qwen3-style byte-level BPE tokenizer, a tiny Qwen3 checkpoint and GSM8K-style data,
all built by the tests themselves (nothing is downloaded).

* `make_bpe_tokenizer(directory)`: trains a byte-level BPE (`tokenizers`) on a small
  built-in English + arithmetic corpus and writes ``tokenizer.json`` and
  ``tokenizer_config.json`` with a Qwen3-style chat template. Like Qwen3, the
  added tokens come after the BPE vocabulary: ``<|endoftext|>``, ``<|im_start|>``,
  ``<|im_end|>`` (special) and ``<think>``, ``</think>`` (added but not special,
  so they survive ``decode(..., skip_special_tokens=True)``). With the default
  ``vocab_size=512`` their ids are 512..516 (`special_ids` gives them).
* `make_tiny_qwen3(directory, vocab_size)`: a random tiny Qwen3 HF checkpoint with
  the tokenizer files copied beside it, a complete directory for
  `start_jax.checkpoints.load_pretrained` and `HFTokenizer.from_pretrained`.
* `write_gsm8k_jsonl(path, n)`: GSM8K-style word problems with integer references.
"""

from __future__ import annotations

import functools
import json
import pathlib
import random
import shutil
from collections.abc import Sequence

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

ENDOFTEXT, IM_START, IM_END, THINK, END_THINK = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
)
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # special=True
THINK_TOKENS = (THINK, END_THINK)  # added, special=False (as in Qwen3)
DEFAULT_VOCAB_SIZE = 512  # BPE vocabulary; the added tokens follow it.

# Qwen2/Qwen3's pre-tokenizer split (contractions, letters, single digits,
# punctuation runs, newlines, spaces) ahead of a byte-level mapping without its own regex.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SYSTEM_PROMPT = (
    "You are a careful assistant. Think step by step, then give the final answer in \\boxed{}."
)
INSTRUCTION = "Put the final answer in \\boxed{}."

# A Qwen3-style chat template (written for these tests): ChatML turns, an
# optional leading system message, tools as one JSON schema a line in the system
# turn, assistant history without its thinking, and `enable_thinking=false`
# closing an empty thinking block after the generation prompt.
CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages and messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- 'You may call these tools, one JSON schema a line:\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' + (tool | tojson) }}
    {%- endfor %}
    {{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages and messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- if not loop.first %}
            {{- raise_exception('only the first message may be a system message') }}
        {%- endif %}
    {%- elif message.role == 'assistant' %}
        {%- set content = message.content %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}
    {%- elif message.role == 'user' %}
        {{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}
    {%- else %}
        {{- raise_exception('unknown role: ' + message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

_NAMES = (
    "Ava",
    "Ben",
    "Chloe",
    "Dev",
    "Emma",
    "Finn",
    "Grace",
    "Hugo",
    "Iris",
    "Jack",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Paul",
    "Rosa",
    "Sam",
    "Tara",
    "Zoe",
)
_ITEMS = ("apples", "marbles", "stickers", "books", "cookies", "pencils", "shells", "stamps")


def _problem(rng: random.Random) -> dict[str, str]:
    """One word problem: prompt (without the instruction), reference, thinking, response."""
    name = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(3, 60), rng.randint(2, 40)
        ans = a + b
        q = f"{name} has {a} {item}. {name} buys {b} more {item}. How many {item} does {name} have now?"
        t = f"{name} starts with {a} {item} and buys {b} more. {a} + {b} = {ans}."
        r = f"{name} has {ans} {item} now."
    elif kind == 1:
        a, d = rng.randint(2, 25), rng.randint(2, 9)
        ans = a * d
        q = f"A baker makes {a} loaves of bread each day. How many loaves does the baker make in {d} days?"
        t = f"Each day gives {a} loaves, and there are {d} days. {a} * {d} = {ans}."
        r = f"The baker makes {ans} loaves in {d} days."
    elif kind == 2:
        b = rng.randint(2, 50)
        a = b + rng.randint(1, 80)
        ans = a - b
        q = f"{name} had {a} dollars and spent {b} dollars on a gift. How many dollars does {name} have left?"
        t = f"{name} had {a} dollars and spent {b}. {a} - {b} = {ans}."
        r = f"{name} has {ans} dollars left."
    elif kind == 3:
        g, ans = rng.randint(2, 9), rng.randint(2, 15)
        a = g * ans
        q = f"There are {a} students in a class, split equally into {g} groups. How many students are in each group?"
        t = f"{a} students in {g} equal groups. {a} / {g} = {ans}."
        r = f"There are {ans} students in each group."
    elif kind == 4:
        a = rng.randint(4, 40)
        ans = 3 * a
        q = (
            f"{name} reads {a} pages on Monday and twice as many pages on Tuesday. "
            f"How many pages does {name} read in total?"
        )
        t = f"On Tuesday {name} reads 2 * {a} = {2 * a} pages. In total {a} + {2 * a} = {ans}."
        r = f"{name} reads {ans} pages in total."
    else:
        p, n = rng.randint(2, 9), rng.randint(2, 8)
        bill = next(b for b in (20, 50, 100) if b > p * n)
        ans = bill - p * n
        q = (
            f"A pen costs {p} dollars. {name} buys {n} pens and pays with a {bill} dollar bill. "
            f"How much change does {name} get?"
        )
        t = f"The pens cost {n} * {p} = {p * n} dollars. The change is {bill} - {p * n} = {ans}."
        r = f"{name} gets {ans} dollars in change."
    return {
        "prompt": q,
        "reference": str(ans),
        "thinking": t,
        "response": f"{r} The answer is \\boxed{{{ans}}}.",
    }


_ENGLISH = (
    "Let me think about this step by step.",
    "First, I need to find out how many there are in total.",
    "Wait, let me check that again. The numbers add up.",
    "So the answer is the sum of the two numbers.",
    "The question asks for the number that is left after spending.",
    "I will multiply the price by the quantity and subtract it from the bill.",
    "This is a simple arithmetic word problem about counting things.",
    "You are a helpful assistant who answers questions about math and the world.",
    "The quick brown fox jumps over the lazy dog while the children are reading books.",
    "Hello! How can I help you today? I'm happy to explain the reasoning.",
    "Numbers such as 12, 345, 6789 and 3.14 appear in many questions.",
    "Therefore, the final answer is written inside a box.",
)


def default_corpus(n_problems: int = 300, seed: int = 1234) -> list[str]:
    """Built-in training corpus: word problems with thinking and answers, English, numbers."""
    rng = random.Random(seed)
    lines = list(_ENGLISH)
    for _ in range(n_problems):
        p = _problem(rng)
        lines += [f"{p['prompt']} {INSTRUCTION}", p["thinking"], p["response"]]
        if rng.random() < 0.3:  # A chat turn as the template lays it out, without the tags.
            lines.append(
                f"system\n{SYSTEM_PROMPT}\nuser\n{p['prompt']} {INSTRUCTION}\n"
                f"assistant\n\n{p['thinking']}\n\n\n{p['response']}\n"
            )
    lines += [
        " ".join(str(rng.randint(0, 10 ** rng.randint(1, 5))) for _ in range(12)) for _ in range(20)
    ]
    lines += [SYSTEM_PROMPT]
    return lines


@functools.lru_cache(maxsize=8)
def _train_tokenizer_json(
    corpus: tuple[str, ...],
    vocab_size: int,
    special: tuple[str, ...] = SPECIAL_TOKENS,
    added: tuple[str, ...] = THINK_TOKENS,
) -> str:
    """The trained ``tokenizer.json`` text (cached: one training per corpus and size)."""
    tok = tokenizers.Tokenizer(models.BPE(byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                tokenizers.Regex(_SPLIT_PATTERN), behavior="isolated", invert=False
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    # Added after training, so they follow the BPE vocabulary as in Qwen3.
    tok.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in special]
    )
    if added:
        tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in added])
    return tok.to_str()


def make_bpe_tokenizer(
    directory, corpus: Sequence[str] | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> pathlib.Path:
    """Trains (or reuses) the byte-level BPE and writes the tokenizer files to ``directory``.

    Args:
      directory: Where ``tokenizer.json`` and ``tokenizer_config.json`` go (created).
      corpus: Training lines; `default_corpus()` when None.
      vocab_size: Size of the BPE vocabulary (bytes + merges); the five added
        tokens get the ids after it.

    Returns:
      The directory.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    corpus = tuple(default_corpus() if corpus is None else corpus)
    (directory / "tokenizer.json").write_text(
        _train_tokenizer_json(corpus, vocab_size), encoding="utf-8"
    )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }
    with (directory / "tokenizer_config.json").open("w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    return directory


def special_ids(directory) -> dict[str, int]:
    """Token -> id of the five added tokens of the tokenizer in ``directory``."""
    tok = tokenizers.Tokenizer.from_file(str(pathlib.Path(directory) / "tokenizer.json"))
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + THINK_TOKENS}


def tokenizer_vocab_size(directory) -> int:
    """Vocabulary size of the tokenizer in ``directory``, added tokens included."""
    tok = tokenizers.Tokenizer.from_file(str(pathlib.Path(directory) / "tokenizer.json"))
    return tok.get_vocab_size(with_added_tokens=True)


def make_tiny_qwen3(
    directory, vocab_size: int | None = None, tokenizer_dir=None, seed: int = 0, **overrides
) -> pathlib.Path:
    """Writes a random tiny Qwen3 checkpoint plus the BPE tokenizer files to ``directory``.

    Args:
      directory: The checkpoint directory (created).
      vocab_size: At least the tokenizer's vocabulary; rounded up to a multiple of
        8. None: the tokenizer's vocabulary size.
      tokenizer_dir: A directory written by `make_bpe_tokenizer`; None trains
        (or reuses) the default tokenizer.
      seed: torch seed of the random weights.
      **overrides: Qwen3Config fields replacing the tiny defaults.

    Returns:
      The directory.
    """
    from tests import hf_fixtures  # torch / transformers only when a checkpoint is made.

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        make_bpe_tokenizer(directory)
    else:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(pathlib.Path(tokenizer_dir) / name, directory / name)
    ids = special_ids(directory)
    n_tok = tokenizer_vocab_size(directory)
    vocab_size = max(n_tok, vocab_size or 0)
    vocab_size = -(-vocab_size // 8) * 8
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        bos_token_id=ids[ENDOFTEXT],
    )
    fields.update(overrides)
    hf_fixtures.make_checkpoint("qwen3", str(directory), seed=seed, **fields)
    return directory


def gsm8k_rows(n: int, seed: int = 0, messages: bool = False, traces: bool = False) -> list[dict]:
    """GSM8K-style rows, deterministic from ``seed`` (see `write_gsm8k_jsonl`)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        p = _problem(rng)
        prompt = f"{p['prompt']} {INSTRUCTION}"
        if messages:
            row = {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": prompt},
                ],
                "reference": p["reference"],
            }
        else:
            row = {"prompt": prompt, "reference": p["reference"]}
        if traces:
            row["thinking"] = p["thinking"]
            row["response"] = p["response"]
        rows.append(row)
    return rows


def write_gsm8k_jsonl(
    path, n: int, seed: int = 0, messages: bool = False, traces: bool = False
) -> pathlib.Path:
    """Writes ``n`` GSM8K-style word problems as JSONL.

    Rows are ``{"prompt": "<problem> Put the final answer in \\\\boxed{}.",
    "reference": "<integer>"}``, or with ``messages=True``
    ``{"messages": [system, user], "reference": ...}``. With ``traces=True`` each
    row also has a gold ``"thinking"`` (without think tags) and a ``"response"``
    ending in ``\\boxed{<reference>}``, for cold-start SFT.

    Returns:
      The path.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in gsm8k_rows(n, seed, messages, traces):
            f.write(json.dumps(row) + "\n")
    return path


# ---------------------------------------------------------------- Llama 3 style

BEGIN, END_OF_TEXT, START_HEADER, END_HEADER, EOT, EOM = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
)
LLAMA3_SPECIAL_TOKENS = (BEGIN, END_OF_TEXT, START_HEADER, END_HEADER, EOM, EOT)

# A Llama-3-style chat template (written for these tests): bos, then each turn
# as header, blank line, content, <|eot_id|>.
LLAMA3_CHAT_TEMPLATE = """{{- bos_token }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""


def make_tiny_llama3(directory, seed: int = 0, **overrides) -> pathlib.Path:
    """A random tiny Llama checkpoint with a Llama-3-style tokenizer in ``directory``.

    As in Llama 3: no think tags and no pad token; the vocabulary is exactly the
    tokenizer's (no spare embedding rows); eos is ``<|eot_id|>`` in
    ``tokenizer_config.json`` while ``config.json`` and ``generation_config.json``
    list ``<|end_of_text|>``, ``<|eom_id|>`` and ``<|eot_id|>``.
    """
    from tests import hf_fixtures  # torch / transformers only when a checkpoint is made.

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = _train_tokenizer_json(
        tuple(default_corpus()), DEFAULT_VOCAB_SIZE, LLAMA3_SPECIAL_TOKENS, ()
    )
    (directory / "tokenizer.json").write_text(text, encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BEGIN,
        "eos_token": EOT,
        "chat_template": LLAMA3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tok = tokenizers.Tokenizer.from_str(text)
    ids = {t: tok.token_to_id(t) for t in LLAMA3_SPECIAL_TOKENS}
    fields = dict(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=ids[BEGIN],
        eos_token_id=[ids[END_OF_TEXT], ids[EOM], ids[EOT]],
    )
    fields.update(overrides)
    hf_fixtures.make_checkpoint("llama3", str(directory), seed=seed, **fields)
    return directory


# A smaller tokenizer for the tokenizer tests: any special tokens, config files on request.
SMALL_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 12 + 7? Let me think step by step.",
    "<think> 12 + 7 = 19 </think> The answer is 19.<|endoftext|>",
    "user: hello\nassistant: hi there",
]


def write_bpe_dir(path, special_tokens, tokenizer_config=None, model_config=None):
    """Trains a tiny byte-level BPE tokenizer and writes an HF-style directory."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SMALL_CORPUS, trainer=trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    if tokenizer_config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if model_config is not None:
        (path / "config.json").write_text(json.dumps(model_config))
    return path
