"""A checkpoint on held-out questions with k samples each: pass@k, maj@k and mean reward
at one or several thinking budgets.

`evaluate_budget` samples k completions per question through the segmented sampler
(one prefill per question, `</think>` forced at the budget), scores each response
with a registered reward, and keeps per question: the rewards, the extracted answers
(the reward's `extract_answer` when it has one, else the normalised response), the
thinking lengths and whether each row spent its thinking budget. `summarize` turns
those into pass@1, pass@k, maj@k, the mean reward, the mean thinking length and the
budget-hit rate, each with a bootstrap interval over questions.
`experiments/evaluate.py` is the command line around them.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from start_jax import sampling
from start_jax.eval import passk, stats
from start_jax.eval.cross_generation import ModelPolicy
from start_jax.rewards import RewardInput
from start_jax.rewards.base import normalize_answer


def extract_answer(reward_fn, response: str):
    """The answer a majority vote counts: the reward's own extraction, else the
    normalised response (None for an empty one)."""
    extract = getattr(reward_fn, "extract_answer", None)
    answer = extract(response) if extract is not None else normalize_answer(response)
    return answer if answer else None


def evaluate_budget(
    policy: ModelPolicy,
    questions: Sequence[dict],
    reward_fn,
    k: int,
    think_budget: int,
    seed: int,
) -> list[dict]:
    """One record per question (k samples at `think_budget`): 'prompt' (the text the
    model read: a row's own ``messages`` through the chat template), 'rewards',
    'answers', 'think_tokens' and 'hit_budget' (lists of k)."""
    policy = dataclasses.replace(
        policy, sampling_config=policy.sampling_config.replace(think_budget=think_budget)
    )
    texts = [policy.render(dict(q)) for q in questions]  # Once a question.
    rollout, _ = policy.sample([t for t in texts for _ in range(k)], seed, rendered=True)
    rows = sampling.decode_segments(policy.tokenizer, rollout)
    think = np.asarray(rollout.think_length)
    hit = np.asarray(rollout.think_truncated) & (think >= think_budget)
    inputs = [
        RewardInput(
            q["prompt"], rows[i]["response"], (), (), q.get("reference"), False, q.get("metadata")
        )
        for i, q in ((i, questions[i // k]) for i in range(len(rows)))
    ]
    scores = np.asarray(reward_fn(inputs), np.float64)
    out = []
    for j in range(len(questions)):
        part = slice(j * k, (j + 1) * k)
        out.append(
            {
                "prompt": texts[j],
                "rewards": scores[part].round(6).tolist(),
                "answers": [extract_answer(reward_fn, r["response"]) for r in rows[part]],
                "think_tokens": think[part].astype(int).tolist(),
                "hit_budget": hit[part].astype(bool).tolist(),
            }
        )
    return out


def summarize(records: Sequence[dict], k: int, correct_at: float = 1.0) -> dict:
    """pass@1, pass@k, maj@k, mean reward, mean thinking tokens and the budget-hit rate,
    each [mean, low, high] (95% bootstrap over questions). A sample is correct when its
    reward is at least `correct_at`."""
    rewards = np.asarray([r["rewards"] for r in records], np.float64)
    correct = rewards >= correct_at
    answers = [r["answers"] for r in records]
    per_question = {
        "pass@1": passk.pass_at_k_per_question(correct, 1),
        f"pass@{k}": passk.pass_at_k_per_question(correct, k),
        f"maj@{k}": passk.maj_at_k_per_question(answers, correct, k),
        "reward": rewards.mean(axis=1),
        "think_tokens": np.asarray([np.mean(r["think_tokens"]) for r in records]),
        "hit_budget": np.asarray([np.mean(r["hit_budget"]) for r in records]),
    }
    return {name: stats.bootstrap_interval(v[None]) for name, v in per_question.items()}
