"""The START ablation on the embedded world: settings x variants x algorithms x seeds.

Used by `experiments/ablation.ipynb`; also runnable from the repository root:

    python -m experiments.ablation --setting=standard --out=runs/ablation/standard
    python -m experiments.ablation --setting=compete --out=runs/ablation/compete
    python -m experiments.ablation --out=/tmp/ab --scale=reduced   # a small smoke version
    python -m experiments.ablation --out=runs/ablation/standard --reuse  # re-summarise

Settings (`SETTINGS`): the world's judge and cold-start prior.

* ``standard``: the rubric judge's defaults (correct 0.8, styled +0.2, salient wrong
  +0.25) and the default behaviour mixture (complete 0.5, sloppy 0.25, guess 0.25,
  styled 0.25).
* ``compete``: a shortcut that competes with thinking. The judge is fooled by a
  confident tone (``w_fooled=0.45``: a styled wrong answer earns 0.45, 0.7 when it names
  the salient thing; any correct answer 0.8, styled or not), so once a policy answers in
  the styled form, being right is worth only 0.1-0.35 more than guessing; the prior is
  the default one (complete thinking is sampled, so RL can find it).
* ``compete_sparse``: the same judge with a prior that thinks less (complete 0.25,
  sloppy 0.35, guess 0.4). Its base writes complete thinking for about 2% of questions,
  too rarely for any method to find it: kept to reproduce that finding.

For each setting one cold-start SFT policy (the *base*, seed `BASE_SEED`) is trained once;
every run of every seed starts from it (the seed varies the RL run: its sampling, data
order and critic), as RL runs from one pretrained checkpoint do:

| variant        | data  | stages                                                       |
|----------------|-------|--------------------------------------------------------------|
| `base`         | -     | none (SFT only)                                              |
| `rlvr`         | arith | joint                                                        |
| `joint`        | facts | joint                                                        |
| `start_self`   | facts | think (policy responds), then response                      |
| `start_frozen` | facts | think (frozen base responds), then each stage-2 design      |
| `start_al`     | facts | think with the answer-likelihood reward, then response       |

The stage-2 designs (`DESIGNS`) share the stage-1 run of `start_frozen` and resume from its
checkpoint: `response` (the response only, fresh optimizer), `joint`, `frozen_thinker`
(thinking from the stage-1 policy, the response trained; the system is that pair) and
`anchor` (the response, with a KL on the thinking to the stage-2 start). The stage-1
policy itself is a thinker too (``start_frozen.s1``). Each with GRPO and with PPO (a
critic with GAE, `PPO_MINIBATCHES` updates per batch, so the ratio and the clip bind).

With ``--workers=2`` (the default) the independent runs go to two processes that share a
persistent XLA cache: one process uses about one core of a small CPU model.

Answerers of three capability levels (one SFT run of the same architecture, kept after
`Scale.answerer_steps`) then answer from every thinker's thinking on held-out arith and
facts questions. Per (seed, question, answerer) scores, the learning curves, the
contrasts (hierarchical bootstrap over seeds then questions, Holm within each claim),
the commit, versions, command and wall time go to ``<out>/results.json``. A run is
resumable: every finished training run and every seed's Cross-Generation is kept under
``<out>`` and reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

from start_jax import checkpoints, models, rewards, sampling, sharding, train
from start_jax.eval import cross_generation as cg
from start_jax.eval import plots, stats
from start_jax.eval.evaluate import evaluate_policy
from start_jax.eval.questions import load_questions
from start_jax.tokenizer import load_tokenizer
from start_jax.train import data_io, sft
from start_jax.train.config import default_config, stage
from start_jax.train.init_policy import initial_policy, model_config_of, sft_traces
from start_jax.world import dataset as world_data
from start_jax.world import generator as world
from start_jax.world import judges

VARIANTS = ("base", "rlvr", "joint", "start_self", "start_frozen", "start_al")
DESIGNS = ("response", "joint", "frozen_thinker", "anchor")
ALGOS = ("grpo", "ppo")
PPO_EPOCHS = 1
PPO_MINIBATCHES = 2  # Two updates per batch: the second one's ratio is not 1.
BASE_SEED = 0  # The one cold-start SFT run of a setting.
FAMILY_OF = {
    "rlvr": "arith",
    "joint": "facts",
    "start_self": "facts",
    "start_frozen": "facts",
    "start_al": "facts",
}
SETTINGS = {
    "standard": dict(judge={}, mixture={}),
    "compete": dict(
        judge=dict(w_correct=0.8, w_style=0.0, w_salient=0.25, w_fooled=0.45), mixture={}
    ),
    "compete_sparse": dict(
        judge=dict(w_correct=0.8, w_style=0.0, w_salient=0.25, w_fooled=0.45),
        mixture=dict(complete=0.25, sloppy=0.35, guess=0.4, styled=0.25),
    ),
}
# Per-step metrics kept from each run's metrics.jsonl (the learning curves).
CURVE_KEYS = (
    "reward_mean",
    "behaviour/facts/think_complete",
    "behaviour/facts/think_empty",
    "behaviour/facts/response_correct",
    "behaviour/facts/response_salient",
    "behaviour/facts/styled",
    "behaviour/arith/think_complete",
    "behaviour/arith/response_correct",
    "behaviour/arith/steps_correct",
    "clip_frac_low",
    "clip_frac_high",
    "kl",
)


@dataclasses.dataclass(frozen=True)
class Scale:
    """Budgets of one ablation size."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    algos: tuple[str, ...] = ALGOS
    variants: tuple[str, ...] = VARIANTS
    designs: tuple[str, ...] = DESIGNS
    sft_steps: int = 4000  # Base policy SFT steps (the trainer's default).
    sft_examples: int = 20000  # Train examples the SFT traces come from (the default).
    answerer_steps: tuple[int, ...] = (600, 900, 1800)  # One SFT run's snapshots.
    rl_steps: int = 60  # RL steps of every variant.
    stage1_steps: int = 40  # START: think steps (then rl_steps - stage1_steps of stage 2).
    prompts_per_step: int = 16
    group_size: int = 8
    learning_rate: float = 1e-3  # joint and RLVR.
    start_learning_rate: float = 1e-3  # START stage 1 (every START variant).
    stage2_learning_rate: float = 1e-3  # START stage 2 (every design).
    sweep: bool = True  # Choose the three rates by `sweep` first (same for both).
    anchor_kl: float = 0.1  # The `anchor` design's KL coefficient (thinking tokens).
    questions: int = 64  # Cross-Generation and final-reward questions per family.


