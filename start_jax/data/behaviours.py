"""Behaviours of the embedded world: the cold-start mixture, and the truth about every rollout.

A pretrained model does not think one way: it thinks fully, thinks sloppily,
skips thinking and guesses, and answers in several styles. RL selects among
the behaviours a policy already samples, so the cold-start SFT data is a
documented mixture of them (`Mixture`), and because the world is synthetic
every rollout's thinking and response can be classified against the truth
(`classify_thinking`, `classify_response`, `behaviour_rates`).

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

Classes
=======

Thinking, per family (`THINK_CLASSES`):

* facts: ``complete`` (both hops, correct), ``one_hop`` (only the first hop, or
  only the asked person's own fact), ``wrong_lookup`` (two facts of the prompt
  that do not chain to the answer), ``empty``, ``other`` (anything else,
  including facts the prompt does not state);
* arith: ``complete`` (every variable with its true value), ``wrong_step``
  (every variable, some value wrong), ``skipped_step`` (variables in order with
  some missing), ``empty``, ``other``; plus ``steps_correct``, the fraction of
  the chain's variables written with their true value.

Responses (`RESPONSE_CLASSES`): ``correct``; ``salient`` (facts: wrong, and the
prompt's salient entity: the shortcut); ``other``; and, independently,
``styled``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

import numpy as np

from start_jax.data import world

THINK_CLASSES = {
    "facts": ("complete", "one_hop", "wrong_lookup", "empty", "other"),
    "arith": ("complete", "wrong_step", "skipped_step", "empty", "other"),
}
RESPONSE_CLASSES = ("correct", "salient", "other")
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
        return {"complete": self.complete / total, "sloppy": self.sloppy / total,
                "guess": self.guess / total}


@dataclasses.dataclass(frozen=True)
class Trace:
    thinking: str
    response: str
    behaviour: str    # complete | one_hop | own_fact | wrong_lookup | skipped_step | wrong_step | guess
    styled: bool


# --------------------------------------------------------------------------- parsing

_ARITH_STEP = re.compile(r"^([a-z])=(-?\d+)$")
arith_values = world.arith_values


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
        kept = statements[:skip] + [statements[skip + 1].replace(
            f"={names[skip]}", f"={names[skip - 1]}", 1)] + statements[skip + 2:]
    elif kind == "wrong_step":
        # One value off by 1-2; the later values follow from it.
        bad = int(rng.integers(1, len(names)))
        off = values[names[bad]] + int(rng.choice([-2, -1, 1, 2]))
        kept = statements[:bad] + [f"{names[bad]}={off}"] + statements[bad + 1:]
    else:
        raise ValueError(f"unknown arith behaviour {kind!r}")
    env = world.arith_values(";".join(kept + [question]))
    return " ".join(f"{v}={x}" for v, x in env.items()), str(env[names[-1]]), kind


SLOPPY = {"facts": ("one_hop", "own_fact", "wrong_lookup"),
          "arith": ("skipped_step", "wrong_step")}


def sample_trace(example: dict | world.Example, rng: np.random.Generator,
                 mixture: Mixture) -> Trace:
    """One SFT trace of ``example`` drawn from ``mixture``."""
    if isinstance(example, world.Example):
        prompt, reference, family = example.prompt, example.reference, example.family
    else:
        prompt, reference = example["prompt"], str(example["reference"])
        family = example.get("family") or (example.get("metadata") or {}).get("family")
    family = _family(prompt, family)
    probs = mixture.thinking_probabilities
    draw = rng.choice(list(probs), p=list(probs.values()))
    kind = (SLOPPY[family][int(rng.integers(0, len(SLOPPY[family])))]
            if draw == "sloppy" else str(draw))
    styled = bool(rng.random() < mixture.styled)
    if family == "facts":
        thinking, answer, kind = _facts_trace(prompt, reference, kind, rng)
    else:
        thinking, answer, kind = _arith_trace(prompt, kind, rng)
    return Trace(thinking, world.style_answer(answer, styled), kind, styled)


def mixture_traces(examples: Sequence[dict], mixture: Mixture, seed: int,
                   draws: int = 1) -> list[dict]:
    """``draws`` traces of every example: dicts with prompt, thinking, response, behaviour."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        for e in examples:
            t = sample_trace(e, rng, mixture)
            out.append({"prompt": e["prompt"] if isinstance(e, dict) else e.prompt,
                        "thinking": t.thinking, "response": t.response,
                        "behaviour": t.behaviour, "styled": t.styled})
    return out


# --------------------------------------------------------------------------- classification

_FACT = re.compile(r"([A-Z][a-z]*)'s pal is ([A-Z][a-z]*)\.|([A-Z][a-z]*) likes ([a-z]+)\.")


