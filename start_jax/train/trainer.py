"""The RL loop: a schedule of stages over segmented rollouts with response-only rewards.

Each step: a batch of prompts -> G rollouts per prompt (the policy, or a
snapshot of it taken when the stage started, thinks; the policy itself or a
frozen copy of the initial policy responds) ->
response-only rewards -> one jitted batch builder (masks, advantages or GAE,
the log-probabilities and values the update reads) -> `mu` policy (and
critic) updates. A step crosses to the host twice: once for the rollout (to
decode and score it) and once for the metrics. `run(config, workdir)` is the
entry point: it freezes the config into a `RunSpec`, resumes from the latest
checkpoint in `workdir`, and saves one when it receives SIGTERM.

Multi-host (`launch.py --distributed`): every process runs this same loop on the
mesh that spans all their devices. Host data goes to the devices shard by shard
(`sharding.host_to_global`), the host views gather the rollout and the metrics
from all processes (`sharding.to_host`), so every process scores and decides
alike; process 0 alone writes files and prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from start_jax import models, rewards, rl, sampling, segments, sharding, tasks
from start_jax.checkpoints import read_config, save_pretrained
from start_jax.data.builders.jsonl_tasks import read_jsonl
from start_jax.data.pipeline import PromptIterator
from start_jax.errors import ConfigError, TrainingError
from start_jax.train import checkpointing, data_io
from start_jax.train.config import default_config
from start_jax.train.init_policy import check_vocab, initial_policy
from start_jax.train.report import print_summary
from start_jax.train.spec import RunSpec, StageSpec, as_spec, check_context
from start_jax.train.writers import MetricWriter, write_samples

# An update whose norm is this fraction of the parameter norm or more has exploded.
EXPLODED_UPDATE_RATIO = 0.5


class _SigtermFlag:
    """Turns SIGTERM into a flag checked between steps (main thread only)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            logging.warning(
                "not on the main thread: SIGTERM will not save a checkpoint before "
                "the process ends (the last periodic checkpoint is kept)"
            )
            return self
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def check_health(metrics: dict, step: int, stage: StageSpec) -> None:
    """Raises `TrainingError` when the update exploded or the gradients collapsed.

    Exploded: the update is at least `EXPLODED_UPDATE_RATIO` of the parameter
    norm (a learning rate far too large). Collapsed: the gradient is exactly 0
    although advantages are not (the policy's probabilities saturated).
    """
    where = f"stages.{stage.name}.learning_rate (now {stage.learning_rate:g})"
    ratio = metrics["l2_updates"] / max(metrics["l2_params"], 1e-30)
    if ratio >= EXPLODED_UPDATE_RATIO:
        raise TrainingError(
            f"step {step}: the update exploded (its norm {metrics['l2_updates']:.3g} is "
            f"{ratio:.2f} of the parameter norm {metrics['l2_params']:.3g}); lower {where}"
        )
    if metrics["l2_grads"] == 0.0 and metrics["adv_nonzero_frac"] > 0:
        raise TrainingError(
            f"step {step}: the gradients collapsed to 0 although {metrics['adv_nonzero_frac']:.0%} "
            f"of the advantages are not 0 (saturated probabilities); lower {where}"
        )


# A run's random streams, by name: stream `name` at step t is fold_in(key(seed + offset), t)
# (the critic's initial head: key(seed + offset)). Each stream has its own offset, so a new
# stream never shifts another's numbers.
RNG_STREAMS = {"rollout": 0, "critic_init": 1, "update": 2, "response": 3}


@jax.jit
def _fold_key(seed_and_step: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed_and_step[0]), seed_and_step[1])


