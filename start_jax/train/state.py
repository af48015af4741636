"""A run's train state: its optimizers, shapes, shardings, and fresh or restored states.

`StateBuilder` makes every train state the loop holds: a stage's fresh (or carried)
state directly in its sharded layout, the abstract target a checkpoint restores into,
and the learning rates of the configuration put into a restored state. The
optimizers' programs are keyed on `rl.OptimizerConfig.program_key` by the trainer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from start_jax import models, rl, sharding
from start_jax.train.spec import RunSpec, StageSpec


class StateBuilder:
    """The train states of one run (policy and, with a critic, value model)."""

    def __init__(
        self,
        spec: RunSpec,
        model_config,
        critic_config,
        init_params,
        mesh,
        rules: sharding.ShardingRules,
        critic_seed: int,
    ):
        self.spec = spec
        self.model_config = model_config
        self.critic_config = critic_config  # None without a critic.
        self.init_params = init_params
        self.mesh = mesh
        self.rules = rules
        self.critic_seed = critic_seed  # The key of the critic's initial value head.
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.lora = spec.train.lora  # With LoRA the state's params are adapters.

    def initial_trainable(self, seed: int):
        """What the first stage trains: the initial policy's parameters, or with LoRA fresh
        adapters (their A from `seed`, B = 0), created in their sharded layout."""
        if self.lora is None:
            return self.init_params
        shapes = models.param_shapes(self.model_config)
        init = jax.jit(
            lambda key: models.lora.init(shapes, self.lora, key),
            out_shardings=self.param_shardings(),
        )
        return init(jax.random.key(seed))

    def param_shardings(self):
        """Shardings of what the policy trains: its parameters, or its adapters."""
        if self.lora is None:
            return models.param_shardings(self.model_config, self.mesh, self.rules)
        return models.adapter_shardings(self.model_config, self.lora, self.mesh, self.rules)

    def optimizer(self, stage: StageSpec) -> rl.OptimizerConfig:
        o = self.spec.optim
        return rl.OptimizerConfig(
            learning_rate=stage.learning_rate,
            warmup_steps=stage.warmup_steps,
            weight_decay=o.weight_decay,
            max_grad_norm=o.max_grad_norm,
        )

    def critic_optimizer(self) -> rl.OptimizerConfig | None:
        if self.critic_config is None:
            return None
        o = self.spec.optim
        return rl.OptimizerConfig(
            learning_rate=o.critic_learning_rate, max_grad_norm=o.max_grad_norm
        )

    def tx(self, stage: StageSpec):
        return self.optimizer(stage).make()

    def critic_tx(self):
        return self.critic_optimizer().make()

    def init_fn(self, stage: StageSpec):
        critic_tx = self.critic_tx() if self.critic_config is not None else None
        return lambda p, c: rl.init_state(p, self.tx(stage), c, critic_tx)

    def initial_critic(self):
        _, critic = models.value_model_from_policy(
            self.model_config,
            self.init_params,
            jax.random.key(self.critic_seed),
        )
        return models.shard_params(self.critic_config, critic, self.mesh, self.rules)

    def shardings(self, stage: StageSpec, abstract=None):
        """Shardings of the train state: parameters and their optimizer moments by
        the rules table, scalars replicated (from `jax.eval_shape`, nothing allocated)."""
        param_sh = self.param_shardings()
        critic_sh = (
            models.param_shardings(self.critic_config, self.mesh, self.rules)
            if self.critic_config is not None
            else None
        )
        abstract = self.abstract(stage) if abstract is None else abstract
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

    def batch_shardings(self, packed: bool = False) -> rl.Batch:
        """Every array of a step's `Batch` split over its rows ('batch' rule); `packed`:
        with the `documents` of packed rows."""
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
            documents=two if packed else None,
        )

    def abstract(self, stage: StageSpec):
        """The train state's shapes and dtypes, without computing it."""
        if self.lora is None:
            params = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.init_params
            )
        else:
            params = models.lora.adapter_shapes(models.param_shapes(self.model_config), self.lora)
        critic = None
        if self.critic_config is not None:
            critic = jax.eval_shape(
                lambda: models.value_model_from_policy(
                    self.model_config, self.init_params, jax.random.key(0)
                )[1]
            )
        return jax.eval_shape(self.init_fn(stage), params, critic)

    def fresh(self, stage: StageSpec, params, critic=None) -> rl.TrainState:
        """A state whose optimizer starts afresh (at the start of a stage), created
        directly in its sharded layout."""
        if self.critic_config is not None and critic is None:
            critic = self.initial_critic()
        init = jax.jit(
            lambda p, c: self.init_fn(stage)(jax.tree.map(jnp.copy, p), c),
            out_shardings=self.shardings(stage),
        )
        return init(params, critic)

    def with_rates(self, state: rl.TrainState, stage: StageSpec) -> rl.TrainState:
        """`state` with `stage`'s learning rate and warmup (and the critic's rate) in its
        optimizer states, placed by the state's shardings."""
        opt, critic = self.optimizer(stage), self.critic_optimizer()
        state = state.replace(
            opt_state=rl.with_learning_rate(state.opt_state, opt.learning_rate, opt.warmup_steps)
        )
        if critic is not None:
            state = state.replace(
                critic_opt_state=rl.with_learning_rate(
                    state.critic_opt_state, critic.learning_rate, critic.warmup_steps
                )
            )
        return jax.device_put(state, self.shardings(stage))

    def restore_target(self, stage: StageSpec):
        """The abstract state (shapes, dtypes and shardings) a checkpoint restores into."""
        abstract = self.abstract(stage)
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract,
            self.shardings(stage, abstract),
        )
