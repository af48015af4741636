"""The embedded synthetic world: two task families, gold traces and solvers.

Every example is generated deterministically from an integer seed with a numpy
``Generator`` (`generate`). All text uses only characters of `CharTokenizer`'s
alphabet. The world's own tokenizer (`tokenizer`, ``tokenizer="world"``) adds
multi-character tokens: each fact of a facts prompt (``Al likes tea.``,
``Bo's pal is Al.``) and its question are single tokens, as are the arith
assignments (``b=a+``) and the numbers 10..99. A thinking step is then one
lookup a tiny model can learn. Measured on a 2-layer, 64-wide model trained on
complete facts traces only: with word tokens (``likes``, ``Al``, ``tea``) it
wrote the right second fact for 34-42% of held-out questions after 1600-4000
steps (picking one of the prompt's three things is 33%), because that hop needs
an induction circuit it did not form; with fact tokens it wrote both hops right
for 200 of 200 after 800 steps.

Families
========

``arith`` (verifiable, RLVR). A chain of 3-4 assignments over the variables
``a, b, c, d`` and a question on the last one::

    prompt    a=3;b=a+4;c=b-5;c?
    thinking  a=3 b=7 c=2
    reference 2

``a`` is 1..9; each later variable is the previous one ``+`` or ``-`` a constant
1..9 (`ARITH_CHAIN`, `ARITH_START`, `ARITH_OPERAND`, `ARITH_OPS`), and every value
stays within 0..19 (`VALUE_RANGE`). Each step of the thinking is one addition
or subtraction of small numbers; without the intermediate values the answer
needs two or three of them at once. Measured on the ablation's base policies
(4000 SFT steps of the behaviour mixture, 2-layer, 64-wide, three seeds): 100%
of the answers after complete thinking are correct, 0-3% after empty thinking
(a guess in 0..19 is right 5% of the time).

``facts`` (general QA, judged). Four ``X likes T.`` facts and one ``Q's pal is X.``
fact in random order, then a two-hop question::

    prompt    Bo likes jam. Al likes tea. Cy likes jam. Di likes fig.
              Bo's pal is Al. What does Bo's pal like?        (one line)
    thinking  Bo's pal is Al. Al likes tea.
    reference tea

Names (``Al, Bo, ...``) and things (``tea, jam, ...``) come from 12-word
vocabularies (`NAMES`, `THINGS`). The thing liked by the asked person's pal (the
answer) is the only thing of its kind in most prompts: with probability
``p_misleading`` (default 0.85) a distractor thing appears twice and the answer once
(plus one more singleton distractor, so "answer the thing named once" is no
shortcut either); otherwise the answer appears twice. Half of the prompts also
state what the asked person (``Q``) likes, so one-hop answers are wrong. The most
frequent thing in the prompt (the *salient* entity, ``metadata["salient"]``) is
therefore wrong in ~85% of the examples.

Responses
=========

`golden_response(example, styled)` is the canonical response: plain, the bare
answer (``tea``, ``21``); styled, the answer in the judge's favoured confident
phrase ``Surely <answer>!`` (``Surely tea!``).

The judges of these responses (``synthetic``, ``synthetic_rubric``) live in
`start_jax.world.judges`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import re
import zlib

import numpy as np

from start_jax.tokenizer import CharTokenizer

FAMILIES = ("arith", "facts")
NAMES = ("Al", "Bo", "Cy", "Di", "Ed", "Jo", "Lu", "Mo", "Ty", "Vi", "Zu", "Ki")
THINGS = ("tea", "jam", "pie", "fig", "egg", "ham", "oat", "yam", "bun", "nut", "cod", "gum")
VARIABLES = "abcd"
STYLE_PREFIX = "Surely"
ARITH_CHAIN = (3, 4)  # Variables per arith chain (inclusive range).
ARITH_START = (1, 9)  # Value of the first variable.
ARITH_OPERAND = (1, 9)  # Constant of each later step.
ARITH_OPS = "+-"
VALUE_RANGE = (0, 19)  # Every value of a chain stays in this range.
P_MISLEADING = 0.85


@dataclasses.dataclass
class Example:
    """One task: prompt, reference answer, gold thinking, family and metadata."""

    prompt: str
    reference: str
    thinking: str
    family: str
    metadata: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict) -> "Example":
        """Inverse of `to_row`; `metadata` may be JSON text or an already parsed dict."""
        meta = row.get("metadata") or {}
        if isinstance(meta, str):
            meta = json.loads(meta or "{}")
        return cls(
            prompt=row["prompt"],
            reference=row["reference"],
            thinking=row.get("thinking", ""),
            family=row.get("family") or meta.get("family", ""),
            metadata=meta,
        )

    def to_row(self) -> dict[str, str]:
        """The example as a flat dict of strings (metadata as JSON), as stored by tfds."""
        return {
            "prompt": self.prompt,
            "reference": self.reference,
            "thinking": self.thinking,
            "family": self.family,
            "metadata": json.dumps(self.metadata, sort_keys=True),
        }


def token_words() -> tuple[str, ...]:
    """The multi-character tokens of the world's tokenizer (`tokenizer`).

    Every fact (``Al likes tea.``, ``Bo's pal is Al.``) and facts question, the
    names, things and fixed words, the arith assignments (``a=``, ``b=a+``) and
    questions (``d?``), and the numbers 10..99, each with and without a leading
    space; everything else (digits, punctuation) is one character per token.
    """
    words = (
        list(NAMES)
        + list(THINGS)
        + ["likes", "pal", "is", "What", "does", "like", STYLE_PREFIX, "'s"]
    )
    words += [f"{n} likes {t}." for n in NAMES for t in THINGS]
    words += [f"{n}'s pal is {m}." for n in NAMES for m in NAMES if m != n]
    words += [f"What does {n}'s pal like?" for n in NAMES]
    words += [f"{v}=" for v in VARIABLES] + [f"{v}?" for v in VARIABLES]
    words += [f"{v}={u}{op}" for u, v in zip(VARIABLES, VARIABLES[1:]) for op in "+-*"]
    spaced = [" " + w for w in words if w != "'s"]
    numbers = [str(n) for n in range(10, 100)]
    return tuple(words + spaced + numbers + [" " + n for n in numbers])


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The embedded world's tokenizer: characters plus `token_words` (``tokenizer="world"``).

    A facts prompt is about 30 tokens instead of about 100 characters, and each
    name, thing and number the thinking looks up is a single token.
    """
    return CharTokenizer(words=token_words())


# --------------------------------------------------------------------------- arith


def _arith(rng: np.random.Generator) -> Example:
    lo_vars, hi_vars = ARITH_CHAIN
    n_vars = int(rng.integers(lo_vars, hi_vars + 1))
    names = VARIABLES[:n_vars]
    lo, hi = VALUE_RANGE
    values = {names[0]: int(rng.integers(ARITH_START[0], ARITH_START[1] + 1))}
    statements = [f"{names[0]}={values[names[0]]}"]
    for i in range(1, n_vars):
        left = names[i - 1]
        x = values[left]
        while True:
            op = ARITH_OPS[int(rng.integers(0, len(ARITH_OPS)))]
            operand = int(rng.integers(ARITH_OPERAND[0], ARITH_OPERAND[1] + 1))
            value = x + operand if op == "+" else x - operand
            if lo <= value <= hi:
                break
        values[names[i]] = value
        statements.append(f"{names[i]}={left}{op}{operand}")
    last = names[-1]
    prompt = ";".join(statements) + f";{last}?"
    thinking = " ".join(f"{v}={values[v]}" for v in names)
    return Example(
        prompt=prompt,
        reference=str(values[last]),
        thinking=thinking,
        family="arith",
        metadata={"family": "arith", "n_vars": n_vars, "values": [values[v] for v in names]},
    )


_ASSIGN = re.compile(r"^([a-z])=(-?\d+|[a-z])(?:([+\-*])(-?\d+|[a-z]))?$")


def solve_arith(prompt: str) -> int:
    """Evaluates an arith prompt (``a=3;b=a+4;b?``) and returns the asked value.

    Raises:
      ValueError: The prompt is not an arith chain.
    """
    question = prompt.strip().split(";")[-1].strip().rstrip("?")
    env = arith_values(prompt)
    if question not in env:
        raise ValueError(f"not an arith prompt: {prompt!r} (unknown variable {question!r})")
    return env[question]


def arith_values(prompt: str) -> dict[str, int]:
    """Every variable of an arith prompt with its value, in the order assigned.

    Raises:
      ValueError: A statement is malformed or uses an unknown variable.
    """
    *statements, _ = prompt.strip().split(";")
    env: dict[str, int] = {}

    def value(token: str) -> int:
        return env[token] if token.isalpha() else int(token)

    try:
        for s in statements:
            m = _ASSIGN.match(s.strip())
            if not m:
                raise ValueError(f"bad statement {s!r}")
            name, left, op, right = m.groups()
            x = value(left)
            if op:
                y = value(right)
                x = x + y if op == "+" else x - y if op == "-" else x * y
            env[name] = x
        return env
    except KeyError as e:
        raise ValueError(f"not an arith prompt: {prompt!r} (unknown variable {e})") from None


# --------------------------------------------------------------------------- facts


def _facts(rng: np.random.Generator, p_misleading: float = P_MISLEADING) -> Example:
    names = [NAMES[i] for i in rng.permutation(len(NAMES))[:5]]
    things = [THINGS[i] for i in rng.permutation(len(THINGS))[:3]]
    asked, pal, others = names[0], names[1], names[2:]
    answer, distractor, other = things
    misleading = bool(rng.random() < p_misleading)
    # The three other likers; half of the time the asked person is one of them.
    if rng.random() < 0.5:
        likers = [asked] + others[:2]
    else:
        likers = list(others)
    liked = [distractor, distractor, other] if misleading else [answer, distractor, other]
    liked = [liked[i] for i in rng.permutation(3)]
    facts = [f"{pal} likes {answer}."] + [f"{p} likes {t}." for p, t in zip(likers, liked)]
    facts.append(f"{asked}'s pal is {pal}.")
    facts = [facts[i] for i in rng.permutation(len(facts))]
    prompt = " ".join(facts) + f" What does {asked}'s pal like?"
    thinking = f"{asked}'s pal is {pal}. {pal} likes {answer}."
    salient = salient_entity(prompt)
    return Example(
        prompt=prompt,
        reference=answer,
        thinking=thinking,
        family="facts",
        metadata={
            "family": "facts",
            "asked": asked,
            "pal": pal,
            "salient": salient,
            "misleading": misleading,
            "one_hop": {p: t for p, t in zip(likers, liked)}.get(asked, ""),
        },
    )


_LIKES = re.compile(r"\b([A-Z][a-z]*) likes ([a-z]+)\.")
_PAL = re.compile(r"\b([A-Z][a-z]*)'s pal is ([A-Z][a-z]*)\.")
_QUESTION = re.compile(r"What does ([A-Z][a-z]*)'s pal like\?")


def solve_facts(prompt: str) -> str:
    """Walks the two hops of a facts prompt and returns the answer.

    Raises:
      ValueError: The prompt has no question, or a hop cannot be resolved.
    """
    f = parse_facts(prompt)
    if f["asked"] is None:
        raise ValueError(f"not a facts prompt: {prompt!r}")
    try:
        return f["likes"][f["pals"][f["asked"]]]
    except KeyError:
        raise ValueError(f"facts prompt cannot be answered: {prompt!r}") from None


def parse_facts(prompt: str) -> dict:
    """``{"asked": name or None, "pals": {name: pal}, "likes": {name: thing}}`` of a prompt."""
    q = _QUESTION.search(prompt)
    return {
        "asked": q.group(1) if q else None,
        "pals": dict(_PAL.findall(prompt)),
        "likes": dict(_LIKES.findall(prompt)),
    }


def salient_entity(prompt: str) -> str | None:
    """The unique most frequent `THINGS` word in the prompt, or None (none or a tie)."""
    counts = collections.Counter(w for w in re.findall(r"[a-z]+", prompt.lower()) if w in THINGS)
    top = counts.most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1]):
        return None
    return top[0][0]


