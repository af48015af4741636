"""JSON-lines data as a task (`data.source='jsonl'`): one object per line with a prompt
and a reference (and optionally a family, a gold response and metadata)."""

from __future__ import annotations

from start_jax.data import pipeline
from start_jax.errors import ConfigError
from start_jax.tasks.base import Task, register
from start_jax.world import generator as world


class JsonlTask(Task):
    name = "jsonl"
    description = "JSON-lines files"

    def load(self, split, name, train_path, test_path, data_dir):
        del name
        if not train_path:
            raise ConfigError("config: data.source='jsonl' needs data.train_path")
        return pipeline.load_jsonl(train_path, test_path or train_path, data_dir, split)

    def sft_traces(self, examples, mixture, seed, draws):
        """Gold traces: a line's "response" field, else its reference as the world's answer."""
        del mixture, seed, draws
        return [
            {
                **e,
                "response": e["metadata"].get("response")
                or world.golden_response(world.Example.from_row(e)),
            }
            for e in examples
        ]


JSONL = register(JsonlTask())
