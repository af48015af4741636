"""The ablation's summaries, tables and figures on a small made-up results dict.

The numbers are checked against values computed here by hand (means, Wilson
intervals in closed form), so the summaries keep the library's intervals.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from experiments import ablation
from start_jax.eval import stats

THINKERS = ("base", "joint/grpo", "start_frozen/grpo")
ANSWERERS = ("A1x", "A4x")
SEEDS = (0, 1)
N = 6  # Questions per family and seed.


def _wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return [centre - half, centre + half]


def made_up_results() -> dict:
    rs = np.random.RandomState(0)
    records, curves, cgs = [], [], []
    for seed in SEEDS:
        for t in THINKERS:
            rec = {"seed": seed, "thinker": t}
            for fam in ("facts", "arith"):
                rec[f"scores_{fam}"] = rs.choice([0.0, 0.5, 0.8, 1.0], N).tolist()
                rec[f"rates_{fam}"] = {
                    f"{fam}/{key}": rs.randint(0, N + 1) / N
                    for key in ("think_complete", "response_salient", "styled")
                }
            records.append(rec)
            if t != "base":
                curves.append(
                    {
                        "seed": seed,
                        "thinker": t,
                        "rows": [
                            {"step": s, **{k: float(rs.rand()) for k in ablation.CURVE_KEYS}}
                            for s in range(1, 5)
                        ],
                    }
                )
        for fam in ("facts", "arith"):
            sources = list(THINKERS) + ["empty", "self"]
            scores = rs.binomial(1, 0.5, size=(len(sources), len(ANSWERERS), N)).astype(float)
            classes = {s: {"complete": rs.randint(0, N + 1) / N} for s in THINKERS}
            classes["empty"] = {"empty": 1.0}
            cgs.append(
                {
                    "seed": seed,
                    "family": fam,
                    "sources": sources,
                    "answerers": list(ANSWERERS),
                    "scores": scores.tolist(),
                    "thinking_classes": classes,
                }
            )
    scale = dataclasses.replace(ablation.REDUCED, seeds=SEEDS, questions=N)
    results = {
        "scale": dataclasses.asdict(scale),
        "records": records,
        "curves": curves,
        "cross_generation": cgs,
        "levels": {},
        "seconds": 1.0,
    }
    results["summary"] = ablation.summarize(results)
    return results


def _rows(results):
    return {r["thinker"]: r for r in results["summary"]}


def test_summary_numbers_by_hand():
    results = made_up_results()
    rows = _rows(results)
    assert list(rows) == ["base", "joint/grpo", "start_frozen/grpo", "empty", "self"]
    recs = [r for r in results["records"] if r["thinker"] == "joint/grpo"]
    final = rows["joint/grpo"]["final_facts"]
    assert final[0] == pytest.approx(np.mean([r["scores_facts"] for r in recs]), abs=1e-12)
    h = stats.hierarchical_bootstrap([r["scores_facts"] for r in recs], samples=2000)
    assert final == [h["mean"], h["low"], h["high"]]  # Seeds, then questions: the run is the unit.
    k = sum(round(r["rates_facts"]["facts/styled"] * N) for r in recs)
    styled = rows["joint/grpo"]["styled_facts"]
    np.testing.assert_allclose(styled, [k / (2 * N), *_wilson(k, 2 * N)], rtol=0, atol=1e-12)
    gains = [
        np.asarray(c["scores"])[1] - np.asarray(c["scores"])[3]  # joint/grpo - empty.
        for c in results["cross_generation"]
        if c["family"] == "arith"
    ]
    assert rows["joint/grpo"]["efficacy_arith"][0] == pytest.approx(np.mean(gains), abs=1e-12)
    assert rows["empty"]["efficacy_facts"] == [0.0, 0.0, 0.0]
    k = sum(
        round(c["thinking_classes"]["base"]["complete"] * N)
        for c in results["cross_generation"]
        if c["family"] == "facts"
    )
    np.testing.assert_allclose(
        rows["base"]["cg_complete_facts"], [k / (2 * N), *_wilson(k, 2 * N)], rtol=0, atol=1e-12
    )
    assert "final_facts" not in rows["self"]


def test_contrasts_are_paired_differences():
    results = made_up_results()
    found = {
        (c["a"], c["b"], c["what"], c["family"]): c["diff"] for c in ablation.contrasts(results)
    }
    a = np.array([r["scores_facts"] for r in results["records"] if r["thinker"] == "joint/grpo"])
    b = np.array([r["scores_facts"] for r in results["records"] if r["thinker"] == "base"])
    diff = found[("joint/grpo", "base", "final", "facts")]
    h = stats.hierarchical_bootstrap(a - b, samples=2000)
    assert diff == [h["mean"], h["low"], h["high"]]
    assert diff[0] == pytest.approx((a - b).mean(), abs=1e-12)
    assert ("start_frozen/grpo", "joint/grpo", "efficacy", "facts") in found
    text = ablation.contrast_table(results)
    assert len(text.splitlines()) == len(found)
    # Holm within each claim: the adjusted p-values of claim 3 are those of its raw ones.
    three = [c for c in ablation.contrasts(results) if c["claim"] == "3"]
    assert len(three) == 2
    assert [c["p_holm"] for c in three] == stats.holm([c["p"] for c in three])
    for c in ablation.contrasts(results):
        assert c["verdict"] == (
            "no clear difference"
            if c["p_holm"] >= 0.05
            else "a > b"
            if c["diff"][0] > 0
            else "a < b"
        )


def test_controls_are_first_to_last_window_changes():
    results = made_up_results()
    rows = {r["thinker"]: r for r in ablation.controls(results)}
    runs = [c["rows"] for c in results["curves"] if c["thinker"] == "joint/grpo"]
    k = ablation.CONTROL_WINDOW
    want = np.mean(
        [
            np.mean([r["reward_mean"] for r in run[-k:]])
            - np.mean([r["reward_mean"] for r in run[:k]])
            for run in runs
        ]
    )
    assert rows["joint/grpo"]["reward"][0] == pytest.approx(want, abs=1e-12)
    assert rows["joint/grpo"]["seeds"] == len(SEEDS)
    assert len(ablation.control_table(results).splitlines()) == 1 + len(rows)


def test_tables_and_matrix():
    results = made_up_results()
    text = ablation.table(results)
    assert len(text.splitlines()) == 2 + 5 and "final facts" in text.splitlines()[0]
    md = ablation.table(results, markdown=True).splitlines()
    assert md[0].startswith("| thinker |") and len(md) == 2 + 5
    sources, answerers, m = ablation.matrix(results, "facts")
    assert sources == list(THINKERS) + ["empty", "self"] and answerers == list(ANSWERERS)
    expected = np.mean(
        [np.asarray(c["scores"]) for c in results["cross_generation"] if c["family"] == "facts"],
        axis=(0, 3),
    )
    np.testing.assert_allclose(m, expected, rtol=0, atol=1e-12)


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_figures(tmp_path):
    results = made_up_results()
    for name, draw in (
        ("curves.png", ablation.plot_curves),
        ("ablation.png", ablation.plot),
        ("cross_generation.png", ablation.plot_matrices),
    ):
        path = str(tmp_path / name)
        draw(results, path)
        assert os.path.getsize(path) > 10_000, name


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_markdown_tables_and_stage1_check():
    results = made_up_results()
    results["scale"]["stage1_steps"] = 3
    text = ablation.markdown(results)
    assert "| claim | a | b |" in text and "| joint/grpo |" in text
    assert ablation.stage1_check(results) == []  # No stage-1 snapshot run here.
    for c in results["curves"]:
        if c["thinker"] == "start_frozen/grpo":
            c["thinker"] = "start_frozen.s1/grpo"
    row = ablation.stage1_check(results)[0]
    a = {c["seed"]: c["rows"] for c in results["curves"] if c["thinker"] == "start_frozen.s1/grpo"}
    b = {c["seed"]: c["rows"] for c in results["curves"] if c["thinker"] == "joint/grpo"}
    at = lambda rows: np.mean([r["reward_mean"] for r in rows if r["step"] <= 3])  # noqa: E731
    assert row["reward"][0] == pytest.approx(np.mean([at(a[s]) - at(b[s]) for s in SEEDS]))


def test_training_against_gold_rows_by_hand(tmp_path):
    """First and last `GOLD_WINDOW` steps of each run: the training reward, the gold (the
    family's correct rate) and the gap, mean and sd over seeds; arith for rlvr."""
    rs = np.random.RandomState(1)
    keys = ("reward_mean", "behaviour/facts/response_correct", "behaviour/arith/response_correct")
    curves = [
        {
            "seed": seed,
            "thinker": name,
            "rows": [{"step": s, **{k: float(rs.rand()) for k in keys}} for s in range(1, 9)],
        }
        for name in ("joint/grpo", "rlvr/ppo")
        for seed in (0, 1, 2)
    ]
    results = {"curves": curves}
    rows = {r["run"]: r for r in ablation.gold_rows(results)}
    assert list(rows) == ["joint/grpo", "rlvr/ppo"]
    for name, key in (("joint/grpo", keys[1]), ("rlvr/ppo", keys[2])):
        runs = [c["rows"] for c in curves if c["thinker"] == name]
        gap = [np.mean([r["reward_mean"] - r[key] for r in run[-5:]]) for run in runs]
        first = [np.mean([r["reward_mean"] - r[key] for r in run[:5]]) for run in runs]
        gold = [np.mean([r[key] for r in run[-5:]]) for run in runs]
        assert rows[name]["gold"] == key and rows[name]["seeds"] == 3
        np.testing.assert_allclose(rows[name]["last_gap"], [np.mean(gap), np.std(gap)], 1e-12)
        np.testing.assert_allclose(rows[name]["first_gap"], [np.mean(first), np.std(first)], 1e-12)
        np.testing.assert_allclose(rows[name]["last_gold"], [np.mean(gold), np.std(gold)], 1e-12)
    assert "| joint/grpo | 3 | 1 |" in ablation.gold_table(results)
    # start_al's stage 1 is trained on the answer likelihood: compared from its stage 2.
    al = [dict(r, stage=int(r["step"] > 4), reward_mean=-3.0) for r in curves[0]["rows"]]
    for r in al[4:]:
        r["reward_mean"] = 0.5
    row = ablation.gold_rows({"curves": [{"seed": 0, "thinker": "start_al/grpo", "rows": al}]})
    gold = np.mean([r[keys[1]] for r in al[4:]])
    assert row[0]["from_step"] == 5 and row[0]["first_gap"][0] == pytest.approx(0.5 - gold)
    ablation.plot_gold(results, str(tmp_path / "gold.png"))
    assert os.path.getsize(tmp_path / "gold.png") > 10_000
