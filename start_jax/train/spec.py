"""The frozen run spec: built once from the ConfigDict at the edge of a run.

`RunSpec.from_config` validates a `ml_collections.ConfigDict` (see
`start_jax.train.config`) and turns it into frozen dataclasses: the sampler's
`SamplingConfig`, the update's `TrainConfig` (with its `LossConfig`), the
`AdvantageConfig` of the estimator registry, and an explicitly ordered tuple of
`StageSpec`. The trainer and everything below it read only these; nothing past
this module touches the ConfigDict.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import ml_collections

from start_jax import rewards, tasks
from start_jax.data.prompts import PromptFormat
from start_jax.errors import ConfigError
from start_jax.models.lora import ALL_TARGETS, LoraConfig
from start_jax.rewards.shaping import LengthShaping
from start_jax.rl import AdvantageConfig, LossConfig, TrainConfig, check_packable
from start_jax.sampling import Compaction, SamplingConfig, num_decode_steps
from start_jax.sharding import MeshConfig
from start_jax.tokenizer import MissingTag, load_tokenizer
from start_jax.train.config import stage_names, validate
from start_jax.train.stages import StageSpec


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The model of a random-init run (and the dtypes and context of any run)."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    dtype: str
    param_dtype: str
    remat: bool
    attention_impl: str = "auto"
    attention_block: int = 0
    cpu_fast_paths: str = "auto"

    # The fields above that change how the model runs, not what it is (`runtime`).
    RUNTIME = ("remat", "attention_impl", "attention_block", "cpu_fast_paths")

    def runtime(self) -> dict:
        """`ModelConfig` fields that change how the model runs, not what it is; "auto"
        CPU fast paths are on when jax's default backend is the CPU."""
        block = self.attention_block or None
        fast = self.cpu_fast_paths
        return dict(
            remat=self.remat,
            attention_impl=self.attention_impl,
            attention_block_q=block,
            attention_block_k=block,
            cpu_fast_paths=jax.default_backend() == "cpu" if fast == "auto" else fast == "on",
        )


@dataclasses.dataclass(frozen=True)
class DataSpec:
    source: str  # synthetic | jsonl.
    name: str
    train_path: str
    test_path: str
    data_dir: str
    prompts_per_step: int
    max_prompt_tokens: int


@dataclasses.dataclass(frozen=True)
class SftSpec:
    steps: int
    batch_size: int
    learning_rate: float
    mixture: Any  # The task's trace options (`Task.trace_options`), from sft.mixture.
    examples: int
    draws: int
    from_checkpoint: bool = False  # Cold-start SFT for an init_checkpoint too.

    def record(self) -> dict:
        """JSON-ready fields (the cold-start record of a cached initial policy)."""
        return {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "mixture": (
                dataclasses.asdict(self.mixture)
                if dataclasses.is_dataclass(self.mixture)
                else dict(self.mixture)
            ),
            "examples": self.examples,
            "draws": self.draws,
        }


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    warmup_steps: int
    weight_decay: float
    max_grad_norm: float
    critic_learning_rate: float


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    every: int
    keep: int
    export_hf: bool


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    every: int
    prompts: int
    gold_reward: str = ""  # '' = none.
    gold_kwargs: tuple[tuple[str, Any], ...] = ()

    def make_gold(self):
        """The gold reward function, or None."""
        return (
            rewards.make(self.gold_reward, **dict(self.gold_kwargs)) if self.gold_reward else None
        )


@dataclasses.dataclass(frozen=True)
class WandbSpec:
    """`log.wandb`: Weights & Biases beside metrics.jsonl (off while `project` is '')."""

    project: str = ""
    entity: str = ""
    name: str = ""
    mode: str = "online"
    init_timeout: float = 60.0


@dataclasses.dataclass(frozen=True)
class LogSpec:
    samples_every: int
    samples: int
    progress: bool
    wandb: WandbSpec = WandbSpec()


