"""Cross-Generation: the quality of thinking, measured apart from the model that wrote it.

Thinkers T_i write thinking for each question; answerers A_j of different
capability write a response from `prompt + thinking_i`; the task's
response-only reward scores it. Controls: empty thinking (`<think></think>`)
and each answerer's own thinking. The thinking efficacy of T_i is

    efficacy_i = mean_j ( score[i, j] - score[empty, j] )

with a percentile bootstrap confidence interval over (seed, question) pairs.

Thinkers and answerers are small protocols over text, so that models with
different tokenizers can be crossed; `ModelThinker` / `ModelAnswerer` adapt a
(config, params, tokenizer) triple through the segmented sampler.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Protocol, Sequence

import numpy as np

from start_jax import sampling
from start_jax.eval import classify
from start_jax.rewards import RewardInput

EMPTY = "empty"
SELF = "self"


class Thinker(Protocol):
    def think(self, prompts: Sequence[str], seed: int) -> list[str]:
        """Thinking text for each prompt."""


class Answerer(Protocol):
    def answer(self, prompts: Sequence[str], thinking: Sequence[str] | None,
               seed: int) -> list[str]:
        """Response text per prompt, given thinking (None: think yourself)."""


@dataclasses.dataclass
class ModelThinker:
    """A model that writes thinking only (the response budget is 0)."""

    config: object
    params: object
    tokenizer: object
    sampling_config: sampling.SamplingConfig
    mesh: object = None

    def think(self, prompts, seed):
        special = sampling.SpecialTokens.from_tokenizer(self.tokenizer)
        rollout = sampling.sample(self.config, self.params,
                                  [self.tokenizer.encode(p) for p in prompts],
                                  self.sampling_config.replace(response_budget=0), seed, special,
                                  mesh=self.mesh)
        thinking, _ = sampling.thinking_of(rollout, special.end_think)
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in thinking]


@dataclasses.dataclass
class ModelAnswerer:
    """A model that writes the response after given (or its own) thinking."""

    config: object
    params: object
    tokenizer: object
    sampling_config: sampling.SamplingConfig
    mesh: object = None

    def answer(self, prompts, thinking, seed):
        special = sampling.SpecialTokens.from_tokenizer(self.tokenizer)
        ids = [self.tokenizer.encode(p) for p in prompts]
        given = None if thinking is None else [self.tokenizer.encode(t) for t in thinking]
        rollout = sampling.sample(self.config, self.params, ids, self.sampling_config, seed,
                                  special, thinking=given, mesh=self.mesh)
        return [row["response"] for row in sampling.decode_segments(self.tokenizer, rollout)]


@dataclasses.dataclass
class CrossGenResult:
    sources: list[str]          # Thinkers, then 'empty', then 'self' (controls).
    answerers: list[str]
    scores: np.ndarray          # [sources, answerers, seeds, questions] rewards.
    efficacy: dict              # thinker -> {'mean', 'low', 'high'}.
    confidence: float
    thinking_classes: dict = dataclasses.field(default_factory=dict)  # thinker -> class -> rate.

    @property
    def matrix(self) -> np.ndarray:
        """Mean score [sources, answerers]."""
        return self.scores.mean(axis=(2, 3))

    def to_dict(self) -> dict:
        return {"sources": self.sources, "answerers": self.answerers,
                "matrix": self.matrix.round(6).tolist(), "efficacy": self.efficacy,
                "confidence": self.confidence, "seeds": int(self.scores.shape[2]),
                "questions": int(self.scores.shape[3]), "thinking_classes": self.thinking_classes}

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
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        m = self.matrix
        fig, ax = plt.subplots(figsize=(1.4 * len(self.answerers) + 2.5,
                                        0.55 * len(self.sources) + 1.5))
        im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=max(1.0, float(m.max())))
        ax.set_xticks(range(len(self.answerers)), self.answerers)
        ax.set_yticks(range(len(self.sources)), self.sources)
        ax.set_xlabel("answerer")
        ax.set_ylabel("thinking from")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center",
                        color="white" if m[i, j] < 0.6 * max(1.0, float(m.max())) else "black")
        fig.colorbar(im, ax=ax, label="mean response-only reward")
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def bootstrap_efficacy(gain: np.ndarray, samples: int = 2000, confidence: float = 0.95,
                       seed: int = 0) -> dict:
    """Mean and percentile CI of gain [answerers, seeds, questions] over (seed, question) pairs."""
    per_pair = gain.mean(axis=0).reshape(-1)          # Mean over answerers, per pair.
    rs = np.random.RandomState(seed)
    idx = rs.randint(0, per_pair.size, size=(samples, per_pair.size))
    means = per_pair[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    return {"mean": float(per_pair.mean()), "low": float(np.quantile(means, alpha)),
            "high": float(np.quantile(means, 1 - alpha))}


def run(thinkers: dict[str, Thinker], answerers: dict[str, Answerer], questions: Sequence[dict],
        reward_fn, seeds: Sequence[int] = (0,), include_self: bool = True,
        bootstrap_samples: int = 2000, confidence: float = 0.95,
        classify=None) -> CrossGenResult:
    """Runs the thinkers x answerers grid with empty and self controls.

    Args:
      thinkers: name -> Thinker.
      answerers: name -> Answerer (at least three capability levels in a study).
      questions: dicts with 'prompt', 'reference' and optional 'metadata'.
      reward_fn: a response-only reward (sees prompt and response only).
      seeds: sampling seeds; each thinker/answerer call gets one.
      classify: optional ``classify(question, thinking) -> class name``, the truth
        about a thinking (the synthetic world has `data.classify.classify_thinking`);
        the result then reports each source's class rates beside its efficacy,
        so the efficacy can be checked against what the thinking really was.
    """
    if EMPTY in thinkers or SELF in thinkers:
        raise ValueError(f"thinker names {EMPTY!r} and {SELF!r} are reserved for the controls")
    prompts = [q["prompt"] for q in questions]
    sources = list(thinkers) + [EMPTY] + ([SELF] if include_self else [])
    names = list(answerers)
    scores = np.zeros((len(sources), len(names), len(seeds), len(questions)), np.float32)

    def reward(responses):
        return np.asarray(reward_fn([
            RewardInput(prompt=q["prompt"], response=r, prompt_ids=(), response_ids=(),
                        reference=q.get("reference"), metadata=q.get("metadata"))
            for q, r in zip(questions, responses)]), np.float32)

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
                scores[i, j, k] = reward(a.answer(prompts, given, 1000 * seed + j))
    empty = scores[sources.index(EMPTY)]
    efficacy = {src: bootstrap_efficacy(scores[i] - empty, bootstrap_samples, confidence)
                for i, src in enumerate(sources) if src != EMPTY}
    classes = {name: {label: n / (len(seeds) * len(questions)) for label, n in sorted(c.items())}
               for name, c in counts.items()}
    return CrossGenResult(sources, names, scores, efficacy, confidence, classes)


def classify_synthetic(question: dict, thinking: str) -> str:
    """`classify` for the synthetic world: the class of a thinking (`eval.classify`)."""
    family = question.get("family") or (question.get("metadata") or {}).get("family")
    return classify.classify_thinking(question["prompt"], thinking, family)


def save(result: CrossGenResult, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(result.to_dict(), fh, indent=2)
