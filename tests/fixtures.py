"""Helpers shared by the test modules: the smoke run's config, metric logs, a train-step batch.

Test modules import these from here, never from one another; pytest fixtures built on
them live in conftest.py.
"""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from start_jax import models, rl, segments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "configs", "smoke.py")


def smoke_config():
    """A fresh copy of the smoke run's config (experiments/configs/smoke.py)."""
    spec = importlib.util.spec_from_file_location("smoke_config_module", SMOKE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def read_metrics(workdir):
    """The rows of a run's metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def assert_same_metrics(got: list[dict], want: list[dict]) -> None:
    """Equal metric rows; on a difference, names the first step and the keys that differ."""
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        differ = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
        assert not differ, f"step {a['step']}: (resumed, uninterrupted) {differ}"


# ------------------------------------------------------------ a train-step batch

STEP_CONFIG = models.tiny_config(40, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)


def rollout_segments(b=8, length=20, seed=0):
    """Left-padded prompt, thinking (with a forced tag), response, right padding."""
    rs = np.random.RandomState(seed)
    seg = np.zeros((b, length), np.int32)
    forced = np.zeros((b, length), bool)
    for i in range(b):
        pad = rs.randint(0, 3)
        prompt = rs.randint(2, 5)
        think = rs.randint(2, 7)
        resp = rs.randint(1, length - pad - prompt - think - 1)
        t = pad
        seg[i, t : t + prompt] = segments.PROMPT
        t += prompt
        seg[i, t : t + think] = segments.THINK
        forced[i, t] = True  # <think>
        if i % 2:
            forced[i, t + think - 1] = True  # A budget-forced </think>.
        t += think
        seg[i, t : t + resp] = segments.RESPONSE
    return seg, forced


def make_batch(mode="joint", b=8, length=20, seed=0, kl_scope="mask"):
    rs = np.random.RandomState(seed)
    seg, forced = rollout_segments(b, length, seed)
    tokens = rs.randint(1, STEP_CONFIG.vocab_size, size=(b, length)).astype(np.int32)
    tokens[seg == segments.PAD] = 0
    mask = rl.loss_mask(jnp.asarray(seg), jnp.asarray(forced), mode)
    rewards_ = rs.randn(b).astype(np.float32)
    adv = rl.advantages.broadcast(rl.advantages.grpo(jnp.asarray(rewards_), group_size=4), mask)
    noise = lambda: jnp.asarray(rs.randn(b, length) * 0.1, jnp.float32)  # noqa: E731
    params = models.init_params(STEP_CONFIG, jax.random.key(seed))
    old = rl.rollout_log_probs(STEP_CONFIG, params, jnp.asarray(tokens), jnp.asarray(seg)) + noise()
    return rl.Batch(
        tokens=jnp.asarray(tokens),
        segment_ids=jnp.asarray(seg),
        loss_mask=mask,
        kl_mask=rl.kl_mask(jnp.asarray(seg), jnp.asarray(forced), mode, kl_scope),
        advantages=adv,
        old_logprobs=old,
        ref_logprobs=old + noise(),
        returns=noise(),
        old_values=noise(),
        rewards=jnp.asarray(rewards_),
    )


# ------------------------------------------------------------ scripted sampling


def scripted(script):
    """A logits processor under which row i draws script[i, step]: every other id at -40,
    1e-17 of it each (small enough in float32 that no other id is drawn, large enough that
    a log-normaliser over the others alone stays exact)."""
    script = jnp.asarray(script, jnp.int32)

    def processor(logits, step):
        want = jax.lax.dynamic_index_in_dim(script, step, axis=1, keepdims=False)
        return jnp.where(jnp.arange(logits.shape[-1])[None] == want[:, None], 0.0, -40.0)

    return processor


def segment_tokens(rollout, row: int, kind: int) -> list[int]:
    """Row `row`'s tokens in segment `kind`, in order."""
    tokens, segs = np.asarray(rollout.tokens)[row], np.asarray(rollout.segment_ids)[row]
    return [int(t) for t in tokens[segs == kind]]
