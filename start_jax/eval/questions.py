"""Held-out questions for evaluations, from the synthetic world or a JSONL file.

Imports tensorflow_datasets (through `start_jax.data.pipeline`), so
`start_jax.eval` does not load it; import this module where it is needed.
"""

from __future__ import annotations

import os

from start_jax.data import pipeline
from start_jax.world import dataset as world_data


def load_questions(
    spec: str, data_dir: str | os.PathLike, n: int, split: str = "test"
) -> list[dict]:
    """The first ``n`` questions of a split, as dicts with 'prompt', 'reference', 'metadata'.

    Args:
      spec: ``synthetic:NAME`` (a synthetic world config: facts, arith, mixed;
        ``synthetic`` alone is facts) or ``jsonl:PATH``.
      data_dir: where the tfds datasets are prepared (and reused).
      n: at most this many questions.
    """
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        source = world_data.load_synthetic(arg or "facts", data_dir, split)
    elif kind == "jsonl":
        source = pipeline.load_jsonl(arg, arg, data_dir, split)
    else:
        raise ValueError(f"questions {spec!r}: expected synthetic:NAME or jsonl:PATH")
    source = pipeline.TaskSource(source)
    return [source[i] for i in range(min(n, len(source)))]
