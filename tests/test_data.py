"""Tests for the tfds builders (array_record, no TensorFlow) and start_jax.data.pipeline."""

import dataclasses
import fcntl
import json
import threading

import pytest
import tensorflow_datasets as tfds

from start_jax import train
from start_jax.data import pipeline
from start_jax.data.builders import JsonlConfig, JsonlTasks
from start_jax.data.pipeline import PromptIterator
from start_jax.train import data_io
from start_jax.train.config import default_config
from start_jax.world import dataset as world_data
from start_jax.world import generator as world
from start_jax.world.builders import SyntheticWorld, SyntheticWorldConfig

FIELDS = {"prompt", "reference", "thinking", "family", "metadata"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_synthetic_world_builds_and_reads_back(tmp_path):
    config = SyntheticWorldConfig(name="tiny", family="facts", seed=5, train_size=30, test_size=8)
    builder = SyntheticWorld(config=config, data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    assert builder.info.splits["train"].num_examples == 30
    assert builder.info.splits["test"].num_examples == 8
    assert list((tmp_path / "synthetic_world" / "tiny" / "3.0.0").glob("*.array_record*"))
    source = builder.as_data_source(split="train")
    assert len(source) == 30
    row = source[0]
    assert set(row) == FIELDS and isinstance(row["prompt"], bytes)
    expected = world.generate_splits("facts", {"train": 30, "test": 8}, seed=5)
    for split in ("train", "test"):
        rows = [
            pipeline.DecodedSource(builder.as_data_source(split=split))[i]
            for i in range(len(expected[split]))
        ]
        want = [e.to_row() for e in expected[split]]
        # tfds stores rows in the order of its key hashes; the rows themselves match.
        assert sorted(rows, key=lambda r: r["prompt"]) == sorted(want, key=lambda r: r["prompt"])
        assert all(json.loads(r["metadata"])["family"] == "facts" for r in rows)


def test_named_configs():
    configs = {c.name: c for c in SyntheticWorld.BUILDER_CONFIGS}
    assert set(configs) == {"arith", "facts", "mixed"}
    for name, c in configs.items():
        assert c.family == name and (c.train_size, c.test_size) == (20000, 200)
    with pytest.raises(ValueError, match="unknown family"):
        SyntheticWorldConfig(name="bad", family="poetry")


def test_load_synthetic(data_dir, monkeypatch):
    train = world_data.load_synthetic(
        "arith", data_dir, "train", seed=1, train_size=40, test_size=10
    )
    test = world_data.load_synthetic("arith", data_dir, "test", seed=1, train_size=40, test_size=10)
    assert (len(train), len(test)) == (40, 10)
    assert all(isinstance(v, str) for v in train[0].values()) and set(train[0]) == FIELDS
    assert train[-1] == train[39] and len(train[2:5]) == 3
    with pytest.raises(IndexError):
        train[40]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    for r in train:
        assert world.solve_arith(r["prompt"]) == int(r["reference"])
    # Prepared once: a second load reuses the files.
    monkeypatch.setattr(
        SyntheticWorld,
        "download_and_prepare",
        lambda *a, **k: pytest.fail("rebuilt a prepared data set"),
    )
    again = world_data.load_synthetic(
        "arith", data_dir, "train", seed=1, train_size=40, test_size=10
    )
    assert [again[i] for i in range(40)] == [train[i] for i in range(40)]
    with pytest.raises(ValueError, match="has no split 'validation'"):
        world_data.load_synthetic(
            "arith", data_dir, "validation", seed=1, train_size=40, test_size=10
        )
    with pytest.raises(ValueError, match="unknown synthetic config 'poems'"):
        world_data.load_synthetic("poems", data_dir, "train")
    assert world_data.synthetic_config("facts", seed=3).name == "facts_s3_n20000_200_p850"


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_load_named_mixed(data_dir):
    train = world_data.load_synthetic("mixed", data_dir, "train")
    assert len(train) == 20000 and len(world_data.load_synthetic("mixed", data_dir, "test")) == 200
    families = {train[i]["family"] for i in range(100)}
    assert families == {"arith", "facts"}


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_jsonl_round_trip(tmp_path):
    train = _write(
        tmp_path / "train.jsonl",
        [
            json.dumps({"prompt": "Q1?", "reference": "A1", "source": "web", "id": 1}),
            "",
            json.dumps({"prompt": "Q2?", "reference": 42, "family": "arith", "thinking": "t"}),
            json.dumps({"prompt": "Q3?", "reference": "A3", "family": "facts", "tags": ["x", "y"]}),
        ],
    )
    test = _write(tmp_path / "test.jsonl", [json.dumps({"prompt": "T1?", "reference": "B"})])
    data_dir = tmp_path / "data"
    rows = pipeline.load_jsonl(train, test, data_dir, "train")
    by_prompt = {r["prompt"]: r for r in (rows[i] for i in range(len(rows)))}
    assert len(rows) == 3 and set(by_prompt) == {"Q1?", "Q2?", "Q3?"}
    assert by_prompt["Q1?"] == {
        "prompt": "Q1?",
        "reference": "A1",
        "thinking": "",
        "family": "",
        "metadata": json.dumps({"id": 1, "source": "web"}),
    }
    assert by_prompt["Q2?"]["reference"] == "42" and by_prompt["Q2?"]["thinking"] == "t"
    assert by_prompt["Q2?"]["family"] == "arith"
    assert json.loads(by_prompt["Q3?"]["metadata"]) == {"family": "facts", "tags": ["x", "y"]}
    test_rows = pipeline.load_jsonl(train, test, data_dir, "test")
    assert len(test_rows) == 1 and test_rows[0]["reference"] == "B"
    # Through the builder directly, and without a test file (train split only).
    config = JsonlConfig(name="direct", train_path=train)
    builder = JsonlTasks(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    assert set(builder.info.splits) == {"train"}
    assert len(builder.as_data_source(split="train")) == 3
    # Editing a file builds a new data set instead of reusing the stale one.
    name = pipeline.jsonl_config(train, test).name
    _write(tmp_path / "train.jsonl", [json.dumps({"prompt": "New?", "reference": "N"})])
    assert pipeline.jsonl_config(train, test).name != name
    assert pipeline.load_jsonl(train, test, data_dir, "train")[0]["prompt"] == "New?"


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"prompt": "x" "reference": "y"}', "invalid JSON (Expecting ',' delimiter at column 16)"),
        ("not json", "invalid JSON (Expecting value at column 1)"),
        ('{"prompt": "x"}', "missing field 'reference'"),
        ('{"reference": "y"}', "missing field 'prompt' (or 'messages')"),
        (
            '{"prompt": "x", "messages": [{"role": "user", "content": "x"}], "reference": "y"}',
            "give either 'prompt' or 'messages', not both",
        ),
        (
            '{"messages": "x", "reference": "y"}',
            "field 'messages' must be a non-empty list of {'role', 'content'} objects",
        ),
        (
            '{"messages": [{"role": "user"}], "reference": "y"}',
            "messages[0] must be an object with string 'role' and 'content', got {\"role\": \"user\"}",
        ),
        (
            '{"messages": [{"role": "tool", "content": "x"}], "reference": "y"}',
            "messages[0] has role 'tool'; expected one of ['system', 'user', 'assistant']",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], '
            '"reference": "y"}',
            "the last of 'messages' must have role 'user' (the model answers it), not 'assistant'",
        ),
        ('["prompt", "reference"]', "expected a JSON object, got list"),
        ('{"prompt": 3, "reference": "y"}', "field 'prompt' must be a string, got int"),
        (
            '{"prompt": "x", "reference": null}',
            "field 'reference' must be a string or a number, got null",
        ),
        (
            '{"prompt": "x", "reference": "y", "thinking": 1}',
            "field 'thinking' must be a string, got int",
        ),
    ],
)
def test_jsonl_malformed_line(tmp_path, bad_line, problem):
    good = json.dumps({"prompt": "Q?", "reference": "A"})
    train = _write(tmp_path / "train.jsonl", [good, "", bad_line, good])
    with pytest.raises(ValueError) as e:
        pipeline.load_jsonl(train, None, tmp_path / "data", "train")
    assert str(e.value) == f"{tmp_path / 'train.jsonl'} line 3: {problem}"


