"""Task rows rendered into prompts (start_jax.data.prompts) and what the trainer reads."""

import json

import pytest

from start_jax.data import pipeline, prompts
from start_jax.errors import ConfigError
from start_jax.tokenizer import CharTokenizer, HFTokenizer
from start_jax.train import data_io
from start_jax.train.config import default_config
from start_jax.train.spec import DataSpec, RunSpec

ROWS = [
    {"prompt": "What is 2+3?", "reference": 5, "thinking": "2+3=5", "response": "It is 5."},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Capital of France?"},
        ],
        "reference": "Paris",
    },
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def jsonl_sources(tmp_path):
    path = _write(tmp_path / "train.jsonl", ROWS)
    spec = DataSpec(
        source="jsonl",
        name="",
        train_path=path,
        test_path="",
        data_dir="",
        prompts_per_step=2,
        max_prompt_tokens=200,
    )
    return lambda tok, fmt: data_io.datasets(spec, str(tmp_path), tok, fmt)


def test_messages_row_is_stored_with_its_last_user_message_as_prompt(tmp_path):
    path = _write(tmp_path / "train.jsonl", ROWS)
    rows = pipeline.TaskSource(pipeline.load_jsonl(path, None, tmp_path / "data", "train"))
    assert rows[1]["prompt"] == "Capital of France?"
    assert rows[1]["metadata"]["messages"] == ROWS[1]["messages"]
    assert rows[0]["metadata"]["response"] == "It is 5."


def test_chat_template_renders_prompt_and_messages(jsonl_sources):
    tok = CharTokenizer()
    fmt = prompts.PromptFormat.create(
        chat_template=True, system="Think step by step.", template_kwargs={"enable_thinking": True}
    )
    train, _ = jsonl_sources(tok, fmt)
    # A prompt row becomes [system, user]; the format's system message is added.
    assert train[0]["prompt"] == ("system: Think step by step.\nuser: What is 2+3?\nassistant: ")
    # A messages row keeps its own system message and history.
    assert train[1]["prompt"] == (
        "system: Be brief.\nuser: Hi?\nassistant: Hello.\nuser: Capital of France?\nassistant: "
    )
    # The question stays readable for rewards (a judge reads metadata['question']).
    assert train[0]["question"] == "What is 2+3?"
    assert train[1]["metadata"]["question"] == "Capital of France?"
    assert train[0]["reference"] == "5"
    # The template's rendering is exactly the tokenizer's own.
    assert train[1]["prompt"] == tok.apply_chat_template(ROWS[1]["messages"])


def test_raw_format_keeps_prompt_and_rejects_messages(jsonl_sources):
    train, _ = jsonl_sources(CharTokenizer(), prompts.PromptFormat())
    assert train[0]["prompt"] == "What is 2+3?"
    with pytest.raises(ConfigError, match=r"set --config.prompt.chat_template=True"):
        train[1]


def test_tokenizer_without_template_is_a_config_error(jsonl_sources, tmp_path):
    d = CharTokenizer().save_pretrained(tmp_path / "tok")
    config = json.loads((d / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    train, _ = jsonl_sources(HFTokenizer.from_pretrained(d), prompts.PromptFormat.create(True))
    with pytest.raises(
        ConfigError,
        match=r"prompt.chat_template=True but .* has no chat "
        r"template",
    ):
        train[0]


def test_spec_reads_prompt_section():
    c = default_config()
    spec = RunSpec.from_config(c)
    assert spec.tokenizer == "world" and not spec.prompt.chat_template
    c.prompt.chat_template = True
    c.prompt.system = "S"
    c.prompt.template_kwargs.enable_thinking = False
    c.init_checkpoint = "/ckpt"  # No tokenizer.json there: the world's.
    spec = RunSpec.from_config(c)
    assert spec.prompt == prompts.PromptFormat(True, "S", (("enable_thinking", False),))
    assert spec.tokenizer == "world"


def test_tokenizer_defaults_to_the_checkpoints_own(tmp_path):
    c = default_config()
    c.init_checkpoint = str(CharTokenizer().save_pretrained(tmp_path / "ckpt"))
    assert RunSpec.from_config(c).tokenizer == c.init_checkpoint
    c.tokenizer = "char"
    assert RunSpec.from_config(c).tokenizer == "char"
