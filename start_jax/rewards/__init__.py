"""Response-only reward functions."""

from start_jax.rewards import reward_model  # noqa: E402,F401  (registers 'reward_model')
from start_jax.rewards.answer_likelihood import AnswerLikelihood, ThinkingInput  # noqa: E402,F401  (registers 'answer_likelihood')
from start_jax.rewards.base import (
    ExactMatch,
    MathVerifier,
    RewardFn,
    RewardInput,
    check,
    make,
    normalize_answer,
    register,
    registered,
    response_inputs,
    score,
)
from start_jax.rewards.judge import GenerativeJudge, JudgeError  # noqa: E402,F401  (registers 'judge')