class Trainer:
    """Holds models, data and jitted functions of one run."""

    def __init__(self, config, workdir: str):
        self.spec = spec = as_spec(config)
        self.workdir = os.path.abspath(workdir)
        self.mesh, self.tokenizer = preflight(spec, self.workdir)
        for message in ignored_options(spec):
            # Printed once for the user; the log keeps it at INFO (a WARNING would print
            # the same line again, as an absl log line).
            logging.info("warning: %s", message)
            if jax.process_index() == 0:
                print(f"warning: {message}")
        os.makedirs(self.workdir, exist_ok=True)
        self.rules = sharding.ShardingRules(replicate_uneven=spec.replicate_uneven)
        self.special = sampling.SpecialTokens.from_tokenizer(self.tokenizer)
        # The update's settings; the think tags get no probability in its response tokens
        # when the sampler bans them there (the same policy on both sides).
        self.train_config = dataclasses.replace(
            spec.train,
            response_banned=self.special.tags if spec.sampling.ban_tags_in_response else (),
        )
        self.task = tasks.get(spec.data.source)
        self.train_data, self.test_data = data_io.datasets(
            spec.data, self.workdir, self.tokenizer, spec.prompt
        )
        self.encode = data_io.PromptEncoder(self.tokenizer, spec.data.max_prompt_tokens)
        self.model_config, init_params = initial_policy(
            spec, self.workdir, self.tokenizer, self.mesh, self.train_data
        )
        self.init_params = init_params  # Reference policy and frozen responder.
        # The policy at the current stage's start, for a stage with a frozen thinker or a
        # stage-start KL reference (StageSpec.needs_snapshot); None otherwise.
        self.snapshot = None
        self.reward_fn = spec.make_reward()
        self.stages = spec.stages
        self.total_steps = spec.total_steps
        self.width = spec.width
        self.critic_config = None
        if spec.advantage.needs_critic:
            self.critic_config = self.model_config.replace(
                lm_head=False, value_head=True, tie_embeddings=False
            )
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        # The sampler may compute in another dtype than the trainer (bf16 sampling, fp32 update).
        self.sampler_config = (
            self.model_config.replace(dtype=spec.sampling_dtype)
            if spec.sampling_dtype
            else self.model_config
        )
        self.sampler = sampling.Sampler(
            self.sampler_config,
            self.special,
            mesh=self.mesh,
            rules=self.rules,
            width=self.width,
            max_length=self.model_config.max_position_embeddings,
        )
        self._jits: dict = {}
        # With several processes (jax.distributed) every process runs this same loop on
        # its shards; process 0 alone writes files and prints.
        self.primary = jax.process_index() == 0

    # ------------------------------------------------------------------ state

    def _optimizer(self, stage: StageSpec) -> rl.OptimizerConfig:
        o = self.spec.optim
        return rl.OptimizerConfig(
            learning_rate=stage.learning_rate,
            warmup_steps=stage.warmup_steps,
            weight_decay=o.weight_decay,
            max_grad_norm=o.max_grad_norm,
        )

    def _critic_optimizer(self) -> rl.OptimizerConfig | None:
        if self.critic_config is None:
            return None
        o = self.spec.optim
        return rl.OptimizerConfig(
            learning_rate=o.critic_learning_rate, max_grad_norm=o.max_grad_norm
        )

    def _tx(self, stage: StageSpec):
        return self._optimizer(stage).make()

    def _critic_tx(self):
        return self._critic_optimizer().make()

    def _init_state_fn(self, stage: StageSpec):
        critic_tx = self._critic_tx() if self.critic_config is not None else None
        return lambda p, c: rl.init_state(p, self._tx(stage), c, critic_tx)

    def _initial_critic(self):
        _, critic = models.value_model_from_policy(
            self.model_config,
            self.init_params,
            jax.random.key(self.spec.seed + RNG_STREAMS["critic_init"]),
        )
        return models.shard_params(self.critic_config, critic, self.mesh, self.rules)

    def state_shardings(self, stage: StageSpec, abstract=None):
        """Shardings of the train state: parameters and their optimizer moments by
        the rules table, scalars replicated (from `jax.eval_shape`, nothing allocated)."""
        param_sh = models.param_shardings(self.model_config, self.mesh, self.rules)
        critic_sh = (
            models.param_shardings(self.critic_config, self.mesh, self.rules)
            if self.critic_config is not None
            else None
        )
        abstract = self.abstract_state(stage) if abstract is None else abstract
        # Optimizer moments have the structure of what they optimise, and take its shardings.
        known = [(jax.tree.structure(abstract.params), param_sh)]
        if critic_sh is not None:
            known.append((jax.tree.structure(abstract.critic_params), critic_sh))
        like = lambda tree: sharding.like_trees(tree, known, self.replicated)  # noqa: E731
        return rl.TrainState(
            step=self.replicated,
            params=param_sh,
            opt_state=like(abstract.opt_state),
            critic_params=critic_sh,
            critic_opt_state=like(abstract.critic_opt_state),
        )

    def batch_shardings(self) -> rl.Batch:
        """Every array of a step's `Batch` split over its rows ('batch' rule)."""
        rows = self.spec.rows
        two = sharding.batch_sharding(self.mesh, 2, self.rules, rows)
        one = sharding.batch_sharding(self.mesh, 1, self.rules, rows)
        return rl.Batch(
            tokens=two,
            segment_ids=two,
            loss_mask=two,
            kl_mask=two,
            advantages=two,
            old_logprobs=two,
            ref_logprobs=two,
            returns=two,
            old_values=two,
            rewards=one,
            sampler_logprobs=two,
            sampled=two,
        )

    def abstract_state(self, stage: StageSpec):
        """The train state's shapes and dtypes, without computing it."""
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.init_params)
        critic = None
        if self.critic_config is not None:
            critic = jax.eval_shape(
                lambda: models.value_model_from_policy(
                    self.model_config, self.init_params, jax.random.key(0)
                )[1]
            )
        return jax.eval_shape(self._init_state_fn(stage), params, critic)

    def fresh_state(self, stage: StageSpec, params, critic=None) -> rl.TrainState:
        """A state whose optimizer starts afresh (at the start of a stage), created
        directly in its sharded layout."""
        if self.critic_config is not None and critic is None:
            critic = self._initial_critic()
        init = jax.jit(
            lambda p, c: self._init_state_fn(stage)(jax.tree.map(jnp.copy, p), c),
            out_shardings=self.state_shardings(stage),
        )
        return init(params, critic)

    def stage_state(self, stage: StageSpec, previous: rl.TrainState | None) -> rl.TrainState:
        """The state a stage starts from: the previous stage's parameters (the initial
        policy's for the first stage) with a fresh optimizer, or, with
        `stage.carry_optimizer`, the previous stage's optimizer moments (the new stage's
        learning rate and warmup). Takes the stage-start snapshot when the stage needs one."""
        if previous is None:
            state = self.fresh_state(stage, self.init_params)
        else:
            state = self.fresh_state(stage, previous.params, previous.critic_params)
            if stage.carry_optimizer:
                state = state.replace(
                    opt_state=rl.carry_optimizer_state(previous.opt_state, state.opt_state),
                    critic_opt_state=previous.critic_opt_state,
                )
        self.snapshot = jax.tree.map(jnp.copy, state.params) if stage.needs_snapshot else None
        return state

    def with_rates(self, state: rl.TrainState, stage: StageSpec) -> rl.TrainState:
        """`state` with `stage`'s learning rate and warmup (and the critic's rate) in its
        optimizer states, placed by the state's shardings."""
        opt, critic = self._optimizer(stage), self._critic_optimizer()
        state = state.replace(
            opt_state=rl.with_learning_rate(state.opt_state, opt.learning_rate, opt.warmup_steps)
        )
        if critic is not None:
            state = state.replace(
                critic_opt_state=rl.with_learning_rate(
                    state.critic_opt_state, critic.learning_rate, critic.warmup_steps
                )
            )
        return jax.device_put(state, self.state_shardings(stage))

    def restore_target(self, stage: StageSpec):
        """The abstract state (shapes, dtypes and shardings) a checkpoint restores into."""
        abstract = self.abstract_state(stage)
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract,
            self.state_shardings(stage, abstract),
        )

    def stage_at(self, step: int) -> StageSpec:
        return self.spec.stage_at(step)

    # ------------------------------------------------------------------ one step

    def _key(self, stream: str, step: int) -> jax.Array:
        """The key of `stream` (`RNG_STREAMS`) at `step`: fold_in(key(seed + offset), step),
        from an explicit host-to-device copy."""
        pair = sharding.host_to_global(
            np.asarray([self.spec.seed + RNG_STREAMS[stream], step], np.uint32), self.replicated
        )
        return _fold_key(pair)

    def _sample(self, params, prompts, sc, rng, row_ids, **kwargs):
        return self.sampler.sample(params, prompts, sc, rng, row_ids=row_ids, **kwargs)

    def rollouts(
        self, params, examples, step: int, stage: StageSpec, group_size: int | None = None
    ):
        """`group_size` rollouts per example (default: the run's), with the stage's thinker
        (`params`, or the stage-start snapshot) and responder (`params`, or the initial
        policy)."""
        sc = self.spec.sampling
        g = self.spec.group_size if group_size is None else group_size
        prompts = [p for p in self.encode(examples) for _ in range(g)]
        row_ids = np.arange(len(prompts)) + step * len(prompts)
        rng = self._key("rollout", step)
        # Each prompt is prefilled once for its group; finished rows stop costing steps.
        shape = dict(group_size=g, compact=self.spec.compaction)
        if stage.responder == "self" and stage.thinker == "self":
            return self._sample(params, prompts, sc, rng, row_ids, **shape)
        if stage.thinker == "frozen" and self.snapshot is None:
            raise ValueError(
                f"stage {stage.name} has a frozen thinker but no snapshot was taken "
                "(Trainer.stage_state takes it)"
            )
        thinker = self.snapshot if stage.thinker == "frozen" else params
        responder = self.init_params if stage.responder == "frozen" else params
        # One model thinks; the other responds from the device rollout.
        thinking = self.sampler.sample(
            thinker,
            prompts,
            sc.replace(response_budget=0),
            rng,
            row_ids=row_ids,
            width=self.width - sc.response_budget,
            **shape,
        )
        return self.sampler.respond(
            responder,
            thinking,
            sc,
            self._key("response", step),
            row_ids=row_ids,
            compact=self.spec.compaction,
        )

    def score(self, rollout, examples, repeat: int) -> np.ndarray:
        """Response-only rewards of a host copy of the rollout."""
        refs = [e["reference"] for e in examples for _ in range(repeat)]
        meta = [e["metadata"] for e in examples for _ in range(repeat)]
        return rewards.score(rollout, self.tokenizer, self.reward_fn, refs, meta)

    def _batch_fn(self, stage: StageSpec):
        cfg = rl.BatchConfig(
            train=stage.train_config(self.train_config),
            advantage=self.spec.advantage,
            train_segments=stage.train_segments,
        )
        key = ("batch", cfg)  # Frozen and hashable: stages with equal settings share a program.
        if key not in self._jits:
            self._jits[key] = rl.jit_build_batch(
                self.model_config, self.critic_config, cfg, out_shardings=self.batch_shardings()
            )
        return self._jits[key]

    def _step_fn(self, stage: StageSpec):
        train = stage.train_config(self.train_config)
        # Keyed on the frozen configs themselves: stages with equal settings share a program.
        # The learning rates and warmups are optimizer state, not part of the program.
        critic = self._critic_optimizer()
        key = ("step", self._optimizer(stage).program_key, critic and critic.program_key, train)
        if key not in self._jits:
            self._jits[key] = rl.jit_train_step(
                self.model_config,
                train,
                self._tx(stage),
                self.critic_config,
                self._critic_tx() if self.critic_config is not None else None,
                state_shardings=self.state_shardings(stage),
                batch_shardings=self.batch_shardings(),
            )
        return self._jits[key]

    def reference_params(self, stage: StageSpec):
        """The stage's KL reference: the initial policy or the stage-start snapshot (None
        without a KL coefficient)."""
        if not stage.kl_coef:
            return None
        return self.snapshot if stage.kl_reference == "stage_start" else self.init_params

    def make_batch(
        self, state: rl.TrainState, rollout, reward: np.ndarray, stage: StageSpec
    ) -> rl.Batch:
        """The update's batch, on device from the device rollout and host rewards."""
        r = sharding.host_to_global(
            np.asarray(reward, np.float32),
            sharding.batch_sharding(self.mesh, 1, self.rules, len(reward)),
        )
        ref = self.reference_params(stage)
        fn = self._batch_fn(stage)
        with sharding.logical_constraint_context(self.mesh, self.rules):
            return fn(
                state.params,
                ref,
                state.critic_params,
                rollout.tokens,
                rollout.segment_ids,
                rollout.forced,
                r,
                rollout.logprobs,
                rollout.sampled,
            )

    def rl_step(
        self, state: rl.TrainState, examples, step: int, stage: StageSpec, clock: dict | None = None
    ):
        """One RL step on `examples`: rollouts, rewards, the batch, the update, its checks.

        Returns (state, host rollout, rewards, batch, host metrics). The loop of `run`,
        the step benchmark and the tests all take their step from here. With `clock`, a
        dict, each phase's device work is waited for and its seconds are added to
        ``clock[phase]`` ("rollout", "copy+score", "make_batch", "update", "other host").
        """

        def timed(phase, fn):
            if clock is None:
                return fn()
            began = time.perf_counter()
            out = jax.block_until_ready(fn())
            clock[phase] = clock.get(phase, 0.0) + time.perf_counter() - began
            return out

        rollout = timed("rollout", lambda: self.rollouts(state.params, examples, step, stage))

        def score():
            host = sharding.to_host(rollout)  # Host view 1: the rollout.
            return host, self.score(host, examples, self.spec.group_size)

        host, reward = timed("copy+score", score)
        batch = timed("make_batch", lambda: self.make_batch(state, rollout, reward, stage))
        state, metrics = timed(
            "update", lambda: self.update(state, batch, step, stage, self.widths_of(host))
        )

        def check():
            out = rl.check_finite(sharding.to_host(metrics), step)  # Host view 2.
            check_health(out, step, stage)
            return out

        return state, host, reward, batch, timed("other host", check)

    def widths_of(self, host) -> tuple[int, ...] | None:
        """The update's length groups for a host copy of the rollout (`rl.length_widths`):
        None when off, or when a group would not split evenly over the mesh's batch shards."""
        train = self.train_config
        rows = host.segment_ids.shape[0]
        if (rows // train.length_groups) % (
            sharding.batch_shards(self.mesh, self.rules) * train.micro_batches
        ):
            return None
        return rl.length_widths(host.segment_ids, train.length_groups, train.logprob_start)

    def update(
        self,
        state: rl.TrainState,
        batch: rl.Batch,
        step: int,
        stage: StageSpec,
        widths: tuple[int, ...] | None = None,
    ):
        """One update; `widths` from `widths_of` trains rows in length groups."""
        rng, fn = self._key("update", step), self._step_fn(stage)
        with sharding.logical_constraint_context(self.mesh, self.rules):
            return fn(state, batch, rng, widths)

    def evaluate(self, params, step: int, stage: StageSpec | None = None) -> dict:
        """Mean response-only reward on test prompts (one rollout each): the policy thinks
        and responds, or, in a stage with a frozen thinker, the stage-start snapshot
        thinks and the policy responds (the system that stage trains)."""
        n = min(self.spec.eval.prompts, len(self.test_data))
        examples = [self.test_data[i] for i in range(n)]
        thinker = stage.thinker if stage is not None else "self"
        stage = StageSpec("eval", "joint", "self", 0, 0.0, 0, thinker=thinker)
        rollout = sharding.to_host(self.rollouts(params, examples, 10_000_000 + step, stage, 1))
        reward = self.score(rollout, examples, 1)
        rates = self.behaviour_metrics(self.decoded_rows(rollout, examples, 1))
        return {
            "eval/reward": float(reward.mean()),
            "eval/think_tokens": float(np.mean(rollout.think_length)),
            "eval/response_tokens": float(np.mean(rollout.response_length)),
            **{f"eval/{k}": v for k, v in rates.items()},
        }

    def decoded_rows(self, rollout, examples, repeat: int) -> list[dict]:
        """Each row's text per segment, with its example's reference and family."""
        rows = sampling.decode_segments(self.tokenizer, rollout)
        for i, row in enumerate(rows):
            e = examples[i // repeat]
            row.update(reference=e["reference"], family=e["family"])
        return rows

    def behaviour_metrics(self, rows: list[dict]) -> dict:
        """The task's metrics of decoded rows (`tasks.Task.behaviour_metrics`)."""
        return self.task.behaviour_metrics(rows)

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict:
        spec = self.spec
        ckpt = checkpointing.Checkpointer(
            os.path.join(self.workdir, "checkpoints"), spec.checkpoint.keep
        )
        iterator = PromptIterator(self.train_data, spec.data.prompts_per_step, spec.seed)
        start, state = 0, None
        latest, state, meta, target = self._restore_latest(ckpt)
        if latest is not None:
            resumed = self.stage_at(latest)
            if resumed.needs_snapshot and latest != resumed.start:  # Inside the stage.
                self.snapshot = ckpt.restore_snapshot(latest, target.params)
            iterator.restore(meta["data"])
            start = latest
            logging.info("resumed from %s/checkpoints at step %d", self.workdir, latest)
            if self.primary:
                print(f"resuming from step {latest} ({self.workdir}/checkpoints)")
        writer = MetricWriter(self.workdir, resume_step=start)
        summary = {"first": None, "last": None, "eval": {}}
        began = time.perf_counter()
        stopped = False
        with (
            _SigtermFlag() as sigterm,
            tqdm.trange(
                start,
                self.total_steps,
                initial=start,
                total=self.total_steps,
                desc="rl",
                unit="step",
                disable=not (spec.log.progress and self.primary),
            ) as bar,
        ):
            for step in bar:
                stage = self.stage_at(step)
                if step in (stage.start, start) and self.primary:
                    bar.write(self._stage_line(stage, resumed=step != stage.start))
                if step == stage.start:  # A fresh (or carried) optimizer, a snapshot.
                    state = self.stage_state(stage, state)
                examples = iterator.next_batch()
                state, host, reward, _, metrics = self.rl_step(state, examples, step, stage)
                write = bool(spec.log.samples_every) and step % spec.log.samples_every == 0
                rows = self._rows_to_decode(host, examples, write)
                metrics.update(self._rollout_metrics(host), stage=self.stages.index(stage))
                metrics.update(self.behaviour_metrics(rows))
                if write:  # Numbered as in metrics.jsonl: the step just taken, from 1.
                    self._write_samples(step + 1, rows, reward)
                done = step + 1
                if spec.eval.every and (done % spec.eval.every == 0 or done == self.total_steps):
                    metrics.update(self.evaluate(state.params, done, stage))
                writer.write(done, metrics)
                summary["last"] = metrics
                summary["first"] = summary["first"] or metrics
                bar.set_postfix(
                    stage=stage.name,
                    mode=stage.train_segments,
                    reward=f"{metrics['reward_mean']:.3f}",
                )
                # Every process stops at the same step when any of them received SIGTERM.
                term = sharding.any_process(sigterm.raised)
                if done % spec.checkpoint.every == 0 or done == self.total_steps or term:
                    ckpt.save(
                        done,
                        state,
                        self._meta(done, iterator),
                        force=True,
                        snapshot=self.snapshot if done < stage.end else None,
                    )
                if term:
                    stopped = True
                    break
        ckpt.close()
        writer.close()
        summary["seconds"] = time.perf_counter() - began
        summary["stopped"] = stopped
        summary["params"] = state.params
        # After a stage with a frozen thinker the trained system is two models: the
        # snapshot thinks, the policy responds.
        thinks_apart = self.stages[-1].thinker == "frozen"
        summary["thinker_params"] = self.snapshot if thinks_apart else state.params
        if not stopped and spec.checkpoint.export_hf:
            export = os.path.join(self.workdir, "export")
            self._export(state.params, export)
            summary["export"] = export
            if thinks_apart:
                summary["export_thinker"] = os.path.join(self.workdir, "export_thinker")
                self._export(self.snapshot, summary["export_thinker"])
        return summary

    def _export(self, params, path: str) -> None:
        params = sharding.to_host(params)  # Gathered by all, written by process 0.
        if self.primary:
            save_pretrained(self.model_config, params, path)
            if hasattr(self.tokenizer, "save_pretrained"):
                self.tokenizer.save_pretrained(path)

    def _rows_to_decode(self, host, examples, write: bool) -> list[dict]:
        """Decoded once, only for what reads the text: the task's behaviour metrics (every
        row, when it reads them) and written samples (the first `log.samples` rows)."""
        if self.task.decodes_every_row:
            return self.decoded_rows(host, examples, self.spec.group_size)
        if not write:
            return []
        first = jax.tree.map(lambda x: x[: self.spec.log.samples], host)
        return self.decoded_rows(first, examples, self.spec.group_size)

    def _stage_line(self, stage: StageSpec, resumed: bool) -> str:
        i = self.stages.index(stage)
        extra = "".join(
            (
                ", thinker frozen at the stage start" if stage.thinker == "frozen" else "",
                f", KL {stage.kl_coef:g} to the {stage.kl_reference.replace('_', '-')} policy on "
                f"{stage.kl_scope}"
                if stage.kl_coef
                else "",
                f", warmup {stage.warmup_steps}" if stage.warmup_steps else "",
                ", optimizer carried" if stage.carry_optimizer else "",
            )
        )
        return (
            f"stage {stage.name} ({i + 1}/{len(self.stages)}"
            f"{', resumed' if resumed else ''}): train {stage.train_segments}, "
            f"{stage.responder} responder, steps {stage.start}-{stage.end - 1}, "
            f"lr {stage.learning_rate:g}{extra}"
        )

    def _restore_latest(self, ckpt):
        """(step, state, meta, restore target) of the newest readable checkpoint, or Nones
        (`Checkpointer.restore_latest`); says which damaged ones were set aside."""
        damaged_dir = os.path.join(self.workdir, "checkpoints_damaged")
        step, state, meta, target, set_aside = ckpt.restore_latest(
            lambda s: self.restore_target(self.stage_at(s)),
            checkpointing.model_fields(self.model_config),
            self.critic_config is not None,
            damaged_dir,
        )
        if state is not None:  # The rates of the configuration, not of the checkpoint.
            state = self.with_rates(state, self.stage_at(step))
        for message in set_aside:
            logging.info("warning: %s; resuming from step %d", message, step)  # Printed below.
            if self.primary:
                print(f"warning: {message}; moved to {damaged_dir}; resuming from step {step}")
        return step, state, meta, target

    def _meta(self, step: int, iterator) -> dict:
        return {
            "step": step,
            "data": iterator.state(),
            "seed": self.spec.seed,
            "critic": self.critic_config is not None,
            "model": checkpointing.model_fields(self.model_config),
            "config": json.loads(self.spec.config_json),
        }

    def _rollout_metrics(self, host) -> dict:
        return {
            "think_tokens": float(np.mean(host.think_length)),
            "response_tokens": float(np.mean(host.response_length)),
            "think_truncated": float(np.mean(host.think_truncated)),
            "response_truncated": float(np.mean(host.response_truncated)),
            "rollout_think_tokens": float((host.segment_ids == segments.THINK).sum()),
        }

    def _write_samples(self, step: int, rows: list[dict], reward) -> None:
        rows = [
            {**row, "reward": float(r)} for row, r in zip(rows[: self.spec.log.samples], reward)
        ]
        write_samples(self.workdir, step, rows)


def ignored_options(spec: RunSpec) -> list[str]:
    """Options set away from their defaults that the run's path does not read."""
    out = []
    defaults = default_config()
    if not spec.cold_start:
        changed = [
            f"sft.{k}"
            for k in ("steps", "batch_size", "learning_rate", "examples", "draws")
            if getattr(spec.sft, k) != defaults.sft[k]
        ]
        if changed:
            out.append(
                f"{', '.join(changed)} set, but a run from init_checkpoint trains no "
                "cold-start SFT unless sft.from_checkpoint=True: ignored"
            )
    if spec.sft.from_checkpoint and not spec.init_checkpoint:
        out.append(
            "sft.from_checkpoint set without init_checkpoint (a random init always "
            "trains its cold start): ignored"
        )
    if spec.sft.from_checkpoint and spec.init_checkpoint and not spec.sft.steps:
        out.append(
            "sft.from_checkpoint set with sft.steps=0: no SFT step runs (tags added "
            "to the tokenizer keep their untrained mean rows)"
        )
    if (
        not spec.advantage.needs_critic
        and spec.optim.critic_learning_rate != defaults.algo.critic_learning_rate
    ):
        out.append(
            f"algo.critic_learning_rate set, but algo.advantage="
            f"{spec.advantage.estimator!r} trains no critic: ignored"
        )
    return out


def preflight(spec: RunSpec, workdir: str):
    """What can be checked before any work, without writing anything: the workdir, the
    mesh, the tokenizer, the init checkpoint's config (family, context) and the JSONL
    files (every line). Returns (mesh, tokenizer); raises a UserError naming the field,
    flag, file or line."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir {workdir} is an existing file, not a directory")
    try:
        mesh = sharding.make_mesh(spec.mesh)
    except ValueError as e:
        raise ConfigError(
            f"config: mesh.data={spec.mesh.data}, mesh.fsdp={spec.mesh.fsdp}, "
            f"mesh.tensor={spec.mesh.tensor} does not fit the "
            f"{jax.device_count()} devices ({e})"
        ) from None
    tokenizer = spec.load_tokenizer()
    if spec.init_checkpoint:
        check_context(
            spec.width,
            spec.data.max_prompt_tokens,
            spec.sampling,
            read_config(spec.init_checkpoint).max_position_embeddings,
            f"max_position_embeddings of {spec.init_checkpoint}/config.json",
        )
        if not spec.cold_start:
            check_vocab(spec, tokenizer)
    if spec.data.source == "jsonl":
        for path in (spec.data.train_path, spec.data.test_path):
            if path:
                if not os.path.isfile(path):
                    raise ConfigError(
                        f"JSONL file {os.path.abspath(path)} not found "
                        "(data.train_path / data.test_path)"
                    )
                rows = read_jsonl(path)
                if (
                    path == spec.data.train_path
                    and spec.init_checkpoint
                    and spec.sft.from_checkpoint
                    and spec.sft.steps
                    and not any(row["thinking"] for _, row in rows)
                ):
                    raise ConfigError(
                        f"{path}: no row has a 'thinking' trace, which sft.from_checkpoint="
                        "True trains on (with 'response'); add them, or set "
                        "sft.from_checkpoint=False"
                    )
    return mesh, tokenizer


def run(config, workdir: str) -> dict:
    """Runs (or resumes) the schedule of a ConfigDict or `RunSpec`; prints a final table."""
    trainer = Trainer(as_spec(config), workdir)
    summary = trainer.run()
    if trainer.primary:
        print_summary(trainer, summary)
    return summary