FULL = Scale()
REDUCED = Scale(
    seeds=(0,),
    algos=("grpo",),
    variants=("base", "joint", "start_frozen"),
    designs=("response", "frozen_thinker"),  # `anchor`: tests/test_stage_designs.py.
    sft_steps=60,
    sft_examples=1024,  # 60 steps of 32 draw 1,920 traces.
    answerer_steps=(10, 20, 40),
    rl_steps=3,
    stage1_steps=2,
    prompts_per_step=2,
    group_size=2,
    questions=8,
    sweep=False,
)
# The learning-rate sweep: the same candidates and criterion for joint RL and START.
SWEEP_RATES = (5e-4, 1e-3, 2e-3)
SWEEP_SEED = 100  # Its own seed: no run of the ablation's seeds is used to choose.
SWEEP_WINDOW = 5  # Criterion: mean training reward of the last 5 steps (GRPO).
SWEEP_SPLITS = (1 / 2, 2 / 3, 5 / 6)  # START's stage-1 share of `rl_steps` (30, 40, 50 of 60).


def run_config(scale: Scale, seed: int, setting: str = "standard"):
    c = default_config()
    c.seed = seed
    c.data.name = "mixed"  # Bases and answerers learn both families.
    # The settings as pre-registered and run: think tags may be drawn in a response (the ban,
    # on by default since, came later; the world's judges score such responses as written).
    c.sampling.ban_tags_in_response = False
    c.sft.steps = scale.sft_steps
    c.sft.examples = scale.sft_examples
    for key, value in SETTINGS[setting]["mixture"].items():
        c.sft.mixture[key] = value
    c.data.prompts_per_step = scale.prompts_per_step
    c.algo.group_size = scale.group_size
    c.eval.every = 0
    c.checkpoint.every = 1000
    c.checkpoint.export_hf = True
    c.log.progress = False
    c.log.samples_every = 0
    return c


def judge_of(setting: str):
    return rewards.make("synthetic", **SETTINGS[setting]["judge"])


def variant_config(
    variant: str,
    algo: str,
    seed: int,
    base_dir: str,
    data_dir: str,
    scale: Scale,
    setting: str = "standard",
    design: str | None = None,
    stage1_only: bool = False,
):
    """The run config of a variant; START variants have stage 1 and (unless `stage1_only`)
    stage 2 of `design` (default `response`)."""
    c = run_config(scale, seed, setting)
    c.init_checkpoint = base_dir
    c.data.name = FAMILY_OF[variant]
    c.data.data_dir = data_dir
    c.reward.name = "synthetic"
    for key, value in SETTINGS[setting]["judge"].items():
        c.reward.kwargs[key] = value
    c.schedule = variant if design is None else f"{variant}.{design}"
    if algo == "ppo":
        c.algo.advantage = "gae"
        c.algo.ppo_epochs = PPO_EPOCHS
        c.algo.minibatches = PPO_MINIBATCHES
    lr, n = scale.learning_rate, scale.rl_steps
    if variant in ("rlvr", "joint"):
        c.stages = {"s1": stage("joint", "self", n, lr)}
        return c
    lr, n1 = scale.start_learning_rate, scale.stage1_steps
    responder = "frozen" if variant == "start_frozen" else "self"
    stages = {"s1": stage("think", responder, n1, lr)}
    if variant == "start_al" and stage1_only:
        # The answer-likelihood reward scores the thinking by the base's likelihood of the
        # reference answer; it never reads the response.
        c.reward.name = "answer_likelihood"
        c.reward.kwargs = {"checkpoint": base_dir, "tokenizer": "world"}
    if not stage1_only:
        lr2 = scale.stage2_learning_rate
        stages["s2"] = {
            "response": stage("response", "self", n - n1, lr2),
            "joint": stage("joint", "self", n - n1, lr2),
            "frozen_thinker": stage("response", "self", n - n1, lr2, thinker="frozen"),
            "anchor": stage(
                "response",
                "self",
                n - n1,
                lr2,
                kl_coef=scale.anchor_kl,
                kl_reference="stage_start",
                kl_scope="think",
            ),
        }[design or "response"]
    c.stages = stages
    return c


def train_base(out: str, scale: Scale, setting: str = "standard") -> str:
    """The cold-start SFT policy every run of a setting starts from (`BASE_SEED`), as a HF
    directory (cached)."""
    workdir = os.path.join(out, "base")
    c = run_config(scale, BASE_SEED, setting)
    c.data.data_dir = os.path.join(out, "data")
    spec = train.RunSpec.from_config(c)
    train_data, _ = data_io.datasets(spec.data, workdir)
    initial_policy(
        spec,
        workdir,
        load_tokenizer(spec.tokenizer),
        sharding.make_mesh(spec.mesh),
        train_data,
    )
    return os.path.join(workdir, "init_policy")


def answerer_paths(out: str, scale: Scale) -> dict[str, str]:
    names = {steps: f"A{steps / scale.answerer_steps[0]:g}x" for steps in scale.answerer_steps}
    return {names[s]: os.path.join(out, "answerers", names[s]) for s in scale.answerer_steps}


def train_answerers(out: str, scale: Scale) -> None:
    """Answerers of three capability levels: one SFT run (default mixture, seed 100), kept
    after `scale.answerer_steps` steps, named by their multiple of the first (cached)."""
    paths = answerer_paths(out, scale)
    if all(os.path.isfile(os.path.join(p, "config.json")) for p in paths.values()):
        return
    import jax  # noqa: PLC0415

    c = run_config(scale, 100)
    c.data.data_dir = os.path.join(out, "data")
    workdir = os.path.join(out, "answerers")
    spec = train.RunSpec.from_config(c)
    tok = load_tokenizer(spec.tokenizer)
    train_data, _ = data_io.datasets(spec.data, workdir)
    examples = [train_data[i] for i in range(min(len(train_data), c.sft.examples))]
    config = model_config_of(spec, tok)
    params = models.init_params(config, jax.random.key(100))
    _, _, snaps = sft.train_sft(
        config,
        params,
        tok,
        sft_traces(spec, examples),
        max(scale.answerer_steps),
        c.sft.batch_size,
        c.sft.learning_rate,
        seed=100,
        progress=False,
        snapshots=scale.answerer_steps,
    )
    for (_, path), steps in zip(paths.items(), scale.answerer_steps):
        checkpoints.save_pretrained(config, snaps[steps], path)


