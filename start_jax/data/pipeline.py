"""Loading task data sets (tfds, array_record) and iterating over prompts.

* `load_jsonl` builds a data set once under ``data_dir`` (later
  calls reuse it) and return a `DecodedSource`: a random-access sequence of dicts
  ``{prompt, reference, thinking, family, metadata}`` of ``str`` (``metadata`` is a
  JSON object as text).
* `PromptIterator` yields deterministic, resumable batches of examples.

No TensorFlow is needed: the builders write array_record files and are read with
``builder.as_data_source``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging as std_logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from start_jax import sharding
from start_jax.data.builders.jsonl_tasks import JsonlConfig, JsonlTasks
from start_jax.errors import MissingFile

FILE_FORMAT = "array_record"


class DecodedSource(Sequence):
    """A tfds data source whose bytes values are decoded to ``str``."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    @staticmethod
    def _decode(row: dict) -> dict[str, Any]:
        return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in row.items()}

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a source of {len(self)} rows")
        return self._decode(self.source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        return f"DecodedSource({self.source!r})"


def task_row(row: dict) -> dict[str, Any]:
    """A decoded row with `metadata` parsed to a dict that also names the family."""
    meta = row.get("metadata") or {}
    if isinstance(meta, str):
        meta = json.loads(meta or "{}")
    family = row.get("family") or meta.get("family", "")
    return {**row, "family": family, "metadata": {**meta, "family": family}}


class TaskSource(Sequence):
    """A `DecodedSource` whose rows go through `task_row` (what trainers and evals read)."""

    def __init__(self, source: Sequence):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):
        return task_row(self.source[index])


@contextlib.contextmanager
def _quiet_progress():
    """Hides tfds progress bars while building, then restores the previous setting."""
    from tensorflow_datasets.core.utils import tqdm_utils

    previous = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(previous)


class _NotYetGenerated(std_logging.Filter):
    """Drops tfds' warnings about the normal state of the data sets here: a folder
    without dataset_info.json (every data set before it is generated), and a
    builder config made at run time (every JSONL data set)."""

    EXPECTED = ("Variant folder %s has no ", "Using custom data configuration")

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.EXPECTED)


std_logging.getLogger("absl").addFilter(_NotYetGenerated())


def prepare(builder: tfds.core.GeneratorBasedBuilder) -> tfds.core.GeneratorBasedBuilder:
    """Generates the builder's data set unless it is already prepared; returns it.

    One process only: with several JAX processes use `prepared`.
    """
    if not builder.is_prepared():
        # tfds prints "Downloading and preparing dataset Unknown size" to stdout for data
        # that is generated here; say what happens instead, in the log.
        with _quiet_progress(), contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
                file_format=FILE_FORMAT,
            )
        logging.info(
            "generated %s/%s into %s", builder.name, builder.builder_config.name, builder.data_dir
        )
    return builder


def prepared(
    make_builder: Callable[[], tfds.core.GeneratorBasedBuilder],
) -> tfds.core.GeneratorBasedBuilder:
    """`prepare(make_builder())`, without a race between JAX processes or between runs
    that share a `data_dir`.

    With several processes (`jax.distributed`), process 0 generates the data set
    while the others wait at a barrier; then every process makes its builder,
    which reads what process 0 wrote (a builder made before the data existed
    would not see its splits). A process whose `data_dir` is not the disk process
    0 wrote to (a host-local workdir) generates its own copy.
    """
    if jax.process_count() == 1:
        return _prepared_once(make_builder)
    if jax.process_index() == 0:
        _prepared_once(make_builder)
    sharding.barrier("start_jax.data.pipeline.prepared")
    return _prepared_once(make_builder)


