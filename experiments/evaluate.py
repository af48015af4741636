"""Evaluate checkpoints on held-out questions: pass@1, pass@k, maj@k and mean reward with
k samples per question, at one or several thinking budgets.

  python -m experiments.evaluate --checkpoints=/tmp/run/export[,OTHER] \\
      --questions=jsonl:/data/test.jsonl --reward=math --k=8 --budgets=256,1024,4096 \\
      --out=/tmp/eval [--n=500 --response_budget=512 --chat_template --tokenizer=DIR]

`--questions` is ``jsonl:PATH`` (rows with 'prompt' or 'messages', and 'reference', as in
training) or ``synthetic:facts`` / ``synthetic:arith`` (the embedded world's test split).
With `--chat_template` each question is rendered as training renders it: a row's own
``messages``, else the prompt as the user's turn after `--system`, with
`--template_kwargs` (default ``{"enable_thinking": true}``). Each question
is sampled k times (one prefill per question), `</think>` forced at each budget; each
response is scored by `--reward` (any registered reward, `--reward_kwargs` as JSON), and a
sample counts as correct when its reward is at least `--correct_at`. Per checkpoint and
budget the table shows pass@1, pass@k (the unbiased estimator), maj@k (majority over the
reward's extracted answers), the mean reward, the mean thinking length and the fraction of
rows that spent the budget, each with a 95% bootstrap interval over questions. Written
to ``<out>``: ``results.json`` (the table and its intervals), ``<checkpoint>/budget<B>.jsonl``
(per-question samples: rewards, answers, thinking lengths) and, with several budgets,
``budgets.png`` (pass@1, thinking length and budget-hit rate against the budget, one
line per checkpoint). Resumable: the
questions already in a ``budget<B>.jsonl`` are kept, in batches of `--batch` questions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from experiments.ablation import provenance
from start_jax import checkpoints, rewards, sampling
from start_jax.data.prompts import PromptFormat
from start_jax.eval import sampled
from start_jax.eval.cross_generation import ModelPolicy
from start_jax.eval.questions import load_questions
from start_jax.tokenizer import load_tokenizer


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", required=True, help="Hugging Face directories, comma-separated")
    p.add_argument("--questions", required=True, help="jsonl:PATH or synthetic:NAME")
    p.add_argument("--reward", required=True, help="a registered reward")
    p.add_argument("--reward_kwargs", default="{}", help="JSON object of the reward's options")
    p.add_argument("--k", type=int, default=8, help="samples per question")
    p.add_argument("--budgets", default="256", help="thinking budgets, comma-separated")
    p.add_argument("--response_budget", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--n", type=int, default=100, help="questions (the first n)")
    p.add_argument("--correct_at", type=float, default=1.0)
    p.add_argument("--tokenizer", default="", help="'' = each checkpoint's own, else 'world'")
    p.add_argument("--chat_template", action="store_true", help="render with the chat template")
    p.add_argument("--system", default="", help="system message of rows without one")
    p.add_argument(
        "--template_kwargs", default='{"enable_thinking": true}', help="JSON: chat template args"
    )
    p.add_argument("--batch", type=int, default=32, help="questions sampled together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default="", help="tfds data_dir of synthetic questions")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.k < 1 or args.n < 1 or args.batch < 1:
        p.error(f"--k, --n and --batch must be >= 1 (got {args.k}, {args.n}, {args.batch})")
    try:
        args.budgets = [int(b) for b in args.budgets.split(",")]
        args.reward_kwargs = json.loads(args.reward_kwargs)
        args.template_kwargs = json.loads(args.template_kwargs)
    except ValueError as e:
        p.error(
            f"--budgets must be integers, --reward_kwargs and --template_kwargs JSON objects ({e})"
        )
    for name in ("reward_kwargs", "template_kwargs"):
        if not isinstance(getattr(args, name), dict):
            p.error(f"--{name} must be a JSON object (got {getattr(args, name)!r})")
    if any(b < 0 for b in args.budgets):
        p.error(f"--budgets must be >= 0 (got {args.budgets})")
    args.checkpoints = [c for c in args.checkpoints.split(",") if c]
    for c in args.checkpoints:
        if not os.path.isfile(os.path.join(c, "config.json")):
            p.error(f"--checkpoints: {c} has no config.json (a Hugging Face directory)")
    return args


def _name(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or "checkpoint"


def _tokenizer(path: str, name: str):
    if name:
        return load_tokenizer(name)
    own = os.path.isfile(os.path.join(path, "tokenizer.json"))
    return load_tokenizer(path if own else "world")


def _records(path: str, policy, questions, reward_fn, args, budget: int) -> list[dict]:
    """Per-question records at `budget`, those already in `path` kept (resume)."""
    done = []
    if os.path.isfile(path):
        with open(path) as fh:
            done = [json.loads(line) for line in fh if line.strip()]
    for start in range(len(done), len(questions), args.batch):
        part = questions[start : start + args.batch]
        seed = args.seed * 1_000_003 + start
        new = sampled.evaluate_budget(policy, part, reward_fn, args.k, budget, seed)
        with open(path, "a") as fh:
            for i, record in enumerate(new):
                fh.write(json.dumps({"question": start + i, **record}) + "\n")
        done += new
    return done


def plot_budgets(table: list[dict], k: int, path: str) -> None:
    """pass@1, the mean thinking length and the budget-hit rate against the thinking
    budget, one line per checkpoint, with the 95% intervals."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = (
        ("pass@1", "pass@1"),
        ("think_tokens", "thinking tokens (mean)"),
        ("hit_budget", "rows that hit the budget"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, label) in zip(axes, panels):
        for name in dict.fromkeys(r["checkpoint"] for r in table):
            rows = sorted((r for r in table if r["checkpoint"] == name), key=lambda r: r["budget"])
            x = [r["budget"] for r in rows]
            mean, low, high = zip(*(r[key] for r in rows))
            ax.plot(x, mean, marker="o", label=name)
            ax.fill_between(x, low, high, alpha=0.2)
        ax.set_xlabel("thinking budget (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Against the thinking budget ({k} samples a question, 95% intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    began = time.time()
    args = _args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    reward_fn = rewards.make(args.reward, **args.reward_kwargs)
    data_dir = args.data_dir or os.path.join(args.out, "data")
    questions = load_questions(args.questions, data_dir, args.n)
    if not args.chat_template and any("messages" in (q["metadata"] or {}) for q in questions):
        sys.exit(f"evaluate: {args.questions} has rows with 'messages': add --chat_template")
    table = []
    for path in args.checkpoints:
        config, params = checkpoints.load_pretrained(path)
        tok = _tokenizer(path, args.tokenizer)
        sc = sampling.SamplingConfig(
            temperature=args.temperature, response_budget=args.response_budget
        )
        fmt = PromptFormat.create(args.chat_template, args.system, args.template_kwargs)
        policy = ModelPolicy(config, params, tok, sc, prompt_format=fmt)
        name = _name(path)
        os.makedirs(os.path.join(args.out, name), exist_ok=True)
        for budget in args.budgets:
            where = os.path.join(args.out, name, f"budget{budget}.jsonl")
            records = _records(where, policy, questions, reward_fn, args, budget)
            row = {"checkpoint": name, "path": os.path.abspath(path), "budget": budget}
            row.update(sampled.summarize(records, args.k, args.correct_at))
            table.append(row)
            print(_line(row, args.k), flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(
            {
                "args": {k: v for k, v in vars(args).items()},
                "table": table,
                "provenance": {**provenance(), "argv": sys.argv, "seconds": time.time() - began},
            },
            fh,
            indent=1,
        )
    if len(args.budgets) > 1:
        plot_budgets(table, args.k, os.path.join(args.out, "budgets.png"))
    return table


def _line(row: dict, k: int) -> str:
    def cell(name):
        m, lo, hi = row[name]
        return f"{name} {m:.3f} [{lo:.3f}, {hi:.3f}]"

    names = ("pass@1", f"pass@{k}", f"maj@{k}", "reward", "think_tokens", "hit_budget")
    return f"{row['checkpoint']} budget {row['budget']}: " + ", ".join(cell(n) for n in names)


if __name__ == "__main__":
    main()
