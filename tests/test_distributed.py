"""Multi-host runs as users launch them: two processes on localhost, each with 4 CPU
devices, `jax.distributed` with gloo collectives, `launch.py --distributed`.

Three `launch.py` runs of the smoke config (with an entropy bonus, see below):
  * one process with 8 devices, the whole schedule (the reference);
  * two processes with 4 devices each, the schedule cut to its first 2 steps;
  * one process with 8 devices in the pair's workdir, resuming from the pair's
    checkpoint to the end of the whole schedule.

The workdir of the pair plus the resumed run must hold the reference's metrics and
samples: the same rows (process 0 alone wrote, once), the same rollouts and rewards,
and every float within `RTOL` relative plus `ATOL` absolute.

The entropy bonus (`algo.entropy_coef=0.01`) gives the update a gradient to follow:
in the plain smoke run every reward is 0, so the gradient is the KL term at the
reference policy, about 1e-9, which is rounding noise that Adam scales up to
learning-rate-sized steps. Two programs that sum in a different order (gloo's
all-reduce across processes, XLA's within one) then make different updates, as two
single-process runs on different meshes would.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "configs", "smoke.py")
# Stage s1 (thinking, frozen responder) for steps 0-1, s2 (response, self) for step 2.
COMMON = ["--config.algo.entropy_coef=0.01", "--config.eval.every=0", "--config.sft.steps=1",
          "--config.stages.s1.steps=2", "--config.stages.s2.steps=1"]
CUT = ["--config.stages.s2.steps=0"]   # The pair runs stage s1 only.
# Measured: at most 1.1e-6 absolute (the sampler/trainer log-probability mismatch,
# itself about 1e-7 of rounding) and 4e-5 relative (l2_grads).
RTOL, ATOL = 1e-4, 1e-6
TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, cache: str | None = None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache:   # The resumed run reuses the programs the reference compiled.
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _launch(workdir: str, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), f"--config={SMOKE}",
                             f"--workdir={workdir}", *COMMON, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
    assert not failed, "\n\n".join(f"== {n} (exit {procs[n].returncode}):\n{out[n][-6000:]}"
                                   for n in failed)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{', '.join(procs)}: {time.perf_counter() - began:.1f} s, "
          f"{used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime:.1f} s of CPU")
    return out


def _rows(workdir: str, name: str) -> list[dict]:
    with open(os.path.join(workdir, name)) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _differences(ref: list[dict], got: list[dict]) -> list[str]:
    """Rows that differ: other keys, other text, or floats beyond the tolerance."""
    bad = []
    for r, g in zip(ref, got):
        if set(r) != set(g):
            bad.append(f"step {r['step']}: keys {sorted(set(r) ^ set(g))}")
            continue
        for k, v in r.items():
            if isinstance(v, float) or isinstance(g[k], float):
                if not np.isclose(g[k], v, rtol=RTOL, atol=ATOL):
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
            pair_dir, _env(4), *CUT, "--distributed",
            f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}")
    out = _finish(procs)

    pair = _rows(pair_dir, "metrics.jsonl")
    assert [r["step"] for r in pair] == [1, 2]          # Written once, by process 0.
    assert "train reward" in out["process 0 of 2 (4 devices)"]   # Its summary table.
    assert "train reward" not in out["process 1 of 2 (4 devices)"]
    assert os.path.isdir(os.path.join(pair_dir, "checkpoints", "2"))
    assert os.path.isfile(os.path.join(pair_dir, "export", "config.json"))

    resumed = _finish({"resumed (1 process, 8 devices)": _launch(pair_dir, _env(8, cache))})
    assert "resuming from step 2" in resumed["resumed (1 process, 8 devices)"]

    ref, got = _rows(ref_dir, "metrics.jsonl"), _rows(pair_dir, "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [1, 2, 3]
    bad = _differences(ref, got)
    assert not bad, "\n".join(bad[:20])
    ref_s, got_s = _rows(ref_dir, "samples.jsonl"), _rows(pair_dir, "samples.jsonl")
    assert len(got_s) == len(ref_s) and not _differences(ref_s, got_s)
