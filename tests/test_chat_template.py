"""`HFTokenizer` against `transformers` on a Qwen3-style BPE tokenizer and tiny Qwen3.

The tokenizer and checkpoint are built by `tests.bpe_fixtures` (no download).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import jinja2
import numpy as np
import pytest
import torch
import transformers

from start_jax import models
from start_jax.checkpoints import load_pretrained
from start_jax.tokenizer import HFTokenizer
from tests import bpe_fixtures as bf

TOL = 1e-4  # float32 max abs logit difference allowed against transformers.


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return bf.make_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def ours(tok_dir):
    return HFTokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="module")
def hf(tok_dir):
    return transformers.AutoTokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, tok_dir):
    return bf.make_tiny_qwen3(tmp_path_factory.mktemp("qwen3_bpe"), tokenizer_dir=tok_dir)


TEXTS = [
    "Emma has 12 apples. She buys 30 more. How many apples does Emma have now?",
    "Let me think step by step: 7 * 8 = 56, then 56 - 19 = 37.\n\nThe answer is \\boxed{37}.",
    "  leading spaces, tabs\tand\nnew lines\n\n\n",
    "Ünïcode: café, naïve, 日本語, ☃ and emoji 🙂.",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nok\n</think>\n\nHello!<|im_end|>",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_round_trips_and_matches_transformers(ours, hf, text):
    ids = ours.encode(text)
    assert ours.decode(ids) == text
    assert hf(text, add_special_tokens=False)["input_ids"] == ids
    assert hf.decode(ids, skip_special_tokens=False) == text
    assert ours.encode_batch([text, "x"]) == [ids, ours.encode("x")]


def test_added_tokens_are_single_ids_after_the_bpe_vocabulary(tok_dir, ours, hf):
    ids = bf.special_ids(tok_dir)
    n = bf.DEFAULT_VOCAB_SIZE
    assert ids == {
        "<|endoftext|>": n,
        "<|im_start|>": n + 1,
        "<|im_end|>": n + 2,
        "<think>": n + 3,
        "</think>": n + 4,
    }
    assert ours.vocab_size == len(hf) == n + 5
    for token, token_id in ids.items():
        assert ours.encode(token) == [token_id]
        assert ours.token_to_id(token) == token_id
        assert hf.convert_tokens_to_ids(token) == token_id
    # Inside text they are still single ids, with no merge across their edges.
    assert ours.encode("x<think>y</think>z").count(ids["<think>"]) == 1
    assert ours.eos_id == ids["<|im_end|>"] == hf.eos_token_id
    assert ours.pad_id == ids["<|endoftext|>"] == hf.pad_token_id
    assert (ours.think_id, ours.end_think_id) == (ids["<think>"], ids["</think>"])
    # As in Qwen3, the think tags are not special: they survive skip_special_tokens.
    text = "<|im_start|>assistant\n<think>\nhm\n</think>\n\n42<|im_end|>"
    ids_ = ours.encode(text)
    assert ours.decode(ids_, skip_special_tokens=True) == "assistant\n<think>\nhm\n</think>\n\n42"
    assert hf.decode(ids_, skip_special_tokens=True) == ours.decode(ids_, skip_special_tokens=True)


SYSTEM = {"role": "system", "content": bf.SYSTEM_PROMPT}
USER = {
    "role": "user",
    "content": "Sam has 3 pens and buys 4 more. How many pens? " + bf.INSTRUCTION,
}
HISTORY = [
    SYSTEM,
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "<think>\n2 + 3 = 5.\n</think>\n\nThe answer is \\boxed{5}."},
    {"role": "user", "content": "And 5 * 6?"},
    {"role": "assistant", "content": "It is \\boxed{30}."},
    {"role": "user", "content": "Now double it."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calc",
            "description": "Evaluates <expr> & returns 'the' value; café",
            "parameters": {
                "type": "object",
                "required": ["expr"],
                "properties": {"expr": {"type": "string"}},
            },
        },
    }
]

CASES = {
    "user": ([USER], {}),
    "system_user": ([SYSTEM, USER], {}),
    "history_with_thinking": (HISTORY, {}),
    "thinking_on": ([SYSTEM, USER], {"enable_thinking": True}),
    "thinking_off": ([SYSTEM, USER], {"enable_thinking": False}),
    "history_thinking_off": (HISTORY, {"enable_thinking": False}),
    "no_generation_prompt": (HISTORY[:3], {"add_generation_prompt": False}),
    "no_generation_prompt_thinking_off": (
        [USER],
        {"add_generation_prompt": False, "enable_thinking": False},
    ),
    "tools": ([SYSTEM, USER], {"tools": TOOLS}),
}


@pytest.mark.parametrize("case", CASES)
def test_chat_template_matches_transformers(ours, hf, case):
    messages, kwargs = CASES[case]
    kwargs = dict(kwargs)
    add_generation_prompt = kwargs.pop("add_generation_prompt", True)
    text = ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **kwargs)
    ref = hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )
    assert text == ref
    ref_ids = hf.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )
    assert ours.encode(text) == list(ref_ids["input_ids"])


def test_chat_template_text():
    """The template itself: ChatML turns, stripped history thinking, enable_thinking."""
    ours = HFTokenizer(
        None, eos_id=0, pad_id=0, think_id=0, end_think_id=0, chat_template=bf.CHAT_TEMPLATE
    )
    sys_user = (
        f"<|im_start|>system\n{bf.SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{USER['content']}<|im_end|>\n"
    )
    assert ours.apply_chat_template([SYSTEM, USER]) == sys_user + "<|im_start|>assistant\n"
    assert ours.apply_chat_template([SYSTEM, USER], enable_thinking=True) == (
        sys_user + "<|im_start|>assistant\n"
    )
    assert ours.apply_chat_template([SYSTEM, USER], enable_thinking=False) == (
        sys_user + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert ours.apply_chat_template([SYSTEM, USER], add_generation_prompt=False) == sys_user
    assert ours.apply_chat_template(HISTORY[1:3], add_generation_prompt=False) == (
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\nThe answer is \\boxed{5}.<|im_end|>\n"
    )
    assert ours.apply_chat_template([USER], tools=TOOLS).startswith(
        "<|im_start|>system\nYou may call these tools, one JSON schema a line:\n<tools>\n"
        + json.dumps(TOOLS[0], ensure_ascii=False)
        + "\n</tools><|im_end|>\n<|im_start|>user\n"
    )


def test_template_helpers_match_transformers(tok_dir, hf):
    """tojson (no HTML escaping, key order kept, options) and strftime_now as in transformers."""
    template = (
        "{{ tools | tojson }}|{{ tools | tojson(indent=2, sort_keys=true) }}|"
        "{{ messages[0] | tojson(ensure_ascii=true, separators=(',', ':')) }}|"
        "{{ strftime_now('%Y-%m-%d') }}"
    )
    ours = HFTokenizer.from_pretrained(tok_dir)
    ours._chat_template = template  # One-off template on the same vocabulary.
    messages = [{"role": "user", "content": "a < b & 'c' café"}]
    text = ours.apply_chat_template(messages, tools=TOOLS)
    assert text == hf.apply_chat_template(
        messages, tools=TOOLS, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    assert text.startswith(json.dumps(TOOLS, ensure_ascii=False) + "|")


def test_misplaced_system_message_raises_in_both(ours, hf):
    messages = [USER, SYSTEM]
    with pytest.raises(jinja2.exceptions.TemplateError, match="system"):
        ours.apply_chat_template(messages)
    with pytest.raises(jinja2.exceptions.TemplateError, match="system"):
        hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_tiny_qwen3_checkpoint_logits_match_transformers(ckpt_dir, tok_dir):
    config, params = load_pretrained(str(ckpt_dir), dtype=jnp.float32)
    ids = bf.special_ids(tok_dir)
    assert config.model_type == "qwen3" and config.vocab_size == 520  # 517 rounded up to 8.
    assert not config.tie_embeddings
    assert config.eos_token_id == ids["<|im_end|>"] and config.pad_token_id == ids["<|endoftext|>"]
    tok = HFTokenizer.from_pretrained(ckpt_dir)
    assert (tok.eos_id, tok.pad_id) == (ids["<|im_end|>"], ids["<|endoftext|>"])
    prompts = [
        tok.apply_chat_template([SYSTEM, USER], enable_thinking=False),
        tok.apply_chat_template(HISTORY) + "<think>\nDouble 30: 30 * 2 = 60.\n</think>\n\n",
    ]
    rows = tok.encode_batch(prompts)
    width = max(len(r) for r in rows)
    assert width <= 512
    # Right-padded; only the real positions are compared.
    tokens = np.full((len(rows), width), tok.pad_id, np.int64)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
        mask[i, : len(r)] = True
    hf_model = transformers.Qwen3ForCausalLM.from_pretrained(ckpt_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf_model(
            torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))
        ).logits.numpy()
    ours = np.asarray(
        models.forward(config, params, jnp.asarray(tokens), attention_mask=jnp.asarray(mask)).logits
    )
    assert ours.shape == ref.shape == (len(rows), width, 520)
    assert np.abs(ours - ref)[mask].max() <= TOL


def test_gsm8k_rows_are_deterministic_and_correct(tmp_path):
    import re

    path = bf.write_gsm8k_jsonl(tmp_path / "train.jsonl", 40, seed=3, traces=True)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == bf.gsm8k_rows(40, seed=3, traces=True) != bf.gsm8k_rows(40, seed=4, traces=True)
    for row in rows:
        assert row["prompt"].endswith(" Put the final answer in \\boxed{}.")
        assert re.fullmatch(r"\d+", row["reference"])
        assert row["response"].endswith(f"\\boxed{{{row['reference']}}}.")
        # The last equation of the gold thinking computes the reference.
        lhs, rhs = row["thinking"].rsplit("=", 1)
        assert rhs.strip(" .") == row["reference"]
        expr = re.search(r"[\d\s+\-*/]+$", lhs).group().strip()
        assert eval(expr) == int(row["reference"])  # noqa: S307 (digits and operators only)
    chat = bf.gsm8k_rows(3, seed=3, messages=True)
    assert [r["messages"][1]["content"] for r in chat] == [r["prompt"] for r in rows[:3]]
    assert chat[0]["messages"][0] == SYSTEM and set(chat[0]) == {"messages", "reference"}