@dataclasses.dataclass(frozen=True)
class RunSpec:
    seed: int
    tokenizer: str
    init_checkpoint: str
    schedule: str
    model: ModelSpec
    mesh: MeshConfig
    data: DataSpec
    sft: SftSpec
    sampling: SamplingConfig
    reward_name: str
    reward_kwargs: tuple[tuple[str, Any], ...]
    shaping: LengthShaping
    truncated_reward: float  # The reward of a row stopped at its thinking budget.
    advantage: AdvantageConfig
    train: TrainConfig
    optim: OptimSpec
    stages: tuple[StageSpec, ...]
    checkpoint: CheckpointSpec
    eval: EvalSpec
    log: LogSpec
    prompt: PromptFormat = PromptFormat()  # How rows become prompt text.
    tags: tuple[str, str, bool] = ("<think>", "</think>", False)  # Think tags, add if missing.
    replicate_uneven: bool = False  # Replicate dimensions the mesh does not divide.
    sampling_dtype: str = ""  # Compute dtype of the sampler ('' = the model's).
    compaction: Compaction | None = None  # Finished rows stop costing decode steps.
    config_json: str = "{}"  # The ConfigDict the spec was built from (checkpoint metadata).

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def cold_start(self) -> bool:
        """Whether the run trains a cold start (random init, or `sft.from_checkpoint`)."""
        return not self.init_checkpoint or self.sft.from_checkpoint

    @property
    def group_size(self) -> int:
        return self.advantage.group_size

    @property
    def rows(self) -> int:
        """Rollouts per RL step."""
        return self.data.prompts_per_step * self.advantage.group_size

    @property
    def width(self) -> int:
        """Columns of every rollout of the run (one shape for sampling and the update)."""
        return rollout_width(self.data.max_prompt_tokens, self.sampling)

    def stage_at(self, step: int) -> StageSpec:
        for stage in self.stages:
            if step < stage.end:
                return stage
        return self.stages[-1]

    def load_tokenizer(self):
        """The run's tokenizer, with its think tags (added when `tags` says so)."""
        think, end_think, add = self.tags
        try:
            return load_tokenizer(
                self.tokenizer, think_token=think, end_think_token=end_think, add_missing_tags=add
            )
        except MissingTag as e:
            field = "think_tag" if e.token == think else "end_think_tag"
            raise ConfigError(
                f"tokenizer {e.file} has no token {e.token!r} (prompt.{field}); name a token "
                f"it has with --config.prompt.{field}=..., or add the tags with "
                "--config.prompt.add_tags=True (the added tags' embeddings start untrained)"
            ) from None

    def make_reward(self):
        return rewards.make(self.reward_name, **dict(self.reward_kwargs))

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "RunSpec":
        """Validates the config and freezes it; errors name the field."""
        validate(config)
        c = config
        stages, start = [], 0
        for name in stage_names(c):
            stages.append(StageSpec.from_section(name, c.stages[name], start, c))
            start += stages[-1].steps
        tasks.check_reward(c.data.source, c.reward.name, rewards.registered())
        rewards.check(c.reward.name, **c.reward.kwargs.to_dict())
        if c.eval.gold_reward:
            tasks.check_reward(
                c.data.source, c.eval.gold_reward, rewards.registered(), "eval.gold_reward"
            )
            rewards.check(
                c.eval.gold_reward,
                ("eval.gold_reward", "eval.gold_kwargs"),
                **c.eval.gold_kwargs.to_dict(),
            )
        try:
            mixture = tasks.get(c.data.source).trace_options(c.sft.mixture.to_dict())
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config: sft.{e}") from None
        try:
            sampling = SamplingConfig(
                temperature=c.sampling.temperature,
                top_k=c.sampling.top_k,
                top_p=c.sampling.top_p,
                think_budget=c.sampling.think_budget,
                response_budget=c.sampling.response_budget,
                ban_tags_in_response=c.sampling.ban_tags_in_response,
                think_budget_mode=c.sampling.think_budget_mode,
            )
        except ValueError as e:
            raise ConfigError(f"config: sampling.{e}") from None
        truncated_reward = c.sampling.truncated_reward
        if not isinstance(truncated_reward, (int, float)) or not math.isfinite(truncated_reward):
            raise ConfigError(
                f"config: sampling.truncated_reward={truncated_reward!r} must be a finite number"
            )
        compaction = None
        if c.sampling.compact_every:
            try:
                compaction = Compaction(
                    int(c.sampling.compact_every), int(c.sampling.compact_min_rows)
                )
            except ValueError:
                raise ConfigError(
                    f"config: sampling.compact_every={c.sampling.compact_every!r} "
                    f"and sampling.compact_min_rows={c.sampling.compact_min_rows!r} "
                    "must be >= 1 (compact_every=0 turns compaction off)"
                ) from None
        a = c.algo
        try:
            loss = LossConfig.from_section(
                a,
                norm_length=sampling.think_budget + sampling.response_budget + 1,
                # Greedy rollouts report log-probabilities at T = 1.
                temperature=sampling.temperature if sampling.temperature > 0 else 1.0,
            )
        except ValueError as e:  # The loss's own checks; the message names the field.
            raise ConfigError(f"config: algo.{e}") from None
        advantage = AdvantageConfig.from_section(a)
        try:
            shaping = LengthShaping(**c.shaping.to_dict())
            shaping.check_budgets(sampling.think_budget, sampling.response_budget)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config: shaping.{e}") from None
        # Rollouts are right-aligned in `width` columns and the decoded part is the last
        # think_budget + 1 + response_budget of them (a frozen responder's too), so the columns
        # before it hold only prompt and padding: the update's vocabulary head skips them.
        width = rollout_width(c.data.max_prompt_tokens, sampling)
        if not c.init_checkpoint:
            check_context(
                width,
                c.data.max_prompt_tokens,
                sampling,
                c.model.max_position_embeddings,
                "model.max_position_embeddings",
            )
        if not isinstance(a.length_groups, int) or a.length_groups < 1:
            raise ConfigError(
                f"config: algo.length_groups={a.length_groups!r} must be an "
                "integer >= 1 (1 trains every row on every column)"
            )
        if not isinstance(a.pack_rows, bool):
            raise ConfigError(f"config: algo.pack_rows={a.pack_rows!r} must be True or False")
        lora = None
        if c.lora.rank:
            t = c.lora.targets
            names = ALL_TARGETS if t == "all" else tuple(n.strip() for n in t.split(","))
            try:
                lora = LoraConfig(rank=c.lora.rank, alpha=c.lora.alpha, targets=names)
            except ValueError as e:
                raise ConfigError(f"config: lora.{e}") from None
        train = TrainConfig(
            lora=lora,
            loss=loss,
            ppo_epochs=a.ppo_epochs,
            minibatches=a.minibatches,
            micro_batches=a.micro_batches,
            use_critic=advantage.needs_critic,
            # Packed rows hold prompts in any column, and are full: no groups to cut.
            logprob_start=0 if a.pack_rows else width - num_decode_steps(sampling, True),
            length_groups=a.length_groups if a.minibatches == 1 and not a.pack_rows else 1,
            pack_rows=a.pack_rows,
        )
        if train.pack_rows:
            try:
                check_packable(train)
            except ValueError as e:
                raise ConfigError(f"config: algo.pack_rows=True: {e}") from None
        rows = c.data.prompts_per_step * a.group_size
        for key, n in (
            ("algo.minibatches", a.minibatches),
            ("algo.micro_batches", a.micro_batches),
        ):
            if not isinstance(n, int) or n < 1 or rows % n:
                raise ConfigError(
                    f"config: {key}={n!r} must divide the {rows} rollouts of a step "
                    "(data.prompts_per_step x algo.group_size)"
                )
        if a.micro_batches > 1 and (rows // a.minibatches) % a.micro_batches:
            raise ConfigError(
                f"config: algo.micro_batches={a.micro_batches} must divide a "
                f"minibatch of {rows // a.minibatches} rollouts"
            )
        return cls(
            seed=int(c.seed),
            tokenizer=str(c.tokenizer or _checkpoint_tokenizer(c.init_checkpoint)),
            init_checkpoint=str(c.init_checkpoint),
            prompt=PromptFormat.create(
                c.prompt.chat_template, c.prompt.system, c.prompt.template_kwargs.to_dict()
            ),
            tags=(str(c.prompt.think_tag), str(c.prompt.end_think_tag), bool(c.prompt.add_tags)),
            schedule=str(c.schedule),
            model=ModelSpec(**c.model.to_dict()),
            mesh=MeshConfig(
                data=c.mesh.data, fsdp=c.mesh.fsdp, tensor=c.mesh.tensor, devices=c.mesh.devices
            ),
            replicate_uneven=bool(c.mesh.replicate_uneven),
            data=DataSpec(**c.data.to_dict()),
            sampling_dtype=str(c.sampling.dtype),
            compaction=compaction,
            sft=SftSpec(
                steps=c.sft.steps,
                batch_size=c.sft.batch_size,
                learning_rate=c.sft.learning_rate,
                mixture=mixture,
                examples=c.sft.examples,
                draws=c.sft.draws,
                from_checkpoint=bool(c.sft.from_checkpoint),
            ),
            sampling=sampling,
            reward_name=c.reward.name,
            reward_kwargs=tuple(sorted(c.reward.kwargs.to_dict().items())),
            shaping=shaping,
            truncated_reward=float(truncated_reward),
            advantage=advantage,
            train=train,
            optim=OptimSpec(
                warmup_steps=c.optim.warmup_steps,
                weight_decay=c.optim.weight_decay,
                max_grad_norm=c.optim.max_grad_norm,
                critic_learning_rate=a.critic_learning_rate,
            ),
            stages=tuple(stages),
            checkpoint=CheckpointSpec(**c.checkpoint.to_dict()),
            eval=EvalSpec(
                every=c.eval.every,
                prompts=c.eval.prompts,
                gold_reward=c.eval.gold_reward,
                gold_kwargs=tuple(sorted(c.eval.gold_kwargs.to_dict().items())),
            ),
            log=LogSpec(
                **{k: v for k, v in c.log.to_dict().items() if k != "wandb"},
                wandb=WandbSpec(**c.log.wandb.to_dict()),
            ),
            config_json=json.dumps(json.loads(c.to_json_best_effort()), sort_keys=True),
        )


def check_context(
    width: int, max_prompt_tokens: int, sampling: SamplingConfig, context: int, where: str
) -> None:
    """Raises a ConfigError when a rollout of `width` positions exceeds `context` (named by
    `where`)."""
    if width > context:
        raise ConfigError(
            f"config: a rollout takes {width} positions (data.max_prompt_tokens="
            f"{max_prompt_tokens} + sampling.think_budget={sampling.think_budget} + "
            f"sampling.response_budget={sampling.response_budget} + the tags), more than the "
            f"{where}={context}; lower the budgets or raise the context"
        )


def rollout_width(max_prompt_tokens: int, sampling: SamplingConfig) -> int:
    """Columns of a run's rollouts: the prompt and `<think>` (rounded up to 8, as the
    sampler pads its prefix), then the decode columns (the thinking budget, `</think>`,
    the response budget), rounded up to a multiple of 8 (at most 7 columns to spare)."""
    longest = -(-(max_prompt_tokens + 1) // 8) * 8 + num_decode_steps(sampling, True)
    return -(-longest // 8) * 8


def _checkpoint_tokenizer(init_checkpoint: str) -> str:
    """The tokenizer of ``tokenizer=''``: the init checkpoint's own tokenizer.json when it
    has one, else the embedded world's."""
    if init_checkpoint and os.path.isfile(os.path.join(init_checkpoint, "tokenizer.json")):
        return init_checkpoint
    return "world"


def as_spec(config_or_spec) -> RunSpec:
    """A `RunSpec` as it is, or one built from a ConfigDict."""
    if isinstance(config_or_spec, RunSpec):
        return config_or_spec
    return RunSpec.from_config(config_or_spec)
