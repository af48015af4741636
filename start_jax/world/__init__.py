"""The embedded synthetic world, all in one place: its task generator and solvers
(`generator`), its tfds data sets (`builders`, `dataset`; these import
tensorflow_datasets and load only when imported), the cold-start behaviour mixture
(`behaviours`), the classifier of every rollout against the truth (`classify`) and its
judges (`judges`, the rewards ``synthetic`` and ``synthetic_rubric``).

Runs reach it as the task ``data.source='synthetic'`` (`start_jax.tasks.world`).
"""

from start_jax.world import behaviours, classify, generator, judges
from start_jax.world.generator import Example, generate, golden_response, tokenizer

__all__ = [
    "Example",
    "behaviours",
    "classify",
    "generate",
    "generator",
    "golden_response",
    "judges",
    "tokenizer",
]
