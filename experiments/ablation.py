"""The START ablation on the embedded world: variants x algorithms x seeds, then Cross-Generation.

Used by `experiments/ablation.ipynb`; also runnable from the repository root:

    python -m experiments.ablation --out=runs/ablation            # full: 3 seeds
    python -m experiments.ablation --out=/tmp/ab --scale=reduced  # a 2-minute smoke version

For each seed, a cold-start SFT policy (the *base*, trained on the behaviour
mixture of `start_jax.data.behaviours`) is trained once; every variant starts
from it:

| variant        | data               | stages                                        |
|----------------|--------------------|-----------------------------------------------|
| `base`         | -                  | none (SFT only)                               |
| `rlvr`         | arith (verifiable) | joint                                         |
| `joint`        | facts (GQA)        | joint                                         |
| `start_self`   | facts (GQA)        | think (policy responds), then response        |
| `start_frozen` | facts (GQA)        | think (frozen base responds), then response   |

each with GRPO and with PPO (critic + GAE over the mask's action tokens).
Answerers of three capability levels (snapshots of one SFT run after 1x, 4x
and 16x steps) then answer from every thinker's thinking on held-out arith and
facts questions. Every run logs its reward and behaviour rates per step; the
curves, the final bars and the Cross-Generation matrices are plotted from them.

The evaluation pieces are the library's (`start_jax.eval`): questions,
`evaluate_policy`, `ModelPolicy`, Cross-Generation, the bootstrap and Wilson
intervals of `start_jax.eval.stats` and the heat maps of `start_jax.eval.plots`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np

from start_jax import checkpoints, models, rewards, sampling, sharding, train
from start_jax.data import world
from start_jax.eval import cross_generation as cg
from start_jax.eval import plots, stats
from start_jax.eval.evaluate import evaluate_policy
from start_jax.eval.questions import load_questions
from start_jax.rewards import synthetic
from start_jax.train import data_io, sft
from start_jax.train.init_policy import initial_policy, model_config_of, sft_traces
from start_jax.train.config import default_config, stage

VARIANTS = ("base", "rlvr", "joint", "start_self", "start_frozen")
ALGOS = ("grpo", "ppo")
FAMILY_OF = {"rlvr": "arith", "joint": "facts", "start_self": "facts", "start_frozen": "facts"}
# Per-step metrics kept from each run's metrics.jsonl (the learning curves).
CURVE_KEYS = ("reward_mean", "behaviour/facts/think_complete", "behaviour/facts/think_empty",
              "behaviour/facts/response_correct", "behaviour/facts/response_salient",
              "behaviour/facts/styled", "behaviour/arith/think_complete",
              "behaviour/arith/response_correct", "behaviour/arith/steps_correct")


@dataclasses.dataclass(frozen=True)
class Scale:
    """Budgets of one ablation size."""

    seeds: tuple[int, ...] = (0, 1, 2)
    algos: tuple[str, ...] = ALGOS
    variants: tuple[str, ...] = VARIANTS
    sft_steps: int = 4000         # Base policy SFT steps (the trainer's default).
    answerer_steps: tuple[int, ...] = (250, 1000, 4000)   # 1x, 4x, 16x: one run's snapshots.
    rl_steps: int = 80            # RL steps of every variant (START: 2/3 think, 1/3 response).
    prompts_per_step: int = 16
    group_size: int = 8
    learning_rate: float = 1e-3
    questions: int = 64           # Cross-Generation and final-reward questions per family.


FULL = Scale()
REDUCED = Scale(seeds=(0,), algos=("grpo",), variants=("base", "joint", "start_frozen"),
                sft_steps=60, answerer_steps=(10, 20, 40), rl_steps=3, prompts_per_step=2,
                group_size=2, questions=8)


def run_config(scale: Scale, seed: int):
    c = default_config()
    c.seed = seed
    c.data.name = "mixed"         # Bases and answerers learn both families.
    c.sft.steps = scale.sft_steps
    c.data.prompts_per_step = scale.prompts_per_step
    c.algo.group_size = scale.group_size
    c.eval.every = 0
    c.checkpoint.every = 1000
    c.checkpoint.export_hf = False
    c.log.progress = False
    c.log.samples_every = 0
    return c


def variant_config(variant: str, algo: str, seed: int, base_dir: str, data_dir: str,
                   scale: Scale):
    c = run_config(scale, seed)
    c.init_checkpoint = base_dir
    c.data.name = FAMILY_OF[variant]
    c.data.data_dir = data_dir
    c.reward.name = "synthetic"
    c.schedule = variant
    if algo == "ppo":
        c.algo.advantage = "gae"
    lr, n = scale.learning_rate, scale.rl_steps
    if variant in ("rlvr", "joint"):
        c.stages = {"s1": stage("joint", "self", n, lr)}
    else:
        n1 = max(1, (2 * n) // 3)
        responder = "frozen" if variant == "start_frozen" else "self"
        c.stages = {"s1": stage("think", responder, n1, lr),
                    "s2": stage("response", "self", n - n1, lr)}
    return c


def train_base(out: str, scale: Scale, seed: int) -> str:
    """Cold-start SFT policy of one seed, as a HF directory (cached)."""
    workdir = os.path.join(out, f"seed{seed}", "base")
    c = run_config(scale, seed)
    c.data.data_dir = os.path.join(out, "data")
    spec = train.RunSpec.from_config(c)
    train_data, _ = data_io.datasets(spec.data, workdir)
    initial_policy(spec, workdir, world.load_tokenizer(spec.tokenizer),
                   sharding.make_mesh(spec.mesh), train_data)
    return os.path.join(workdir, "init_policy")


def train_answerers(out: str, scale: Scale) -> dict[str, tuple]:
    """Answerers of three capability levels: one SFT run, kept after 1x / 4x / 16x steps."""
    c = run_config(scale, 100)
    c.data.data_dir = os.path.join(out, "data")
    workdir = os.path.join(out, "answerers")
    names = {steps: f"A{round(steps / scale.answerer_steps[0])}x" for steps in scale.answerer_steps}
    paths = {steps: os.path.join(workdir, name) for steps, name in names.items()}
    if not all(os.path.isfile(os.path.join(p, "config.json")) for p in paths.values()):
        spec = train.RunSpec.from_config(c)
        tok = world.load_tokenizer(spec.tokenizer)
        train_data, _ = data_io.datasets(spec.data, workdir)
        examples = [train_data[i] for i in range(min(len(train_data), c.sft.examples))]
        config = model_config_of(spec, tok)
        params = models.init_params(config, jax.random.key(100))
        _, _, snaps = sft.train_sft(config, params, tok, sft_traces(spec, examples),
                                    max(scale.answerer_steps), c.sft.batch_size,
                                    c.sft.learning_rate, seed=100, progress=False,
                                    snapshots=scale.answerer_steps)
        for steps, path in paths.items():
            checkpoints.save_pretrained(config, snaps[steps], path)
    return {names[s]: checkpoints.load_pretrained(paths[s]) for s in scale.answerer_steps}


def _curves(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [{k: r[k] for k in ("step",) + CURVE_KEYS if k in r} for r in rows]


def run(out: str, scale: Scale = FULL, log=print) -> dict:
    """Trains every variant and runs Cross-Generation; returns (and saves) the results."""
    os.makedirs(out, exist_ok=True)
    began = time.perf_counter()
    tok = world.tokenizer()
    c = default_config()
    sc = sampling.SamplingConfig(temperature=1.0, think_budget=c.sampling.think_budget,
                                 response_budget=c.sampling.response_budget)
    judge = rewards.make("synthetic")
    answerers = {n: cg.ModelPolicy(cfg, p, tok, sc)
                 for n, (cfg, p) in train_answerers(out, scale).items()}
    log(f"answerers ready ({time.perf_counter() - began:.0f} s)")
    qs = {f: load_questions(f"synthetic:{f}", os.path.join(out, "data"), scale.questions)
          for f in ("arith", "facts")}
    records, curves, cg_results = [], [], []
    for seed in scale.seeds:
        base_dir = train_base(out, scale, seed)
        log(f"seed {seed}: base ready ({time.perf_counter() - began:.0f} s)")
        thinkers = {}
        runs = ([("base", None)] if "base" in scale.variants else []) + [
            (v, a) for a in scale.algos for v in scale.variants if v != "base"]
        for variant, algo in runs:
            if variant == "base":
                name, cfg_params = "base", checkpoints.load_pretrained(base_dir)
            else:
                name = f"{variant}/{algo}"
                workdir = os.path.join(out, f"seed{seed}", variant, algo)
                trainer = train.Trainer(variant_config(variant, algo, seed, base_dir,
                                                       os.path.join(out, "data"), scale), workdir)
                summary = trainer.run()
                cfg_params = (trainer.model_config, summary["params"])
                curves.append({"seed": seed, "thinker": name, "rows": _curves(workdir)})
            thinkers[name] = cg.ModelPolicy(*cfg_params, tok, sc)
            final = evaluate_policy(thinkers[name], judge, qs, 7 + seed)
            records.append({"seed": seed, "thinker": name, **final})
            log(f"seed {seed} {name}: facts {np.mean(final['scores_facts']):.3f} "
                f"arith {np.mean(final['scores_arith']):.3f} "
                f"({time.perf_counter() - began:.0f} s)")
        for family, q in qs.items():
            result = cg.run(thinkers, answerers, q, judge, seeds=(seed,), bootstrap_samples=200,
                            classify=cg.classify_synthetic)
            cg_results.append({"seed": seed, "family": family, "sources": result.sources,
                               "answerers": result.answerers,
                               "scores": result.scores[:, :, 0].round(4).tolist(),
                               "thinking_classes": result.thinking_classes})
        log(f"seed {seed}: Cross-Generation done ({time.perf_counter() - began:.0f} s)")
    results = {"scale": dataclasses.asdict(scale), "records": records, "curves": curves,
               "cross_generation": cg_results, "levels": synthetic.reward_levels(200, 0),
               "seconds": time.perf_counter() - began}
    results["summary"] = summarize(results)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(results, fh)
    return results


def summarize(results: dict) -> list[dict]:
    """Per thinker: final reward, efficacy and behaviour rates with 95% intervals.

    Final reward and efficacy are bootstrapped over (seed, question) pairs;
    behaviour rates are pooled over seeds and questions, with a Wilson interval.
    """
    n = results["scale"]["questions"]
    recs = results["records"]
    cgs = results["cross_generation"]
    thinkers = sorted({s for r in cgs for s in r["sources"]},
                      key=lambda s: (s in (cg.EMPTY, cg.SELF), s))
    rows = []
    for t in thinkers:
        row = {"thinker": t}
        finals = [r for r in recs if r["thinker"] == t]
        for fam in ("facts", "arith"):
            if finals:
                final_scores = [r[f"scores_{fam}"] for r in finals]      # [seeds, questions]
                row[f"final_{fam}"] = stats.bootstrap_interval(final_scores)
                for key in ("think_complete", "response_salient", "styled"):
                    vals = [r[f"rates_{fam}"].get(f"{fam}/{key}") for r in finals]
                    if all(v is not None for v in vals):
                        row[f"{key}_{fam}"] = stats.pooled_proportion(vals, len(final_scores[0]))
            gains, complete = [], []
            for r in cgs:
                if r["family"] != fam or t not in r["sources"]:
                    continue
                scores = np.asarray(r["scores"])              # [sources, answerers, questions]
                gains.append(scores[r["sources"].index(t)] - scores[r["sources"].index(cg.EMPTY)])
                if t in r["thinking_classes"]:
                    complete.append(r["thinking_classes"][t].get("complete", 0.0))
            if gains:
                e = stats.bootstrap_efficacy(np.stack(gains, axis=1))   # [answerers, seeds, q]
                row[f"efficacy_{fam}"] = [e["mean"], e["low"], e["high"]]
            if complete:
                row[f"cg_complete_{fam}"] = stats.pooled_proportion(complete, n)
        rows.append(row)
    return rows


def _per_pair(results: dict, thinker: str, what: str, family: str) -> np.ndarray | None:
    """[seeds, questions] values of one thinker: final scores, or efficacy gains."""
    if what == "final":
        rows = sorted((r for r in results["records"] if r["thinker"] == thinker),
                      key=lambda r: r["seed"])
        return np.asarray([r[f"scores_{family}"] for r in rows]) if rows else None
    out = []
    for r in sorted((r for r in results["cross_generation"] if r["family"] == family),
                    key=lambda r: r["seed"]):
        if thinker not in r["sources"]:
            return None
        scores = np.asarray(r["scores"])                      # [sources, answerers, questions]
        gain = scores[r["sources"].index(thinker)] - scores[r["sources"].index(cg.EMPTY)]
        out.append(gain.mean(0))                              # Mean over answerers.
    return np.asarray(out) if out else None


def contrast(results: dict, a: str, b: str, what: str, family: str) -> list[float] | None:
    """Paired difference a - b (final reward or efficacy) with a bootstrap 95% interval.

    Pairs are (seed, question): both thinkers answered the same questions with
    the same answerers, so the difference is taken per pair before resampling.
    """
    x, y = _per_pair(results, a, what, family), _per_pair(results, b, what, family)
    if x is None or y is None:
        return None
    return stats.bootstrap_interval(x - y)


CONTRASTS = (
    # (claim, a, b, what, family)
    ("1: RLVR improves thinking on the verifiable family", "rlvr/{algo}", "base", "efficacy", "arith"),
    ("1: ... and transfers it to GQA", "rlvr/{algo}", "base", "efficacy", "facts"),
    ("2: joint RL on GQA raises the GQA reward", "joint/{algo}", "base", "final", "facts"),
    ("2: ... and the GQA thinking", "joint/{algo}", "base", "efficacy", "facts"),
    ("3: START (self) vs joint, thinking", "start_self/{algo}", "joint/{algo}", "efficacy", "facts"),
    ("3: START (frozen) vs joint, thinking", "start_frozen/{algo}", "joint/{algo}", "efficacy", "facts"),
    ("3: START (self) vs joint, final answer", "start_self/{algo}", "joint/{algo}", "final", "facts"),
    ("3: START (frozen) vs joint, final answer", "start_frozen/{algo}", "joint/{algo}", "final", "facts"),
)


def contrasts(results: dict) -> list[dict]:
    """The paired differences behind the claims, per algorithm."""
    out = []
    for claim, a, b, what, family in CONTRASTS:
        for algo in results["scale"]["algos"]:
            value = contrast(results, a.format(algo=algo), b.format(algo=algo), what, family)
            if value is not None:
                out.append({"claim": claim, "a": a.format(algo=algo), "b": b.format(algo=algo),
                            "what": what, "family": family, "diff": value})
    return out


def contrast_table(results: dict) -> str:
    lines = []
    for c in contrasts(results):
        d = c["diff"]
        verdict = "a > b" if d[1] > 0 else "a < b" if d[2] < 0 else "no clear difference"
        lines.append(f"{c['claim']:<45} {c['a']:>18} - {c['b']:<12} {c['what']:>8} "
                     f"{c['family']:<5} {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]  {verdict}")
    return "\n".join(lines)


COLUMNS = (("final_facts", "final facts"), ("efficacy_facts", "efficacy facts"),
           ("cg_complete_facts", "complete facts"), ("styled_facts", "styled facts"),
           ("response_salient_facts", "salient facts"), ("final_arith", "final arith"),
           ("efficacy_arith", "efficacy arith"), ("cg_complete_arith", "complete arith"))


def table(results: dict, markdown: bool = False) -> str:
    """The summary as text (or a markdown table): mean [low, high] per column."""
    fmt = lambda v: "-" if v is None else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
    head = ["thinker"] + [label for _, label in COLUMNS]
    body = [[row["thinker"]] + [fmt(row.get(key)) for key, _ in COLUMNS]
            for row in results["summary"]]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    line = lambda r: "  ".join(f"{x:<{w}}" for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(head), "-" * len(line(head))] + [line(r) for r in body])


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(y) < k:
        return y
    pad = np.concatenate([np.full(k // 2, y[0]), y, np.full(k - 1 - k // 2, y[-1])])
    return np.convolve(pad, np.ones(k) / k, mode="valid")


CURVE_PANELS = (("reward_mean", "train reward"),
                ("behaviour/facts/think_complete", "facts: complete thinking"),
                ("behaviour/facts/styled", "facts: styled response"),
                ("behaviour/facts/response_salient", "facts: salient (shortcut) answer"),
                ("behaviour/facts/response_correct", "facts: correct answer"),
                ("behaviour/arith/think_complete", "arith: complete thinking (RLVR)"))


def plot_curves(results: dict, path: str, smooth: int = 5) -> None:
    """Reward and behaviour rates against RL step, per variant: mean over seeds, band = +-1 sd."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = sorted({c["thinker"] for c in results["curves"]})
    colours = dict(zip(names, plt.cm.tab10(np.linspace(0, 1, 10))))
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    for ax, (key, title) in zip(axes.ravel(), CURVE_PANELS):
        for name in names:
            runs = [c["rows"] for c in results["curves"] if c["thinker"] == name]
            if not all(runs) or not all(key in r for run in runs for r in run):
                continue
            n = min(len(run) for run in runs)
            y = np.array([_smooth(np.array([r[key] for r in run[:n]]), smooth) for run in runs])
            steps = np.array([r["step"] for r in runs[0][:n]])
            mean, sd = y.mean(0), y.std(0)
            style = "--" if name.endswith("/ppo") else "-"
            ax.plot(steps, mean, style, color=colours[name], label=name, lw=1.6)
            ax.fill_between(steps, mean - sd, mean + sd, color=colours[name], alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Learning curves (mean over seeds, band +-1 sd, {smooth}-step moving average)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot(results: dict, path: str) -> None:
    """Bar charts with 95% intervals: final reward, efficacy and complete thinking per family."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results["summary"] if r["thinker"] != cg.EMPTY]
    names = [r["thinker"] for r in rows]
    panels = (("final_facts", "final reward (GQA facts)"),
              ("efficacy_facts", "thinking efficacy (GQA facts)"),
              ("cg_complete_facts", "complete thinking (facts, truth)"),
              ("final_arith", "final reward (verifiable arith)"),
              ("efficacy_arith", "thinking efficacy (verifiable arith)"),
              ("cg_complete_arith", "complete thinking (arith, truth)"))
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    for ax, (key, title) in zip(axes.ravel(), panels):
        vals = [r.get(key) or (np.nan, np.nan, np.nan) for r in rows]
        mean = np.array([v[0] for v in vals])
        err = np.array([[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]])
        ax.bar(range(len(names)), mean, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def matrix(results: dict, family: str):
    """Seed-averaged Cross-Generation matrix: (sources, answerers, [S, A] scores)."""
    recs = [r for r in results["cross_generation"] if r["family"] == family]
    sources = recs[0]["sources"]
    answerers = recs[0]["answerers"]
    m = np.mean([np.asarray(r["scores"]).mean(-1) for r in recs], axis=0)
    return sources, answerers, m


def plot_matrices(results: dict, path: str) -> None:
    """Heat maps of the seed-averaged Cross-Generation matrices, facts and arith side by side."""
    plots.heatmaps(path, [(f"Cross-Generation score ({family})", *matrix(results, family))
                          for family in ("facts", "arith")],
                   xlabel="answerer (SFT budget)", ylabel=None, fontsize=7, dpi=100)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--scale", choices=("full", "reduced"), default="full")
    parser.add_argument("--reuse", action="store_true",
                        help="re-summarise and re-plot an existing <out>/results.json")
    args = parser.parse_args()
    if args.reuse:
        with open(os.path.join(args.out, "results.json")) as fh:
            res = json.load(fh)
        res["summary"] = summarize(res)
        with open(os.path.join(args.out, "results.json"), "w") as fh:
            json.dump(res, fh)
    else:
        res = run(args.out, FULL if args.scale == "full" else REDUCED)
    print(table(res))
    print(contrast_table(res))
    plot_curves(res, os.path.join(args.out, "curves.png"))
    plot(res, os.path.join(args.out, "ablation.png"))
    plot_matrices(res, os.path.join(args.out, "cross_generation.png"))
    print(f"results: {args.out}/results.json, plots: {args.out}/curves.png, ablation.png, "
          f"cross_generation.png; {res['seconds'] / 60:.1f} min")
