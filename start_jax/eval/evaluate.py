"""A policy on its own: it thinks and answers itself; rewards and behaviour rates.

The complement of Cross-Generation (which separates the thinking from the
model that wrote it): here each question is answered once after the policy's
own thinking and once after empty thinking, and the rows are classified against
the synthetic world's truth (`start_jax.world.classify`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from start_jax.eval.cross_generation import ModelPolicy
from start_jax.rewards import RewardInput
from start_jax.world import classify


def _correct(question: dict, response: str, family: str) -> bool:
    return (
        classify.classify_response(question["prompt"], response, question["reference"], family)[0]
        == "correct"
    )


def evaluate_policy(
    policy: ModelPolicy, judge, questions: Mapping[str, Sequence[dict]], seed: int
) -> dict:
    """Scores and behaviour rates of a policy that thinks and answers itself, per family.

    Args:
      policy: the model (its sampling config sets the budgets and temperature).
      judge: a reward function over `RewardInput`s.
      questions: family ('facts', 'arith') -> question dicts ('prompt',
        'reference', 'metadata'), e.g. from `start_jax.eval.questions.load_questions`.
      seed: the sampling seed (the same for both passes).

    Returns, per family ``f``:
      ``scores_f``: the judge's reward per question (rounded to 4 decimals);
      ``rates_f``: `classify.behaviour_rates` of the rows (keys ``f/<class>``);
      ``correct_after_complete_f``: the rate of correct responses after complete
        thinking (None when no thinking was complete);
      ``correct_after_empty_f``: the rate of correct responses after empty thinking.
    """
    out = {}
    for family, q in questions.items():
        prompts = [x["prompt"] for x in q]
        rows = policy.generate(prompts, seed)
        for row, x in zip(rows, q):
            row.update(reference=x["reference"], family=family)
        scores = judge(
            [
                RewardInput(
                    x["prompt"], r["response"], (), (), x["reference"], False, x["metadata"]
                )
                for x, r in zip(q, rows)
            ]
        )
        out[f"scores_{family}"] = np.asarray(scores, np.float64).round(4).tolist()
        out[f"rates_{family}"] = classify.behaviour_rates(rows, prefix="")
        complete = [
            _correct(x, r["response"], family)
            for x, r in zip(q, rows)
            if classify.classify_thinking(x["prompt"], r["thinking"], family) == "complete"
        ]
        out[f"correct_after_complete_{family}"] = float(np.mean(complete)) if complete else None
        empty = policy.generate(prompts, seed, no_thinking=True)
        out[f"correct_after_empty_{family}"] = float(
            np.mean([_correct(x, r["response"], family) for x, r in zip(q, empty)])
        )
    return out
