"""Weights & Biases beside metrics.jsonl (`log.wandb`): an offline run holds the same
scalars at the same steps, the config and the sample tables; a missing package is a
one-line error before any work; a W&B failure is a warning and the run goes on."""

import glob
import json
import os
import struct
import sys

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

from start_jax import train
from start_jax.errors import ConfigError
from start_jax.train import writers
from start_jax.train.spec import WandbSpec
from tests.fixtures import read_metrics, smoke_config


def _records(path: str) -> list:
    """The protobuf records of a .wandb file (a LevelDB-style log: 32 KiB blocks of
    chunks, each with a 7-byte header: crc32c, length, kind 1 full / 2 first / 3 middle /
    4 last; the file starts with a 7-byte ':W&B' header)."""
    raw = open(path, "rb").read()
    assert raw[:4] == b":W&B"
    block, pos, chunk, out = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # The block's tail is padding.
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        chunk += raw[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def _history(records) -> dict[int, dict]:
    rows = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = r.history.item
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
            rows.setdefault(row["_step"], {}).update(row)
    return rows


@pytest.mark.e2e
def test_an_offline_run_holds_the_metrics_config_and_samples(tmp_path):
    config = smoke_config()
    config.stages.s1.steps, config.stages.s2.steps = 2, 1
    config.eval.every = 3
    config.log.wandb.project = "start_jax_tests"
    config.log.wandb.mode = "offline"
    workdir = str(tmp_path / "run")
    train.Trainer(config, workdir).run()

    (path,) = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))
    run_id = open(os.path.join(workdir, writers.WANDB_RUN_ID)).read()
    assert path.endswith(f"run-{run_id}.wandb")
    records = _records(path)
    history = _history(records)
    metrics = read_metrics(workdir)
    assert sorted(history) == [r["step"] for r in metrics] == [1, 2, 3]
    for row in metrics:
        got = history[row["step"]]
        want = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        assert "eval/reward" in want or row["step"] < 3
        assert {k: got[k] for k in want} == want, row["step"]
    # The config, as the run's spec holds it.
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    logged = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert logged["sft"]["steps"] == 10 and logged["stages"]["s1"]["train_segments"] == "think"
    assert logged["log"]["wandb"]["mode"] == "offline"
    # The sample rollouts (steps 1 and 3: log.samples_every=2) as tables, equal to samples.jsonl.
    with open(os.path.join(workdir, "samples.jsonl")) as fh:
        samples = [json.loads(line) for line in fh]
    for step in (1, 3):
        meta = history[step]
        assert meta["samples/_type"] == "table-file"
        table = json.load(open(os.path.join(os.path.dirname(path), "files", meta["samples/path"])))
        rows = [dict(zip(table["columns"], row)) for row in table["data"]]
        want = [{k: v for k, v in s.items() if k != "step"} for s in samples if s["step"] == step]
        assert rows == want and len(rows) == 4
        assert {"prompt", "thinking", "response", "reward"} <= set(table["columns"])


def test_without_the_package_the_run_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError.
    config = smoke_config()
    config.log.wandb.project = "p"
    refused = r"log\.wandb\.project is set, but the wandb package cannot be imported"
    with pytest.raises(ConfigError, match=refused) as e:
        train.Trainer(config, str(tmp_path / "run"))
    assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "run")


def test_config_errors_name_the_key():
    config = smoke_config()
    config.log.wandb.mode = "cloud"
    with pytest.raises(ConfigError, match=r"log\.wandb\.mode='cloud' is not one of"):
        train.RunSpec.from_config(config)
    config.log.wandb.mode = "offline"
    config.log.wandb.init_timeout = 0
    with pytest.raises(ConfigError, match=r"log\.wandb\.init_timeout=0\.0 must be a number > 0"):
        train.RunSpec.from_config(config)


class _Broken:
    """A W&B run that stops accepting data after its first log call."""

    def __init__(self):
        self.calls = 0

    def log(self, values, step):
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("connection reset\nmore detail")

    def finish(self):
        raise AssertionError("not called after a failure")


def test_wandb_failures_are_one_warning_and_the_metrics_go_on(tmp_path, monkeypatch, capsys):
    def refuse(**kw):
        raise RuntimeError("network unreachable\ntraceback-like detail")

    monkeypatch.setattr(wandb, "init", refuse)
    writer = writers.MetricWriter(str(tmp_path), wandb=WandbSpec(project="p"), config={})
    assert writer.wandb is None
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: W&B could not start a run (RuntimeError: network unreachable); metrics go "
        "to metrics.jsonl and TensorBoard only"
    ]
    writer.write(1, {"a": 1.0})
    writer.close()
    # A run that breaks mid-way: one warning, then no more calls; metrics.jsonl continues.
    broken = _Broken()
    (tmp_path / "b").mkdir()
    monkeypatch.setattr(wandb, "init", lambda **kw: type("R", (), {"dir": "d"})())
    writer = writers.MetricWriter(str(tmp_path / "b"), wandb=WandbSpec(project="p"), config={})
    writer.wandb.run = broken
    for step in (1, 2, 3):
        writer.write(step, {"a": float(step)})
    writer.close()
    assert broken.calls == 2 and [r["a"] for r in read_metrics(tmp_path / "b")] == [1, 2, 3]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: W&B stopped logging (ConnectionError: connection reset); metrics go to "
        "metrics.jsonl and TensorBoard only"
    ]
