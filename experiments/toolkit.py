"""The thinking toolkit's options in the embedded world, each against the default run.

Variants of the default START run (`experiments/configs/default.py`: stage 1 trains the
thinking for 24 steps, stage 2 the response for 12; 16 prompts x 8 rollouts a step), all
from one cold-start policy, over seeds (a seed is a training run: the unit of every
interval):

* ``default``: as configured.
* ``dynamic``: dynamic sampling, at most 2 further rounds a step (`sampling.dynamic_rounds`).
* ``truncate``: rows that spend the thinking budget stop there with reward 0
  (`sampling.think_budget_mode="truncate"`).
* ``think_target``: a thinking-length target of 4 tokens, coefficient 0.2
  (`shaping.think_target`, `shaping.think_target_coef`).

Measured per run: the training curves (task reward, thinking tokens, budget-hit rate,
dynamic-sampling counts), the step at which the 4-step running mean of the task reward
first reaches the level of the default runs' last 4 stage-1 steps (mean over seeds), the
rollouts sampled until then, and the final policy's reward on 128 held-out questions
under one protocol for all (the policy thinks and answers, `</think>` forced at the
budget of 16). Contrasts: each variant minus `default`, paired by seed, with the
hierarchical bootstrap over seeds and questions, Holm-corrected over all contrasts.

Predictions, written before the first run (2026-12-03):

* ``dynamic``: the first-round filtered fraction is under 0.3 in stage 1 (the judge's
  graded scores rarely tie across 8 rollouts) and higher in stage 2; the level is reached
  in no more steps than ``default`` (fewer or equal), at 10-40% more rollouts; the final
  reward is within +-0.03 of ``default`` (no clear difference at this number of seeds).
* ``truncate``: the budget-hit rate falls faster and ends lower than with ``force_end``,
  and the mean thinking length ends shorter; the final reward (forced protocol) is within
  +-0.05 of ``default``.
* ``think_target``: the mean thinking length ends closer to 4 than ``default``'s (at least
  2 tokens shorter), and the final reward is lower (the two-hop facts need their lookups).

Round 2, written after round 1's results and before its runs (2026-12-03). Round 1
showed that the default run's thinking is about 2 tokens (two lookups), so a budget of
16 never binds (``truncate`` ran bitwise as ``default``) and a target of 4 asks for
nothing the policy can add. Round 2 makes each bind:

* ``budget2_force_end`` and ``budget2_truncate``: a thinking budget of 2, where most
  rows spend their whole budget (compared with each other). Prediction: with
  ``truncate`` the budget-hit rate falls below 0.3 by the end of stage 1 while with
  ``force_end`` it stays above 0.6; the thinking ends shorter with ``truncate`` (under
  1.5 tokens against 1.8 or more) and its final reward (protocol above) is lower by at
  least 0.05.
* ``think_target1``: a target of 1 token, coefficient 0.5. Prediction: the thinking ends
  under 1.5 tokens (``default``: 2.0) and the final reward is lower by at least 0.05.

Round 3, written before its runs (2026-12-03): the off-policy corrections, which act only
where sampler and trainer disagree, so the sampler computes in bfloat16 for the float32
trainer in all three: ``bf16`` (no correction), ``bf16_tis`` (`algo.tis_cap=2`) and
``bf16_mask`` (token and sequence masking outside [0.5, 2]). Prediction: the mean
|log-probability mismatch| is between 1e-3 and 1e-1 in all three; masking drops under 2%
of the tokens and under 10% of the rows; the final rewards of ``bf16_tis`` and
``bf16_mask`` are within 0.03 of ``bf16``'s (no clear difference), and ``bf16``'s within
0.03 of ``default``'s.

Command (resumable: finished runs and evaluations are found and kept):
  python -m experiments.toolkit --out=/tmp/toolkit --seeds=0,1,2,3

Writes ``<out>/results.json`` (every run's curves and per-question final scores, the
contrasts, the provenance: commit, versions, command, wall time) and ``<out>/table.md``;
the runs' workdirs stay under ``<out>/runs``. The committed copies are in
``experiments/results/toolkit/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from experiments.ablation import provenance
from start_jax import checkpoints, rewards, sampling, sharding, train
from start_jax.eval import stats
from start_jax.eval.cross_generation import ModelPolicy
from start_jax.eval.evaluate import evaluate_policy
from start_jax.eval.questions import load_questions
from start_jax.tokenizer import load_tokenizer
from start_jax.train import data_io
from start_jax.train.config import default_config
from start_jax.train.init_policy import initial_policy
from start_jax.world import generator as world

BASE_SEED = 1000  # The cold start's own seed: no variant's seed.
VARIANTS = {
    "default": {},
    "dynamic": {"sampling.dynamic_rounds": 2},
    "truncate": {"sampling.think_budget_mode": "truncate", "sampling.truncated_reward": 0.0},
    "think_target": {"shaping.think_target": 4, "shaping.think_target_coef": 0.2},
    # Round 2.
    "budget2_force_end": {"sampling.think_budget": 2},
    "budget2_truncate": {
        "sampling.think_budget": 2,
        "sampling.think_budget_mode": "truncate",
        "sampling.truncated_reward": 0.0,
    },
    "think_target1": {"shaping.think_target": 1, "shaping.think_target_coef": 0.5},
    # Round 3.
    "bf16": {"sampling.dtype": "bfloat16"},
    "bf16_tis": {"sampling.dtype": "bfloat16", "algo.tis_cap": 2.0},
    "bf16_mask": {
        "sampling.dtype": "bfloat16",
        "algo.token_mask_low": 0.5,
        "algo.token_mask_high": 2.0,
        "algo.seq_mask_low": 0.5,
        "algo.seq_mask_high": 2.0,
    },
}
# Each variant's contrast: (variant, against).
BASELINES = {
    "dynamic": "default",
    "truncate": "default",
    "think_target": "default",
    "budget2_force_end": "default",
    "budget2_truncate": "budget2_force_end",
    "think_target1": "default",
    "bf16": "default",
    "bf16_tis": "bf16",
    "bf16_mask": "bf16",
}
CURVE_KEYS = (
    "reward_mean",
    "reward/task",
    "think_tokens",
    "response_tokens",
    "think_truncated",
    "dynamic/filtered_frac",
    "dynamic/rounds",
    "dynamic/extra_rollouts",
    "dynamic/uninformative_frac",
    "logprob_mismatch_mean",
    "token_masked_frac",
    "seq_masked_frac",
)
QUESTIONS = 128
WINDOW = 4  # Running-mean window of the steps-to-level criterion.
QUICK = False  # --quick: a check of the script itself (tiny budgets), not a measurement.


def _config(seed: int, out: str):
    c = default_config()
    c.seed = seed
    c.data.data_dir = os.path.join(out, "data")
    c.eval.every = 0
    c.eval.prompts = 8  # The trainer's own end-of-run check; the final table is `evaluate`.
    c.log.progress = False
    c.log.samples_every = 0
    c.checkpoint.every = 6
    if QUICK:
        c.sft.steps, c.data.prompts_per_step, c.algo.group_size = 20, 2, 4
        c.stages.s1.steps, c.stages.s2.steps = WINDOW + 1, 2
    return c


def base_policy(out: str) -> str:
    """The default run's cold start (4000 SFT steps, `BASE_SEED`), cached."""
    workdir = os.path.join(out, "base")
    c = _config(BASE_SEED, out)
    spec = train.RunSpec.from_config(c)
    train_data, _ = data_io.datasets(spec.data, workdir)
    tok = load_tokenizer(spec.tokenizer)
    initial_policy(spec, workdir, tok, sharding.make_mesh(spec.mesh), train_data)
    return os.path.join(workdir, "init_policy")


