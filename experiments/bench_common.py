"""Helpers shared by the benchmark scripts in this folder."""

from __future__ import annotations


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Prints rows as aligned columns: the first left-aligned, the rest right-aligned.

    rows[0] is the header; a dashed rule follows it.
    """
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for j, row in enumerate(rows):
        print(
            "  ".join(
                cell.ljust(w) if c == 0 else cell.rjust(w)
                for c, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()
        )
        if j == 0:
            print("  ".join("-" * w for w in widths))
