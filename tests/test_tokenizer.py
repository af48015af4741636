"""Tests for start_jax.tokenizer; all tokenizer files are built in-test."""

import json
import re

import jinja2
import numpy as np
import pytest
import tokenizers

from start_jax import tokenizer
from start_jax.errors import UserError
from start_jax.world import generator
from tests.bpe_fixtures import write_bpe_dir

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('bad role ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

TEXTS = [
    "The quick brown fox.",
    "  leading and trailing spaces  ",
    "line one\nline two\n\n",
    "<think> 3 * 4 = 12 </think> The answer is 12.",
    "a<think>b</think>c",
    "unseen words: zyxw QQQ 9876!",
    "",
]


@pytest.fixture
def bpe_dir(tmp_path):
    return write_bpe_dir(
        tmp_path / "bpe",
        ["<|endoftext|>", "<think>", "</think>"],
        tokenizer_config={
            "eos_token": "<|endoftext|>",
            "bos_token": {"content": "<|endoftext|>", "special": True},
            "chat_template": CHAT_TEMPLATE,
        },
    )


@pytest.fixture
def bpe(bpe_dir):
    return tokenizer.HFTokenizer.from_pretrained(bpe_dir)


def test_hf_special_ids(bpe, bpe_dir):
    raw = tokenizers.Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    assert bpe.eos_id == raw.token_to_id("<|endoftext|>")
    assert bpe.think_id == raw.token_to_id("<think>")
    assert bpe.end_think_id == raw.token_to_id("</think>")
    assert bpe.pad_id == bpe.eos_id  # No pad token configured: falls back to eos.
    assert bpe.vocab_size == raw.get_vocab_size(with_added_tokens=True)
    assert bpe.token_to_id("<think>") == bpe.think_id
    assert bpe.token_to_id("<not-a-token>") is None
    assert isinstance(bpe, tokenizer.Tokenizer)


@pytest.mark.parametrize("text", TEXTS)
def test_hf_round_trip(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_hf_literal_think_tags_are_single_ids(bpe):
    assert bpe.encode("<think>") == [bpe.think_id]
    assert bpe.encode("</think>") == [bpe.end_think_id]
    ids = bpe.encode("x <think> y </think> z<|endoftext|>")
    assert ids.count(bpe.think_id) == 1
    assert ids.count(bpe.end_think_id) == 1
    assert ids[-1] == bpe.eos_id


def test_hf_decode_skip_special_and_array_ids(bpe):
    ids = bpe.encode("hi<|endoftext|>")
    assert bpe.decode(ids, skip_special_tokens=True) == "hi"
    assert bpe.decode(np.asarray(ids)) == "hi<|endoftext|>"


def test_hf_encode_batch(bpe):
    assert bpe.encode_batch(TEXTS) == [bpe.encode(t) for t in TEXTS]


def test_hf_missing_think_token(tmp_path):
    d = write_bpe_dir(tmp_path / "nothink", ["<|endoftext|>"], {"eos_token": "<|endoftext|>"})
    expected = (
        f"tokenizer {d / 'tokenizer.json'} has no token '<think>' (needed for the "
        "thinking segment); name a token it has with think_token=..., or pass "
        "add_missing_tags=True to add it"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        tokenizer.HFTokenizer.from_pretrained(d)


def test_hf_missing_tags_added_as_tokens(tmp_path):
    d = write_bpe_dir(tmp_path / "nothink", ["<|endoftext|>"], {"eos_token": "<|endoftext|>"})
    plain = tokenizer.HFTokenizer.from_pretrained(
        d, think_token="<|endoftext|>", end_think_token="<|endoftext|>"
    )
    tok = tokenizer.HFTokenizer.from_pretrained(d, add_missing_tags=True)
    n = plain.vocab_size
    # The tags get the next two ids, encode as single tokens, and survive decoding.
    assert (tok.think_id, tok.end_think_id, tok.vocab_size) == (n, n + 1, n + 2)
    text = "a <think> b </think> c"
    ids = tok.encode(text)
    assert ids.count(tok.think_id) == 1 and ids.count(tok.end_think_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    # Text without the tags encodes as before.
    assert tok.encode("a b c") == plain.encode("a b c")
    # Saved with the added tags, the directory reads back the same tokenizer.
    again = tokenizer.HFTokenizer.from_pretrained(tok.save_pretrained(tmp_path / "saved"))
    assert (again.think_id, again.end_think_id, again.eos_id, again.pad_id) == (
        tok.think_id,
        tok.end_think_id,
        tok.eos_id,
        tok.pad_id,
    )
    assert again.encode(text) == ids


def test_hf_custom_think_tokens(tmp_path):
    d = write_bpe_dir(
        tmp_path / "custom", ["<eos>", "<reason>", "</reason>"], {"eos_token": "<eos>"}
    )
    with pytest.raises(ValueError, match=re.escape("with end_think_token=...")):
        tokenizer.HFTokenizer.from_pretrained(d, think_token="<reason>")
    tok = tokenizer.HFTokenizer.from_pretrained(
        d, think_token="<reason>", end_think_token="</reason>"
    )
    assert tok.encode("<reason>") == [tok.think_id]
    assert tok.encode("</reason>") == [tok.end_think_id]


def test_hf_missing_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "tokenizer.json"))):
        tokenizer.HFTokenizer.from_pretrained(tmp_path)


def test_hf_eos_from_model_config(tmp_path):
    specials = ["<|endoftext|>", "<think>", "</think>", "<|im_end|>"]
    d = write_bpe_dir(tmp_path / "cfg", specials, model_config={"eos_token_id": [0, 3]})
    tok = tokenizer.HFTokenizer.from_pretrained(d)
    assert tok.eos_id == 0
    assert tok.pad_id == 0
    (d / "config.json").write_text(json.dumps({"eos_token_id": 3}))
    assert tokenizer.HFTokenizer.from_pretrained(d).eos_id == 3
    (d / "config.json").write_text(json.dumps({"eos_token_id": 10**6}))
    with pytest.raises(ValueError, match="eos_token_id 1000000 is outside the vocabulary"):
        tokenizer.HFTokenizer.from_pretrained(d)


def test_hf_missing_eos(tmp_path):
    d = write_bpe_dir(tmp_path / "noeos", ["<think>", "</think>"])
    with pytest.raises(ValueError, match=r"has no eos token.*pass eos_token="):
        tokenizer.HFTokenizer.from_pretrained(d)


def test_hf_eos_not_in_vocab(tmp_path):
    d = write_bpe_dir(
        tmp_path / "badeos", ["<think>", "</think>"], {"eos_token": {"content": "<eos>"}}
    )
    with pytest.raises(ValueError, match=re.escape("has no token '<eos>' (needed for end of")):
        tokenizer.HFTokenizer.from_pretrained(d)


def test_hf_pad_token_and_overrides(tmp_path):
    specials = ["<|endoftext|>", "<think>", "</think>", "<pad>"]
    d = write_bpe_dir(
        tmp_path / "pad",
        specials,
        {"eos_token": "<|endoftext|>", "pad_token": {"content": "<pad>"}},
    )
    tok = tokenizer.HFTokenizer.from_pretrained(d)
    assert tok.pad_id == tok.token_to_id("<pad>") != tok.eos_id
    tok = tokenizer.HFTokenizer.from_pretrained(d, eos_token="<think>", pad_token="</think>")
    assert (tok.eos_id, tok.pad_id) == (tok.think_id, tok.end_think_id)


def test_hf_chat_template(bpe):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
    ]
    body = "<|endoftext|><|system|>\nBe brief.<|endoftext|>\n<|user|>\n2+2?<|endoftext|>\n"
    assert bpe.apply_chat_template(messages) == body + "<|assistant|>\n"
    assert bpe.apply_chat_template(messages, add_generation_prompt=False) == body
    with pytest.raises(jinja2.exceptions.TemplateError, match="bad role tool"):
        bpe.apply_chat_template([{"role": "tool", "content": "x"}])


