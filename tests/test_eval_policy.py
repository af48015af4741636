"""A policy on its own (`evaluate_policy`), held-out questions and the heat maps."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from start_jax import models, rewards, sampling
from start_jax.data import pipeline
from start_jax.eval import cross_generation as cg
from start_jax.eval import plots
from start_jax.eval.evaluate import evaluate_policy
from start_jax.eval.questions import load_questions
from start_jax.world import classify
from start_jax.world import generator as world


def _questions(family: str, n: int) -> list[dict]:
    """Generated questions as `load_questions` returns them (rows through `task_row`)."""
    return [pipeline.task_row(e.to_row()) for e in world.generate(family, n, seed=3)]


class Scripted:
    """Even questions: gold thinking, correct styled answer; odd ones: no thinking, wrong.

    Without thinking it answers correctly only the first question.
    """

    def __init__(self, questions):
        self.by_prompt = {q["prompt"]: (i, e) for i, (q, e) in enumerate(questions)}

    def generate(self, prompts, seed, thinking=None, no_thinking=False):
        rows = []
        for p in prompts:
            i, e = self.by_prompt[p]
            if no_thinking:
                rows.append(dict(prompt=p, thinking="", response=e.reference if i == 0 else "zzz"))
            elif i % 2 == 0:
                rows.append(
                    dict(
                        prompt=p,
                        thinking=e.thinking,
                        response=world.golden_response(e, styled=True),
                    )
                )
            else:
                rows.append(dict(prompt=p, thinking="", response="zzz"))
        return rows


@pytest.mark.parametrize("family", ["facts", "arith"])
def test_evaluate_policy_on_scripted_rollouts(family):
    examples = world.generate(family, 4, seed=3)
    qs = _questions(family, 4)
    out = evaluate_policy(
        Scripted(list(zip(qs, examples))), rewards.make("synthetic"), {family: qs}, seed=0
    )
    assert out[f"scores_{family}"] == [1.0, 0.0, 1.0, 0.0]
    rates = out[f"rates_{family}"]
    assert rates[f"{family}/think_complete"] == 0.5
    assert rates[f"{family}/think_empty"] == 0.5
    assert rates[f"{family}/response_correct"] == 0.5
    assert rates[f"{family}/styled"] == 0.5
    assert out[f"correct_after_complete_{family}"] == 1.0
    assert out[f"correct_after_empty_{family}"] == 0.25


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_evaluate_policy_matches_sampling_directly():
    """The numbers of a model equal those of sampling and judging by hand (same seeds)."""
    tok = world.tokenizer()
    config = models.tiny_config(tok.vocab_size, max_position_embeddings=256)
    params = models.init_params(config, jax.random.key(0))
    sc = sampling.SamplingConfig(temperature=1.0, think_budget=8, response_budget=4)
    judge = rewards.make("synthetic")
    qs = {"facts": _questions("facts", 3)}
    out = evaluate_policy(cg.ModelPolicy(config, params, tok, sc), judge, qs, seed=7)

    q = qs["facts"]
    special = sampling.SpecialTokens.from_tokenizer(tok)
    ids = [tok.encode(x["prompt"]) for x in q]
    rows = sampling.decode_segments(tok, sampling.sample(config, params, ids, sc, 7, special))
    scores = judge(
        [
            rewards.RewardInput(
                x["prompt"], r["response"], (), (), x["reference"], False, x["metadata"]
            )
            for x, r in zip(q, rows)
        ]
    )
    assert out["scores_facts"] == np.asarray(scores, np.float64).round(4).tolist()
    for r, x in zip(rows, q):
        r.update(reference=x["reference"], family="facts")
    assert out["rates_facts"] == classify.behaviour_rates(rows, prefix="")
    empty = sampling.decode_segments(
        tok, sampling.sample(config, params, ids, sc, 7, special, no_thinking=True)
    )
    assert all(r["thinking"] == "" for r in empty)
    assert out["correct_after_empty_facts"] == float(
        np.mean(
            [
                classify.classify_response(x["prompt"], r["response"], x["reference"], "facts")[0]
                == "correct"
                for x, r in zip(q, empty)
            ]
        )
    )


def test_load_questions_from_jsonl_and_bad_specs(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"Q{i}?", "reference": str(i)}) + "\n" for i in range(5))
    )
    qs = load_questions(f"jsonl:{path}", tmp_path / "data", 3)
    assert len(qs) == 3
    assert {q["prompt"] for q in qs} <= {f"Q{i}?" for i in range(5)}
    assert all(set(q) >= {"prompt", "reference", "metadata", "family"} for q in qs)
    assert len(load_questions(f"jsonl:{path}", tmp_path / "data", 50)) == 5
    with pytest.raises(ValueError, match="expected synthetic:NAME or jsonl:PATH"):
        load_questions("csv:x.csv", tmp_path / "data", 3)


def test_heatmaps_side_by_side(tmp_path):
    m = np.array([[0.1, 0.9], [0.5, 0.2], [0.0, 1.0]])
    path = str(tmp_path / "two.png")
    plots.heatmaps(
        path,
        [
            ("facts", ["a", "b", "empty"], ["A1x", "A4x"], m),
            ("arith", ["a", "b", "empty"], ["A1x", "A4x"], m.T.T * 0.5),
        ],
        xlabel="answerer (SFT budget)",
        ylabel=None,
        fontsize=7,
        dpi=60,
    )
    assert os.path.getsize(path) > 5000
    one = str(tmp_path / "one.png")
    plots.heatmaps(one, [("scores above 1", ["x"], ["A"], [[2.0]])])
    assert os.path.getsize(one) > 1000
