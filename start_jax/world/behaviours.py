"""The cold-start behaviour mixture of the embedded world.

A pretrained model does not think one way: it thinks fully, thinks sloppily,
skips thinking and guesses, and answers in several styles. RL selects among
the behaviours a policy already samples, so the cold-start SFT data is a
documented mixture of them (`Mixture`), and because the world is synthetic
every rollout's thinking and response can be classified against the truth
(`start_jax.world.classify`).

The mixture
===========

Each SFT trace draws its thinking behaviour with the probabilities
``complete : sloppy : guess`` (normalised), and, independently, its response
style: styled (the judge's favoured ``Surely X!``) with probability
``styled``, plain otherwise. The response always follows from the thinking
(a sloppy thinking gives the answer it leads to), so an answerer learns to
read its answer off the thinking it is given.

* ``complete``: facts ``Bo's pal is Al. Al likes tea.`` -> ``tea``; arith
  ``a=3 b=7 c=5`` -> ``5``.
* sloppy, one kind drawn uniformly. facts: ``one_hop`` (``Bo's pal is Al.``, then
  a guess), ``own_fact`` (``Bo likes jam.`` -> ``jam``, the asked person's own
  thing; ``wrong_lookup`` when the prompt does not state it), ``wrong_lookup``
  (``Bo's pal is Al. Cy likes pie.`` -> ``pie``). arith: ``skipped_step`` (a
  middle variable left out with its operation, ``a=3 c=-1`` -> ``-1``),
  ``wrong_step`` (one value off by 1-2, later values following it).
* ``guess``: no thinking, then, facts: the salient entity (70%) or another thing
  of the prompt; arith: a number drawn uniformly from `world.VALUE_RANGE`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from start_jax.world import generator as world

P_GUESS_SALIENT = 0.7


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Rates of the cold-start behaviours (see the module docstring).

    ``complete``, ``sloppy`` and ``guess`` are relative weights of the thinking
    behaviour (normalised to sum to 1); ``styled`` is the probability of the
    styled response, drawn independently of the thinking.
    """

    complete: float = 0.5
    sloppy: float = 0.25
    guess: float = 0.25
    styled: float = 0.25

    def __post_init__(self):
        for name in ("complete", "sloppy", "guess", "styled"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ValueError(f"mixture: {name}={value!r} must be a finite number >= 0")
        if self.complete + self.sloppy + self.guess <= 0:
            raise ValueError("mixture: complete + sloppy + guess must be > 0")
        if self.styled > 1:
            raise ValueError(f"mixture: styled={self.styled} is a probability (at most 1)")

    @property
    def thinking_probabilities(self) -> dict[str, float]:
        total = self.complete + self.sloppy + self.guess
        return {
            "complete": self.complete / total,
            "sloppy": self.sloppy / total,
            "guess": self.guess / total,
        }


@dataclasses.dataclass(frozen=True)
class Trace:
    thinking: str
    response: str
    behaviour: (
        str  # complete | one_hop | own_fact | wrong_lookup | skipped_step | wrong_step | guess
    )
    styled: bool


def _family(prompt: str, family: str | None) -> str:
    return family or world.infer_family(prompt)


# --------------------------------------------------------------------------- the mixture


def _facts_trace(prompt: str, answer: str, kind: str, rng: np.random.Generator):
    f = world.parse_facts(prompt)
    asked, pals, likes = f["asked"], f["pals"], f["likes"]
    pal = pals[asked]
    things = sorted(set(likes.values()))
    salient = world.salient_entity(prompt)

    def guess() -> str:
        if salient is not None and rng.random() < P_GUESS_SALIENT:
            return salient
        others = [t for t in things if t != salient] or things
        return others[int(rng.integers(0, len(others)))]

    if kind == "own_fact" and asked not in likes:
        kind = "wrong_lookup"
    if kind == "complete":
        return f"{asked}'s pal is {pal}. {pal} likes {answer}.", answer, kind
    if kind == "one_hop":
        return f"{asked}'s pal is {pal}.", guess(), kind
    if kind == "own_fact":
        return f"{asked} likes {likes[asked]}.", likes[asked], kind
    if kind == "wrong_lookup":
        wrong = sorted(p for p in likes if p != pal)
        better = [p for p in wrong if likes[p] != answer] or wrong
        other = better[int(rng.integers(0, len(better)))]
        return f"{asked}'s pal is {pal}. {other} likes {likes[other]}.", likes[other], kind
    if kind == "guess":
        return "", guess(), kind
    raise ValueError(f"unknown facts behaviour {kind!r}")


def _arith_trace(prompt: str, kind: str, rng: np.random.Generator):
    *statements, question = prompt.strip().split(";")
    values = world.arith_values(prompt)
    names = list(values)
    if kind == "complete":
        return " ".join(f"{v}={values[v]}" for v in names), str(values[names[-1]]), kind
    if kind == "guess":
        lo, hi = world.VALUE_RANGE
        return "", str(int(rng.integers(lo, hi + 1))), kind
    if kind == "skipped_step":
        # A middle variable left out with its operation: the next one reads the one before.
        skip = int(rng.integers(1, len(names) - 1))
        kept = (
            statements[:skip]
            + [statements[skip + 1].replace(f"={names[skip]}", f"={names[skip - 1]}", 1)]
            + statements[skip + 2 :]
        )
    elif kind == "wrong_step":
        # One value off by 1-2; the later values follow from it.
        bad = int(rng.integers(1, len(names)))
        off = values[names[bad]] + int(rng.choice([-2, -1, 1, 2]))
        kept = statements[:bad] + [f"{names[bad]}={off}"] + statements[bad + 1 :]
    else:
        raise ValueError(f"unknown arith behaviour {kind!r}")
    env = world.arith_values(";".join(kept + [question]))
    return " ".join(f"{v}={x}" for v, x in env.items()), str(env[names[-1]]), kind


SLOPPY = {"facts": ("one_hop", "own_fact", "wrong_lookup"), "arith": ("skipped_step", "wrong_step")}


def sample_trace(
    example: dict | world.Example, rng: np.random.Generator, mixture: Mixture
) -> Trace:
    """One SFT trace of ``example`` drawn from ``mixture``."""
    if isinstance(example, world.Example):
        prompt, reference, family = example.prompt, example.reference, example.family
    else:
        prompt, reference = example["prompt"], str(example["reference"])
        family = example.get("family") or (example.get("metadata") or {}).get("family")
    family = _family(prompt, family)
    probs = mixture.thinking_probabilities
    draw = rng.choice(list(probs), p=list(probs.values()))
    kind = (
        SLOPPY[family][int(rng.integers(0, len(SLOPPY[family])))] if draw == "sloppy" else str(draw)
    )
    styled = bool(rng.random() < mixture.styled)
    if family == "facts":
        thinking, answer, kind = _facts_trace(prompt, reference, kind, rng)
    else:
        thinking, answer, kind = _arith_trace(prompt, kind, rng)
    return Trace(thinking, world.style_answer(answer, styled), kind, styled)


def mixture_traces(
    examples: Sequence[dict], mixture: Mixture, seed: int, draws: int = 1
) -> list[dict]:
    """``draws`` traces of every example: dicts with prompt, thinking, response, behaviour."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        for e in examples:
            t = sample_trace(e, rng, mixture)
            out.append(
                {
                    "prompt": e["prompt"] if isinstance(e, dict) else e.prompt,
                    "thinking": t.thinking,
                    "response": t.response,
                    "behaviour": t.behaviour,
                    "styled": t.styled,
                }
            )
    return out
