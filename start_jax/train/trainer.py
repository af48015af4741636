"""The RL loop: a schedule of stages over segmented rollouts with response-only rewards.

Each step: a batch of prompts -> G rollouts per prompt (the policy thinks;
the policy itself or a frozen copy of the initial policy responds) ->
response-only rewards -> advantages broadcast over the stage's loss mask (or
GAE with a critic over the mask's action tokens) -> `mu` policy (and critic)
updates. `run(config, workdir)` is the entry point; it resumes from the latest
checkpoint in `workdir` and saves one when it receives SIGTERM.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging

from start_jax import checkpoints
from start_jax.eval import classify
from start_jax import models, rewards, rl, sampling, segments, sharding
from start_jax.rl import advantages as adv_lib
from start_jax.train import checkpointing, data_io
from start_jax.train.config import stage_names, validate
from start_jax.train.writers import MetricWriter, write_samples


@dataclasses.dataclass
class Stage:
    name: str
    train_segments: str
    responder: str
    steps: int
    learning_rate: float
    start: int   # Global step at which the stage begins.


def stages_of(config) -> list[Stage]:
    out, start = [], 0
    for name in stage_names(config):
        st = config.stages[name]
        out.append(Stage(name, st.train_segments, st.responder, int(st.steps),
                         float(st.learning_rate), start))
        start += int(st.steps)
    return out


class _SigtermFlag:
    """Turns SIGTERM into a flag checked between steps."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread (e.g. a notebook worker).
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _left_pad(rollout: sampling.Rollout, width: int):
    """Host copies of the rollout arrays, left-padded to a fixed width."""
    arrays = {k: np.asarray(getattr(rollout, k)) for k in ("tokens", "segment_ids", "forced")}
    pad = width - arrays["tokens"].shape[1]
    if pad < 0:
        raise ValueError(f"rollout width {arrays['tokens'].shape[1]} exceeds the fixed width {width}")
    return {k: np.pad(v, ((0, 0), (pad, 0))) for k, v in arrays.items()}


