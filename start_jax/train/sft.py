"""Cold-start SFT on thinking traces: `<think> thinking </think> response <eos>`.

The loss is the token-mean cross-entropy over the thinking and response
tokens (the forced `<think>` tag and the prompt are not trained), computed
with the same chunked log-probabilities as the RL step.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from start_jax import segments, sharding
from start_jax.models.config import ModelConfig
from start_jax.rl import logprobs, masks


def encode_traces(
    tokenizer,
    prompts: Sequence[str],
    thinking: Sequence[str],
    responses: Sequence[str],
    length: int | None = None,
):
    """Right-padded token and segment arrays [N, L] for full traces, plus `forced`."""
    rows, segs = [], []
    for p, t, r in zip(prompts, thinking, responses):
        p_ids, t_ids, r_ids = tokenizer.encode(p), tokenizer.encode(t), tokenizer.encode(r)
        rows.append(
            p_ids
            + [tokenizer.think_id]
            + t_ids
            + [tokenizer.end_think_id]
            + r_ids
            + [tokenizer.eos_id]
        )
        segs.append(
            [segments.PROMPT] * len(p_ids)
            + [segments.THINK] * (len(t_ids) + 2)
            + [segments.RESPONSE] * (len(r_ids) + 1)
        )
    width = max(len(r) for r in rows) if length is None else length
    if max(len(r) for r in rows) > width:
        raise ValueError(f"a trace has {max(len(r) for r in rows)} tokens, more than {width}")
    tokens = np.full((len(rows), width), tokenizer.pad_id, np.int32)
    seg = np.zeros((len(rows), width), np.int32)
    forced = np.zeros((len(rows), width), bool)
    for i, (row, s) in enumerate(zip(rows, segs)):
        tokens[i, : len(row)] = row
        seg[i, : len(s)] = s
        forced[i, s.index(segments.THINK)] = True  # The <think> tag is given.
    return tokens, seg, forced


def sft_loss(params, tokens, seg, forced, config: ModelConfig):
    logp, _ = logprobs.token_log_probs(config, params, tokens, seg)
    mask = masks.loss_mask(seg, forced, "joint")
    return -jnp.sum(jnp.where(mask, logp, 0.0)) / jnp.maximum(mask.sum(), 1)


@functools.partial(jax.jit, static_argnames=("config", "tx", "layout"), donate_argnums=(0, 1))
def _step(params, opt_state, tokens, seg, forced, *, config, tx, layout=None):
    """One update; `layout` (flattened shardings of (params, opt_state), or None)
    keeps the state laid out as it came in, so the next step does not recompile."""
    loss, grads = jax.value_and_grad(sft_loss)(params, tokens, seg, forced, config)
    updates, opt_state = tx.update(grads, opt_state, params)
    state = (optax.apply_updates(params, updates), opt_state)
    if layout is not None:
        state = jax.lax.with_sharding_constraint(state, jax.tree.unflatten(layout[1], layout[0]))
    return (*state, loss)


def train_sft(
    config: ModelConfig,
    params,
    tokenizer,
    examples: Sequence[dict],
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
    progress: bool = True,
    response_fn=None,
    snapshots: Sequence[int] = (),
):
    """Runs `steps` SFT updates on thinking traces; returns (params, last losses).

    `examples` are dicts with 'prompt', 'thinking' and 'response' (the target
    response text; `response_fn(example)` may supply it instead). With
    `snapshots`, returns (params, last losses, {step: params after that many
    steps}) instead: less trained copies of the same run.
    """
    snapshots = sorted(set(int(s) for s in snapshots))
    if any(not 0 < s <= steps for s in snapshots):
        raise ValueError(f"snapshots {snapshots} must lie in 1..steps={steps}")
    saved = {}
    responses = [response_fn(e) if response_fn else e["response"] for e in examples]
    tokens, seg, forced = encode_traces(
        tokenizer, [e["prompt"] for e in examples], [e["thinking"] for e in examples], responses
    )
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(
            optax.warmup_cosine_decay_schedule(
                0.0, learning_rate, max(steps // 10, 1), max(steps, 2)
            ),
            weight_decay=0.0,
        ),
    )
    # Copied and initialised by jit with the parameters' shardings (the moments
    # take them too), as the step returns them: the step compiles once.
    # (The copy's shardings are in the form jit returns, which the step's outputs take.)
    params = jax.jit(lambda p: jax.tree.map(jnp.copy, p))(params)
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    first = jax.tree.leaves(param_sh)[0]
    layout = None
    if isinstance(first, jax.sharding.NamedSharding):  # On a mesh.
        opt_sh = sharding.like_trees(
            jax.eval_shape(tx.init, params),
            [(jax.tree.structure(params), param_sh)],
            jax.sharding.NamedSharding(first.mesh, jax.sharding.PartitionSpec()),
        )
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
        leaves, treedef = jax.tree.flatten((param_sh, opt_sh))
        layout = (tuple(leaves), treedef)
    else:
        opt_state = tx.init(params)
    rs = np.random.RandomState(seed)
    losses = []
    bar = tqdm.trange(steps, desc="sft", disable=not progress, leave=False)
    for _ in bar:
        idx = rs.randint(0, len(tokens), size=batch_size)
        params, opt_state, loss = _step(
            params,
            opt_state,
            tokens[idx],
            seg[idx],
            forced[idx],
            config=config,
            tx=tx,
            layout=layout,
        )
        losses.append(loss)
        if len(losses) in snapshots:
            saved[len(losses)] = jax.tree.map(jnp.copy, params)
        if len(losses) % 25 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    last = [float(x) for x in losses[-10:]]
    return (params, last, saved) if snapshots else (params, last)