def _facts_statements(thinking: str):
    """Parsed facts of a thinking text, or None when any text is not a fact."""
    text = " ".join(thinking.split())
    out, pos = [], 0
    for m in _FACT.finditer(text):
        if text[pos:m.start()].strip():
            return None
        pos = m.end()
        out.append(("pal", m.group(1), m.group(2)) if m.group(1)
                   else ("likes", m.group(3), m.group(4)))
    if text[pos:].strip():
        return None
    return out


def classify_thinking(prompt: str, thinking: str, family: str | None = None) -> str:
    """The class of a thinking text against the truth of its prompt (see `THINK_CLASSES`)."""
    family = _family(prompt, family)
    if not thinking.strip():
        return "empty"
    if family == "arith":
        return _classify_arith(prompt, thinking)[0]
    f = world.parse_facts(prompt)
    asked, pals, likes = f["asked"], f["pals"], f["likes"]
    stated = _facts_statements(thinking)
    if stated is None or asked is None or asked not in pals:
        return "other"
    true = {("pal", a, b) for a, b in pals.items()} | {("likes", a, b) for a, b in likes.items()}
    if any(s not in true for s in stated):
        return "other"
    pal = pals[asked]
    if stated == [("pal", asked, pal), ("likes", pal, likes.get(pal))]:
        return "complete"
    if stated in ([("pal", asked, pal)], [("likes", asked, likes.get(asked))]):
        return "one_hop"
    if len(stated) == 2 and stated[0][0] == "pal" and stated[0][1] == asked and stated[1][0] == "likes":
        return "wrong_lookup"
    return "other"


def _classify_arith(prompt: str, thinking: str) -> tuple[str, float]:
    try:
        values = arith_values(prompt)
    except ValueError:
        return "other", 0.0
    names = list(values)
    steps = []
    for token in thinking.split():
        m = _ARITH_STEP.match(token)
        if not m:
            return "other", 0.0
        steps.append((m.group(1), int(m.group(2))))
    written = [v for v, _ in steps]
    correct = sum(values.get(v) == x for v, x in steps) / len(names)
    if written == names:
        return ("complete" if correct == 1.0 else "wrong_step"), correct
    it = iter(names)
    if len(set(written)) == len(written) and all(v in it for v in written) and written:
        return "skipped_step", correct
    return "other", correct


def steps_correct(prompt: str, thinking: str) -> float:
    """arith: the fraction of the chain's variables written with their true value."""
    return _classify_arith(prompt, thinking)[1] if thinking.strip() else 0.0


def classify_response(prompt: str, response: str, reference: str | None = None,
                      family: str | None = None) -> tuple[str, bool]:
    """(class, styled) of a response: class is correct, salient (facts shortcut) or other."""
    family = _family(prompt, family)
    if family == "arith":
        ref = reference if reference not in (None, "") else world.solve_arith(prompt)
        return ("correct" if world.arith_correct(response, str(ref)) else "other"), \
            world.parse_response(response)[1]
    ref = reference if reference not in (None, "") else world.solve_facts(prompt)
    _, styled, correct, salient = world.facts_outcome(prompt, response, str(ref))
    return ("correct" if correct else "salient" if salient else "other"), styled


def behaviour_rates(rows: Iterable[dict], prefix: str = "behaviour/") -> dict[str, float]:
    """Rates of every thinking and response class, per family present in ``rows``.

    ``rows`` are dicts with prompt, thinking, response, and optionally
    reference and family. Keys: ``{prefix}{family}/think_{class}``,
    ``{prefix}{family}/response_{class}``, ``{prefix}{family}/styled`` and, for
    arith, ``{prefix}arith/steps_correct``.
    """
    by_family: dict[str, list[dict]] = {}
    for r in rows:
        fam = _family(r["prompt"], r.get("family"))
        by_family.setdefault(fam, []).append(r)
    out: dict[str, float] = {}
    for fam, rs in sorted(by_family.items()):
        n = len(rs)
        think = [classify_thinking(r["prompt"], r["thinking"], fam) for r in rs]
        resp = [classify_response(r["prompt"], r["response"], r.get("reference"), fam) for r in rs]
        for c in THINK_CLASSES[fam]:
            out[f"{prefix}{fam}/think_{c}"] = think.count(c) / n
        for c in RESPONSE_CLASSES:
            if fam == "arith" and c == "salient":
                continue
            out[f"{prefix}{fam}/response_{c}"] = sum(k == c for k, _ in resp) / n
        out[f"{prefix}{fam}/styled"] = sum(s for _, s in resp) / n
        if fam == "arith":
            out[f"{prefix}arith/steps_correct"] = float(np.mean(
                [steps_correct(r["prompt"], r["thinking"]) for r in rs]))
    return out