class Trainer:
    """Holds models, data and jitted functions of one run."""

    def __init__(self, config, workdir: str):
        validate(config)
        self.config = config
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.mesh = sharding.make_mesh(sharding.MeshConfig(**config.mesh.to_dict()))
        self.tokenizer = data_io.tokenizer_of(config)
        self.special = sampling.SpecialTokens.from_tokenizer(self.tokenizer)
        self.train_data, self.test_data = data_io.datasets(config, self.workdir)
        self.model_config, init_params = data_io.initial_policy(
            config, self.workdir, self.tokenizer, self.mesh, self.train_data)
        self.init_params = init_params             # Reference policy and frozen responder.
        self.reward_fn = rewards.make(config.reward.name, **config.reward.kwargs.to_dict())
        self.stages = stages_of(config)
        self.total_steps = sum(s.steps for s in self.stages)
        c = config
        self.sampling = sampling.SamplingConfig(
            temperature=c.sampling.temperature, top_k=c.sampling.top_k, top_p=c.sampling.top_p,
            think_budget=c.sampling.think_budget, response_budget=c.sampling.response_budget)
        self.loss_config = rl.LossConfig(
            policy_loss=c.algo.policy_loss, clip_low=c.algo.clip_low, clip_high=c.algo.clip_high,
            dual_clip=c.algo.dual_clip, aggregation=c.algo.aggregation,
            norm_length=c.sampling.think_budget + c.sampling.response_budget + 1,
            kl_coef=c.algo.kl_coef, kl_estimator=c.algo.kl_estimator, kl_scope=c.algo.kl_scope,
            entropy_coef=c.algo.entropy_coef, value_clip=c.algo.value_clip,
            value_coef=c.algo.value_coef, temperature=max(c.sampling.temperature, 1e-6))
        self.use_critic = c.algo.advantage == "gae"
        self.width = (-(-(c.data.max_prompt_tokens + c.sampling.think_budget + 3) // 8) * 8
                      + c.sampling.response_budget + 8)
        self.rows = c.data.prompts_per_step * c.algo.group_size
        self.critic_config = None
        if self.use_critic:
            self.critic_config = self.model_config.replace(lm_head=False, value_head=True,
                                                           tie_embeddings=False)

    # ------------------------------------------------------------------ state

    def _tx(self, stage: Stage):
        return rl.make_optimizer(learning_rate=stage.learning_rate,
                                 warmup_steps=self.config.optim.warmup_steps,
                                 weight_decay=self.config.optim.weight_decay,
                                 max_grad_norm=self.config.optim.max_grad_norm)

    def _critic_tx(self):
        return rl.make_optimizer(learning_rate=self.config.algo.critic_learning_rate,
                                 max_grad_norm=self.config.optim.max_grad_norm)

    def fresh_state(self, stage: Stage, params, critic=None) -> rl.TrainState:
        """A state whose optimizer starts afresh (at the start of a stage)."""
        if self.use_critic and critic is None:
            _, critic = models.value_model_from_policy(
                self.model_config, self.init_params, jax.random.key(self.config.seed + 1))
        params = jax.tree.map(jnp.copy, params)
        return jax.jit(lambda p, c: rl.init_state(p, self._tx(stage), c,
                                                  self._critic_tx() if self.use_critic else None)
                       )(params, critic)

    def stage_at(self, step: int) -> Stage:
        for stage in self.stages:
            if step < stage.start + stage.steps:
                return stage
        return self.stages[-1]

    # ------------------------------------------------------------------ one step

    def rollouts(self, params, examples, step: int, stage: Stage, sampling_config=None):
        """G rollouts per example, with the stage's responder."""
        sc = sampling_config or self.sampling
        g = self.config.algo.group_size if sampling_config is None else 1
        prompts = data_io.encode_prompts(self.tokenizer, examples, self.config.data.max_prompt_tokens)
        prompts = [p for p in prompts for _ in range(g)]
        row_ids = np.arange(len(prompts)) + step * len(prompts)
        rng = jax.random.fold_in(jax.random.key(self.config.seed), step)
        common = dict(row_ids=row_ids, mesh=self.mesh, max_length=self.model_config.max_position_embeddings)
        if stage.responder == "self":
            return sampling.sample(self.model_config, params, prompts, sc, rng, self.special, **common)
        thinking_only = sampling.sample(self.model_config, params, prompts,
                                        sc.replace(response_budget=0), rng, self.special, **common)
        thinking, truncated = sampling.thinking_of(thinking_only, self.special.end_think)
        return sampling.sample(self.model_config, self.init_params, prompts, sc,
                               jax.random.fold_in(rng, 1), self.special, thinking=thinking,
                               thinking_truncated=truncated, **common)

    def score(self, rollout, examples, repeat: int) -> np.ndarray:
        refs = [e["reference"] for e in examples for _ in range(repeat)]
        meta = [e["metadata"] for e in examples for _ in range(repeat)]
        return rewards.score(rollout, self.tokenizer, self.reward_fn, refs, meta)

    def make_batch(self, state: rl.TrainState, rollout, reward: np.ndarray, stage: Stage):
        arrays = _left_pad(rollout, self.width)
        put = lambda x: jax.device_put(  # noqa: E731
            x, sharding.batch_sharding(self.mesh, np.ndim(x), batch_size=x.shape[0]))
        tokens, seg, forced = (put(arrays[k]) for k in ("tokens", "segment_ids", "forced"))
        mask = rl.loss_mask(seg, forced, stage.train_segments)
        kl_mask = rl.kl_mask(seg, forced, stage.train_segments, self.config.algo.kl_scope)
        temp = self.loss_config.temperature
        old = rl.rollout_log_probs(self.model_config, state.params, tokens, seg, temp)
        ref = (rl.rollout_log_probs(self.model_config, self.init_params, tokens, seg, temp)
               if self.config.algo.kl_coef else old)
        r = put(reward.astype(np.float32))
        zeros = jnp.zeros(tokens.shape, jnp.float32)
        returns = old_values = zeros
        if self.use_critic:
            old_values = rl.rollout_values(self.critic_config, state.critic_params, tokens, seg)
            advantages, returns = adv_lib.gae(r, old_values, mask, gamma=self.config.algo.gamma,
                                              lam=self.config.algo.lam)
        else:
            kwargs = {}
            if self.config.algo.advantage == "grpo":
                kwargs = dict(scale=self.config.algo.grpo_scale)
            elif self.config.algo.advantage == "reinforce_pp":
                kwargs = dict(group_baseline=self.config.algo.group_baseline)
            seq = adv_lib.sequence_advantages(self.config.algo.advantage, r,
                                              self.config.algo.group_size, **kwargs)
            advantages = adv_lib.broadcast(seq, mask)
        return rl.Batch(tokens=tokens, segment_ids=seg, loss_mask=mask, kl_mask=kl_mask,
                        advantages=advantages, old_logprobs=old, ref_logprobs=ref,
                        returns=returns, old_values=old_values, rewards=r)

    def step_fn(self, stage: Stage):
        c = self.config.algo
        cfg = rl.TrainConfig(loss=self.loss_config, ppo_epochs=c.ppo_epochs,
                             minibatches=c.minibatches, micro_batches=c.micro_batches,
                             use_critic=self.use_critic)
        return rl.jit_train_step(self.model_config, cfg, self._tx(stage), self.critic_config,
                                 self._critic_tx() if self.use_critic else None)

    def evaluate(self, params, step: int) -> dict:
        """Mean response-only reward on test prompts (one rollout each, self responder)."""
        n = min(self.config.eval.prompts, len(self.test_data))
        examples = [self.test_data[i] for i in range(n)]
        stage = Stage("eval", "joint", "self", 0, 0.0, 0)
        rollout = self.rollouts(params, examples, 10_000_000 + step, stage, self.sampling)
        reward = self.score(rollout, examples, 1)
        rates = self.behaviour_metrics(self.decoded_rows(rollout, examples, 1))
        return {"eval/reward": float(reward.mean()),
                "eval/think_tokens": float(np.mean(np.asarray(rollout.think_length))),
                "eval/response_tokens": float(np.mean(np.asarray(rollout.response_length))),
                **{f"eval/{k}": v for k, v in rates.items()}}

    def decoded_rows(self, rollout, examples, repeat: int) -> list[dict]:
        """Each row's text per segment, with its example's reference and family."""
        rows = sampling.decode_segments(self.tokenizer, rollout)
        for i, row in enumerate(rows):
            e = examples[i // repeat]
            row.update(reference=e["reference"], family=e["family"])
        return rows

    def behaviour_metrics(self, rows: list[dict]) -> dict:
        """Thinking and response class rates (synthetic world only; see data.behaviours)."""
        if self.config.data.source != "synthetic":
            return {}
        return classify.behaviour_rates(rows)

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict:
        c = self.config
        ckpt = checkpointing.Checkpointer(os.path.join(self.workdir, "checkpoints"), c.checkpoint.keep)
        iterator = data_io.PromptIterator(self.train_data, c.data.prompts_per_step, c.seed)
        start, state = 0, None
        latest = ckpt.latest_step()
        if latest is not None:
            target = self.fresh_state(self.stage_at(latest), self.init_params)
            state, meta = ckpt.restore(latest, target, checkpointing.model_fields(self.model_config))
            iterator.restore(meta["data"])
            start = latest
            logging.info("resumed from %s/checkpoints at step %d", self.workdir, latest)
            print(f"resuming from step {latest} ({self.workdir}/checkpoints)")
        writer = MetricWriter(self.workdir, resume_step=start)
        summary = {"first": None, "last": None, "eval": {}}
        step_fns = {}
        began = time.perf_counter()
        stopped = False
        with _SigtermFlag() as sigterm, tqdm.trange(
                start, self.total_steps, initial=start, total=self.total_steps, desc="rl",
                unit="step", disable=not c.log.progress) as bar:
            for step in bar:
                stage = self.stage_at(step)
                if step == stage.start:  # Each stage starts its optimizer afresh.
                    state = self.fresh_state(
                        stage, self.init_params if state is None else state.params,
                        None if state is None else state.critic_params)
                if stage.name not in step_fns:
                    step_fns[stage.name] = self.step_fn(stage)
                examples = iterator.next_batch()
                rollout = self.rollouts(state.params, examples, step, stage)
                reward = self.score(rollout, examples, c.algo.group_size)
                batch = self.make_batch(state, rollout, reward, stage)
                state, metrics = step_fns[stage.name](state, batch, jax.random.fold_in(
                    jax.random.key(c.seed + 2), step))
                metrics = rl.check_finite(metrics, step)
                write = bool(c.log.samples_every) and step % c.log.samples_every == 0
                # Decoded once, only for what reads the text: behaviour rates and samples.
                rows = (self.decoded_rows(rollout, examples, c.algo.group_size)
                        if write or c.data.source == "synthetic" else [])
                metrics.update(self._rollout_metrics(rollout), stage=self.stages.index(stage))
                metrics.update(self.behaviour_metrics(rows))
                if write:
                    self._write_samples(step, rows, reward)
                done = step + 1
                if c.eval.every and (done % c.eval.every == 0 or done == self.total_steps):
                    metrics.update(self.evaluate(state.params, done))
                writer.write(done, metrics)
                summary["last"] = metrics
                summary["first"] = summary["first"] or metrics
                bar.set_postfix(stage=stage.name, mode=stage.train_segments,
                                reward=f"{metrics['reward_mean']:.3f}")
                if done % c.checkpoint.every == 0 or done == self.total_steps or sigterm.raised:
                    ckpt.save(done, state, self._meta(done, iterator), force=True)
                if sigterm.raised:
                    stopped = True
                    break
        ckpt.close()
        writer.close()
        summary["seconds"] = time.perf_counter() - began
        summary["stopped"] = stopped
        summary["params"] = state.params
        if not stopped and c.checkpoint.export_hf:
            export = os.path.join(self.workdir, "export")
            checkpoints.save_pretrained(self.model_config, state.params, export)
            if hasattr(self.tokenizer, "save_pretrained"):
                self.tokenizer.save_pretrained(export)
            summary["export"] = export
        return summary

    def _meta(self, step: int, iterator) -> dict:
        return {"step": step, "data": iterator.state(), "seed": self.config.seed,
                "model": checkpointing.model_fields(self.model_config),
                "config": json.loads(self.config.to_json_best_effort())}

    def _rollout_metrics(self, rollout) -> dict:
        seg = np.asarray(rollout.segment_ids)
        return {"think_tokens": float(np.mean(np.asarray(rollout.think_length))),
                "response_tokens": float(np.mean(np.asarray(rollout.response_length))),
                "think_truncated": float(np.mean(np.asarray(rollout.think_truncated))),
                "response_truncated": float(np.mean(np.asarray(rollout.response_truncated))),
                "rollout_think_tokens": float((seg == segments.THINK).sum())}

    def _write_samples(self, step: int, rows: list[dict], reward) -> None:
        rows = [{**row, "reward": float(r)} for row, r in
                zip(rows[: self.config.log.samples], reward)]
        write_samples(self.workdir, step, rows)


def run(config, workdir: str) -> dict:
    """Runs (or resumes) the schedule in `config`; prints a final table."""
    trainer = Trainer(config, workdir)
    summary = trainer.run()
    print_summary(trainer, summary)
    return summary


SUMMARY_WINDOW = 3   # Steps averaged at each end of the run in the final table.
SUMMARY_RATES = (("think_complete", "complete thinking"), ("think_empty", "empty thinking"),
                 ("response_correct", "correct response"),
                 ("response_salient", "salient (shortcut)"), ("styled", "styled response"))


def _window_mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return float(np.mean(values)) if values else float("nan")


def print_summary(trainer: Trainer, summary: dict) -> None:
    history = []
    path = os.path.join(trainer.workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as fh:
            history = [json.loads(line) for line in fh if line.strip()]
    k = SUMMARY_WINDOW
    head, tail = history[:k], history[-k:]

    def move(key: str, fmt: str = ".3f") -> str:
        return f"{_window_mean(head, key):{fmt}} -> {_window_mean(tail, key):{fmt}}"

    last = summary["last"] or {}
    rows = [("schedule", trainer.config.schedule),
            ("stages", ", ".join(f"{s.name}:{s.train_segments}/{s.responder}x{s.steps}"
                                 for s in trainer.stages)),
            ("steps", str(trainer.total_steps)),
            (f"train reward (first {k} -> last {k} steps)", move("reward_mean"))]
    families = sorted({key.split("/")[1] for r in history for key in r
                       if key.startswith("behaviour/")})
    for fam in families:
        for key, label in SUMMARY_RATES:
            if any(f"behaviour/{fam}/{key}" in r for r in history):
                rows.append((f"  {fam}: {label}", move(f"behaviour/{fam}/{key}")))
        if fam == "arith":
            rows.append(("  arith: thinking steps correct", move("behaviour/arith/steps_correct")))
    rows += [("eval reward (last)", f"{last.get('eval/reward', float('nan')):.3f}"),
             (f"thinking tokens (first {k} -> last {k})", move("think_tokens", ".1f")),
             ("response tokens (last)", f"{last.get('response_tokens', float('nan')):.1f}"),
             ("wall time", f"{summary['seconds']:.1f} s"),
             ("workdir", trainer.workdir)]
    if summary.get("export"):
        rows.append(("exported policy", summary["export"]))
    if summary["stopped"]:
        rows.append(("status", "stopped by SIGTERM; rerun the same command to resume"))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 50)
    print("\n" + line)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(line)
    print(f"metrics: {trainer.workdir}/metrics.jsonl, tensorboard: {trainer.workdir}/tensorboard, "
          f"samples: {trainer.workdir}/samples.jsonl")
