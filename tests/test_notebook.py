"""The ablation notebook, reduced, executes end to end and its checks pass."""

from __future__ import annotations

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.xla_flags import FAST_COMPILE

pytestmark = pytest.mark.e2e  # Runs of the trainer or launch.py (so also slow).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reduced_ablation_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATION_SCALE", "reduced")
    monkeypatch.setenv("ABLATION_OUT", str(tmp_path / "ablation"))
    monkeypatch.setenv("ABLATION_REUSE", "0")
    # One CPU device in the kernel, as a user has (compiled as the rest of the suite).
    monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE)
    nb = nbformat.read(os.path.join(ROOT, "experiments", "ablation.ipynb"), as_version=4)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.join(ROOT, "experiments")}},
    ).execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "all checks passed for 5 trained thinkers" in outputs
    results = json.load(open(tmp_path / "ablation" / "results.json"))
    thinkers = {r["thinker"] for r in results["summary"]}
    assert {
        "base",
        "joint/grpo",
        "start_frozen/grpo",
        "start_frozen.s1/grpo",
        "start_frozen.frozen_thinker/grpo",
        "empty",
        "self",
    } <= thinkers
