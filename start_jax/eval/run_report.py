"""A run's workdir as one HTML page: its curves, its final table and sample rollouts.

`write_report(workdir)` reads what a run writes (`metrics.jsonl`, `samples.jsonl`) and
writes `<workdir>/report.html`, self-contained (the figures are embedded PNGs): the
rewards (training, task, evaluation and gold when logged), the lengths of the thinking
and the response, the rates of the task's behaviour classes where present, each with the
stage boundaries; a table of the first and last values of the main metrics; and the last
sampled rollouts with prompt, thinking and response shown apart. The command is
`python -m experiments.report --workdir=DIR`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os

CURVES = (
    ("Rewards", ("reward_mean", "reward/task", "eval/reward", "eval/gold_reward")),
    ("Training minus gold reward (evaluations)", ("eval/gold_gap",)),
    ("Lengths (tokens)", ("think_tokens", "response_tokens", "eval/think_tokens")),
    (
        "Budget hits and sampling",
        ("think_truncated", "response_truncated", "dynamic/filtered_frac"),
    ),
)
TABLE = (
    "reward_mean",
    "reward/task",
    "eval/reward",
    "eval/gold_reward",
    "eval/gold_gap",
    "think_tokens",
    "response_tokens",
    "think_truncated",
    "kl",
    "think/entropy",
    "response/entropy",
)


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _figure(rows: list[dict], title: str, keys) -> str | None:
    """A PNG (base64) of `keys` against the step, or None when none was logged."""
    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        return None
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for key in present:
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points), marker="." if len(points) < 40 else None, label=key)
    for a, b in zip(rows, rows[1:]):  # Stage boundaries.
        if a.get("stage") != b.get("stage"):
            ax.axvline(a["step"] + 0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table(rows: list[dict]) -> str:
    cells = []
    for key in TABLE:
        logged = [r[key] for r in rows if key in r]
        if logged:
            cells.append(
                f"<tr><td>{html.escape(key)}</td><td>{logged[0]:.4g}</td>"
                f"<td>{logged[-1]:.4g}</td></tr>"
            )
    return (
        "<table><tr><th>metric</th><th>first</th><th>last</th></tr>" + "".join(cells) + "</table>"
    )


def _samples(samples: list[dict], n: int) -> str:
    out = []
    for s in samples[-n:]:
        parts = "".join(
            f'<div class="{part}"><b>{part}</b><pre>{html.escape(str(s.get(part, "")))}</pre></div>'
            for part in ("prompt", "thinking", "response")
        )
        out.append(
            f'<div class="sample"><p>step {s.get("step")}, reward '
            f"{float(s.get('reward', float('nan'))):.3f}</p>{parts}</div>"
        )
    return "".join(out)


STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:auto}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
    ".sample{border:1px solid #ddd;margin:8px 0;padding:4px}"
    ".thinking pre{background:#f4f0ff}.response pre{background:#eef8ee}"
    "pre{white-space:pre-wrap;margin:2px}"
)


def write_report(workdir: str, out: str | None = None, samples: int = 6) -> str:
    """Writes the report of a run's workdir (default `<workdir>/report.html`); returns
    its path. Raises FileNotFoundError when the workdir has no metrics.jsonl."""
    rows = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    if not rows:
        raise FileNotFoundError(f"{workdir}/metrics.jsonl is missing or empty: not a run's workdir")
    behaviour = tuple(sorted({k for r in rows for k in r if k.startswith("behaviour/")}))
    figures = [
        (title, _figure(rows, title, keys))
        for title, keys in CURVES + (("Behaviour rates", behaviour),)
    ]
    body = [
        f"<h1>Run {html.escape(os.path.abspath(workdir))}</h1>",
        f"<p>{len(rows)} steps, {len({r.get('stage') for r in rows})} stages.</p>",
        *(
            f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" '
            f'src="data:image/png;base64,{png}">'
            for title, png in figures
            if png
        ),
        "<h2>First and last values</h2>",
        _table(rows),
        "<h2>Sample rollouts</h2>",
        _samples(_read_jsonl(os.path.join(workdir, "samples.jsonl")), samples)
        or "<p>No samples were written (log.samples_every = 0).</p>",
    ]
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>start_jax run</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )
    out = out or os.path.join(workdir, "report.html")
    with open(out, "w") as fh:
        fh.write(page)
    return out