def _prepared_once(make_builder):
    """`prepare(make_builder())` under a lock on the data set's folder, so that runs
    sharing a `data_dir` generate each data set once (the others wait for it)."""
    builder = make_builder()
    if builder.is_prepared() or "://" in os.fspath(builder.data_dir):  # Done; or not a disk.
        return prepare(builder)
    locks = os.path.join(os.fspath(builder.data_dir_root), ".locks")
    os.makedirs(locks, exist_ok=True)
    name = f"{builder.name}-{builder.builder_config.name}-{builder.version}.lock"
    with open(os.path.join(locks, name), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # Released when the file closes.
        # Made again: another run may have generated the data set while this one waited.
        return prepare(make_builder())


def build_source(
    make_builder: Callable[[], tfds.core.GeneratorBasedBuilder], split: str
) -> DecodedSource:
    builder = prepared(make_builder)
    if split not in builder.info.splits:
        raise ValueError(
            f"{builder.name}/{builder.builder_config.name} has no split {split!r}; "
            f"it has {sorted(builder.info.splits)}"
        )
    return DecodedSource(builder.as_data_source(split=split))


def jsonl_config(
    train_path: str | os.PathLike, test_path: str | os.PathLike | None = None
) -> JsonlConfig:
    """A `JsonlConfig` named after a hash of the files' contents.

    Editing a file therefore builds a new data set instead of reusing a stale one.

    Raises:
      FileNotFoundError: A file does not exist.
    """
    digest = hashlib.sha256()
    paths = [os.path.abspath(os.fspath(p)) for p in (train_path, test_path) if p]
    for i, path in enumerate(paths):
        if not os.path.isfile(path):
            raise MissingFile(f"JSONL file {path} not found")
        digest.update(f"{i}:".encode())
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return JsonlConfig(
        name=f"jsonl_{digest.hexdigest()[:16]}",
        train_path=paths[0],
        test_path=paths[1] if len(paths) > 1 else None,
        description=f"JSONL tasks from {paths}",
    )


def load_jsonl(
    train_path: str | os.PathLike,
    test_path: str | os.PathLike | None,
    data_dir: str | os.PathLike,
    split: str,
) -> DecodedSource:
    """The ``split`` ("train" or "test") of a user's JSONL files, built once.

    Raises:
      FileNotFoundError: A file does not exist.
      ValueError: A line is malformed (the message names the file and line).
    """
    config = jsonl_config(train_path, test_path)
    return build_source(
        lambda: JsonlTasks(config=config, data_dir=os.fspath(data_dir), file_format=FILE_FORMAT),
        split,
    )


class PromptIterator:
    """Deterministic, resumable batches of examples from a random-access source.

    Epoch ``e`` visits the rows in the order ``default_rng([seed, e]).permutation``;
    a batch that reaches the end of an epoch is completed from the next one, so
    every batch has ``batch_size`` rows. `state` is ``{"epoch", "position"}`` (ints,
    JSON-serialisable); an iterator that `restore`s it yields exactly the batches
    the original would have yielded next.
    """

    def __init__(self, source: Sequence, batch_size: int, seed: int):
        if len(source) == 0:
            raise ValueError("PromptIterator: the source is empty")
        if batch_size < 1:
            raise ValueError(f"PromptIterator: batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0
        self._order_epoch = -1
        self._order = np.zeros((0,), np.int64)

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(len(self.source))
            self._order_epoch = epoch
        return self._order

    def next_indices(self) -> list[int]:
        """The source indices of the next batch (advances the iterator)."""
        out: list[int] = []
        while len(out) < self.batch_size:
            order = self._order_of(self.epoch)
            take = order[self.position : self.position + self.batch_size - len(out)]
            out.extend(int(i) for i in take)
            self.position += len(take)
            if self.position >= len(order):
                self.epoch += 1
                self.position = 0
        return out

    def next_batch(self) -> list[dict]:
        """The next ``batch_size`` examples."""
        return [self.source[i] for i in self.next_indices()]

    def __iter__(self):
        return self

    def __next__(self) -> list[dict]:
        return self.next_batch()

    def state(self) -> dict[str, int]:
        """``{"epoch": int, "position": int}``: where the next batch starts."""
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def restore(self, state: dict) -> None:
        """Continues from a `state` (e.g. read back from a checkpoint's JSON)."""
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < len(self.source):
            raise ValueError(
                f"PromptIterator.restore: bad state {state!r} for a source "
                f"of {len(self.source)} rows"
            )
        self.epoch, self.position = epoch, position
