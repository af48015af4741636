"""Figures of the evaluations: Cross-Generation score matrices as heat maps.

matplotlib is imported when a figure is drawn (with the Agg backend), so
importing this module costs nothing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def heatmaps(
    path: str,
    panels: Sequence[tuple],
    *,
    xlabel: str = "answerer",
    ylabel: str | None = "thinking from",
    colorbar_label: str = "mean response-only reward",
    fontsize: float | None = None,
    dpi: int = 120,
) -> None:
    """Saves score matrices side by side as heat maps (PNG) on one colour scale.

    Args:
      path: the PNG file.
      panels: one ``(title, row labels, column labels, matrix [rows, columns])``
        per heat map (a Cross-Generation matrix: sources x answerers).
      fontsize: of the values written in the cells and of the row labels
        (matplotlib's default when None).

    The scale runs from 0 to max(1, largest value); a cell's value is written in
    white on dark cells (below 0.6 of the scale) and in black on light ones.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (title, list(rows), list(cols), np.asarray(m, np.float64))
        for title, rows, cols, m in panels
    ]
    vmax = max([1.0] + [float(m.max()) for *_, m in panels])
    width = sum(1.4 * len(cols) + 2.5 for _, _, cols, _ in panels)
    height = 0.55 * max(len(rows) for _, rows, _, _ in panels) + 1.5
    fig, axes = plt.subplots(
        1, len(panels), figsize=(width, height), squeeze=False, layout="constrained"
    )
    for ax, (title, rows, cols, m) in zip(axes[0], panels):
        im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(rows)), rows, fontsize=fontsize)
        ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{m[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if m[i, j] < 0.6 * vmax else "black",
                )
        ax.set_title(title)
    fig.colorbar(im, ax=list(axes[0]), label=colorbar_label, shrink=0.8 if len(panels) > 1 else 1.0)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