# --------------------------------------------------------------------------- generation

HELD_OUT_SHARDS = 8  # One prompt in this many (by a hash of its text) is reserved for tests.


def is_held_out(prompt: str) -> bool:
    """Whether ``prompt`` belongs to the held-out part of the world (1 in `HELD_OUT_SHARDS`
    prompts, by a CRC-32 of the text): test splits draw only from it and train splits never
    do, so no training split of any config or seed holds a test prompt."""
    return zlib.crc32(prompt.encode()) % HELD_OUT_SHARDS == 0


def generate(
    family: str,
    n: int,
    seed: int,
    *,
    p_misleading: float = P_MISLEADING,
    exclude: set[str] | None = None,
    held_out: bool | None = None,
) -> list[Example]:
    """``n`` examples of ``family`` ("arith", "facts" or "mixed": 50/50), from ``seed``.

    The same arguments always give the same examples. ``exclude`` is a set of
    prompts to skip (e.g. the train prompts when generating a test split);
    ``held_out`` keeps only held-out prompts (True), only the others (False), or any (None;
    `is_held_out`).
    """
    if family not in FAMILIES + ("mixed",):
        raise ValueError(f"unknown family {family!r}; expected arith, facts or mixed")
    rng = np.random.default_rng(seed)
    out: list[Example] = []
    attempts = 0
    limit = (100 * n + 1000) * (HELD_OUT_SHARDS if held_out else 1)
    while len(out) < n:
        attempts += 1
        if attempts > limit:
            raise ValueError(
                f"cannot generate {n} distinct {family} examples outside "
                f"the {len(exclude or ())} excluded prompts"
            )
        f = family if family != "mixed" else FAMILIES[int(rng.integers(0, 2))]
        ex = _arith(rng) if f == "arith" else _facts(rng, p_misleading)
        if exclude is not None and ex.prompt in exclude:
            continue
        if held_out is not None and is_held_out(ex.prompt) != held_out:
            continue
        out.append(ex)
    return out


