"""Multi-host runs as users launch them: two processes on localhost, each with 4 CPU
devices, `jax.distributed` with gloo collectives, `launch.py --distributed`.

Three `launch.py` runs of the smoke config cut to 3 steps (stage s1, thinking with
a frozen responder, steps 0-1; s2, the response with the policy responding, step 2),
one cold-start SFT step, no eval, and an entropy bonus (see below):
  * one process with 8 devices, the 3 steps (the reference);
  * two processes with 4 devices each, stage s1 only;
  * one process with 8 devices in the pair's workdir, resuming from the pair's
    checkpoint (step 2) to the end.

The workdir of the pair plus the resumed run must hold the reference's metrics and
samples: the same rows (process 0 alone wrote, once), the same rollouts and rewards,
and every float within the tolerances below.

The entropy bonus (`algo.entropy_coef=0.01`) gives the update a gradient to follow:
in the plain smoke run every reward is 0, so the gradient is the KL term at the
reference policy, about 1e-9, which is rounding noise that Adam scales up to
learning-rate-sized steps. Two programs that sum in a different order (gloo's
all-reduce across processes, XLA's within one) then make different updates, as two
single-process runs on different meshes do (the plain smoke run on a data=2, fsdp=4
mesh has l2_updates 0.0032 at step 2, on the default fsdp=8 mesh 0.0101).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.xla_flags import device_flags

pytestmark = pytest.mark.e2e  # Runs of the trainer or launch.py (so also slow).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "configs", "smoke.py")
COMMON = [
    "--config.algo.entropy_coef=0.01",
    "--config.eval.every=0",
    "--config.sft.steps=1",
    "--config.stages.s1.steps=2",
    "--config.stages.s2.steps=1",
]
CUT = ["--config.stages.s2.steps=0"]  # The pair runs stage s1 only.
# Floats agree to RTOL relative (plus ATOL, for values at 0). The logprob_mismatch_*
# metrics (sampler vs trainer log-probabilities) are rounding themselves, 1e-7 to 1e-6,
# and agree to MISMATCH_ATOL absolute. Measured here (XLA's optimisation level 0, as every
# test process): 8.2e-6 relative at most on l2_grads, 3.7e-9 absolute on kl (3.6e-5, so
# 1.0e-4 relative: within ATOL), 4.8e-7 absolute on the mismatch.
RTOL, ATOL, MISMATCH_ATOL = 1e-4, 1e-8, 2e-6
TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, cache: str | None = None) -> dict:
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        TOKENIZERS_PARALLELISM="false",
        XLA_FLAGS=device_flags(devices),
    )
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache:  # The resumed run reuses the programs the reference compiled.
        env.update(
            JAX_COMPILATION_CACHE_DIR=cache,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


def _launch(workdir: str, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "launch.py"),
            f"--config={SMOKE}",
            f"--workdir={workdir}",
            *COMMON,
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(procs: dict[str, subprocess.Popen]) -> dict[str, str]:
    began, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {}
    try:
        for name, p in procs.items():
            out[name] = p.communicate(timeout=TIMEOUT)[0]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
    failed = {n: p.returncode for n, p in procs.items() if p.returncode}
    assert not failed, "\n\n".join(
        f"== {n} (exit {procs[n].returncode}):\n{out[n][-6000:]}" for n in failed
    )
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"{', '.join(procs)}: {time.perf_counter() - began:.1f} s, "
        f"{used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime:.1f} s of CPU"
    )
    return out


def _rows(workdir: str, name: str) -> list[dict]:
    with open(os.path.join(workdir, name)) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _mismatch(key: str) -> bool:
    """A sampler/trainer mismatch metric (whole completion, or one segment's)."""
    return key.rsplit("/", 1)[-1].startswith("logprob_mismatch")


def _differences(ref: list[dict], got: list[dict]) -> list[str]:
    """Rows that differ: other keys, other text, or floats beyond the tolerance."""
    bad = []
    for r, g in zip(ref, got):
        if set(r) != set(g):
            bad.append(f"step {r['step']}: keys {sorted(set(r) ^ set(g))}")
            continue
        for k, v in r.items():
            if isinstance(v, float) or isinstance(g[k], float):
                rtol, atol = (0.0, MISMATCH_ATOL) if _mismatch(k) else (RTOL, ATOL)
                if not np.isclose(g[k], v, rtol=rtol, atol=atol):
                    bad.append(f"step {r['step']} {k}: {g[k]!r} != {v!r}")
            elif g[k] != v:
                bad.append(f"step {r['step']} {k}: {g[k]!r} != {v!r}")
    return bad


def test_two_processes_match_one_and_resume_in_one(tmp_path):
    ref_dir, pair_dir, cache = (str(tmp_path / d) for d in ("ref", "pair", "cache"))
    port = _free_port()
    procs = {"reference (1 process, 8 devices)": _launch(ref_dir, _env(8, cache))}
    for i in range(2):
        procs[f"process {i} of 2 (4 devices)"] = _launch(
            pair_dir,
            _env(4),
            *CUT,
            "--distributed",
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        )
    out = _finish(procs)

    pair = _rows(pair_dir, "metrics.jsonl")
    assert [r["step"] for r in pair] == [1, 2]  # Written once, by process 0.
    assert "train reward" in out["process 0 of 2 (4 devices)"]  # Its summary table.
    assert "train reward" not in out["process 1 of 2 (4 devices)"]
    assert os.path.isdir(os.path.join(pair_dir, "checkpoints", "2"))
    assert os.path.isfile(os.path.join(pair_dir, "export", "config.json"))

    resumed = _finish({"resumed (1 process, 8 devices)": _launch(pair_dir, _env(8, cache))})
    assert "resuming from step 2" in resumed["resumed (1 process, 8 devices)"]

    ref, got = _rows(ref_dir, "metrics.jsonl"), _rows(pair_dir, "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [1, 2, 3]
    bad = _differences(ref, got)
    assert not bad, "\n".join(bad[:20])
    diff = [
        (abs(g[k] - r[k]), abs(g[k] - r[k]) / max(abs(r[k]), 1e-30), k)
        for r, g in zip(ref, got)
        for k in r
        if isinstance(r[k], float)
    ]
    noise = [d for d in diff if not _mismatch(d[2])]  # ~1e-7 of rounding.
    print(
        "largest difference: %.2g absolute (%s); %.2g relative (%s) beside the "
        "logprob_mismatch metrics" % (*max(diff)[::2], *max(d[1:] for d in noise))
    )
    ref_s, got_s = _rows(ref_dir, "samples.jsonl"), _rows(pair_dir, "samples.jsonl")
    assert [r["step"] for r in got_s] == [r["step"] for r in ref_s]  # Written once.
    bad = _differences(ref_s, got_s)
    assert not bad, "\n".join(bad[:20])
