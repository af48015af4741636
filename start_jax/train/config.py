"""The run configuration: one `ml_collections.ConfigDict` schema with defaults.

Experiment files under `experiments/configs/` start from `default_config()`
and change fields; `validate` rejects keys the schema does not know, naming
the full key, so a typo never silently falls back to a default. The defaults
are the embedded START run: a tiny model on the synthetic world, on CPU.
"""

from __future__ import annotations

import re

import ml_collections

from start_jax import tasks
from start_jax.errors import ConfigError
from start_jax.models.config import ATTENTION_IMPLS, DTYPE_NAMES, SUPPORTED_MODEL_TYPES
from start_jax.rewards.shaping import LengthShaping
from start_jax.rl import losses, masks
from start_jax.rl.advantages import ESTIMATORS, AdvantageConfig
from start_jax.train.stages import stage, validate_stage

ADVANTAGES = tuple(sorted(ESTIMATORS))  # The built-in ones; validate reads the registry.
# Sections whose keys are free-form (checked where they are used).
_FREE_FORM = ("reward.kwargs", "eval.gold_kwargs", "stages", "prompt.template_kwargs")


def default_config() -> ml_collections.ConfigDict:
    """Schema and defaults (the embedded START run)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # Seeds init, data order and sampling.
    c.tokenizer = ""  # "world" (the embedded world's), "char", or a tokenizer.json
    # dir; '' = init_checkpoint's own tokenizer.json if it has
    # one, else "world".
    c.init_checkpoint = ""  # HF directory to start from; '' = random init + SFT.

    # How task rows become prompt text (start_jax.data.prompts), and the thinking tags.
    c.prompt = ml_collections.ConfigDict()
    c.prompt.chat_template = False  # Render rows with the tokenizer's chat template and its
    # generation prompt (JSONL 'messages' rows need it).
    c.prompt.system = ""  # System message for rows that have none ('' = none).
    c.prompt.template_kwargs = ml_collections.ConfigDict(dict(enable_thinking=True))
    # Chat template variables (free-form).
    c.prompt.think_tag = "<think>"  # Opening thinking tag: a token of the tokenizer.
    c.prompt.end_think_tag = "</think>"  # Closing thinking tag.
    c.prompt.add_tags = False  # Add tags the tokenizer lacks as new tokens (the model
    # needs embedding rows for them; cold-start SFT teaches them).

    c.model = ml_collections.ConfigDict()
    c.model.model_type = "qwen3"  # llama, qwen2 or qwen3 (random init only).
    c.model.hidden_size = 64  # Residual width.
    c.model.intermediate_size = 192  # SwiGLU width.
    c.model.num_layers = 2  # Decoder blocks.
    c.model.num_heads = 4  # Query heads.
    c.model.num_kv_heads = 2  # Key/value heads.
    c.model.head_dim = 16  # Head width.
    c.model.max_position_embeddings = 128  # Context length.
    c.model.dtype = "float32"  # Compute dtype.
    c.model.param_dtype = "float32"  # Parameter dtype.
    c.model.remat = False  # Recompute blocks in the backward pass.
    c.model.attention_impl = "auto"  # auto | xla | blockwise | cudnn | pallas (models.attention):
    # auto = dense for short inputs, else by backend.
    c.model.attention_block = 0  # Tile of 'blockwise' (queries and keys); 0 = by backend.
    c.model.cpu_fast_paths = "auto"  # auto | on | off: XLA:CPU layouts of the same maths
    # (models.fast_paths); auto = on when jax's backend is the CPU.

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1  # Replicated data parallelism.
    c.mesh.fsdp = -1  # Sharded data parallelism; -1 = remaining devices.
    c.mesh.tensor = 1  # Tensor parallelism.
    c.mesh.devices = 0  # Use the first N devices of a single process; 0 = every device.
    c.mesh.replicate_uneven = False  # Replicate a dimension its mesh axes do not divide
    # (False: that is an error naming the dimension).

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # 'synthetic' or 'jsonl'.
    c.data.name = "facts"  # Synthetic config: arith | facts | mixed.
    c.data.train_path = ""  # JSONL train file (source='jsonl').
    c.data.test_path = ""  # JSONL test file (source='jsonl').
    c.data.data_dir = ""  # tfds data_dir; '' = $START_JAX_DATA_DIR if set, else <workdir>/data.
    c.data.prompts_per_step = 16  # Distinct prompts per RL step.
    c.data.max_prompt_tokens = 32  # Longer prompts are an error (world prompts: <= 14).

    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 4000  # Cold-start SFT steps (random init, or from_checkpoint).
    c.sft.from_checkpoint = False  # True: an init_checkpoint gets the cold-start SFT too, on
    # the JSONL's thinking/response traces (set steps and a
    # learning_rate fit for a trained model, e.g. 1e-5); tags
    # added by prompt.add_tags get embedding rows (the mean
    # row). Trained once, cached in <workdir>/init_policy.
    c.sft.batch_size = 32  # Sequences per SFT step.
    c.sft.learning_rate = 3e-3  # SFT peak learning rate.
    # Behaviour mixture of the synthetic SFT traces (start_jax.world.behaviours):
    # thinking complete : sloppy : guess (relative weights), and the styled rate.
    c.sft.mixture = ml_collections.ConfigDict(
        dict(complete=0.5, sloppy=0.25, guess=0.25, styled=0.25)
    )
    c.sft.examples = 20000  # Train examples the traces are drawn from (at most).
    c.sft.draws = 1  # Traces drawn per example.

    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 1.0  # Rollout temperature.
    c.sampling.top_k = 0  # 0 = off.
    c.sampling.top_p = 1.0  # 1 = off.
    c.sampling.think_budget = 16  # Thinking tokens before </think> is forced.
    c.sampling.response_budget = 8  # Response tokens, eos included.
    # At the thinking budget: "force_end" writes </think> (no gradient) and the response
    # follows; "truncate" ends the row there, and its reward is truncated_reward.
    c.sampling.think_budget_mode = "force_end"
    c.sampling.truncated_reward = 0.0
    c.sampling.dynamic_rounds = 0  # Dynamic sampling (DAPO): groups whose rewards on the
    # trained segment are all equal are replaced by groups of at most this many further
    # rollout rounds; 0 = off (stages.*.dynamic_rounds overrides it per stage).
    c.sampling.ban_tags_in_response = True  # Never draw a think tag in the response; the
    # update's log-probabilities apply the same ban.
    c.sampling.dtype = ""  # Compute dtype of the sampler; '' = model.dtype
    # ('bfloat16' samples in bf16 for a float32 trainer).
    c.sampling.compact_every = 8  # Every N decode steps, rows that finished stop costing
    # steps (sampling.Compaction); 0 = decode every row to the end.
    c.sampling.compact_min_rows = 8  # Smallest batch compaction makes.

    c.reward = ml_collections.ConfigDict()
    c.reward.name = "synthetic"  # A registered reward (start_jax.rewards).
    c.reward.kwargs = ml_collections.ConfigDict()  # Passed to the reward factory.

    # Length shaping per segment, added to the reward of each row (LengthShaping in
    # start_jax/rewards/shaping.py; every term 0 = off): DAPO's soft overlong penalty
    # for the thinking and for the response (a ramp to -1 over the last *_buffer tokens
    # of the segment's budget, times overlong_coef), and a thinking-length target
    # (-think_target_coef * |L - think_target| / think_target).
    c.shaping = ml_collections.ConfigDict()
    for name, default in LengthShaping.options().items():
        c.shaping[name] = default

    c.algo = ml_collections.ConfigDict()
    c.algo.advantage = "grpo"  # A registered estimator (start_jax.rl.advantages).
    c.algo.group_size = 8  # Completions per prompt.
    # The estimators' own options, each with its default and meaning in
    # AdvantageConfig (start_jax/rl/advantages.py): grpo_scale ('std', or 'none' for
    # Dr.GRPO), group_baseline (REINFORCE++), gamma and lam (GAE), ...
    for name, default in AdvantageConfig.options().items():
        c.algo[name] = default
    c.algo.policy_loss = "ppo"  # ppo | dual_clip | gspo.
    c.algo.clip_low = 0.2  # PPO lower clip.
    c.algo.clip_high = 0.28  # PPO upper clip (DAPO clip-higher).
    c.algo.dual_clip = 3.0  # Dual-clip constant.
    c.algo.aggregation = "token-mean"  # Loss aggregation mode.
    c.algo.kl_coef = 0.0  # KL to the reference policy.
    c.algo.kl_estimator = "k3"  # k1 | k2 | k3.
    c.algo.kl_scope = "mask"  # mask | completion | think | response (masks.KL_SCOPES).
    c.algo.entropy_coef = 0.0  # Entropy bonus.
    c.algo.tis_cap = 0.0  # Truncated importance sampling of sampler/trainer
    # mismatch: weight min(p_train/p_sampler, cap); 0 = off.
    # Off-policy masking on the same ratio w (each bound 0 = off): a sampled loss token
    # with w outside [token_mask_low, token_mask_high] gets no policy gradient; a row
    # whose geometric mean of w is outside [seq_mask_low, seq_mask_high] gets none.
    c.algo.token_mask_low = 0.0
    c.algo.token_mask_high = 0.0
    c.algo.seq_mask_low = 0.0
    c.algo.seq_mask_high = 0.0
    c.algo.ppo_epochs = 1  # mu: passes over each rollout batch.
    c.algo.minibatches = 1  # Optimizer updates per pass.
    c.algo.micro_batches = 1  # Gradient accumulation slices.
    c.algo.length_groups = 2  # With one minibatch: rows sorted by length in this many
    # groups, each trained on the columns it fills (1 = off).
    c.algo.pack_rows = False  # Pack each batch's rollouts into as few rows as hold them
    # before the update (each attends only to itself): less work on padding. Needs
    # aggregation token-mean, policy_loss ppo or dual_clip and no seq masks; replaces
    # length groups.
    c.algo.value_clip = 0.2  # Critic value clipping.
    c.algo.value_coef = 0.5  # Critic loss weight.
    c.algo.critic_learning_rate = 1e-3  # Critic learning rate.
    for name, default in losses.LossConfig.options().items():  # A loss option added in
        if name not in c.algo:  # rl/losses.py, default there.
            c.algo[name] = default

    # LoRA (start_jax/models/lora.py): the policy trains adapters of this rank on the
    # attention and MLP projections; the base stays frozen (the KL reference and a frozen
    # responder are the base with its adapters off) and the export is merged. 0 = off.
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0  # Adapter rank r; 0 trains every parameter.
    c.lora.alpha = 16.0  # The adapters' update is scaled by alpha / r.
    c.lora.targets = "all"  # "all", or kernels by name: q_proj,k_proj,v_proj,o_proj,
    # gate_proj,up_proj,down_proj (comma-separated).

    c.optim = ml_collections.ConfigDict()
    c.optim.warmup_steps = 0  # Linear warmup (optimizer updates) at the start of each
    # stage (stages.*.warmup_steps overrides it per stage).
    c.optim.weight_decay = 0.0  # AdamW weight decay.
    c.optim.max_grad_norm = 1.0  # Global-norm clipping.

    c.schedule = "start"  # Name of the stage schedule (for logs).
    c.stages = ml_collections.ConfigDict()  # Run in natural key order (s2 before s10).
    c.stages.s1 = stage("think", "self", steps=24, learning_rate=1e-3)
    c.stages.s2 = stage("response", "self", steps=12, learning_rate=1e-3)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 5  # Save every N RL steps.
    c.checkpoint.keep = 2  # Checkpoints kept.
    c.checkpoint.export_hf = True  # Write the final policy as a HF directory.

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 10  # Evaluate every N RL steps (and at the end).
    c.eval.prompts = 32  # Test prompts per evaluation.
    c.eval.gold_reward = ""  # A registered reward scored on the evaluation's rollouts beside
    # the training reward (eval/gold_reward, eval/gold_gap); '' = none. The world's
    # correctness-only judge is "synthetic_correct".
    c.eval.gold_kwargs = ml_collections.ConfigDict()  # Passed to the gold reward's factory.

    c.log = ml_collections.ConfigDict()
    c.log.samples_every = 5  # Write decoded rollouts every N steps.
    c.log.samples = 4  # Rollouts written each time.
    c.log.progress = True  # Show a progress bar.
    c.log.wandb = ml_collections.ConfigDict()  # Weights & Biases (pip install wandb).
    c.log.wandb.project = ""  # W&B project: '' = no W&B run.
    c.log.wandb.entity = ""  # W&B team or user; '' = the account's default.
    c.log.wandb.name = ""  # Run name; '' = the workdir's name.
    c.log.wandb.mode = "online"  # online | offline (files under <workdir>/wandb) | disabled.
    c.log.wandb.init_timeout = 60.0  # Seconds to wait for W&B to start (then: a warning).
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError (a ValueError) for unknown keys or values, naming the full key."""
    _check_keys(config, default_config(), "")
    for key, value, allowed in (
        ("algo.advantage", config.algo.advantage, tuple(sorted(ESTIMATORS))),
        ("algo.policy_loss", config.algo.policy_loss, losses.POLICY_LOSSES),
        ("algo.aggregation", config.algo.aggregation, losses.AGGREGATIONS),
        ("algo.kl_estimator", config.algo.kl_estimator, losses.KL_ESTIMATORS),
        ("algo.kl_scope", config.algo.kl_scope, masks.KL_SCOPES),
        ("data.source", config.data.source, tasks.registered()),
        ("sampling.dtype", config.sampling.dtype, ("", "float32", "bfloat16")),
        ("model.attention_impl", config.model.attention_impl, ATTENTION_IMPLS),
        ("model.cpu_fast_paths", config.model.cpu_fast_paths, ("auto", "on", "off")),
        ("log.wandb.mode", config.log.wandb.mode, ("online", "offline", "disabled")),
    ):
        if value not in allowed:
            raise ConfigError(f"config: {key}={value!r} is not one of {list(allowed)}")
    if not len(config.stages):
        raise ConfigError("config: stages is empty; give at least one stage")
    g = config.algo.group_size
    if not isinstance(g, int) or g < 1:
        raise ConfigError(f"config: algo.group_size={g!r} must be an integer >= 1")
    if AdvantageConfig.from_section(config.algo).needs_groups and g < 2:
        raise ConfigError(
            f"config: algo.group_size=1 with algo.advantage={config.algo.advantage!r} "
            "makes every advantage 0 (a group baseline needs >= 2 completions); "
            "use group_size >= 2 or a batch baseline"
        )
    if not isinstance(config.data.prompts_per_step, int) or config.data.prompts_per_step < 1:
        raise ConfigError(
            f"config: data.prompts_per_step={config.data.prompts_per_step!r} must be "
            "an integer >= 1"
        )
    _check_numbers(config)
    for name in stage_names(config):
        _check_keys(config.stages[name], stage(), f"stages.{name}.")
        validate_stage(config, name, first=name == stage_names(config)[0])
    if not any(config.stages[n].steps for n in stage_names(config)):
        raise ConfigError(
            "config: every stage has steps=0, so the run would train nothing after the cold "
            f"start; give a stage steps >= 1 (--config.stages.{stage_names(config)[0]}.steps=N)"
        )


