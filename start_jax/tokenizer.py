"""Tokenizers for thinking-model post-training.

Completions have the shape ``<prompt> <think> thinking </think> response <eos>``,
so every tokenizer must expose the ids of the think tags and of eos/pad in
addition to encode/decode. Two implementations share the `Tokenizer` protocol:

* `HFTokenizer`: a thin wrapper over a Hugging Face ``tokenizer.json`` (loaded
  with the ``tokenizers`` library, no ``transformers`` dependency at runtime).
* `CharTokenizer`: a tiny character-level tokenizer for synthetic tasks, which
  can export itself as an equivalent ``tokenizer.json`` directory.

Use `load_tokenizer` to get either from a name or path.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import pathlib
import re
import string
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import jinja2
import jinja2.ext
import jinja2.sandbox
import tokenizers

from start_jax.errors import MissingFile, UserError

THINK_TOKEN = "<think>"
END_THINK_TOKEN = "</think>"

DEFAULT_ALPHABET = (
    string.ascii_lowercase + string.ascii_uppercase + string.digits + " .,;:?!=+-*/()'\"\n"
)


@runtime_checkable
class Tokenizer(Protocol):
    """Interface shared by all tokenizers used in training and sampling."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def think_id(self) -> int: ...

    @property
    def end_think_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True
    ) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...


def _token_content(value: Any) -> str | None:
    """Returns a special token string from a tokenizer_config.json entry.

    HF configs store special tokens either as plain strings or as serialized
    AddedToken dicts (``{"content": "<eos>", ...}``).
    """
    if isinstance(value, dict):
        return value.get("content")
    return value


class MissingTag(UserError):
    """A think tag the tokenizer does not have (`file`, `token`)."""

    def __init__(self, message: str, file: str, token: str):
        super().__init__(message)
        self.file, self.token = file, token


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); the file may be cut short") from None


def _eos_ids(config: dict[str, Any], tok: tokenizers.Tokenizer) -> set[int]:
    """The ``eos_token_id`` entries (an id or a list) of a config that name tokens."""
    ids = config.get("eos_token_id")
    ids = ids if isinstance(ids, list) else [ids]
    size = tok.get_vocab_size(with_added_tokens=True)
    return {int(i) for i in ids if isinstance(i, int) and 0 <= i < size}


def _chat_template(directory: pathlib.Path, tok_config: dict[str, Any]) -> str | None:
    """Finds the chat template in the formats HF has used over time."""
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # Named templates: [{"name", "template"}].
        named = {t["name"]: t["template"] for t in template}
        template = named.get("default")
    # Recent transformers versions save the template to its own file.
    jinja_file = directory / "chat_template.jinja"
    if template is None and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    return template


def _raise_template_exception(message: str) -> None:
    # Same helper HF exposes to chat templates (e.g. for unsupported roles).
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' tojson filter: Jinja's own escapes <, >, &, ' and sorts keys,
    # which would change the tool schemas that templates such as Qwen3's render.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    # transformers' global for templates that write today's date (Llama 3).
    return datetime.datetime.now().strftime(fmt)


