"""One RL step of a run: a schedule of stages over segmented rollouts with
response-only rewards.

Each step (`Trainer.rl_step`): a batch of prompts -> G rollouts per prompt (the policy,
or a snapshot of it taken when the stage started, thinks; the policy itself or a frozen
copy of the initial policy responds) -> response-only rewards -> one jitted batch
builder (masks, advantages or GAE, the log-probabilities and values the update reads) ->
`mu` policy (and critic) updates. A step crosses to the host twice: once for the rollout
(to decode and score it) and once for the metrics. The loop, the step benchmark and the
tests all take their step from `rl_step`.

The rest of a run lives beside it: the train states and their shardings
(`train.state`), the loop with checkpoints, SIGTERM and writers (`train.loop`), the
checks before any work (`train.preflight`) and the final table (`train.report`).
`run(config, workdir)` is the entry point: it freezes the config into a `RunSpec`,
resumes from the latest checkpoint in `workdir`, and saves one when it receives SIGTERM.

Multi-host (`launch.py --distributed`): every process runs this same loop on the
mesh that spans all their devices. Host data goes to the devices shard by shard
(`sharding.host_to_global`), the host views gather the rollout and the metrics
from all processes (`sharding.to_host`), so every process scores and decides
alike; process 0 alone writes files and prints.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from start_jax import models, rewards, rl, sampling, segments, sharding, tasks
from start_jax.errors import TrainingError
from start_jax.train import data_io, loop
from start_jax.train.init_policy import initial_policy
from start_jax.train.preflight import ignored_options, preflight
from start_jax.train.report import print_summary
from start_jax.train.spec import StageSpec, as_spec
from start_jax.train.state import StateBuilder

# An update whose norm is this fraction of the parameter norm or more has exploded.
EXPLODED_UPDATE_RATIO = 0.5


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
RNG_STREAMS = {"rollout": 0, "critic_init": 1, "update": 2, "response": 3, "lora_init": 4}


@jax.jit
def _fold_key(seed_step_round: jax.Array) -> jax.Array:
    key = jax.random.fold_in(jax.random.key(seed_step_round[0]), seed_step_round[1])
    if seed_step_round.shape[0] == 3:  # A further sampling round of the step.
        key = jax.random.fold_in(key, seed_step_round[2])
    return key


class StepResult(NamedTuple):
    """What `Trainer.rl_step` returns."""

    state: rl.TrainState
    host: sampling.Rollout  # A host copy of the rollout the update trained on.
    reward: np.ndarray  # [B] its rewards, length terms included.
    batch: rl.Batch
    metrics: dict  # Host metrics of the step.
    examples: list  # The examples of its groups (others than the step's with dynamic sampling).


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
        self.gold_fn = spec.eval.make_gold()  # None without eval.gold_reward.
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
        self.states = StateBuilder(
            spec,
            self.model_config,
            self.critic_config,
            self.init_params,
            self.mesh,
            self.rules,
            critic_seed=spec.seed + RNG_STREAMS["critic_init"],
        )
        self._jits: dict = {}
        # With several processes (jax.distributed) every process runs this same loop on
        # its shards; process 0 alone writes files and prints.
        self.primary = jax.process_index() == 0

    def stage_state(self, stage: StageSpec, previous: rl.TrainState | None) -> rl.TrainState:
        """The state a stage starts from: the previous stage's parameters (the initial
        policy's for the first stage) with a fresh optimizer, or, with
        `stage.carry_optimizer`, the previous stage's optimizer moments (the new stage's
        learning rate and warmup). Takes the stage-start snapshot when the stage needs one."""
        if previous is None:
            first = self.states.initial_trainable(self.spec.seed + RNG_STREAMS["lora_init"])
            state = self.states.fresh(stage, first)
        else:
            state = self.states.fresh(stage, previous.params, previous.critic_params)
            if stage.carry_optimizer:
                state = state.replace(
                    opt_state=rl.carry_optimizer_state(previous.opt_state, state.opt_state),
                    critic_opt_state=previous.critic_opt_state,
                )
        self.snapshot = jax.tree.map(jnp.copy, state.params) if stage.needs_snapshot else None
        return state

    def policy(self, params):
        """The model that `params` (what the state trains) stand for: themselves, or with
        LoRA the frozen base with these adapters (`models.lora.combine`, nothing copied)."""
        lora = self.train_config.lora
        return params if lora is None else models.lora.combine(self.init_params, params, lora)

    def full_params(self, params):
        """A plain parameter tree of the model `params` stand for: with LoRA the base with
        the adapters merged into its kernels (for export and the run's summary)."""
        lora = self.train_config.lora
        return params if lora is None else models.lora.merge(self.init_params, params, lora)

    def stage_at(self, step: int) -> StageSpec:
        return self.spec.stage_at(step)

    # ------------------------------------------------------------------ one step

    def _key(self, stream: str, step: int, draw: int = 0) -> jax.Array:
        """The key of `stream` (`RNG_STREAMS`) at `step`: fold_in(key(seed + offset), step),
        folded once more with `draw` for a further sampling round of the step (dynamic
        sampling), from an explicit host-to-device copy."""
        values = [self.spec.seed + RNG_STREAMS[stream], step] + ([draw] if draw else [])
        return _fold_key(sharding.host_to_global(np.asarray(values, np.uint32), self.replicated))

    def _sample(self, params, prompts, sc, rng, row_ids, **kwargs):
        return self.sampler.sample(params, prompts, sc, rng, row_ids=row_ids, **kwargs)

    def rollouts(
        self,
        params,
        examples,
        step: int,
        stage: StageSpec,
        group_size: int | None = None,
        draw: int = 0,
    ):
        """`group_size` rollouts per example (default: the run's), with the stage's thinker
        (`params`, or the stage-start snapshot) and responder (`params`, or the initial
        policy); `draw` > 0 for a further round of the step (its own random keys)."""
        sc = self.spec.sampling
        g = self.spec.group_size if group_size is None else group_size
        prompts = [p for p in self.encode(examples) for _ in range(g)]
        row_ids = np.arange(len(prompts)) + step * len(prompts)
        rng = self._key("rollout", step, draw)
        # Each prompt is prefilled once for its group; finished rows stop costing steps.
        shape = dict(group_size=g, compact=self.spec.compaction)
        if stage.responder == "self" and stage.thinker == "self":
            return self._sample(self.policy(params), prompts, sc, rng, row_ids, **shape)
        if stage.thinker == "frozen" and self.snapshot is None:
            raise ValueError(
                f"stage {stage.name} has a frozen thinker but no snapshot was taken "
                "(Trainer.stage_state takes it)"
            )
        thinker = self.policy(self.snapshot if stage.thinker == "frozen" else params)
        responder = self.init_params if stage.responder == "frozen" else self.policy(params)
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
            self._key("response", step, draw),
            row_ids=row_ids,
            compact=self.spec.compaction,
        )

    def score(self, rollout, examples, repeat: int) -> np.ndarray:
        """Response-only rewards of a host copy of the rollout; a row stopped at its
        thinking budget (``sampling.think_budget_mode="truncate"``) gets
        ``sampling.truncated_reward`` instead (it has no response to judge)."""
        reward = self.judge(self.reward_fn, rollout, examples, repeat)
        if self.spec.sampling.think_budget_mode == "truncate":  # No response to judge.
            cut = sampling.stopped_at_budget(rollout)
            reward = np.where(cut, np.float32(self.spec.truncated_reward), reward)
        return reward

    def judge(self, fn, rollout, examples, repeat: int) -> np.ndarray:
        """Reward `fn` of each row of a host rollout (`repeat` rows per example)."""
        refs = [e["reference"] for e in examples for _ in range(repeat)]
        meta = [e["metadata"] for e in examples for _ in range(repeat)]
        return rewards.score(rollout, self.tokenizer, fn, refs, meta)

    def _batch_fn(self, stage: StageSpec):
        cfg = rl.BatchConfig(
            train=stage.train_config(self.train_config),
            advantage=self.spec.advantage,
            train_segments=stage.train_segments,
        )
        key = ("batch", cfg)  # Frozen and hashable: stages with equal settings share a program.
        if key not in self._jits:
            self._jits[key] = rl.jit_build_batch(
                self.model_config,
                self.critic_config,
                cfg,
                out_shardings=self.states.batch_shardings(),
            )
        return self._jits[key]

    def _step_fn(self, stage: StageSpec):
        train = stage.train_config(self.train_config)
        # Keyed on the frozen configs themselves: stages with equal settings share a program.
        # The learning rates and warmups are optimizer state, not part of the program.
        critic = self.states.critic_optimizer()
        key = (
            "step",
            self.states.optimizer(stage).program_key,
            critic and critic.program_key,
            train,
        )
        if key not in self._jits:
            self._jits[key] = rl.jit_train_step(
                self.model_config,
                train,
                self.states.tx(stage),
                self.critic_config,
                self.states.critic_tx() if self.critic_config is not None else None,
                state_shardings=self.states.shardings(stage),
                batch_shardings=self.states.batch_shardings(packed=train.pack_rows),
                frozen_shardings=models.param_shardings(self.model_config, self.mesh, self.rules),
            )
        return self._jits[key]

    def reference_params(self, stage: StageSpec):
        """The stage's KL reference: the initial policy or the stage-start snapshot (None
        without a KL coefficient)."""
        if not stage.kl_coef:
            return None
        if stage.kl_reference == "stage_start":
            return self.policy(self.snapshot)
        return self.init_params  # With LoRA: the base, its adapters off.

    def make_batch(
        self, state: rl.TrainState, rollout, reward: np.ndarray, stage: StageSpec, layout=None
    ) -> rl.Batch:
        """The update's batch, on device from the device rollout and host rewards; with a
        `layout` (`packing`), its forwards run on the packed rows."""
        r = sharding.host_to_global(
            np.asarray(reward, np.float32),
            sharding.batch_sharding(self.mesh, 1, self.rules, len(reward)),
        )
        ref = self.reference_params(stage)
        fn = self._batch_fn(stage)
        with sharding.logical_constraint_context(self.mesh, self.rules):
            return fn(
                self.policy(state.params),
                ref,
                state.critic_params,
                rollout.tokens,
                rollout.segment_ids,
                rollout.forced,
                r,
                rollout.logprobs,
                rollout.sampled,
                layout,
            )

    def rl_step(
        self,
        state: rl.TrainState,
        examples,
        step: int,
        stage: StageSpec,
        clock: dict | None = None,
        more: Callable[[], list] | None = None,
    ) -> StepResult:
        """One RL step on `examples`: rollouts, rewards, the batch, the update, its checks.

        The loop of `run`, the step benchmark and the tests all take their step from here.
        With dynamic sampling (`stage.dynamic_rounds` > 0), groups whose rewards on the
        trained segment are all equal (`rl.dynamic`) are replaced by groups of further
        rounds, each on the prompts `more()` returns (the loop passes its data iterator, so
        a resumed run draws the same ones). With `clock`, a dict, each phase's device work
        is waited for and its seconds are added to ``clock[phase]`` ("rollout",
        "copy+score", "make_batch", "pack" with `algo.pack_rows`, "update", "other host").
        """

        def timed(phase, fn):
            if clock is None:
                return fn()
            began = time.perf_counter()
            out = jax.block_until_ready(fn())
            clock[phase] = clock.get(phase, 0.0) + time.perf_counter() - began
            return out

        def sampled(batch_examples, draw: int):
            rollout = timed(
                "rollout",
                lambda: self.rollouts(state.params, batch_examples, step, stage, draw=draw),
            )

            def score():
                host = sharding.to_host(rollout)  # Host view 1: the rollout.
                return host, self.score(host, batch_examples, self.spec.group_size)

            return (rollout, *timed("copy+score", score))

        rollout, host, task_reward = sampled(examples, 0)
        dynamic = {}
        if stage.dynamic_rounds:
            rollout, host, task_reward, examples, dynamic = self._dynamic(
                stage, rollout, host, task_reward, examples, more, sampled
            )
        reward, shaped = self.shaped(task_reward, host)
        layout, packed = self.packing(host) if self.train_config.pack_rows else (None, {})
        batch = timed("make_batch", lambda: self.make_batch(state, rollout, reward, stage, layout))
        if layout is not None:
            shardings = self.states.batch_shardings(packed=True)
            batch = timed("pack", lambda: rl.packing.pack_batch(batch, layout, shardings))
        widths = None if layout is not None else self.widths_of(host)
        state, metrics = timed("update", lambda: self.update(state, batch, step, stage, widths))

        def check():
            out = rl.check_finite(sharding.to_host(metrics), step)  # Host view 2.
            check_health(out, step, stage)
            return {**out, **shaped, **dynamic, **packed}

        return StepResult(state, host, reward, batch, timed("other host", check), examples)

    def shaped(self, task_reward: np.ndarray, host) -> tuple[np.ndarray, dict]:
        """(the reward with the length terms of `spec.shaping`, their logged means); the
        task's reward and no metrics when shaping is off."""
        if not self.spec.shaping.active:
            return task_reward, {}
        sc = self.spec.sampling
        return self.spec.shaping.shape(
            task_reward,
            host.think_length,
            host.response_length,
            sc.think_budget,
            sc.response_budget,
        )

    def _dynamic(self, stage, rollout, host, task_reward, examples, more, sampled):
        """Dynamic sampling: further rounds while fewer groups than the step's are
        informative on the stage's trained segment (at most `stage.dynamic_rounds`), then
        the update's rollout, its host copy, task rewards and examples (`rl.dynamic.select`),
        and the ``dynamic/*`` metrics."""
        g = self.spec.group_size
        wanted = len(examples)

        def flags(h, r):
            trained = rl.dynamic.trained_rows(h.segment_ids, h.forced, stage.train_segments)
            return rl.dynamic.informative(self.shaped(r, h)[0], trained, g)

        rounds = [(rollout, host, task_reward, list(examples))]
        found = [flags(host, task_reward)]
        while sum(int(f.sum()) for f in found) < wanted and len(rounds) <= stage.dynamic_rounds:
            if more is None:
                raise ValueError(
                    f"stage {stage.name} samples dynamically (dynamic_rounds="
                    f"{stage.dynamic_rounds}): rl_step needs `more`, a source of prompts"
                )
            batch_examples = list(more())
            rounds.append((*sampled(batch_examples, len(rounds)), batch_examples))
            found.append(flags(rounds[-1][1], rounds[-1][2]))
        chosen = rl.dynamic.select(found, wanted)
        metrics = {
            "dynamic/filtered_frac": float(1.0 - found[0].mean()),
            "dynamic/rounds": float(len(rounds) - 1),
            "dynamic/extra_rollouts": float((len(rounds) - 1) * wanted * g),
            "dynamic/uninformative_frac": float(np.mean([not found[k][i] for k, i in chosen])),
        }
        if chosen == [(0, i) for i in range(wanted)]:  # Round 0 as sampled.
            return rollout, host, task_reward, examples, metrics
        rows = rl.dynamic.row_index(chosen, wanted, g)
        hosts = [r[1] for r in rounds]
        prefix = min(h.prefix_length for h in hosts)
        host = jax.tree.map(
            lambda *xs: np.concatenate(xs)[rows], *[h.replace(prefix_length=prefix) for h in hosts]
        )
        # The device rollout of the chosen rows, in the sampled rollout's shardings.
        rollout = jax.tree.map(
            lambda h, d: sharding.host_to_global(h, d.sharding),
            host,
            rollout.replace(prefix_length=prefix),
        )
        task_reward = np.concatenate([r[2] for r in rounds])[rows]
        examples = [rounds[k][3][i] for k, i in chosen]
        return rollout, host, task_reward, examples, metrics

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

    def packing(self, host) -> tuple[rl.packing.Layout, dict]:
        """The packing of a host rollout's rows into as few rows of its width as hold them
        (`rl.packing`), its row count bucketed (`packing.bucket_rows`) so that the update
        compiles for a few counts: its layout on device, and the ``packing/*`` metrics
        (rows, and the fraction of packed slots that hold tokens)."""
        rows, width = host.segment_ids.shape
        train = self.train_config
        plan = rl.packing.plan(host.segment_ids != segments.PAD, width)
        shards = sharding.batch_shards(self.mesh, self.rules)
        shards = shards if rows % shards == 0 else 1  # Else replicated (mesh.replicate_uneven).
        multiple = shards * train.minibatches * train.micro_batches
        plan = dataclasses.replace(plan, rows=rl.packing.bucket_rows(plan.rows, rows, multiple))
        layout = rl.packing.layout(plan, width)
        on_device = rl.packing.Layout(
            *(sharding.host_to_global(x, self.replicated) for x in layout)
        )
        return on_device, {"packing/rows": float(plan.rows), "packing/fill": plan.fill}

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
        base = () if self.train_config.lora is None else (self.init_params,)
        with sharding.logical_constraint_context(self.mesh, self.rules):
            return fn(state, batch, rng, *base, widths)

    def evaluate(self, params, step: int, stage: StageSpec | None = None) -> dict:
        """Mean response-only reward on test prompts (one rollout each): the policy thinks
        and responds, or, in a stage with a frozen thinker, the stage-start snapshot
        thinks and the policy responds (the system that stage trains). With
        `eval.gold_reward`, the gold reward of the same rollouts and the gap (training
        reward minus gold)."""
        n = min(self.spec.eval.prompts, len(self.test_data))
        examples = [self.test_data[i] for i in range(n)]
        thinker = stage.thinker if stage is not None else "self"
        stage = StageSpec("eval", "joint", "self", 0, 0.0, 0, thinker=thinker)
        rollout = sharding.to_host(self.rollouts(params, examples, 10_000_000 + step, stage, 1))
        reward = self.score(rollout, examples, 1)
        rates = self.behaviour_metrics(self.decoded_rows(rollout, examples, 1))
        out = {
            "eval/reward": float(reward.mean()),
            "eval/think_tokens": float(np.mean(rollout.think_length)),
            "eval/response_tokens": float(np.mean(rollout.response_length)),
            **{f"eval/{k}": v for k, v in rates.items()},
        }
        if self.gold_fn is not None:  # The same rollouts, judged by the gold reward.
            gold = float(self.judge(self.gold_fn, rollout, examples, 1).mean())
            out.update({"eval/gold_reward": gold, "eval/gold_gap": out["eval/reward"] - gold})
        return out

    def run(self) -> dict:
        """Runs (or resumes) the whole schedule in the workdir (`loop.run`); returns the
        summary."""
        return loop.run(self)

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


def run(config, workdir: str) -> dict:
    """Runs (or resumes) the schedule of a ConfigDict or `RunSpec`; prints a final table."""
    trainer = Trainer(as_spec(config), workdir)
    summary = trainer.run()
    if trainer.primary:
        print_summary(trainer, summary)
    return summary
