"""What a run reads: data sets and their prompts, tokenised once."""

from __future__ import annotations

import os

import numpy as np

from start_jax import tasks
from start_jax.data import pipeline, prompts
from start_jax.data.prompts import PromptFormat
from start_jax.errors import DataError
from start_jax.train.spec import DataSpec

DATA_DIR_ENV = "START_JAX_DATA_DIR"


def datasets(
    data: DataSpec,
    workdir: str,
    tokenizer=None,
    fmt: PromptFormat = PromptFormat(),  # noqa: B008  (frozen: one shared default is safe)
):
    """(train, test) sources of example dicts, prompts rendered by `fmt`
    (`start_jax.data.prompts`; with a chat template `tokenizer` renders them)."""
    data_dir = data_dir_of(data, workdir)
    task = tasks.get(data.source)
    return tuple(
        prompts.RenderedSource(
            pipeline.TaskSource(
                task.load(split, data.name, data.train_path, data.test_path, data_dir)
            ),
            tokenizer,
            fmt,
        )
        for split in ("train", "test")
    )


def data_dir_of(data: DataSpec, workdir: str) -> str:
    """Where a run's tfds data sets are built and read: ``data.data_dir``, else the
    environment's ``START_JAX_DATA_DIR`` (shared by runs that set it), else
    ``<workdir>/data``."""
    return data.data_dir or os.environ.get(DATA_DIR_ENV) or os.path.join(workdir, "data")


class PromptEncoder:
    """Token ids of each distinct prompt, encoded once and reused every step."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer = tokenizer
        self.max_tokens = int(max_tokens)
        self._ids: dict[str, np.ndarray] = {}

    def __call__(self, examples) -> list[np.ndarray]:
        out = []
        for e in examples:
            ids = self._ids.get(e["prompt"])
            if ids is None:
                ids = np.asarray(self.tokenizer.encode(e["prompt"]), np.int32)
                if len(ids) > self.max_tokens:
                    raise DataError(
                        f"prompt has {len(ids)} tokens, more than data.max_prompt_tokens="
                        f"{self.max_tokens}: {e['prompt'][:60]!r}"
                    )
                self._ids[e["prompt"]] = ids
            out.append(ids)
        return out