def _integer(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_numbers(config) -> None:
    """Counts, sizes and dtypes outside the stages, each against its range."""
    for key, low, what in (
        ("checkpoint.every", 1, "(save every N RL steps)"),
        ("checkpoint.keep", 1, "(checkpoints kept)"),
        ("eval.every", 0, "(0 evaluates only at the end)"),
        ("eval.prompts", 1, "(test prompts per evaluation)"),
        ("log.samples_every", 0, "(0 writes no samples)"),
        ("log.samples", 0, ""),
        ("data.max_prompt_tokens", 1, ""),
        ("sampling.think_budget", 0, ""),
        ("sampling.response_budget", 1, "(eos included)"),
        ("sampling.dynamic_rounds", 0, "(0 = off)"),
        ("lora.rank", 0, "(0 = off)"),
        ("sft.steps", 0, ""),
        ("model.hidden_size", 1, ""),
        ("model.intermediate_size", 1, ""),
        ("model.num_layers", 1, ""),
        ("model.num_heads", 1, ""),
        ("model.num_kv_heads", 1, ""),
        ("model.head_dim", 1, ""),
        ("model.max_position_embeddings", 1, ""),
    ):
        group, field = key.split(".")
        value = config[group][field]
        if not _integer(value, low):
            raise ConfigError(
                f"config: {key}={value!r} must be an integer >= {low} {what}".rstrip()
            )
    m = config.model
    if m.num_heads % m.num_kv_heads:
        raise ConfigError(
            f"config: model.num_heads={m.num_heads} must be a multiple of "
            f"model.num_kv_heads={m.num_kv_heads} (each key/value head serves a "
            "group of query heads)"
        )
    for key, value, allowed in (
        ("model.model_type", m.model_type, SUPPORTED_MODEL_TYPES),
        ("model.dtype", m.dtype, DTYPE_NAMES),
        ("model.param_dtype", m.param_dtype, DTYPE_NAMES),
    ):
        if value not in allowed:
            raise ConfigError(f"config: {key}={value!r} is not one of {list(allowed)}")
    timeout = config.log.wandb.init_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"config: log.wandb.init_timeout={timeout!r} must be a number > 0")


def stage_names(config) -> list[str]:
    """Stage names in run order: natural order, so ``s2`` runs before ``s10``."""
    return sorted(
        config.stages.keys(),
        key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)],
    )


def _check_keys(config, schema, prefix: str) -> None:
    for key in config.keys():
        full = prefix + key
        if full in _FREE_FORM:
            continue
        if key not in schema:
            known = ", ".join(sorted(schema.keys()))
            where = f"under '{prefix[:-1]}'" if prefix else "at the top level"
            raise ConfigError(f"config: unknown key '{full}' (known keys {where}: {known})")
        if isinstance(config[key], ml_collections.ConfigDict) and isinstance(
            schema[key], ml_collections.ConfigDict
        ):
            _check_keys(config[key], schema[key], full + ".")
