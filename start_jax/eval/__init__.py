"""Evaluation: Cross-Generation of thinking across answerers."""

from start_jax.eval import cross_generation
from start_jax.eval.cross_generation import (
    CrossGenResult,
    ModelAnswerer,
    ModelThinker,
    bootstrap_efficacy,
)
