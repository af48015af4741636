"""The truth about every rollout of the embedded world: thinking and response classes.

Because the world is synthetic, each rollout's thinking and response can be
classified against the truth of its prompt; `behaviour_rates` turns a batch of
decoded rows into the rates the trainer logs and Cross-Generation reports. The
cold-start mixture that produces these behaviours is `start_jax.world.behaviours`.

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

import re
from typing import Iterable

import numpy as np

from start_jax.world import generator as world
from start_jax.world.judges import arith_correct, facts_outcome, parse_response

THINK_CLASSES = {
    "facts": ("complete", "one_hop", "wrong_lookup", "empty", "other"),
    "arith": ("complete", "wrong_step", "skipped_step", "empty", "other"),
}
RESPONSE_CLASSES = ("correct", "salient", "other")
_ARITH_STEP = re.compile(r"^([a-z])=(-?\d+)$")


def _family(prompt: str, family: str | None) -> str:
    return family or world.infer_family(prompt)


# --------------------------------------------------------------------------- classification

_FACT = re.compile(r"([A-Z][a-z]*)'s pal is ([A-Z][a-z]*)\.|([A-Z][a-z]*) likes ([a-z]+)\.")


def _facts_statements(thinking: str):
    """Parsed facts of a thinking text, or None when any text is not a fact."""
    text = " ".join(thinking.split())
    out, pos = [], 0
    for m in _FACT.finditer(text):
        if text[pos : m.start()].strip():
            return None
        pos = m.end()
        out.append(
            ("pal", m.group(1), m.group(2)) if m.group(1) else ("likes", m.group(3), m.group(4))
        )
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
    if (
        len(stated) == 2
        and stated[0][0] == "pal"
        and stated[0][1] == asked
        and stated[1][0] == "likes"
    ):
        return "wrong_lookup"
    return "other"


def _classify_arith(prompt: str, thinking: str) -> tuple[str, float]:
    try:
        values = world.arith_values(prompt)
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


def classify_response(
    prompt: str, response: str, reference: str | None = None, family: str | None = None
) -> tuple[str, bool]:
    """(class, styled) of a response: class is correct, salient (facts shortcut) or other."""
    family = _family(prompt, family)
    if family == "arith":
        ref = reference if reference not in (None, "") else world.solve_arith(prompt)
        return ("correct" if arith_correct(response, str(ref)) else "other"), parse_response(
            response
        )[1]
    ref = reference if reference not in (None, "") else world.solve_facts(prompt)
    _, styled, correct, salient = facts_outcome(prompt, response, str(ref))
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
            out[f"{prefix}arith/steps_correct"] = float(
                np.mean([steps_correct(r["prompt"], r["thinking"]) for r in rs])
            )
    return out