def test_hf_chat_template_matches_transformers(bpe, bpe_dir):
    transformers = pytest.importorskip("transformers")
    config = json.loads((bpe_dir / "tokenizer_config.json").read_text())
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(bpe_dir / "tokenizer.json"),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
    )
    messages = [{"role": "user", "content": "hello"}]
    expected = ref.apply_chat_template(
        messages, chat_template=config["chat_template"], tokenize=False, add_generation_prompt=True
    )
    assert bpe.apply_chat_template(messages) == expected


def test_hf_no_chat_template(tmp_path):
    d = write_bpe_dir(
        tmp_path / "nochat",
        ["<|endoftext|>", "<think>", "</think>"],
        {"eos_token": "<|endoftext|>"},
    )
    tok = tokenizer.HFTokenizer.from_pretrained(d)
    with pytest.raises(ValueError, match=re.escape(f"tokenizer in {d} has no chat template")):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_hf_chat_template_other_formats(tmp_path):
    specials = ["<|endoftext|>", "<think>", "</think>"]
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    config = {"eos_token": "<|endoftext|>", "chat_template": named}
    d = write_bpe_dir(tmp_path / "named", specials, config)
    assert tokenizer.HFTokenizer.from_pretrained(d).apply_chat_template([]) == "D"
    d = write_bpe_dir(tmp_path / "jinja", specials, {"eos_token": "<|endoftext|>"})
    (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}{{ eos_token }}")
    tok = tokenizer.HFTokenizer.from_pretrained(d)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi<|endoftext|>"


