"""Prompts as the model reads them: task rows rendered through a chat template.

A task row holds a question (``prompt``), or a conversation (``messages`` in
its metadata, from a JSONL ``messages`` field). `PromptFormat` says how a run
turns it into the text the model continues:

* ``chat_template=False``: the ``prompt`` text as it is (base models, the
  embedded world);
* ``chat_template=True``: the conversation — an optional system message, then
  the user's question, or the row's own ``messages`` — rendered by the
  tokenizer's chat template with the generation prompt and the template
  variables of ``template_kwargs`` (for Qwen3, ``enable_thinking=True`` leaves
  the thinking to the model: the sampler then writes ``<think>`` itself).

`RenderedSource` wraps a data source so that every reader (the sampler, the
trainer, cold-start SFT, evaluations, the logged samples) sees the rendered
text under ``prompt``; the row's own question stays under ``question`` and in
``metadata["question"]``, where rewards such as a judge read it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from start_jax.errors import ConfigError, DataError

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """How task rows become prompt text (see the module docstring)."""

    chat_template: bool = False
    system: str = ""  # System message for rows without one.
    template_kwargs: tuple[tuple[str, Any], ...] = ()  # Template variables, e.g. enable_thinking.

    @classmethod
    def create(
        cls, chat_template: bool = False, system: str = "", template_kwargs: dict | None = None
    ) -> "PromptFormat":
        return cls(bool(chat_template), str(system), tuple(sorted((template_kwargs or {}).items())))


def messages_of(row: dict, fmt: PromptFormat) -> list[dict]:
    """The conversation of a task row (metadata parsed, as `pipeline.TaskSource` gives
    it): its ``messages``, or ``[system], user: prompt``.

    The format's system message is added only to a conversation without one.
    """
    messages = (row.get("metadata") or {}).get("messages")
    if messages is None:
        messages = [{"role": "user", "content": row["prompt"]}]
    messages = [dict(m) for m in messages]
    if fmt.system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": fmt.system})
    return messages


def render(row: dict, tokenizer, fmt: PromptFormat) -> str:
    """The prompt text of one task row under `fmt` (see the module docstring).

    Raises:
      ConfigError: a row with ``messages`` under ``chat_template=False`` (the
        conversation has no text form without a template), or a tokenizer with
        no chat template.
    """
    if not fmt.chat_template:
        if "messages" in (row.get("metadata") or {}):
            raise ConfigError(
                "config: a data row has 'messages', which need a chat template; "
                "set --config.prompt.chat_template=True"
            )
        return row["prompt"]
    try:
        return tokenizer.apply_chat_template(
            messages_of(row, fmt), add_generation_prompt=True, **dict(fmt.template_kwargs)
        )
    except ValueError as e:  # No chat template in the tokenizer's files.
        raise ConfigError(f"config: prompt.chat_template=True but {e}") from None


class RenderedSource(Sequence):
    """Rows of a task source with ``prompt`` rendered by `render` (cached per row).

    ``question`` (and ``metadata["question"]``) keep the row's own question:
    its ``prompt`` field, or the last user message of its ``messages``.
    """

    def __init__(self, source: Sequence, tokenizer, fmt: PromptFormat):
        self.source = source
        self.tokenizer = tokenizer
        self.fmt = fmt
        self._prompts: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index) % len(self) if int(index) < 0 else int(index)
        row = self.source[index]
        prompt = self._prompts.get(index)
        if prompt is None:
            prompt = self._prompts[index] = render(row, self.tokenizer, self.fmt)
        question = row["prompt"]
        meta = row.get("metadata")
        if isinstance(meta, dict):
            meta = {**meta, "question": question}
        return {**row, "prompt": prompt, "question": question, "metadata": meta}


def check_messages(where: str, messages: Any) -> list[dict]:
    """A JSONL ``messages`` value as a list of {role, content} dicts, or a DataError.

    The conversation must end with a user message (the model answers it).
    """
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{where}: field 'messages' must be a non-empty list of {{'role', 'content'}} objects"
        )
    out = []
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise DataError(
                f"{where}: messages[{i}] must be an object with string 'role' and "
                f"'content', got {json.dumps(m)[:80]}"
            )
        if m["role"] not in ROLES:
            raise DataError(
                f"{where}: messages[{i}] has role {m['role']!r}; expected one of {list(ROLES)}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise DataError(
            f"{where}: the last of 'messages' must have role 'user' (the model "
            f"answers it), not {out[-1]['role']!r}"
        )
    return out
