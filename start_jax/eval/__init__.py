"""Evaluation: Cross-Generation of thinking across answerers, a policy on its own, intervals.

`start_jax.eval.questions` (held-out questions; it imports tensorflow_datasets)
is loaded only when imported.
"""

from start_jax.eval import cross_generation, evaluate, plots, stats
from start_jax.eval.cross_generation import CrossGenResult, ModelPolicy
from start_jax.eval.evaluate import evaluate_policy
from start_jax.eval.stats import bootstrap_efficacy, bootstrap_interval, pooled_proportion

__all__ = [
    "CrossGenResult",
    "ModelPolicy",
    "bootstrap_efficacy",
    "bootstrap_interval",
    "cross_generation",
    "evaluate",
    "evaluate_policy",
    "plots",
    "pooled_proportion",
    "stats",
]