class HFTokenizer:
    """Wrapper over a Hugging Face ``tokenizer.json`` with think-tag ids.

    Build it with `HFTokenizer.from_pretrained`. Encoding never adds special
    tokens (no BOS/EOS post-processing); special tokens written literally in
    the text, such as ``<think>``, map to their single id.
    """

    def __init__(
        self,
        tok: tokenizers.Tokenizer,
        *,
        eos_id: int,
        pad_id: int,
        think_id: int,
        end_think_id: int,
        chat_template: str | None = None,
        eos_token: str = "",
        bos_token: str = "",
        source: str = "<memory>",
        think_token: str = THINK_TOKEN,
        end_think_token: str = END_THINK_TOKEN,
        pad_token: str | None = None,
        stop_ids: Sequence[int] = (),
    ):
        self._tok = tok
        self.eos_id = eos_id
        # Further ids that end a generation as eos does, sorted, without eos.
        self.stop_ids = tuple(sorted({int(t) for t in stop_ids} - {int(eos_id)}))
        self.pad_id = pad_id
        self.think_id = think_id
        self.end_think_id = end_think_id
        self._chat_template = chat_template
        self._eos_token = eos_token
        self._bos_token = bos_token
        self._source = source
        self.think_token = think_token
        self.end_think_token = end_think_token
        self._pad_token = pad_token
        # Compiled lazily: most training code never needs the template.
        self._compiled_template: jinja2.Template | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        think_token: str = THINK_TOKEN,
        end_think_token: str = END_THINK_TOKEN,
        eos_token: str | None = None,
        pad_token: str | None = None,
        add_missing_tags: bool = False,
    ) -> HFTokenizer:
        """Loads ``tokenizer.json`` (plus optional configs) from a directory.

        Resolution of special tokens:
          * eos: the ``eos_token`` argument, else ``eos_token`` from
            ``tokenizer_config.json``, else ``eos_token_id`` from ``config.json``
            (the first one if it is a list).
          * further stop ids (`stop_ids`: a row ends at any of them as at
            eos): every ``eos_token_id`` of ``config.json`` and
            ``generation_config.json`` (an id or a list, as Llama 3 and Qwen3
            write them) inside the vocabulary, eos itself excluded.
          * pad: the ``pad_token`` argument, else ``pad_token`` from
            ``tokenizer_config.json``, else falls back to the eos token (padding
            is always masked out, so reusing eos is harmless).
          * chat template: ``chat_template`` from ``tokenizer_config.json``
            (a string, or the "default" of a list of named templates), else
            the contents of ``chat_template.jinja``.

        Args:
          path: Directory containing ``tokenizer.json``.
          think_token: Token that opens the thinking segment.
          end_think_token: Token that closes the thinking segment.
          eos_token: Overrides the configured eos token.
          pad_token: Overrides the configured pad token.
          add_missing_tags: A think tag that is not a token of the vocabulary
            is added as one (an added token, not special, so decoding keeps
            it), with the next free id; the model then needs an embedding row
            for it. False: a missing tag is an error.

        Returns:
          The loaded tokenizer.

        Raises:
          FileNotFoundError: ``tokenizer.json`` does not exist.
          ValueError: A needed special token is not in the vocabulary, or no
            eos token is configured.
        """
        directory = pathlib.Path(path)
        tok_file = directory / "tokenizer.json"
        if not tok_file.is_file():
            raise MissingFile(f"tokenizer file {tok_file} not found")
        try:
            tok = tokenizers.Tokenizer.from_file(str(tok_file))
        except Exception as e:  # noqa: BLE001 - the Rust library raises a bare Exception.
            raise UserError(
                f"{tok_file}: not a readable tokenizer.json ({e}); the file may be "
                "cut short: copy it again"
            ) from None
        # Padding/truncation baked into tokenizer.json would silently change
        # encode() lengths; batching and padding are done by our own code.
        tok.no_padding()
        tok.no_truncation()
        tok_config = _read_json(directory / "tokenizer_config.json")
        model_config = _read_json(directory / "config.json")

        def lookup(token: str, purpose: str, hint: str) -> int:
            token_id = tok.token_to_id(token)
            if token_id is None:
                raise MissingTag(
                    f"tokenizer {tok_file} has no token {token!r} (needed for "
                    f"{purpose}); name a token it has with {hint}=..., or pass "
                    "add_missing_tags=True to add it",
                    str(tok_file),
                    token,
                )
            return token_id

        missing = [t for t in (think_token, end_think_token) if tok.token_to_id(t) is None]
        if add_missing_tags and missing:
            tok.add_tokens(
                [tokenizers.AddedToken(t, special=False, normalized=False) for t in missing]
            )
        think_id = lookup(think_token, "the thinking segment", "think_token")
        end_think_id = lookup(end_think_token, "the thinking segment", "end_think_token")

        eos_token = eos_token or _token_content(tok_config.get("eos_token"))
        if eos_token:
            eos_id = lookup(eos_token, "end of sequence", "eos_token")
        else:
            config_eos = model_config.get("eos_token_id")
            if isinstance(config_eos, list):
                config_eos = config_eos[0] if config_eos else None
            if config_eos is None:
                raise UserError(
                    f"tokenizer {tok_file} has no eos token: neither "
                    "tokenizer_config.json 'eos_token' nor config.json "
                    "'eos_token_id' is set; pass eos_token=..."
                )
            eos_id = int(config_eos)
            eos_token = tok.id_to_token(eos_id)
            if eos_token is None:
                raise UserError(
                    f"config.json eos_token_id {eos_id} is outside the vocabulary "
                    f"of {tok_file}; pass eos_token=..."
                )

        pad_token = pad_token or _token_content(tok_config.get("pad_token"))
        pad_id = lookup(pad_token, "padding", "pad_token") if pad_token else eos_id
        stop_ids = _eos_ids(model_config, tok) | _eos_ids(
            _read_json(directory / "generation_config.json"), tok
        )

        return cls(
            tok,
            eos_id=eos_id,
            pad_id=pad_id,
            think_id=think_id,
            end_think_id=end_think_id,
            chat_template=_chat_template(directory, tok_config),
            think_token=think_token,
            end_think_token=end_think_token,
            pad_token=tok.id_to_token(pad_id),
            eos_token=eos_token,
            bos_token=_token_content(tok_config.get("bos_token")) or "",
            source=str(directory),
            stop_ids=sorted(stop_ids),
        )

    @property
    def vocab_size(self) -> int:
        # Includes added tokens; the model's embedding table may be larger.
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Encodes text to ids without adding any special tokens."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encodes several texts (in parallel in the Rust library)."""
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Decodes ids to text; ``skip_special_tokens`` drops special added tokens."""
        # int() accepts numpy / jax scalars, which the Rust binding rejects.
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Renders messages with the checkpoint's Jinja chat template.

        Args:
          messages: Dicts with at least ``role`` and ``content``.
          add_generation_prompt: Whether to append the assistant turn header.
          **kwargs: Extra template variables (e.g. ``enable_thinking``).

        Returns:
          The rendered prompt string (not tokenized).

        Raises:
          ValueError: The tokenizer has no chat template.
          jinja2.exceptions.TemplateError: The template called raise_exception.
        """
        if not self._chat_template:
            raise ValueError(
                f"tokenizer in {self._source} has no chat template: no "
                "'chat_template' in tokenizer_config.json and no chat_template.jinja"
            )
        if self._compiled_template is None:
            # Mirrors the environment transformers uses for chat templates.
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
            )
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _raise_template_exception
            env.globals["strftime_now"] = _strftime_now
            self._compiled_template = env.from_string(self._chat_template)
        return self._compiled_template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            eos_token=self._eos_token,
            bos_token=self._bos_token,
            **kwargs,
        )

    def token_to_id(self, token: str) -> int | None:
        """Returns the id of ``token``, or None if it is not in the vocabulary."""
        return self._tok.token_to_id(token)

    @property
    def has_chat_template(self) -> bool:
        """Whether `apply_chat_template` can render (the files have a template)."""
        return bool(self._chat_template)

    def save_pretrained(self, dirpath: str | os.PathLike) -> pathlib.Path:
        """Writes ``tokenizer.json`` (with any added think tags) and a
        ``tokenizer_config.json`` (eos, pad, bos, chat template), so that
        `from_pretrained` with the same tag names reads back this tokenizer."""
        directory = pathlib.Path(dirpath)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": self._eos_token,
            "pad_token": self._pad_token or self._eos_token,
        }
        if self._bos_token:
            config["bos_token"] = self._bos_token
        if self._chat_template:
            config["chat_template"] = self._chat_template
        with (directory / "tokenizer_config.json").open("w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        if self.stop_ids:  # Read back as further stop ids (as transformers does).
            generation = directory / "generation_config.json"
            extra = _read_json(generation)
            extra["eos_token_id"] = [self.eos_id, *self.stop_ids]
            generation.write_text(json.dumps(extra, indent=2), encoding="utf-8")
        return directory


class CharTokenizer:
    """Character-level tokenizer for synthetic tasks.

    Ids: ``<pad>``=0, ``<eos>``=1, ``<think>``=2, ``</think>``=3, ``<unk>``=4,
    then the alphabet characters in order. Characters outside the alphabet
    map to ``<unk>``. Special token strings written literally in the text are
    recognised as single tokens.

    Chat format: each message renders as ``"{role}: {content}\\n"``, and the
    generation prompt is ``"assistant: "``.
    """

    SPECIAL_TOKENS = ("<pad>", "<eos>", THINK_TOKEN, END_THINK_TOKEN, "<unk>")
    CHAT_TEMPLATE = (
        "{% for message in messages %}"
        "{{ message['role'] }}: {{ message['content'] }}\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )

    def __init__(self, alphabet: str = DEFAULT_ALPHABET, words: Sequence[str] = ()):
        """Creates the tokenizer.

        Args:
          alphabet: Characters of the vocabulary, each given once.
          words: Multi-character tokens (ids after the alphabet), matched
            greedily, longest first, before single characters; every character
            of a word must be in the alphabet, so any text still encodes.

        Raises:
          ValueError: The alphabet contains a repeated character, or a word is
            repeated, shorter than two characters or not made of the alphabet.
        """
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
        words = tuple(words)
        bad = [w for w in words if len(w) < 2 or any(ch not in alphabet for ch in w)]
        if bad or len(set(words)) != len(words):
            raise ValueError(
                f"words must be distinct strings of 2+ alphabet characters; "
                f"bad: {bad or sorted({w for w in words if words.count(w) > 1})}"
            )
        self.alphabet = alphabet
        self.words = words
        self._vocab = {t: i for i, t in enumerate(self.SPECIAL_TOKENS)}
        for ch in alphabet:
            self._vocab[ch] = len(self._vocab)
        for w in words:
            self._vocab[w] = len(self._vocab)
        # Longest word first, so the leftmost match is the longest; then any character.
        self._piece_pattern = "|".join(
            [re.escape(w) for w in sorted(words, key=len, reverse=True)] + [r"[\s\S]"]
        )
        self._piece_re = re.compile(self._piece_pattern)
        self._inverse = {i: t for t, i in self._vocab.items()}
        self.pad_id, self.eos_id, self.think_id, self.end_think_id, self.unk_id = (
            self._vocab[t] for t in self.SPECIAL_TOKENS
        )
        self.stop_ids: tuple[int, ...] = ()  # eos is the only id that ends a row.
        # Capturing group keeps the special tokens in re.split's output.
        self._special_re = re.compile(
            "(" + "|".join(re.escape(t) for t in self.SPECIAL_TOKENS) + ")"
        )

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def encode(self, text: str) -> list[int]:
        """Encodes text one word or character at a time, keeping special tokens whole."""
        ids = []
        for i, piece in enumerate(self._special_re.split(text)):
            if i % 2:  # Odd pieces are the captured special tokens.
                ids.append(self._vocab[piece])
            else:
                ids.extend(
                    self._vocab.get(m, self.unk_id)
                    for m in (self._piece_re.findall(piece) if self.words else piece)
                )
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encodes each text with `encode`."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Decodes ids; ``skip_special_tokens`` drops all five special tokens.

        ``<unk>`` is dropped too, matching the Hugging Face behaviour of the
        exported ``tokenizer.json`` where it is a special token.
        """
        n_special = len(self.SPECIAL_TOKENS)
        return "".join(
            self._inverse[int(i)] for i in ids if not (skip_special_tokens and int(i) < n_special)
        )

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Renders messages as ``"role: content\\n"`` lines (see class docstring);
        template variables (``kwargs``) are accepted and unused."""
        del kwargs
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant: " if add_generation_prompt else "")

    def token_to_id(self, token: str) -> int | None:
        """Returns the id of a special token or alphabet character, else None."""
        return self._vocab.get(token)

    has_chat_template = True  # The fixed "role: content" format.

    def to_hf_tokenizer_json(self, path: str | os.PathLike) -> None:
        """Writes an equivalent Hugging Face ``tokenizer.json`` to ``path``."""
        tok = tokenizers.Tokenizer(
            tokenizers.models.WordLevel(dict(self._vocab), unk_token="<unk>")
        )
        # One pre-token per word or character; [\s\S] (unlike ".") also matches
        # "\n". No normalizer, so spaces are kept as their own tokens.
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(
            tokenizers.Regex(self._piece_pattern), behavior="isolated"
        )
        # WordLevel decoding joins tokens with spaces by default; Fuse does not.
        tok.decoder = tokenizers.decoders.Fuse()
        tok.add_special_tokens(
            [tokenizers.AddedToken(t, special=True, normalized=False) for t in self.SPECIAL_TOKENS]
        )
        tok.save(str(path))

    def save_pretrained(self, dirpath: str | os.PathLike) -> pathlib.Path:
        """Writes ``tokenizer.json`` and ``tokenizer_config.json`` to a directory.

        ``HFTokenizer.from_pretrained(dirpath)`` then reproduces this
        tokenizer's ids, decoding, special ids and chat template.

        Returns:
          The directory path.
        """
        directory = pathlib.Path(dirpath)
        directory.mkdir(parents=True, exist_ok=True)
        self.to_hf_tokenizer_json(directory / "tokenizer.json")
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "chat_template": self.CHAT_TEMPLATE,
        }
        with (directory / "tokenizer_config.json").open("w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        if self.stop_ids:  # Read back as further stop ids (as transformers does).
            generation = directory / "generation_config.json"
            extra = _read_json(generation)
            extra["eos_token_id"] = [self.eos_id, *self.stop_ids]
            generation.write_text(json.dumps(extra, indent=2), encoding="utf-8")
        return directory


# Tokenizers known by name, made by a function of a higher layer: name -> (module,
# function). The module is imported when the name is first loaded.
NAMED = {"world": ("start_jax.world.generator", "tokenizer")}


def load_tokenizer(
    path_or_name: str | os.PathLike,
    think_token: str = THINK_TOKEN,
    end_think_token: str = END_THINK_TOKEN,
    add_missing_tags: bool = False,
) -> Tokenizer:
    """`CharTokenizer` for ``"char"``, a named tokenizer of `NAMED` (``"world"``, the
    embedded world's), else an `HFTokenizer` directory.

    The think tags and `add_missing_tags` are as in `HFTokenizer.from_pretrained`
    (``"char"`` and the named tokenizers have only the default tags).
    """
    name = str(path_or_name)
    if name == "char" or name in NAMED:
        check_default_tags(path_or_name, think_token, end_think_token)
        if name == "char":
            return CharTokenizer()
        module, function = NAMED[name]
        return getattr(importlib.import_module(module), function)()
    return HFTokenizer.from_pretrained(
        path_or_name,
        think_token=think_token,
        end_think_token=end_think_token,
        add_missing_tags=add_missing_tags,
    )


def check_default_tags(name, think_token: str, end_think_token: str) -> None:
    """Raises UserError unless the tags are ``<think>``/``</think>`` (for tokenizers
    whose tags are fixed)."""
    if (think_token, end_think_token) != (THINK_TOKEN, END_THINK_TOKEN):
        raise UserError(
            f"tokenizer {name!r} has the fixed tags {THINK_TOKEN}/{END_THINK_TOKEN}, "
            f"not {think_token}/{end_think_token}"
        )