def _curves(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [{k: r[k] for k in ("step", "stage") + CURVE_KEYS if k in r} for r in rows]


def _train(config, workdir: str) -> None:
    """Trains (or resumes, or finds finished) one run; its policy is in `<workdir>/export`."""
    if not os.path.isfile(os.path.join(workdir, "export", "config.json")):
        train.Trainer(config, workdir).run()


def _from_stage1(stage1_dir: str, workdir: str) -> None:
    """Seeds a stage-2 run's workdir with the finished stage-1 run: its checkpoints (the
    run resumes at the stage boundary) and its metrics (the curves go on)."""
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        return
    os.makedirs(workdir, exist_ok=True)
    shutil.copytree(os.path.join(stage1_dir, "checkpoints"), os.path.join(workdir, "checkpoints"))
    shutil.copy(os.path.join(stage1_dir, "metrics.jsonl"), workdir)


def _sweep_run(
    out: str, scale: Scale, setting: str, method: str, lr: float, stage1_steps: int
) -> dict:
    """One sweep run (GRPO, `SWEEP_SEED`), trained or found; returns its criterion."""
    sc = dataclasses.replace(
        scale,
        learning_rate=lr,
        start_learning_rate=lr,
        stage2_learning_rate=lr,
        stage1_steps=stage1_steps,
    )
    name = f"lr{lr:g}" if stage1_steps == scale.stage1_steps else f"lr{lr:g}_s1{stage1_steps}"
    wd = os.path.join(out, "sweep", method, name)
    _train(
        variant_config(
            method,
            "grpo",
            SWEEP_SEED,
            os.path.join(out, "base", "init_policy"),
            os.path.join(out, "data"),
            sc,
            setting,
        ),
        wd,
    )
    rows = _curves(wd)[-SWEEP_WINDOW:]
    return {
        "method": method,
        "learning_rate": lr,
        "stage1_steps": stage1_steps,
        "reward_last": float(np.mean([r["reward_mean"] for r in rows])),
        "complete_last": float(np.mean([r["behaviour/facts/think_complete"] for r in rows])),
    }


def sweep(out: str, scale: Scale, setting: str = "standard", log=print, pool=None) -> dict:
    """Chooses the learning rates and START's stage split by one small sweep.

    On `SWEEP_SEED` (a seed no reported run uses) with GRPO, each of `SWEEP_RATES` trains
    joint RL for `rl_steps`, and START (frozen responder, then `response`) for the same
    steps with that rate in both stages and `stage1_steps` in stage 1; then, at START's
    chosen rate, each of `SWEEP_SPLITS` (stage-1 shares of `rl_steps`). The criterion,
    the same for both methods: the highest mean training reward over the last
    `SWEEP_WINDOW` steps (cached in ``<out>/sweep.json``). Returns {"learning_rate",
    "start_learning_rate", "stage2_learning_rate", "stage1_steps", "runs"}.
    """
    path = os.path.join(out, "sweep.json")
    done = _load(path)
    if done is not None:
        return done
    runs = {}

    def collect(jobs):
        for r in _map(pool, _sweep_run, [(out, scale, setting) + j for j in jobs]):
            key = f"{r['method']}/lr{r['learning_rate']:g}/s1{r['stage1_steps']}"
            runs[key] = r
            log(f"sweep {key}: reward {r['reward_last']:.3f}")

    collect([(m, lr, scale.stage1_steps) for m in ("joint", "start_frozen") for lr in SWEEP_RATES])
    best = {
        m: max((r for r in runs.values() if r["method"] == m), key=lambda r: r["reward_last"])
        for m in ("joint", "start_frozen")
    }
    lr = best["start_frozen"]["learning_rate"]
    splits = sorted(
        {max(1, min(scale.rl_steps - 1, round(f * scale.rl_steps))) for f in SWEEP_SPLITS}
        - {scale.stage1_steps}
    )
    collect([("start_frozen", lr, n) for n in splits])
    split = max(
        (r for r in runs.values() if r["method"] == "start_frozen" and r["learning_rate"] == lr),
        key=lambda r: r["reward_last"],
    )
    done = {
        "learning_rate": best["joint"]["learning_rate"],
        "start_learning_rate": lr,
        "stage2_learning_rate": lr,
        "stage1_steps": split["stage1_steps"],
        "runs": runs,
    }
    _save(path, done)
    return done


def ladder(answerers: dict, questions: dict, judge, seed: int = 3) -> dict:
    """Each answerer's mean score on held-out questions after the world's gold thinking and
    after empty thinking, per family: the capability ladder of the answerers."""
    out = {}
    for name, policy in answerers.items():
        for family, q in questions.items():
            prompts = [x["prompt"] for x in q]
            for label, thinking in (("gold", [x["thinking"] for x in q]), ("empty", [""] * len(q))):
                answers = policy.answer(prompts, thinking, seed)
                scores = judge(
                    [
                        rewards.RewardInput(
                            x["prompt"], r, (), (), x["reference"], False, x["metadata"]
                        )
                        for x, r in zip(q, answers)
                    ]
                )
                out.setdefault(name, {})[f"{family}_{label}"] = round(float(np.mean(scores)), 4)
    return out


def _policy(path: str, tok, sc) -> cg.ModelPolicy:
    return cg.ModelPolicy(*checkpoints.load_pretrained(path), tok, sc)


def train_runs(out: str, scale: Scale, seed: int, setting: str, algo: str) -> float:
    """Every training run of one (seed, algorithm), trained or found; returns the seconds."""
    began = time.perf_counter()
    cfg = dict(
        algo=algo,
        seed=seed,
        base_dir=os.path.join(out, "base", "init_policy"),
        data_dir=os.path.join(out, "data"),
        scale=scale,
        setting=setting,
    )
    root = os.path.join(out, f"seed{seed}")
    for variant in scale.variants:
        if variant == "base":
            continue
        if variant in ("rlvr", "joint"):
            _train(variant_config(variant, **cfg), os.path.join(root, variant, algo))
            continue
        s1 = os.path.join(root, variant, algo, "s1")
        _train(variant_config(variant, stage1_only=True, **cfg), s1)
        for design in scale.designs if variant == "start_frozen" else ("response",):
            wd = os.path.join(root, variant, algo, design)
            _from_stage1(s1, wd)
            _train(variant_config(variant, design=design, **cfg), wd)
    return time.perf_counter() - began


def _workdirs(out: str, scale: Scale, seed: int) -> dict[str, str | None]:
    """The thinkers of one seed: {name: its run's workdir (None for the base)}."""
    root = os.path.join(out, f"seed{seed}")
    dirs = {"base": None} if "base" in scale.variants else {}
    for algo in scale.algos:
        for variant in scale.variants:
            if variant in ("rlvr", "joint"):
                dirs[f"{variant}/{algo}"] = os.path.join(root, variant, algo)
            elif variant != "base":
                if variant == "start_frozen":
                    dirs[f"{variant}.s1/{algo}"] = os.path.join(root, variant, algo, "s1")
                for design in scale.designs if variant == "start_frozen" else ("response",):
                    name = variant if design == "response" else f"{variant}.{design}"
                    dirs[f"{name}/{algo}"] = os.path.join(root, variant, algo, design)
    return dirs


def thinkers_of(out: str, scale: Scale, seed: int, tok, sc) -> dict:
    """The trained thinkers of one seed: {name: (policy, workdir or None)}. A frozen-thinker
    run's system is its stage-start thinker with its trained responder."""
    thinkers = {}
    for name, wd in _workdirs(out, scale, seed).items():
        if wd is None:
            policy = _policy(os.path.join(out, "base", "init_policy"), tok, sc)
        else:
            policy = _policy(os.path.join(wd, "export"), tok, sc)
            if os.path.isdir(os.path.join(wd, "export_thinker")):
                policy = cg.SplitPolicy(
                    _policy(os.path.join(wd, "export_thinker"), tok, sc), policy
                )
        thinkers[name] = (policy, wd)
    return thinkers


def _sampling():
    c = default_config()
    return sampling.SamplingConfig(
        temperature=1.0,
        think_budget=c.sampling.think_budget,
        response_budget=c.sampling.response_budget,
        ban_tags_in_response=False,
    )  # As in `run_config`.


def evaluate_seed(out: str, scale: Scale, seed: int, setting: str) -> float:
    """Final rewards and Cross-Generation of one seed's thinkers (cached in
    ``<out>/seed<k>/final_*.json`` and ``cg_<family>.json``); returns the seconds."""
    began = time.perf_counter()
    tok, sc, judge = world.tokenizer(), _sampling(), judge_of(setting)
    answerers = {n: _policy(p, tok, sc) for n, p in answerer_paths(out, scale).items()}
    qs = _questions(out, scale)
    thinkers = thinkers_of(out, scale, seed, tok, sc)
    for name, (policy, _) in thinkers.items():
        path = os.path.join(out, f"seed{seed}", f"final_{name.replace('/', '_')}.json")
        if _load(path) is None:
            _save(path, evaluate_policy(policy, judge, qs, 7 + seed))
    for family, q in qs.items():
        path = os.path.join(out, f"seed{seed}", f"cg_{family}.json")
        entry = _load(path)
        if entry is None or entry["sources"][:-2] != list(thinkers):
            result = cg.run(
                {n: p for n, (p, _) in thinkers.items()},
                answerers,
                q,
                judge,
                seeds=(seed,),
                bootstrap_samples=200,
                classify=cg.classify_synthetic,
            )
            _save(
                path,
                {
                    "seed": seed,
                    "family": family,
                    "sources": result.sources,
                    "answerers": result.answerers,
                    "scores": result.scores[:, :, 0].round(4).tolist(),
                    "thinking_classes": result.thinking_classes,
                },
            )
    return time.perf_counter() - began


def _questions(out: str, scale: Scale) -> dict:
    return {
        f: load_questions(f"synthetic:{f}", os.path.join(out, "data"), scale.questions)
        for f in ("arith", "facts")
    }


def _call(job):
    fn, args = job
    return fn(*args)


def _map(pool, fn, arglists) -> list:
    """`fn` over `arglists`, in `pool`'s processes when there is one (results in order)."""
    if pool is None:
        return [fn(*a) for a in arglists]
    return list(pool.map(_call, [(fn, tuple(a)) for a in arglists]))


def _pool(workers: int, out: str):
    """A pool of `workers` fresh processes (none for 1) sharing one persistent XLA cache:
    every run of the ablation compiles the same few programs."""
    if workers <= 1:
        return None
    import concurrent.futures  # noqa: PLC0415
    import multiprocessing  # noqa: PLC0415

    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(out, "xla_cache")
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")
    )


