"""Every package of start_jax imports on its own, as the first import of a process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ["start_jax.checkpoints", "start_jax.models", "start_jax.sharding", "start_jax.data",
           "start_jax.data.behaviours", "start_jax.rewards", "start_jax.rl", "start_jax.sampling",
           "start_jax.train", "start_jax.eval.cross_generation"]


@pytest.mark.parametrize("module", MODULES)
def test_first_import(module):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
