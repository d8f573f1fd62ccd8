"""Figures of chapter 4 (position decoding): accuracy along the path, and per grid cell.

Both draw from the chapter's summary dict (``vlmloc.experiments.ch04_position_decoding.position_summary``) or
the probes' per-site results; nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .common import COLORS

__all__ = ["plot_cell_accuracy", "plot_decoding_path"]

_STAGE_SHADE = {"tower": "#f3f0e8", "projector": "#e8eef3", "llm": "#eef3e8"}
_LINES = {
    "row_acc": ("row", COLORS["loc"]),
    "col_acc": ("column", COLORS["cls"]),
    "cell_acc": ("cell", COLORS["object"]),
}


def _tick(site: Mapping) -> str:
    if site["stage"] == "tower":
        return f"T{site['layer']}"
    if site["stage"] == "projector":
        return "proj"
    return "in" if site["layer"] < 0 else f"L{site['layer']}"


def plot_decoding_path(summary: Mapping, paper_text: str | None = None) -> Figure:
    """Row, column and exact-cell test accuracy at every site, vision tower -> projector -> LLM.

    Stages are shaded and labelled; chance (one over the grid's rows; the tower's grid may be
    finer than the token grid) is a dashed step; the random-init control (the same probes on a
    copy of the model with that stage randomly initialised) dots its row and column accuracy in
    the colours of the trained probes' lines, where it was run; the best LLM layer is marked, and
    ``paper_text`` (the paper's peaks) is written beside the plot.
    """
    sites: Sequence[Mapping] = summary["sites"]
    x = np.arange(len(sites))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.42 * len(sites) + 2.5), 3.8))
    start = 0
    for i in range(1, len(sites) + 1):
        if i == len(sites) or sites[i]["stage"] != sites[start]["stage"]:
            stage = sites[start]["stage"]
            ax.axvspan(start - 0.5, i - 0.5, color=_STAGE_SHADE[stage], zorder=0)
            ax.text((start + i - 1) / 2, 1.01, {"tower": "vision tower", "projector": "proj.", "llm": "LLM"}[stage],
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)  # fmt: skip
            if i < len(sites):
                ax.axvline(i - 0.5, color="grey", lw=0.8)
            start = i
    for key, (label, color) in _LINES.items():
        ax.plot(x, [s[key] for s in sites], "-o", ms=3.5, color=color, label=label)
    chance = [100.0 / s["grid"][0] for s in sites]
    ax.step(x, chance, where="mid", color=COLORS["paper"], ls="--", lw=1, label="chance (row)")
    for key in ("row_acc", "col_acc"):  # one copy per stage: its line stops at the stage's border
        label, color = _LINES[key]
        legend = f"{label}, random-init stage"
        for stage in _STAGE_SHADE:
            idx = [i for i, s in enumerate(sites) if s["stage"] == stage and "random_init" in s]
            if idx:
                ys = [sites[i]["random_init"][key] for i in idx]
                ax.plot(idx, ys, ":", marker=".", ms=3, color=color, lw=1.2, label=legend)
                legend = None  # one legend entry per line kind
    best = summary["peaks"]["llm"]["site"]
    bi = next(i for i, s in enumerate(sites) if s["site"] == best)
    ax.axvline(bi, color="black", lw=0.8, ls="-.")
    ax.text(bi, 97, " best LLM layer", fontsize=7.5, va="top", ha="left" if bi < len(sites) - 2 else "right")
    ax.set_xticks(x, [_tick(s) for s in sites], fontsize=8)
    ax.set_xlim(-0.5, len(sites) - 0.5)
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy %")
    ax.set_title(
        f"{summary['model_id']}: decoding a visual token's position along the path", fontsize=10, pad=16
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if paper_text:
        ax.text(1.02, 0.02, paper_text, transform=ax.transAxes, fontsize=7.5, va="bottom", wrap=True)
    fig.tight_layout()
    return fig


def plot_cell_accuracy(panels: Mapping[str, Sequence[Sequence[float]]], metric: str = "exact-cell") -> Figure:
    """Heatmaps of accuracy per grid cell (one panel per site), the four corners outlined."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.4 * len(panels) + 0.8, 3.4), squeeze=False, layout="constrained"
    )
    for i, (ax, (title, cells)) in enumerate(zip(axes[0], panels.items(), strict=True)):
        a = np.asarray(cells, float)
        im = ax.imshow(a, vmin=0, vmax=100, cmap="viridis")
        r, c = a.shape
        for rr, cc in ((0, 0), (0, c - 1), (r - 1, 0), (r - 1, c - 1)):
            ax.add_patch(Rectangle((cc - 0.5, rr - 0.5), 1, 1, fill=False, ec="white", lw=1.6))
        step = max(1, c // 6)
        ax.set_xticks(range(0, c, step))
        ax.set_yticks(range(0, r, step))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("column")
        if i == 0:
            ax.set_ylabel("row")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.85, label=f"{metric} accuracy %")
    return fig