def generate_splits(
    family: str, sizes: dict[str, int], seed: int, *, p_misleading: float = P_MISLEADING
) -> dict[str, list[Example]]:
    """Disjoint splits: split k (in the order of ``sizes``) uses seed ``seed * 1000 + k``.

    The ``train`` split draws from the prompts that are not held out, every other split
    from the held-out ones (`is_held_out`), so a test prompt is never in the train split of
    any config or seed (the SFT, RL and answerer data included); prompts of earlier splits
    are also excluded from later ones.
    """
    seen: set[str] = set()
    splits = {}
    for k, (split, n) in enumerate(sizes.items()):
        splits[split] = generate(
            family,
            n,
            seed * 1000 + k,
            p_misleading=p_misleading,
            exclude=seen if k else None,
            held_out=split != "train",
        )
        seen.update(e.prompt for e in splits[split])
    return splits


def golden_response(example: Example, styled: bool = False) -> str:
    """The canonical response: ``tea`` / ``21``, or styled ``Surely tea!`` / ``Surely 21!``."""
    return style_answer(example.reference, styled)


def style_answer(answer: str, styled: bool) -> str:
    """``answer``, or the judge's favoured ``Surely <answer>!`` when ``styled``."""
    return f"{STYLE_PREFIX} {answer}!" if styled else answer


def infer_family(prompt: str) -> str:
    """ "arith" when the prompt assigns a variable (``a=...``), else "facts"."""
    return "arith" if re.search(r"\b[a-z]=", prompt) else "facts"
