"""Cross-Generation: the quality of thinking, measured apart from the model that wrote it.

Thinkers T_i write thinking for each question; answerers A_j of different
capability write a response from `prompt + thinking_i`; the task's
response-only reward scores it. Controls: empty thinking (`<think></think>`)
and each answerer's own thinking. The thinking efficacy of T_i is

    efficacy_i = mean_j ( score[i, j] - score[empty, j] )

with a percentile bootstrap confidence interval over (seed, question) pairs
(`start_jax.eval.stats.bootstrap_efficacy`).

Thinkers and answerers are small protocols over text, so that models with
different tokenizers can be crossed; `ModelPolicy` adapts a (config, params,
tokenizer) triple through the segmented sampler and is both.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Protocol, Sequence

import numpy as np

from start_jax import sampling
from start_jax.data import prompts as prompts_lib
from start_jax.data.prompts import PromptFormat
from start_jax.eval import plots, stats
from start_jax.rewards import RewardInput
from start_jax.world import classify

EMPTY = "empty"
SELF = "self"


class Thinker(Protocol):
    def think(self, prompts: Sequence[str], seed: int) -> list[str]:
        """Thinking text for each prompt."""


class Answerer(Protocol):
    def answer(
        self, prompts: Sequence[str], thinking: Sequence[str] | None, seed: int
    ) -> list[str]:
        """Response text per prompt, given thinking (None: think yourself)."""


@dataclasses.dataclass
class ModelPolicy:
    """A model as thinker and as answerer, through the segmented sampler.

    `think` writes thinking only (the response budget is 0); `answer` writes the
    response after given thinking (or its own); `generate` returns the decoded
    rows of both segments. Questions are rendered by `prompt_format` with this
    model's own tokenizer, so models with different chat templates cross.
    """

    config: object
    params: object
    tokenizer: object
    sampling_config: sampling.SamplingConfig
    mesh: object = None
    prompt_format: PromptFormat = PromptFormat()  # Questions through its own chat template.

    def render(self, prompt: str | dict) -> str:
        """The text this model reads for a question: a prompt, or a task row (its own
        ``messages`` in its metadata: `start_jax.data.prompts.render`)."""
        row = prompt if isinstance(prompt, dict) else {"prompt": prompt}
        return prompts_lib.render(row, self.tokenizer, self.prompt_format)

    def sample(self, prompts, seed, sampling_config=None, thinking=None, rendered=False, **kwargs):
        """(rollout, special tokens) of `prompts` (texts or task rows, see `render`; with
        `rendered`, texts `render` already made; rows repeating a prompt share a prefill,
        and each distinct text is encoded once)."""
        special = sampling.SpecialTokens.from_tokenizer(self.tokenizer)
        sc = self.sampling_config if sampling_config is None else sampling_config
        texts = list(prompts) if rendered else [self.render(p) for p in prompts]
        encoded = {t: self.tokenizer.encode(t) for t in dict.fromkeys(texts)}
        ids = [encoded[t] for t in texts]
        # Repeated rows (several responses to one prompt and thinking, as `run` asks with
        # `responses` > 1) share one prefill.
        group = repeat_group(ids, thinking)
        rollout = sampling.sample(
            self.config,
            self.params,
            ids,
            sc,
            seed,
            special,
            mesh=self.mesh,
            thinking=thinking,
            group_size=group,
            **kwargs,
        )
        return rollout, special

    def generate(
        self,
        prompts: Sequence[str],
        seed: int,
        thinking: Sequence[str] | None = None,
        no_thinking: bool = False,
    ) -> list[dict]:
        """Decoded rows (prompt, thinking, response, truncation flags), one per prompt.

        ``thinking``: given thinking texts (None: the model thinks);
        ``no_thinking``: empty thinking (``<think></think>``) for every prompt.
        """
        given = None if thinking is None else [self.tokenizer.encode(t) for t in thinking]
        rollout, _ = self.sample(prompts, seed, thinking=given, no_thinking=no_thinking)
        return sampling.decode_segments(self.tokenizer, rollout)

    def think(self, prompts, seed):
        rollout, special = self.sample(
            prompts, seed, self.sampling_config.replace(response_budget=0)
        )
        thinking, _ = sampling.thinking_of(rollout, special.end_think)
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in thinking]

    def answer(self, prompts, thinking, seed):
        return [row["response"] for row in self.generate(prompts, seed, thinking)]


@dataclasses.dataclass
class SplitPolicy:
    """Two models as one system: `thinker` writes the thinking and `answerer` the response
    from it (what a stage with a frozen thinker trains: the stage-start snapshot thinks,
    the trained policy responds). A thinker, an answerer and a policy for `evaluate_policy`."""

    thinker: ModelPolicy
    answerer: ModelPolicy

    def think(self, prompts, seed):
        return self.thinker.think(prompts, seed)

    def generate(
        self,
        prompts: Sequence[str],
        seed: int,
        thinking: Sequence[str] | None = None,
        no_thinking: bool = False,
    ) -> list[dict]:
        if no_thinking:
            return self.answerer.generate(prompts, seed, no_thinking=True)
        if thinking is None:
            thinking = self.think(prompts, seed)
        return self.answerer.generate(prompts, seed, thinking)

    def answer(self, prompts, thinking, seed):
        return [row["response"] for row in self.generate(prompts, seed, thinking)]


def repeat_group(prompts: Sequence, thinking: Sequence | None = None) -> int:
    """The largest g dividing the number of rows such that each run of g consecutive rows
    repeats one prompt (and one given thinking): the `group_size` that shares their prefill."""
    rows = list(zip(prompts, [None] * len(prompts) if thinking is None else thinking))
    keys = [(tuple(p), None if t is None else tuple(t)) for p, t in rows]
    n = len(keys)
    for g in range(n, 1, -1):
        if n % g == 0 and all(keys[i] == keys[i - i % g] for i in range(n)):
            return g
    return 1


@dataclasses.dataclass
class CrossGenResult:
    sources: list[str]  # Thinkers, then 'empty', then 'self' (controls).
    answerers: list[str]
    scores: np.ndarray  # [sources, answerers, seeds, questions] rewards (mean of
    # `responses` answers to one thinking).
    efficacy: dict  # thinker -> {'mean', 'low', 'high'}.
    confidence: float
    thinking_classes: dict = dataclasses.field(default_factory=dict)  # thinker -> class -> rate.

    @property
    def matrix(self) -> np.ndarray:
        """Mean score [sources, answerers]."""
        return self.scores.mean(axis=(2, 3))

    def to_dict(self) -> dict:
        return {
            "sources": self.sources,
            "answerers": self.answerers,
            "matrix": self.matrix.round(6).tolist(),
            "efficacy": self.efficacy,
            "confidence": self.confidence,
            "seeds": int(self.scores.shape[2]),
            "questions": int(self.scores.shape[3]),
            "thinking_classes": self.thinking_classes,
        }

    def table(self) -> str:
        width = max(len(s) for s in self.sources + ["source"])
        head = f"{'source':<{width}}  " + "  ".join(f"{a:>10}" for a in self.answerers)
        head += f"  {'efficacy':>24}"
        if self.thinking_classes:
            head += f"  {'complete thinking':>17}"
        lines = [head, "-" * len(head)]
        for i, s in enumerate(self.sources):
            row = f"{s:<{width}}  " + "  ".join(f"{v:>10.3f}" for v in self.matrix[i])
            if s in self.efficacy:
                e = self.efficacy[s]
                row += f"  {e['mean']:>+8.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"
            if s in self.thinking_classes:
                row += f"  {self.thinking_classes[s].get('complete', 0.0):>17.3f}"
            lines.append(row)
        return "\n".join(lines)

    def heatmap(self, path: str, title: str = "Cross-Generation") -> None:
        """Saves the score matrix as a matplotlib heat map (PNG)."""
        plots.heatmaps(path, [(title, self.sources, self.answerers, self.matrix)])


def run(
    thinkers: dict[str, Thinker],
    answerers: dict[str, Answerer],
    questions: Sequence[dict],
    reward_fn,
    seeds: Sequence[int] = (0,),
    include_self: bool = True,
    bootstrap_samples: int = 2000,
    confidence: float = 0.95,
    classify=None,
    responses: int = 1,
) -> CrossGenResult:
    """Runs the thinkers x answerers grid with empty and self controls.

    Args:
      thinkers: name -> Thinker.
      answerers: name -> Answerer (at least three capability levels in a study).
      questions: dicts with 'prompt', 'reference' and optional 'metadata'.
      reward_fn: a response-only reward (sees prompt and response only).
      seeds: sampling seeds; each thinker/answerer call gets one.
      classify: optional ``classify(question, thinking) -> class name``, the truth
        about a thinking (the synthetic world has `classify_synthetic`);
        the result then reports each source's class rates beside its efficacy,
        so the efficacy can be checked against what the thinking really was.
      responses: answers per (question, thinking), each scored; a score is their
        mean, so the answerer's own sampling noise shrinks without new thinking.
        The answerer gets each question `responses` times in a row (a
        `ModelPolicy` prefills each repeated prompt and thinking once).
    """
    if responses < 1:
        raise ValueError(f"responses={responses} must be >= 1")
    if EMPTY in thinkers or SELF in thinkers:
        raise ValueError(f"thinker names {EMPTY!r} and {SELF!r} are reserved for the controls")
    prompts = [q["prompt"] for q in questions]
    sources = list(thinkers) + [EMPTY] + ([SELF] if include_self else [])
    names = list(answerers)
    scores = np.zeros((len(sources), len(names), len(seeds), len(questions)), np.float32)

    repeated = [q for q in questions for _ in range(responses)]

    def reward(answers):
        return (
            np.asarray(
                reward_fn(
                    [
                        RewardInput(
                            prompt=q["prompt"],
                            response=r,
                            prompt_ids=(),
                            response_ids=(),
                            reference=q.get("reference"),
                            metadata=q.get("metadata"),
                        )
                        for q, r in zip(repeated, answers)
                    ]
                ),
                np.float32,
            )
            .reshape(len(questions), responses)
            .mean(1)
        )

    def each(rows):
        return None if rows is None else [r for r in rows for _ in range(responses)]

    counts: dict[str, dict[str, int]] = {}
    for k, seed in enumerate(seeds):
        thinking = {name: t.think(prompts, seed) for name, t in thinkers.items()}
        thinking[EMPTY] = [""] * len(prompts)
        if classify is not None:
            for name, texts in thinking.items():
                for q, text in zip(questions, texts):
                    c = counts.setdefault(name, {})
                    label = classify(q, text)
                    c[label] = c.get(label, 0) + 1
        for j, name in enumerate(names):
            a = answerers[name]
            for i, src in enumerate(sources):
                given = None if src == SELF else thinking[src]
                scores[i, j, k] = reward(a.answer(each(prompts), each(given), 1000 * seed + j))
    empty = scores[sources.index(EMPTY)]
    efficacy = {
        src: stats.bootstrap_efficacy(scores[i] - empty, bootstrap_samples, confidence)
        for i, src in enumerate(sources)
        if src != EMPTY
    }
    classes = {
        name: {label: n / (len(seeds) * len(questions)) for label, n in sorted(c.items())}
        for name, c in counts.items()
    }
    return CrossGenResult(sources, names, scores, efficacy, confidence, classes)


def classify_synthetic(question: dict, thinking: str) -> str:
    """`classify` for the synthetic world: the class of a thinking (`world.classify`)."""
    family = question.get("family") or (question.get("metadata") or {}).get("family")
    return classify.classify_thinking(question["prompt"], thinking, family)


def save(result: CrossGenResult, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(result.to_dict(), fh, indent=2)