def variant_config(variant: str, seed: int, out: str, base: str):
    c = _config(seed, out)
    c.init_checkpoint = base
    c.tokenizer = "world"
    for key, value in VARIANTS[variant].items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def _curves(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [{k: r[k] for k in ("step", "stage") + CURVE_KEYS if k in r} for r in rows]


def run_one(variant: str, seed: int, out: str, base: str, questions) -> dict:
    """Trains (or finds) one run and evaluates its final policy (cached)."""
    workdir = os.path.join(out, "runs", variant, f"seed{seed}")
    path = os.path.join(workdir, "result.json")
    if os.path.isfile(path):
        with open(path) as fh:
            return json.load(fh)
    began = time.perf_counter()
    train.Trainer(variant_config(variant, seed, out, base), workdir).run()
    trained = time.perf_counter() - began
    config, params = checkpoints.load_pretrained(os.path.join(workdir, "export"))
    sc = sampling.SamplingConfig(temperature=1.0, think_budget=16, response_budget=8)
    policy = ModelPolicy(config, params, world.tokenizer(), sc)
    final = evaluate_policy(policy, rewards.make("synthetic"), {"facts": questions}, 7 + seed)
    result = {
        "variant": variant,
        "seed": seed,
        "curves": _curves(workdir),
        "scores": final["scores_facts"],
        "rates": final["rates_facts"],
        "train_seconds": trained,
        "seconds": time.perf_counter() - began,
    }
    with open(path, "w") as fh:
        json.dump(result, fh)
    return result


def _running(values, window: int = WINDOW) -> np.ndarray:
    v = np.asarray(values, np.float64)
    return np.convolve(v, np.ones(window) / window, mode="valid")


def steps_to_level(run: dict, level: float, rollouts_per_step: int) -> dict:
    """First step (1-based, at the window's end) whose running mean of the task reward
    reaches `level`, and the rollouts sampled until then (None when never)."""
    task = [r.get("reward/task", r["reward_mean"]) for r in run["curves"]]
    hits = np.flatnonzero(_running(task) >= level)
    if not hits.size:
        return {"step": None, "rollouts": None}
    step = int(hits[0]) + WINDOW
    extra = sum(r.get("dynamic/extra_rollouts", 0.0) for r in run["curves"][:step])
    return {"step": step, "rollouts": int(step * rollouts_per_step + extra)}


def analyse(runs: list[dict], stage1_steps: int, rollouts_per_step: int) -> dict:
    by = {}
    for r in runs:
        by.setdefault(r["variant"], {})[r["seed"]] = r
    seeds = sorted(by["default"])
    level = float(
        np.mean(
            [
                np.mean([c["reward_mean"] for c in by["default"][s]["curves"][:stage1_steps]][-4:])
                for s in seeds
            ]
        )
    )
    table, contrasts = {}, []
    for variant, per_seed in by.items():
        rows = [per_seed[s] for s in seeds if s in per_seed]
        last = [r["curves"][-4:] for r in rows]
        s1 = [r["curves"][stage1_steps - 4 : stage1_steps] for r in rows]
        table[variant] = {
            "seeds": len(rows),
            "final_reward": stats.hierarchical_bootstrap([r["scores"] for r in rows]),
            "think_tokens_end_s1": float(np.mean([[c["think_tokens"] for c in x] for x in s1])),
            "think_tokens_end": float(np.mean([[c["think_tokens"] for c in x] for x in last])),
            "think_tokens_start": float(
                np.mean([[c["think_tokens"] for c in r["curves"][:4]] for r in rows])
            ),
            "think_truncated_start": float(
                np.mean([[c["think_truncated"] for c in r["curves"][:4]] for r in rows])
            ),
            "think_truncated_end": float(
                np.mean([[c["think_truncated"] for c in x] for x in last])
            ),
            "think_truncated_end_s1": float(
                np.mean([[c["think_truncated"] for c in x] for x in s1])
            ),
            "task_reward_end_s1": float(
                np.mean([[c.get("reward/task", c["reward_mean"]) for c in x] for x in s1])
            ),
            "to_level": [steps_to_level(r, level, rollouts_per_step) for r in rows],
            "filtered_frac_s1": float(
                np.mean(
                    [
                        c.get("dynamic/filtered_frac", np.nan)
                        for r in rows
                        for c in r["curves"][:stage1_steps]
                    ]
                )
            ),
            "filtered_frac_s2": float(
                np.mean(
                    [
                        c.get("dynamic/filtered_frac", np.nan)
                        for r in rows
                        for c in r["curves"][stage1_steps:]
                    ]
                )
            ),
            "rollouts": int(
                sum(
                    len(r["curves"]) * rollouts_per_step
                    + sum(c.get("dynamic/extra_rollouts", 0.0) for c in r["curves"])
                    for r in rows
                )
                / max(len(rows), 1)
            ),
            "train_seconds": float(np.mean([r["train_seconds"] for r in rows])),
            **{
                f"{key}_mean": float(
                    np.mean([c.get(key, np.nan) for r in rows for c in r["curves"]])
                )
                for key in ("logprob_mismatch_mean", "token_masked_frac", "seq_masked_frac")
            },
        }
        against = BASELINES.get(variant)
        if against in by:
            paired = [s for s in seeds if s in per_seed and s in by[against]]
            diff = [
                np.asarray(per_seed[s]["scores"]) - np.asarray(by[against][s]["scores"])
                for s in paired
            ]
            contrasts.append({"a": variant, "b": against, "what": "final reward", **_boot(diff)})
    for c, p in zip(contrasts, stats.holm([c["p"] for c in contrasts])):
        c["p_holm"] = p
    return {"level": level, "table": table, "contrasts": contrasts}


def markdown(analysis: dict) -> str:
    """The analysis as two markdown tables: per variant, and the contrasts."""
    lines = [
        "| variant | seeds | final reward [95% CI] | thinking tokens, first 4 steps -> "
        "end of stage 1 -> end | budget-hit rate, first 4 steps -> end of stage 1 -> end "
        "| task reward, end of stage 1 | steps to level (per seed) | rollouts per run | "
        "filtered groups, stage 1 / 2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, t in analysis["table"].items():
        f = t["final_reward"]
        steps = ", ".join("-" if x["step"] is None else str(x["step"]) for x in t["to_level"])
        filtered = (
            f"{t['filtered_frac_s1']:.3f} / {t['filtered_frac_s2']:.3f}"
            if t["filtered_frac_s1"] == t["filtered_frac_s1"]
            else "-"
        )
        lines.append(
            f"| {variant} | {t['seeds']} | {f['mean']:.3f} [{f['low']:.3f}, {f['high']:.3f}] "
            f"| {t['think_tokens_start']:.2f} -> {t['think_tokens_end_s1']:.2f} -> "
            f"{t['think_tokens_end']:.2f} | {t['think_truncated_start']:.2f} -> "
            f"{t['think_truncated_end_s1']:.2f} -> {t['think_truncated_end']:.2f} "
            f"| {t['task_reward_end_s1']:.3f} | {steps} | {t['rollouts']} | {filtered} |"
        )
    lines += [
        "",
        "| contrast (final reward) | difference [95% CI] | p | p (Holm) |",
        "|---|---|---|---|",
    ]
    for c in analysis["contrasts"]:
        lines.append(
            f"| {c['a']} - {c['b']} | {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] "
            f"| {c['p']:.3f} | {c['p_holm']:.3f} |"
        )
    return "\n".join(lines)


def _boot(diff) -> dict:
    return stats.hierarchical_bootstrap(diff, samples=2000)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/toolkit")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the script")
    args = parser.parse_args(argv)
    global QUICK, QUESTIONS
    QUICK = args.quick
    QUESTIONS = 8 if QUICK else QUESTIONS
    began = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    base = base_policy(args.out)
    questions = load_questions("synthetic:facts", os.path.join(args.out, "data"), QUESTIONS)
    runs = []
    for seed in seeds:  # Seed by seed, every variant: a stopped run leaves whole seeds.
        for variant in variants:
            runs.append(run_one(variant, seed, args.out, base, questions))
            print(
                f"{variant} seed {seed}: final reward {np.mean(runs[-1]['scores']):.3f} "
                f"({runs[-1]['seconds']:.0f} s)",
                flush=True,
            )
    c = _config(0, args.out)
    s1 = c.stages.s1.steps
    results = {
        "analysis": analyse(runs, s1, c.data.prompts_per_step * c.algo.group_size),
        "runs": runs,
        "provenance": {**provenance(), "argv": sys.argv},
        "wall_seconds": time.perf_counter() - began,
    }
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    table = markdown(results["analysis"])
    with open(os.path.join(args.out, "table.md"), "w") as fh:
        fh.write(table + "\n")
    level = results["analysis"]["level"]
    print(f"level (default's task reward, last 4 stage-1 steps): {level:.3f}")
    print(table)


if __name__ == "__main__":
    main()
