"""Cross-Generation from the command line: thinkers and answerers from HF directories.

    python -m experiments.cross_generation --thinker base=runs/a/init_policy \
        --thinker rl=runs/a/export --answerer small=runs/a/init_policy --out=cg

writes ``<out>/cross_generation.json`` and the heat map ``<out>/cross_generation.png``
(run from the repository root). The method is `start_jax.eval.cross_generation`;
the questions come from `start_jax.eval.questions.load_questions`.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from start_jax import rewards, sampling
from start_jax.checkpoints import load_pretrained
from start_jax.data.prompts import PromptFormat
from start_jax.eval import cross_generation as cg
from start_jax.eval.questions import load_questions
from start_jax.tokenizer import load_tokenizer


def _named_paths(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--{what} {item!r}: expected NAME=PATH (a Hugging Face directory)")
        name, path = item.split("=", 1)
        out[name] = path
    return out


def main(argv: Sequence[str] | None = None) -> cg.CrossGenResult:
    """Runs the command line; returns the result."""
    parser = argparse.ArgumentParser(description="Cross-Generation of thinking across answerers.")
    parser.add_argument("--thinker", action="append", default=[], help="NAME=HF_DIR (repeat)")
    parser.add_argument("--answerer", action="append", default=[], help="NAME=HF_DIR (repeat)")
    parser.add_argument("--data", default="synthetic:facts", help="synthetic:NAME or jsonl:PATH")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--reward", default="synthetic", help="a registered reward name")
    parser.add_argument("--seeds", default="0", help="comma-separated sampling seeds")
    parser.add_argument(
        "--responses",
        type=int,
        default=1,
        help="answers per question and thinking; a score is their mean",
    )
    parser.add_argument(
        "--tokenizer",
        default="world",
        help="'world', 'char' or a directory; a model directory with tokenizer.json uses its own",
    )
    parser.add_argument(
        "--chat_template",
        action="store_true",
        help="render each question with each model's own chat template",
    )
    parser.add_argument("--system", default="", help="system message (with --chat_template)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--think_budget", type=int, default=48)
    parser.add_argument("--response_budget", type=int, default=16)
    parser.add_argument("--out", default="cross_generation")
    args = parser.parse_args(argv)
    thinker_paths = _named_paths(args.thinker, "thinker")
    answerer_paths = _named_paths(args.answerer, "answerer")
    if not thinker_paths or not answerer_paths:
        parser.error("give at least one --thinker and one --answerer")
    sc = sampling.SamplingConfig(
        temperature=args.temperature,
        think_budget=args.think_budget,
        response_budget=args.response_budget,
    )

    def load(path):
        tok_dir = path if os.path.isfile(os.path.join(path, "tokenizer.json")) else args.tokenizer
        config, params = load_pretrained(path)
        return config, params, load_tokenizer(tok_dir)

    fmt = PromptFormat.create(args.chat_template, args.system)
    policies: dict[str, cg.ModelPolicy] = {}  # One model per directory, thinker or answerer.
    for path in [*thinker_paths.values(), *answerer_paths.values()]:
        if path not in policies:
            policies[path] = cg.ModelPolicy(*load(path), sc, prompt_format=fmt)
    thinkers = {n: policies[p] for n, p in thinker_paths.items()}
    answerers = {n: policies[p] for n, p in answerer_paths.items()}
    os.makedirs(args.out, exist_ok=True)
    qs = load_questions(args.data, os.path.join(args.out, "data"), args.questions)
    result = cg.run(
        thinkers,
        answerers,
        qs,
        rewards.make(args.reward),
        seeds=[int(s) for s in args.seeds.split(",")],
        responses=args.responses,
        classify=cg.classify_synthetic if args.data.startswith("synthetic") else None,
    )
    cg.save(result, os.path.join(args.out, "cross_generation.json"))
    result.heatmap(os.path.join(args.out, "cross_generation.png"))
    print(result.table())
    print(f"written: {args.out}/cross_generation.json, {args.out}/cross_generation.png")
    return result


if __name__ == "__main__":
    main()
