"""Response-only reward functions."""

from start_jax.rewards.base import (
    ExactMatch,
    MathVerifier,
    RewardFn,
    RewardInput,
    make,
    normalize_answer,
    register,
    registered,
    response_inputs,
    score,
)