def test_hf_matches_transformers_fast_tokenizer(bpe, bpe_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    char_dir = tokenizer.CharTokenizer().save_pretrained(tmp_path / "char")
    for d in (bpe_dir, char_dir):
        ours = tokenizer.HFTokenizer.from_pretrained(d)
        ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
        for text in TEXTS:
            assert ours.encode(text) == ref.encode(text, add_special_tokens=False), (d, text)


def test_char_special_ids_and_round_trip():
    tok = tokenizer.CharTokenizer()
    assert (tok.pad_id, tok.eos_id, tok.think_id, tok.end_think_id) == (0, 1, 2, 3)
    assert tok.token_to_id("<unk>") == 4
    assert tok.token_to_id("a") == 5
    assert tok.vocab_size == 5 + len(tokenizer.DEFAULT_ALPHABET)
    assert isinstance(tok, tokenizer.Tokenizer)
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]


def test_char_special_tokens_and_unknown():
    tok = tokenizer.CharTokenizer()
    assert tok.encode("<think>") == [2]
    assert tok.encode("a</think>b<eos>") == [tok.token_to_id("a"), 3, tok.token_to_id("b"), 1]
    assert tok.encode("é<") == [4, 4]
    ids = tok.encode("<think>hi</think> ok<eos><pad>")
    assert tok.decode(ids, skip_special_tokens=True) == "hi ok"
    assert tok.decode(np.asarray(tok.encode("ab"))) == "ab"


def test_char_chat_template_and_alphabet():
    tok = tokenizer.CharTokenizer(alphabet="ab ")
    assert tok.vocab_size == 8
    messages = [{"role": "user", "content": "ab"}]
    assert tok.apply_chat_template(messages) == "user: ab\nassistant: "
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == "user: ab\n"
    with pytest.raises(ValueError, match="repeated"):
        tokenizer.CharTokenizer(alphabet="aa")


def test_char_save_pretrained_parity(tmp_path):
    char = tokenizer.CharTokenizer()
    hf = tokenizer.HFTokenizer.from_pretrained(char.save_pretrained(tmp_path / "char"))
    assert (hf.pad_id, hf.eos_id, hf.think_id, hf.end_think_id) == (0, 1, 2, 3)
    assert hf.vocab_size == char.vocab_size
    texts = TEXTS + ["tabs\tand é unicode", "<unk><pad><eos>", "x = (3 - 1) / 2; 'q' \"r\""]
    for text in texts:
        ids = char.encode(text)
        assert hf.encode(text) == ids, text
        assert hf.decode(ids) == char.decode(ids)
        skipped = char.decode(ids, skip_special_tokens=True)
        assert hf.decode(ids, skip_special_tokens=True) == skipped
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q?"}]
    for gen in (True, False):
        assert hf.apply_chat_template(messages, gen) == char.apply_chat_template(messages, gen)


def test_load_tokenizer(bpe_dir):
    assert isinstance(tokenizer.load_tokenizer("char"), tokenizer.CharTokenizer)
    tok = tokenizer.load_tokenizer(bpe_dir)
    assert isinstance(tok, tokenizer.HFTokenizer)
    assert tok.encode("<think>") == [tok.think_id]


def test_named_tokenizers_load_from_their_own_package():
    """``"world"`` is the embedded world's tokenizer, made by `start_jax.world` (a higher
    layer) when the name is first loaded; it has only the default tags."""
    tok = tokenizer.load_tokenizer("world")
    assert tok is generator.tokenizer()
    assert len(tok.encode("Al likes tea.")) == 1  # One of the world's word tokens.
    with pytest.raises(UserError, match="fixed tags"):
        tokenizer.load_tokenizer("world", think_token="<t>")
