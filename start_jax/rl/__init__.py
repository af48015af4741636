"""RL core: segment masks, advantages, losses and the train step."""

from start_jax.rl import advantages, dynamic, losses, masks, packing
from start_jax.rl.advantages import AdvantageConfig
from start_jax.rl.batch import BatchConfig, build_batch, jit_build_batch
from start_jax.rl.logprobs import (
    logits_log_probs,
    rollout_log_probs,
    rollout_values,
    token_log_probs,
    token_values,
)
from start_jax.rl.losses import LossConfig
from start_jax.rl.masks import kl_mask, loss_mask
from start_jax.rl.train_step import (
    Batch,
    LearningRateState,
    NonFiniteError,
    OptimizerConfig,
    TrainConfig,
    TrainState,
    carry_optimizer_state,
    check_finite,
    check_packable,
    init_state,
    jit_train_step,
    length_widths,
    loss_counts,
    make_optimizer,
    off_policy_weights,
    policy_loss_terms,
    row_ends,
    train_on_batch,
    with_learning_rate,
)
