"""The START ablation on the embedded world: variants x algorithms x seeds, then Cross-Generation.

Used by `experiments/ablation.ipynb`; also runnable directly:

    python experiments/ablation.py --out=runs/ablation            # full: 3 seeds
    python experiments/ablation.py --out=/tmp/ab --scale=reduced  # a 2-minute smoke version

For each seed, a cold-start SFT policy (the *base*) is trained once; every
variant starts from it:

| variant        | data             | stages                                         |
|----------------|------------------|------------------------------------------------|
| `base`         | -                | none (SFT only)                                |
| `rlvr`         | arith (verifiable) | joint                                        |
| `joint`        | facts (GQA)      | joint                                          |
| `start_self`   | facts (GQA)      | think (policy responds), then response         |
| `start_frozen` | facts (GQA)      | think (frozen base responds), then response    |

each with GRPO and with PPO (critic + GAE over the mask's action tokens).
Answerers of three capability levels (1x, 4x, 16x SFT steps) then answer from
every thinker's thinking on held-out arith and facts questions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from start_jax import models, rewards, sampling, sharding, train  # noqa: E402
from start_jax.data import pipeline, world  # noqa: E402
from start_jax.eval import cross_generation as cg  # noqa: E402
from start_jax.tokenizer import CharTokenizer  # noqa: E402
from start_jax.train import data_io, sft  # noqa: E402
from start_jax.train.config import default_config, stage  # noqa: E402

VARIANTS = ("base", "rlvr", "joint", "start_self", "start_frozen")
ALGOS = ("grpo", "ppo")


@dataclasses.dataclass(frozen=True)
class Scale:
    """Budgets of one ablation size."""

    seeds: tuple[int, ...] = (0, 1, 2)
    algos: tuple[str, ...] = ALGOS
    variants: tuple[str, ...] = VARIANTS
    sft_steps: int = 800          # Base policy SFT steps.
    answerer_steps: tuple[int, ...] = (150, 600, 2400)   # 1x, 4x, 16x.
    rl_steps: int = 30            # RL steps of every variant (START: 2/3 think, 1/3 response).
    prompts_per_step: int = 8
    group_size: int = 4
    questions: int = 64           # Cross-Generation questions per family.
    eval_prompts: int = 64


FULL = Scale()
REDUCED = Scale(seeds=(0,), algos=("grpo",), variants=("base", "joint", "start_frozen"),
                sft_steps=60, answerer_steps=(10, 20, 40), rl_steps=3, prompts_per_step=2,
                group_size=2, questions=8, eval_prompts=8)


def run_config(scale: Scale, seed: int) -> "ml_collections.ConfigDict":  # noqa: F821
    c = default_config()
    c.seed = seed
    c.sft.steps = scale.sft_steps
    c.data.prompts_per_step = scale.prompts_per_step
    c.algo.group_size = scale.group_size
    c.eval.prompts = scale.eval_prompts
    c.eval.every = 0
    c.checkpoint.every = 1000
    c.checkpoint.export_hf = True
    c.log.progress = False
    c.log.samples_every = 0
    return c


def variant_config(variant: str, algo: str, seed: int, base_dir: str, scale: Scale):
    c = run_config(scale, seed)
    c.init_checkpoint = base_dir
    c.data.name = "arith" if variant == "rlvr" else "facts"
    c.reward.name = "synthetic"
    if algo == "ppo":
        c.algo.advantage = "gae"
        c.algo.lam = 0.95
    n1 = max(1, (2 * scale.rl_steps) // 3)
    lr = 3e-4
    if variant in ("rlvr", "joint"):
        c.schedule = variant
        c.stages = {"s1": stage("joint", "self", scale.rl_steps, lr)}
    else:
        c.schedule = variant
        responder = "frozen" if variant == "start_frozen" else "self"
        c.stages = {"s1": stage("think", responder, n1, lr),
                    "s2": stage("response", "self", scale.rl_steps - n1, lr)}
    return c


def train_base(out: str, scale: Scale, seed: int) -> str:
    """Cold-start SFT policy of one seed, as a HF directory (cached)."""
    workdir = os.path.join(out, f"seed{seed}", "base")
    c = run_config(scale, seed)
    tok = CharTokenizer()
    mesh = sharding.make_mesh()
    train_data, _ = data_io.datasets(c, workdir)
    data_io.initial_policy(c, workdir, tok, mesh, train_data)
    return os.path.join(workdir, "init_policy")


def train_answerers(out: str, scale: Scale, tok) -> dict[str, tuple]:
    """Answerers of three capability levels: the same model after 1x / 4x / 16x SFT steps."""
    c = run_config(scale, 100)
    workdir = os.path.join(out, "answerers")
    train_data, _ = data_io.datasets(c, workdir)
    examples = [train_data[i] for i in range(min(len(train_data), 4000))]
    config = models.ModelConfig(vocab_size=tok.vocab_size, qk_norm=True,
                                **{k: v for k, v in c.model.to_dict().items() if k != "remat"})
    out_models = {}
    for i, steps in enumerate(scale.answerer_steps):
        name = f"A{4 ** i}x"
        path = os.path.join(workdir, name)
        if not os.path.isfile(os.path.join(path, "config.json")):
            params = models.init_params(config, jax.random.key(100))
            params, _ = sft.train_sft(config, params, tok, examples, steps, c.sft.batch_size,
                                      c.sft.learning_rate, seed=100, progress=False,
                                      response_fn=lambda e: world.golden_response(
                                          world.Example.from_row(e)))
            models.save_pretrained(config, params, path)
        out_models[name] = models.load_pretrained(path)
    return out_models


def questions(out: str, family: str, n: int) -> list[dict]:
    source = pipeline.TaskSource(pipeline.load_synthetic(family, os.path.join(out, "data"), "test"))
    return [source[i] for i in range(min(n, len(source)))]


def run(out: str, scale: Scale = FULL, log=print) -> dict:
    """Trains every variant and runs Cross-Generation; returns (and saves) the results."""
    os.makedirs(out, exist_ok=True)
    began = time.perf_counter()
    tok = CharTokenizer()
    sc = sampling.SamplingConfig(temperature=1.0, think_budget=48, response_budget=16)
    judge = rewards.make("synthetic")
    answerers = {n: cg.ModelAnswerer(cfg, p, tok, sc)
                 for n, (cfg, p) in train_answerers(out, scale, tok).items()}
    log(f"answerers ready ({time.perf_counter() - began:.0f} s)")
    qs = {f: questions(out, f, scale.questions) for f in ("arith", "facts")}
    records = []
    for seed in scale.seeds:
        base_dir = train_base(out, scale, seed)
        thinkers = {}
        runs = ([("base", None)] if "base" in scale.variants else []) + [
            (v, a) for a in scale.algos for v in scale.variants if v != "base"]
        for variant, algo in runs:
            if variant == "base":
                name, cfg_params = "base", models.load_pretrained(base_dir)
            else:
                name = f"{variant}/{algo}"
                workdir = os.path.join(out, f"seed{seed}", variant, algo)
                trainer = train.Trainer(variant_config(variant, algo, seed, base_dir, scale),
                                        workdir)
                summary = trainer.run()
                cfg_params = (trainer.model_config, summary["params"])
            final = _eval_policy(cfg_params, tok, sc, judge, qs, seed)
            thinkers[name] = cg.ModelThinker(*cfg_params, tok, sc)
            records.append({"seed": seed, "thinker": name, **final})
            log(f"seed {seed} {name}: facts {final['final_facts']:.3f} "
                f"arith {final['final_arith']:.3f} ({time.perf_counter() - began:.0f} s)")
        for family, q in qs.items():
            result = cg.run(thinkers, answerers, q, judge, seeds=(seed,), bootstrap_samples=500)
            for src in result.sources:
                i = result.sources.index(src)
                for j, a in enumerate(result.answerers):
                    records.append({"seed": seed, "thinker": src, "family": family, "answerer": a,
                                    "score": float(result.matrix[i, j]),
                                    "gain": float((result.scores[i, j]
                                                   - result.scores[result.sources.index(cg.EMPTY), j]).mean())})
    results = {"scale": dataclasses.asdict(scale), "records": records,
               "levels": world.reward_levels(200, 0),
               "seconds": time.perf_counter() - began}
    results["summary"] = summarize(results)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    return results


def _eval_policy(cfg_params, tok, sc, judge, qs, seed) -> dict:
    """Final-answer reward: the policy thinks and answers itself (one sample per question)."""
    config, params = cfg_params
    answerer = cg.ModelAnswerer(config, params, tok, sc)
    out = {}
    for family, q in qs.items():
        responses = answerer.answer([x["prompt"] for x in q], None, 7 + seed)
        scores = judge([rewards.RewardInput(x["prompt"], r, (), (), x["reference"], False,
                                            x["metadata"]) for x, r in zip(q, responses)])
        out[f"final_{family}"] = float(np.mean(scores))
    return out


def _ci(values, samples=2000, seed=0):
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float(values.mean()), float(values.mean()), float(values.mean())
    rs = np.random.RandomState(seed)
    means = values[rs.randint(0, len(values), (samples, len(values)))].mean(1)
    return float(values.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summarize(results: dict) -> list[dict]:
    """Per thinker: final rewards and thinking efficacy per family, mean and 95% CI over seeds."""
    recs = results["records"]
    thinkers = sorted({r["thinker"] for r in recs if "family" in r})
    rows = []
    for t in thinkers:
        row = {"thinker": t}
        finals = [r for r in recs if r["thinker"] == t and "final_facts" in r]
        for key in ("final_facts", "final_arith"):
            if finals:
                row[key] = _ci([r[key] for r in finals])
        for family in ("arith", "facts"):
            per_seed = {}
            for r in recs:
                if r.get("family") == family and r["thinker"] == t:
                    per_seed.setdefault(r["seed"], []).append(r["gain"])
            row[f"efficacy_{family}"] = _ci([np.mean(v) for v in per_seed.values()])
        rows.append(row)
    return rows


def table(results: dict) -> str:
    head = (f"{'thinker':<20} {'final facts':>20} {'final arith':>20} "
            f"{'efficacy facts':>22} {'efficacy arith':>22}")
    lines = [head, "-" * len(head)]
    fmt = lambda v: "-" if v is None else f"{v[0]:.3f} [{v[1]:.3f},{v[2]:.3f}]"  # noqa: E731
    for row in results["summary"]:
        lines.append(f"{row['thinker']:<20} {fmt(row.get('final_facts')):>20} "
                     f"{fmt(row.get('final_arith')):>20} {fmt(row.get('efficacy_facts')):>22} "
                     f"{fmt(row.get('efficacy_arith')):>22}")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    """Bar charts: final-answer reward (facts) and thinking efficacy (facts, arith), 95% CIs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results["summary"] if r["thinker"] not in (cg.EMPTY,)]
    names = [r["thinker"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=False)
    for ax, key, title in zip(axes, ("final_facts", "efficacy_facts", "efficacy_arith"),
                              ("final-answer reward (GQA facts)", "thinking efficacy (GQA facts)",
                               "thinking efficacy (verifiable arith)")):
        vals = [r.get(key) or (np.nan, np.nan, np.nan) for r in rows]
        mean = np.array([v[0] for v in vals])
        err = np.array([[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]])
        ax.bar(range(len(names)), mean, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def matrix(results: dict, family: str):
    """Seed-averaged Cross-Generation matrix: (sources, answerers, [S, A] scores)."""
    recs = [r for r in results["records"] if r.get("family") == family]
    sources = sorted({r["thinker"] for r in recs}, key=lambda s: (s in (cg.EMPTY, cg.SELF), s))
    answerers = sorted({r["answerer"] for r in recs}, key=lambda a: int(a[1:-1]))
    m = np.zeros((len(sources), len(answerers)))
    for i, s in enumerate(sources):
        for j, a in enumerate(answerers):
            m[i, j] = np.mean([r["score"] for r in recs if r["thinker"] == s and r["answerer"] == a])
    return sources, answerers, m


def plot_matrices(results: dict, path: str) -> None:
    """Heat maps of the Cross-Generation matrices, facts and arith side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, family in zip(axes, ("facts", "arith")):
        sources, answerers, m = matrix(results, family)
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(answerers)), answerers)
        ax.set_yticks(range(len(sources)), sources, fontsize=8)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] < 0.6 else "black")
        ax.set_title(f"Cross-Generation score ({family})")
        ax.set_xlabel("answerer (SFT budget)")
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--scale", choices=("full", "reduced"), default="full")
    args = parser.parse_args()
    res = run(args.out, FULL if args.scale == "full" else REDUCED)
    print(table(res))
    plot(res, os.path.join(args.out, "ablation.png"))
    plot_matrices(res, os.path.join(args.out, "cross_generation.png"))
    print(f"results: {args.out}/results.json, plot: {args.out}/ablation.png, "
          f"{res['seconds'] / 60:.1f} min")