def test_jsonl_bad_test_file_and_missing_file(tmp_path):
    train = _write(tmp_path / "train.jsonl", [json.dumps({"prompt": "Q?", "reference": "A"})])
    test = _write(tmp_path / "test.jsonl", ['{"prompt": "x"}'])
    with pytest.raises(ValueError) as e:
        pipeline.load_jsonl(train, test, tmp_path / "data", "test")
    assert str(e.value) == f"{test} line 1: missing field 'reference'"
    empty = _write(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="no examples"):
        pipeline.load_jsonl(empty, None, tmp_path / "data", "train")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        pipeline.load_jsonl(tmp_path / "nope.jsonl", None, tmp_path / "data", "train")


def _batches(it, n):
    return [[r["i"] for r in it.next_batch()] for _ in range(n)]


def test_prompt_iterator_is_deterministic():
    source = [{"i": i} for i in range(10)]
    a = _batches(PromptIterator(source, 4, seed=3), 10)
    assert a == _batches(PromptIterator(source, 4, seed=3), 10)
    assert a != _batches(PromptIterator(source, 4, seed=4), 10)
    assert all(len(b) == 4 for b in a)
    flat = [i for b in a for i in b]
    # Each epoch is a permutation; batches that cross an epoch end are completed.
    for epoch in range(4):
        assert sorted(flat[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    assert flat[:10] != flat[10:20]


@pytest.mark.parametrize("steps", [1, 2, 3, 5])  # Mid-epoch (1), at/after epoch ends.
def test_prompt_iterator_resumes_exactly(steps):
    source = [{"i": i} for i in range(10)]
    original = PromptIterator(source, 4, seed=11)
    _batches(original, steps)
    state = json.loads(json.dumps(original.state()))
    assert set(state) == {"epoch", "position"} and all(type(v) is int for v in state.values())
    restored = PromptIterator(source, 4, seed=11)
    restored.restore(state)
    assert _batches(restored, 7) == _batches(original, 7)
    assert restored.state() == original.state()


def test_prompt_iterator_on_a_data_source(data_dir):
    source = world_data.load_synthetic("facts", data_dir, "test", seed=2, train_size=5, test_size=9)
    it = PromptIterator(source, 4, seed=0)
    first = [it.next_batch() for _ in range(3)]  # Crosses the epoch end (9 rows).
    assert it.state() == {"epoch": 1, "position": 3}
    resumed = PromptIterator(source, 4, seed=0)
    resumed.restore({"epoch": 0, "position": 4})
    assert [resumed.next_batch() for _ in range(2)] == first[1:]
    assert all(set(r) == FIELDS and isinstance(r["prompt"], str) for b in first for r in b)
    with pytest.raises(ValueError, match="bad state"):
        resumed.restore({"epoch": 0, "position": 9})


def test_runs_sharing_a_data_dir_generate_each_data_set_once(tmp_path, monkeypatch):
    """A run that finds another generating the same data set waits for it under the lock
    (in <data_dir>/.locks), then reads what that one wrote instead of generating again."""
    config = world_data.synthetic_config("facts", seed=5, train_size=40, test_size=8)
    make = lambda: SyntheticWorld(  # noqa: E731
        config=config, data_dir=str(tmp_path), file_format=pipeline.FILE_FORMAT
    )
    generated = []
    info = pipeline.logging.info
    monkeypatch.setattr(
        pipeline.logging,
        "info",
        lambda msg, *a: (
            generated.append(threading.current_thread().name)
            if msg.startswith("generated")
            else info(msg, *a)
        ),
    )
    b = make()
    lock = tmp_path / ".locks" / f"{b.name}-{b.builder_config.name}-{b.version}.lock"
    got = {}
    waiter = threading.Thread(
        target=lambda: got.update(n=len(pipeline.build_source(make, "train"))), name="waiter"
    )
    lock.parent.mkdir()
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # Another run holds the lock ...
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()  # ... so this one waits,
        pipeline.prepare(make())  # while the other generates the data set.
    waiter.join(60)
    assert got == {"n": 40} and generated == ["MainThread"]
    # Prepared already: no lock is taken.
    assert len(pipeline.build_source(make, "test")) == 8 and generated == ["MainThread"]


def test_the_data_dir_comes_from_the_config_then_the_environment_then_the_workdir(monkeypatch):
    spec = train.RunSpec.from_config(default_config()).data
    monkeypatch.delenv(data_io.DATA_DIR_ENV, raising=False)
    assert data_io.data_dir_of(spec, "/w") == "/w/data"
    monkeypatch.setenv(data_io.DATA_DIR_ENV, "/shared")
    assert data_io.data_dir_of(spec, "/w") == "/shared"
    named = dataclasses.replace(spec, data_dir="/mine")
    assert data_io.data_dir_of(named, "/w") == "/mine"
