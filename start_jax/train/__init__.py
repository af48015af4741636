"""The trainer: stages of segment-masked RL with checkpoints and metrics."""

from start_jax.train.config import default_config, stage, validate
from start_jax.train.spec import RunSpec, StageSpec
from start_jax.train.trainer import Trainer, run
