"""tfds builder over a user's local JSONL task files.

Each non-blank line is a JSON object with a string ``"prompt"`` or a
``"messages"`` list (``{"role", "content"}`` objects, roles system/user/assistant,
ending with a user message; rendered by a chat template, see
`start_jax.data.prompts`), and a ``"reference"`` (a string or a number);
optionally ``"thinking"`` (a gold trace for cold-start SFT), ``"response"`` (the
SFT response after it; default: the reference) and ``"family"`` (e.g. "arith" or
"facts", used by the ``synthetic`` judge). All other keys, ``family`` and
``messages`` go into the ``metadata`` feature as a JSON object; a ``messages``
row's ``prompt`` feature is its last user message. Lines are validated while the
data set is generated; a bad line raises ``ValueError("<path> line <n>: <what is wrong>")`` with the
1-based line number, e.g. ``/x/train.jsonl line 3: missing field 'reference'``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow_datasets as tfds

from start_jax.data.builders.features import text_features
from start_jax.data.prompts import check_messages
from start_jax.errors import DataError


@dataclasses.dataclass(eq=False)
class JsonlConfig(tfds.core.BuilderConfig):
    """Paths of the JSONL files; ``test_path`` may be empty (no test split)."""

    train_path: str = ""
    test_path: str | None = None


def _type(value) -> str:
    return "null" if value is None else type(value).__name__


def parse_line(path: str, lineno: int, line: str) -> dict[str, str]:
    """Validates one JSONL line and returns its row of five text features.

    Raises:
      ValueError: ``"<path> line <lineno>: ..."`` for invalid JSON, a value that
        is not an object, a missing or mistyped field.
    """
    where = f"{path} line {lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {_type(obj)}")
    if "prompt" in obj and "messages" in obj:
        raise DataError(f"{where}: give either 'prompt' or 'messages', not both")
    if "messages" in obj:
        obj["messages"] = check_messages(where, obj["messages"])
        obj["prompt"] = obj["messages"][-1]["content"]
    for field in ("prompt", "reference"):
        if field not in obj:
            raise DataError(
                f"{where}: missing field {field!r}"
                + (" (or 'messages')" if field == "prompt" else "")
            )
    if not isinstance(obj["prompt"], str):
        raise DataError(f"{where}: field 'prompt' must be a string, got {_type(obj['prompt'])}")
    reference = obj["reference"]
    if isinstance(reference, bool) or not isinstance(reference, (str, int, float)):
        raise DataError(
            f"{where}: field 'reference' must be a string or a number, got {_type(reference)}"
        )
    for field in ("thinking", "family", "response"):
        if field in obj and not isinstance(obj[field], str):
            raise DataError(f"{where}: field {field!r} must be a string, got {_type(obj[field])}")
    metadata = {k: v for k, v in obj.items() if k not in ("prompt", "reference", "thinking")}
    return {
        "prompt": obj["prompt"],
        "reference": reference if isinstance(reference, str) else json.dumps(reference),
        "thinking": obj.get("thinking", ""),
        "family": obj.get("family", ""),
        "metadata": json.dumps(metadata, sort_keys=True),
    }


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict[str, str]]]:
    """All (1-based line number, row) of a JSONL file; blank lines are skipped.

    Raises:
      FileNotFoundError: The file does not exist.
      ValueError: A line is malformed (see `parse_line`) or the file has no rows.
    """
    path = os.fspath(path)
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path} line {lineno}: not UTF-8 text ({e.reason} at byte "
                    f"{e.start} of the line); save the file as UTF-8"
                ) from None
            if line.strip():
                rows.append((lineno, parse_line(path, lineno, line)))
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty)")
    return rows


class JsonlTasks(tfds.core.GeneratorBasedBuilder):
    """Prompts and references from local JSONL files (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, features=text_features(), supervised_keys=None
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        if not isinstance(c, JsonlConfig) or not c.train_path:
            raise ValueError(
                "JsonlTasks needs config=JsonlConfig(name=..., train_path=..., test_path=...)"
            )
        paths = {"train": c.train_path}
        if c.test_path:
            paths["test"] = c.test_path
        # Read (and validate) every file before writing anything.
        rows = {split: read_jsonl(path) for split, path in paths.items()}
        return {split: self._generate_examples(r) for split, r in rows.items()}

    def _generate_examples(self, rows):
        for lineno, row in rows:
            yield lineno, row