def _load(path: str):
    if os.path.isfile(path):
        with open(path) as fh:
            return json.load(fh)
    return None


def _save(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(value, fh)
    os.replace(tmp, path)


def run(
    out: str, scale: Scale = FULL, log=print, setting: str = "standard", workers: int = 1
) -> dict:
    """Trains every variant and runs Cross-Generation; returns (and saves) the results.

    With `workers` > 1 the independent pieces (sweep runs, answerers, each (seed,
    algorithm)'s runs, each seed's evaluation) run in that many processes.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting {setting!r} is not one of {sorted(SETTINGS)}")
    os.makedirs(out, exist_ok=True)
    began = time.perf_counter()
    tok, judge = world.tokenizer(), judge_of(setting)
    train_base(out, scale, setting)
    for family in ("arith", "facts"):  # Built here: the worker processes only read them.
        for split in ("train", "test"):
            world_data.load_synthetic(family, os.path.join(out, "data"), split)
    log(f"base and data ready ({time.perf_counter() - began:.0f} s)")
    pool = _pool(workers, out)
    try:
        waiting = pool.submit(train_answerers, out, scale) if pool else None
        chosen = None
        if scale.sweep:
            chosen = sweep(out, scale, setting, log, pool)
            scale = dataclasses.replace(scale, **{k: v for k, v in chosen.items() if k != "runs"})
            log(
                f"sweep chose {scale.learning_rate:g} (joint, RLVR), {scale.start_learning_rate:g}"
                f" (START), {scale.stage1_steps} stage-1 steps "
                f"({time.perf_counter() - began:.0f} s)"
            )
        if waiting is not None:
            waiting.result()
        else:
            train_answerers(out, scale)
        # The longest jobs first: PPO (a critic) before GRPO.
        jobs = [
            (out, scale, seed, setting, algo)
            for algo in sorted(scale.algos, reverse=True)
            for seed in scale.seeds
        ]
        for (_, _, seed, _, algo), secs in zip(jobs, _map(pool, train_runs, jobs)):
            log(f"seed {seed} {algo}: trained in {secs:.0f} s")
        log(f"training done ({time.perf_counter() - began:.0f} s)")
        evaluated = _map(pool, evaluate_seed, [(out, scale, seed, setting) for seed in scale.seeds])
        for seed, secs in zip(scale.seeds, evaluated):
            log(f"seed {seed}: evaluated in {secs:.0f} s")
    finally:
        if pool is not None:
            pool.shutdown()
    log(f"evaluation done ({time.perf_counter() - began:.0f} s)")
    levels = _load(os.path.join(out, "ladder.json"))
    if levels is None:
        sc = _sampling()
        answerers = {n: _policy(p, tok, sc) for n, p in answerer_paths(out, scale).items()}
        levels = ladder(answerers, _questions(out, scale), judge)
        _save(os.path.join(out, "ladder.json"), levels)
    records, curves, cg_results = [], [], []
    for seed in scale.seeds:
        for name, workdir in _workdirs(out, scale, seed).items():
            final = _load(os.path.join(out, f"seed{seed}", f"final_{name.replace('/', '_')}.json"))
            records.append({"seed": seed, "thinker": name, **final})
            if workdir is not None:
                curves.append({"seed": seed, "thinker": name, "rows": _curves(workdir)})
        for family in ("arith", "facts"):
            cg_results.append(_load(os.path.join(out, f"seed{seed}", f"cg_{family}.json")))
    results = {
        "setting": setting,
        "settings": SETTINGS[setting],
        "scale": dataclasses.asdict(scale),
        "sweep": chosen,
        "ladder": levels,
        "records": records,
        "curves": curves,
        "cross_generation": cg_results,
        "levels": judges.reward_levels(200, 0, judge),
        "seconds": time.perf_counter() - began,
        "workers": workers,
        "provenance": provenance(),
    }
    results["summary"] = summarize(results)
    results["contrasts"] = contrasts(results)
    results["controls"] = controls(results)
    _save(os.path.join(out, "results.json"), results)
    return results


def provenance() -> dict:
    """The commit, package versions, command line and machine that produced a result."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        try:
            return subprocess.run(
                ("git",) + args, cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for name in (
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "orbax-checkpoint",
        "numpy",
        "tensorflow-datasets",
    ):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "versions": versions,
        "python": platform.python_version(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# --------------------------------------------------------------------------- statistics


def summarize(results: dict) -> list[dict]:
    """Per thinker: final reward, efficacy and behaviour rates with 95% intervals.

    Final reward and efficacy: a hierarchical bootstrap (`stats.hierarchical_bootstrap`:
    seeds, then questions within a seed), so the training run is the unit. Behaviour rates
    are pooled over seeds and questions, with a Wilson interval.
    """
    n = results["scale"]["questions"]
    recs = results["records"]
    cgs = results["cross_generation"]
    thinkers = sorted(
        {s for r in cgs for s in r["sources"]}, key=lambda s: (s in (cg.EMPTY, cg.SELF), s)
    )
    rows = []
    for t in thinkers:
        row = {"thinker": t}
        finals = [r for r in recs if r["thinker"] == t]
        for fam in ("facts", "arith"):
            if finals:
                row[f"final_{fam}"] = _interval(_per_seed(results, t, "final", fam))
                for key in ("think_complete", "response_salient", "styled"):
                    vals = [r[f"rates_{fam}"].get(f"{fam}/{key}") for r in finals]
                    if all(v is not None for v in vals):
                        row[f"{key}_{fam}"] = stats.pooled_proportion(vals, n)
            gains = _per_seed(results, t, "efficacy", fam)
            if gains is not None:
                row[f"efficacy_{fam}"] = _interval(gains)
            complete = [
                r["thinking_classes"][t].get("complete", 0.0)
                for r in cgs
                if r["family"] == fam and t in r["thinking_classes"]
            ]
            if complete:
                row[f"cg_complete_{fam}"] = stats.pooled_proportion(complete, n)
        rows.append(row)
    return rows


def _interval(per_seed) -> list[float]:
    h = stats.hierarchical_bootstrap(per_seed, samples=2000)
    return [h["mean"], h["low"], h["high"]]


def _per_seed(results: dict, thinker: str, what: str, family: str) -> np.ndarray | None:
    """[seeds, questions] values of one thinker (seeds in order): final scores, or
    efficacy gains (mean over answerers of the gain over empty thinking)."""
    if what == "final":
        rows = sorted(
            (r for r in results["records"] if r["thinker"] == thinker), key=lambda r: r["seed"]
        )
        return np.asarray([r[f"scores_{family}"] for r in rows]) if rows else None
    out = []
    for r in sorted(
        (r for r in results["cross_generation"] if r["family"] == family), key=lambda r: r["seed"]
    ):
        if thinker not in r["sources"]:
            return None
        scores = np.asarray(r["scores"])  # [sources, answerers, questions]
        gain = scores[r["sources"].index(thinker)] - scores[r["sources"].index(cg.EMPTY)]
        out.append(gain.mean(0))  # Mean over answerers.
    return np.asarray(out) if out else None


def contrast(results: dict, a: str, b: str, what: str, family: str) -> dict | None:
    """Paired difference a - b (final reward or efficacy), per (seed, question), with the
    hierarchical bootstrap's mean, 95% interval and two-sided p-value."""
    x, y = _per_seed(results, a, what, family), _per_seed(results, b, what, family)
    if x is None or y is None:
        return None
    return stats.hierarchical_bootstrap(x - y, samples=2000)


CONTRASTS = (
    # (claim, a, b, what, family)
    ("1", "rlvr/{algo}", "base", "efficacy", "arith"),
    ("1", "rlvr/{algo}", "base", "efficacy", "facts"),
    ("2", "joint/{algo}", "base", "final", "facts"),
    ("2", "joint/{algo}", "base", "efficacy", "facts"),
    ("3", "start_self/{algo}", "joint/{algo}", "efficacy", "facts"),
    ("3", "start_frozen/{algo}", "joint/{algo}", "efficacy", "facts"),
    ("3", "start_self/{algo}", "joint/{algo}", "final", "facts"),
    ("3", "start_frozen/{algo}", "joint/{algo}", "final", "facts"),
    ("3", "start_frozen.joint/{algo}", "joint/{algo}", "efficacy", "facts"),
    ("3", "start_frozen.frozen_thinker/{algo}", "joint/{algo}", "efficacy", "facts"),
    ("3", "start_frozen.anchor/{algo}", "joint/{algo}", "efficacy", "facts"),
    ("3", "start_frozen.joint/{algo}", "joint/{algo}", "final", "facts"),
    ("3", "start_frozen.frozen_thinker/{algo}", "joint/{algo}", "final", "facts"),
    ("3", "start_frozen.anchor/{algo}", "joint/{algo}", "final", "facts"),
    ("3", "start_al/{algo}", "joint/{algo}", "efficacy", "facts"),
    ("3", "start_al/{algo}", "joint/{algo}", "final", "facts"),
    ("s1", "start_frozen.s1/{algo}", "joint/{algo}", "efficacy", "facts"),
    ("s2", "start_frozen/{algo}", "start_frozen.s1/{algo}", "efficacy", "facts"),
    ("s2", "start_frozen.joint/{algo}", "start_frozen.s1/{algo}", "efficacy", "facts"),
    ("s2", "start_frozen.anchor/{algo}", "start_frozen.s1/{algo}", "efficacy", "facts"),
    ("s2", "start_frozen/{algo}", "start_frozen.s1/{algo}", "final", "facts"),
    ("s2", "start_frozen.joint/{algo}", "start_frozen.s1/{algo}", "final", "facts"),
    ("s2", "start_frozen.frozen_thinker/{algo}", "start_frozen.s1/{algo}", "final", "facts"),
    ("s2", "start_frozen.anchor/{algo}", "start_frozen.s1/{algo}", "final", "facts"),
)
CLAIMS = {
    "1": "RLVR improves thinking on the verifiable family (and transfers to GQA)",
    "2": "joint RL on GQA raises the GQA reward and thinking",
    "3": "START improves thinking and the final answer over joint RL",
    "s1": "START's stage-1 thinking against joint (at the end of stage 1 vs joint's end)",
    "s2": "each stage-2 design against the stage-1 snapshot it starts from",
}


def contrasts(results: dict) -> list[dict]:
    """The paired differences behind the claims, per algorithm, with Holm-adjusted p-values
    over each claim's contrasts (both algorithms together) and Bonferroni 95% intervals."""
    out = []
    for claim, a, b, what, family in CONTRASTS:
        for algo in results["scale"]["algos"]:
            value = contrast(results, a.format(algo=algo), b.format(algo=algo), what, family)
            if value is not None:
                out.append(
                    {
                        "claim": claim,
                        "a": a.format(algo=algo),
                        "b": b.format(algo=algo),
                        "what": what,
                        "family": family,
                        "diff": [value["mean"], value["low"], value["high"]],
                        "p": value["p"],
                        "seeds": value["seeds"],
                    }
                )
    for claim in {c["claim"] for c in out}:
        family = [c for c in out if c["claim"] == claim]
        for c, adjusted in zip(family, stats.holm([c["p"] for c in family])):
            c["p_holm"] = adjusted
            c["verdict"] = (
                "no clear difference"
                if adjusted >= 0.05
                else "a > b"
                if c["diff"][0] > 0
                else "a < b"
            )
    return out


def contrast_table(results: dict) -> str:
    lines = []
    for c in results.get("contrasts") or contrasts(results):
        d = c["diff"]
        lines.append(
            f"claim {c['claim']:<3} {c['a']:>34} - {c['b']:<12} {c['what']:>8} "
            f"{c['family']:<5} {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}] "
            f"p={c['p']:.3f} holm={c['p_holm']:.3f}  {c['verdict']}"
        )
    return "\n".join(lines)


CONTROL_KEYS = (
    ("reward_mean", "reward"),
    ("behaviour/facts/think_complete", "complete"),
    ("behaviour/facts/styled", "styled"),
    ("behaviour/facts/response_salient", "salient"),
)
CONTROL_WINDOW = 5


def controls(results: dict) -> list[dict]:
    """The positive control: per trained thinker, the change of the training reward and of
    the behaviour rates from the first to the last `CONTROL_WINDOW` steps of its run (and
    over stage 1 alone for START), mean over seeds with a seed-level bootstrap interval.
    A run is *trapped* when its reward rises while its complete-thinking rate does not."""
    out = []
    for name in sorted({c["thinker"] for c in results["curves"]}):
        runs = [c["rows"] for c in results["curves"] if c["thinker"] == name]
        row = {"thinker": name, "seeds": len(runs)}
        for key, label in CONTROL_KEYS:
            if not all(key in r for run in runs for r in run):
                continue
            k = CONTROL_WINDOW
            deltas = [
                np.mean([r[key] for r in run[-k:]]) - np.mean([r[key] for r in run[:k]])
                for run in runs
            ]
            s1 = [[r for r in run if r.get("stage", 0) == 0] for run in runs]
            row[label] = _interval(np.asarray(deltas)[:, None])
            if all(len(x) > k for x in s1) and any(len(x) < len(run) for x, run in zip(s1, runs)):
                row[f"{label}_stage1"] = _interval(
                    np.asarray(
                        [
                            np.mean([r[key] for r in x[-k:]]) - np.mean([r[key] for r in x[:k]])
                            for x in s1
                        ]
                    )[:, None]
                )
        out.append(row)
    return out


def clip_fractions(results: dict) -> dict[str, float]:
    """Per PPO run, the mean over seeds and steps of the fraction of tokens whose ratio was
    clipped (low + high): with 2 passes per batch the ratio moves and the clip binds."""
    out = {}
    for name in sorted({c["thinker"] for c in results["curves"] if c["thinker"].endswith("/ppo")}):
        rows = [r for c in results["curves"] if c["thinker"] == name for r in c["rows"]]
        if rows and "clip_frac_low" in rows[0]:
            out[name] = float(np.mean([r["clip_frac_low"] + r["clip_frac_high"] for r in rows]))
    return out


def control_table(results: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"  # noqa: E731
    lines = [f"{'run':<34} " + " ".join(f"{label:>24}" for _, label in CONTROL_KEYS)]
    for row in results.get("controls") or controls(results):
        lines.append(
            f"{row['thinker']:<34} "
            + " ".join(f"{fmt(row.get(label)):>24}" for _, label in CONTROL_KEYS)
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- tables, figures

COLUMNS = (
    ("final_facts", "final facts"),
    ("efficacy_facts", "efficacy facts"),
    ("cg_complete_facts", "complete facts"),
    ("styled_facts", "styled facts"),
    ("response_salient_facts", "salient facts"),
    ("final_arith", "final arith"),
    ("efficacy_arith", "efficacy arith"),
    ("cg_complete_arith", "complete arith"),
)


def table(results: dict, markdown: bool = False) -> str:
    """The summary as text (or a markdown table): mean [low, high] per column."""
    fmt = lambda v: "-" if v is None else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
    head = ["thinker"] + [label for _, label in COLUMNS]
    body = [
        [row["thinker"]] + [fmt(row.get(key)) for key, _ in COLUMNS] for row in results["summary"]
    ]
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


CURVE_PANELS = (
    ("reward_mean", "train reward"),
    ("behaviour/facts/think_complete", "facts: complete thinking"),
    ("behaviour/facts/styled", "facts: styled response"),
    ("behaviour/facts/response_salient", "facts: salient (shortcut) answer"),
    ("behaviour/facts/response_correct", "facts: correct answer"),
    ("behaviour/arith/think_complete", "arith: complete thinking (RLVR)"),
)


def plot_curves(results: dict, path: str, smooth: int = 5, algo: str | None = None) -> None:
    """Reward and behaviour rates against RL step, per run: mean over seeds, band = +-1 sd
    (only `algo`'s runs when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(
        {
            c["thinker"]
            for c in results["curves"]
            if algo is None or c["thinker"].endswith("/" + algo)
        }
    )
    colours = dict(zip(names, plt.cm.tab20(np.linspace(0, 1, max(len(names), 2)))))
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
            ax.plot(steps, mean, style, color=colours[name], label=name, lw=1.4)
            ax.fill_between(steps, mean - sd, mean + sd, color=colours[name], alpha=0.12)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6, ncol=2)
    fig.suptitle(
        f"{results.get('setting', 'standard')} setting: learning curves (mean over "
        f"seeds, band +-1 sd, {smooth}-step moving average)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


GOLD_WINDOW = 5  # Steps averaged at each end of a run for the training-vs-gold table.


def _variant(thinker: str) -> str:
    return thinker.split("/")[0].split(".")[0]


def gold_key(thinker: str) -> str:
    """The per-step rate of correct responses of a run's family (`FAMILY_OF`). It is the
    correctness-only judge `synthetic_correct` (the gold reward) scored on the step's own
    rollouts: the world's classifier and that judge share `arith_correct` and
    `facts_outcome`."""
    return f"behaviour/{FAMILY_OF[_variant(thinker)]}/response_correct"


def judged_rows(thinker: str, rows: list[dict]) -> list[dict]:
    """The steps whose training reward is the setting's judge: `start_al`'s stage 1 is
    trained on the answer likelihood (a log-probability), so its rows are left out."""
    if _variant(thinker) == "start_al":
        return [r for r in rows if r.get("stage", 0) != 0]
    return rows


def gold_runs(results: dict, name: str) -> list[list[dict]]:
    """Each seed's judged rows (`judged_rows`) of run `name` that log its gold key."""
    key = gold_key(name)
    runs = [judged_rows(name, c["rows"]) for c in results["curves"] if c["thinker"] == name]
    return [run for run in runs if run and all(key in r for r in run)]


def gold_rows(results: dict) -> list[dict]:
    """Per run: the training reward (the setting's judge), the gold reward (correctness
    only) and their gap, over the first and the last `GOLD_WINDOW` steps; each the mean
    over seeds with the standard deviation over seeds (the seed is the unit)."""
    out = []
    for name in sorted({c["thinker"] for c in results["curves"]}):
        key, w = gold_key(name), GOLD_WINDOW
        runs = gold_runs(results, name)
        if not runs:
            continue
        row = {"run": name, "gold": key, "seeds": len(runs), "from_step": runs[0][0]["step"]}
        for end, part in (("first", slice(None, w)), ("last", slice(-w, None))):
            train = np.array([np.mean([r["reward_mean"] for r in run[part]]) for run in runs])
            gold = np.array([np.mean([r[key] for r in run[part]]) for run in runs])
            for what, v in (("reward", train), ("gold", gold), ("gap", train - gold)):
                row[f"{end}_{what}"] = [float(v.mean()), float(v.std())]
        out.append(row)
    return out


def gold_table(results: dict) -> str:
    lines = [
        f"| run | seeds | from step | training reward, last {GOLD_WINDOW} | "
        f"gold, last {GOLD_WINDOW} | gap, first {GOLD_WINDOW} steps | gap, last {GOLD_WINDOW} "
        "steps |",
        "|---|---|---|---|---|---|---|",
    ]
    cell = lambda v: f"{v[0]:.3f} ± {v[1]:.3f}"  # noqa: E731
    for r in gold_rows(results):
        lines.append(
            f"| {r['run']} | {r['seeds']} | {r['from_step']} | {cell(r['last_reward'])} | "
            f"{cell(r['last_gold'])} | "
            f"{r['first_gap'][0]:+.3f} ± {r['first_gap'][1]:.3f} | "
            f"{r['last_gap'][0]:+.3f} ± {r['last_gap'][1]:.3f} |"
        )
    return "\n".join(lines)


def plot_gold(results: dict, path: str, smooth: int = 5) -> None:
    """One panel per variant: the training reward (solid) and the gold reward (dashed)
    against the RL step, GRPO and PPO, mean over seeds; the gap between them shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({c["thinker"].rsplit("/", 1)[0] for c in results["curves"]})
    cols = min(3, len(variants))
    rows = -(-len(variants) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    colours = {"grpo": "tab:blue", "ppo": "tab:red"}
    for ax, variant in zip(axes.ravel(), variants):
        for algo, colour in colours.items():
            name = f"{variant}/{algo}"
            key = gold_key(name)
            runs = gold_runs(results, name)
            if not runs:
                continue
            n = min(len(run) for run in runs)
            steps = [r["step"] for r in runs[0][:n]]
            train, gold = (
                np.mean([_smooth(np.array([r[k] for r in run[:n]]), smooth) for run in runs], 0)
                for k in ("reward_mean", key)
            )
            ax.plot(steps, train, "-", color=colour, lw=1.4, label=f"{algo}: training reward")
            ax.plot(steps, gold, "--", color=colour, lw=1.4, label=f"{algo}: gold (correct)")
            ax.fill_between(steps, gold, train, color=colour, alpha=0.1)
        ax.set_title(variant, fontsize=10)
        ax.set_xlabel("RL step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(variants) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        f"{results.get('setting', 'standard')} setting: training reward vs gold reward "
        f"(correctness only) on the training rollouts, mean over seeds, {smooth}-step average"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot(results: dict, path: str) -> None:
    """Bar charts with 95% intervals: final reward, efficacy and complete thinking per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["summary"] if r["thinker"] != cg.EMPTY]
    names = [r["thinker"] for r in rows]
    panels = (
        ("final_facts", "final reward (GQA facts)"),
        ("efficacy_facts", "thinking efficacy (GQA facts)"),
        ("cg_complete_facts", "complete thinking (facts, truth)"),
        ("final_arith", "final reward (verifiable arith)"),
        ("efficacy_arith", "thinking efficacy (verifiable arith)"),
        ("cg_complete_arith", "complete thinking (arith, truth)"),
    )
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    for ax, (key, title) in zip(axes.ravel(), panels):
        vals = [r.get(key) or (np.nan, np.nan, np.nan) for r in rows]
        mean = np.array([v[0] for v in vals])
        err = np.array([[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]])
        ax.bar(range(len(names)), mean, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
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
    plots.heatmaps(
        path,
        [
            (f"Cross-Generation score ({family})", *matrix(results, family))
            for family in ("facts", "arith")
        ],
        xlabel="answerer (SFT budget)",
        ylabel=None,
        fontsize=7,
        dpi=100,
    )


def ladder_table(results: dict) -> str:
    levels = results.get("ladder") or {}
    keys = ("arith_gold", "arith_empty", "facts_gold", "facts_empty")
    lines = [f"{'answerer':<10} " + " ".join(f"{k:>12}" for k in keys)]
    for name, row in levels.items():
        lines.append(f"{name:<10} " + " ".join(f"{row.get(k, float('nan')):>12.3f}" for k in keys))
    return "\n".join(lines)


def stage1_check(results: dict, window: int = 5) -> list[dict]:
    """ "Stage 1 equals joint": per algorithm, START-frozen's training-curve rates at the end of
    stage 1 minus joint's at the same step (mean of the `window` steps up to it), paired by
    seed, with a seed-level interval."""
    n1 = results["scale"]["stage1_steps"]
    out = []
    for algo in results["scale"]["algos"]:
        a = {
            c["seed"]: c["rows"]
            for c in results["curves"]
            if c["thinker"] == f"start_frozen.s1/{algo}"
        }
        b = {c["seed"]: c["rows"] for c in results["curves"] if c["thinker"] == f"joint/{algo}"}
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        row = {"algo": algo, "step": n1, "seeds": len(seeds)}
        for key, label in CONTROL_KEYS:

            def at(rows, key=key):
                vals = [r[key] for r in rows if n1 - window < r["step"] <= n1 and key in r]
                return np.mean(vals) if vals else np.nan

            diffs = np.asarray([at(a[s]) - at(b[s]) for s in seeds])
            if np.isfinite(diffs).all():
                row[label] = _interval(diffs[:, None])
        out.append(row)
    return out


def markdown(results: dict) -> str:
    """The tables of one setting (docs/results.md, tables.md): ladder, summary, contrasts,
    controls, stage 1."""
    fmt = lambda v: "-" if v is None else f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"  # noqa: E731
    lines = [
        "| answerer | arith, gold thinking | arith, empty | facts, gold thinking | facts, empty |",
        "|---|---|---|---|---|",
    ]
    for name, row in (results.get("ladder") or {}).items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{row[k]:.3f}" for k in ("arith_gold", "arith_empty", "facts_gold", "facts_empty")
            )
            + " |"
        )
    lines += [
        "",
        table(results, markdown=True),
        "",
        "| claim | a | b | what | family | a - b [95%] | p | Holm p | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results.get("contrasts") or contrasts(results):
        lines.append(
            f"| {c['claim']} | {c['a']} | {c['b']} | {c['what']} | {c['family']} | "
            f"{fmt(c['diff'])} | {c['p']:.3f} | {c['p_holm']:.3f} | {c['verdict']} |"
        )
    lines += [
        "",
        "| run (first 5 -> last 5 steps) | "
        + " | ".join(label for _, label in CONTROL_KEYS)
        + " |",
        "|---|" + "---|" * len(CONTROL_KEYS),
    ]
    for row in results.get("controls") or controls(results):
        lines.append(
            f"| {row['thinker']} | "
            + " | ".join(fmt(row.get(label)) for _, label in CONTROL_KEYS)
            + " |"
        )
    lines += [
        "",
        "| START-frozen at the end of stage 1 minus joint at that step | "
        + " | ".join(label for _, label in CONTROL_KEYS)
        + " |",
        "|---|" + "---|" * len(CONTROL_KEYS),
    ]
    for row in stage1_check(results):
        lines.append(
            f"| {row['algo']}, step {row['step']} | "
            + " | ".join(fmt(row.get(label)) for _, label in CONTROL_KEYS)
            + " |"
        )
    lines += [
        "",
        "Training reward (the setting's judge) against the gold reward (correctness only) on "
        "the same training rollouts; mean ± sd over seeds (start_al from its stage 2: its "
        "stage 1 is trained on the answer likelihood):",
        "",
        gold_table(results),
    ]
    clipped = clip_fractions(results)
    if clipped:
        lines += [
            "",
            "PPO clipped fraction (mean over seeds and steps): "
            + ", ".join(f"{k} {v:.4f}" for k, v in clipped.items()),
        ]
    return "\n".join(lines)


def report(results: dict, out: str) -> None:
    """Prints the tables and writes the figures of a results dict into `out`."""
    print(ladder_table(results))
    print(table(results))
    print(contrast_table(results))
    print(control_table(results))
    print(gold_table(results))
    for name, frac in clip_fractions(results).items():
        print(f"clipped fraction {name}: {frac:.4f}")
    with open(os.path.join(out, "tables.md"), "w") as fh:
        fh.write(markdown(results) + "\n")
    plot_curves(results, os.path.join(out, "curves.png"))
    plot_gold(results, os.path.join(out, "gold.png"))
    plot(results, os.path.join(out, "ablation.png"))
    plot_matrices(results, os.path.join(out, "cross_generation.png"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="standard")
    parser.add_argument("--scale", choices=("full", "reduced"), default="full")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (default: the scale's)")
    parser.add_argument("--algos", default="", help="comma-separated algorithms")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes for the independent runs (1: all in this one)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="re-summarise and re-plot an existing <out>/results.json",
    )
    args = parser.parse_args(argv)
    if args.reuse:
        with open(os.path.join(args.out, "results.json")) as fh:
            res = json.load(fh)
        res["summary"] = summarize(res)
        res["contrasts"] = contrasts(res)
        res["controls"] = controls(res)
        _save(os.path.join(args.out, "results.json"), res)
    else:
        sc = FULL if args.scale == "full" else REDUCED
        if args.seeds:
            sc = dataclasses.replace(sc, seeds=tuple(int(s) for s in args.seeds.split(",")))
        if args.algos:
            sc = dataclasses.replace(sc, algos=tuple(args.algos.split(",")))
        res = run(args.out, sc, setting=args.setting, workers=args.workers)
    report(res, args.out)
    print(
        f"results: {args.out}/results.json, plots: {args.out}/curves.png, ablation.png, "
        f"cross_generation.png; {res['seconds'] / 60:.1f} min"
    )


if __name__ == "__main__":
    # Through the package, so that the worker processes find the jobs by their module name.
    from experiments import ablation

    ablation.main()
