"""Figures of chapter 5 (attention knockout): Loc and Cls against the blocked layer window.

Plain data in (the chapter's summary dict), a figure out; nothing here runs a model or imports an
experiment module.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from .common import COLORS

__all__ = ["plot_knockout_curves"]

_SET_STYLE = {
    "object": {"color": COLORS["object"], "marker": "o", "label": "object tokens"},
    "random": {"color": "#6c757d", "marker": "s", "label": "random tokens (as many)"},
    "image": {"color": "#264653", "marker": "^", "label": "whole image (upper bound)"},
}
_TASKS = (("localization", "loc", "Loc %"), ("classification", "cls", "Cls %"))


def plot_knockout_curves(summary: Mapping) -> Figure:
    """Two panels (Loc, Cls): the score after blocking each token set, over the window's first layer.

    The all-layer knockout sits at the right, apart from the curve; the baseline is a dashed line;
    the paper's layer range (scaled to this depth) is shaded by the windows whose centre lies in it.
    """
    windows = [w for w in summary["windows"] if w != "all"]
    firsts = [int(w.split("-")[0]) for w in windows]
    x_all = (max(firsts) + 1.5) if firsts else 0.0
    ko, base = summary["knockout"], summary["baseline"]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.6), sharex=True)
    lo, hi = summary["paper"]["layers"] if summary["paper"] else (1, 0)  # no paper range: nothing shaded
    half = (summary["window"] - 1) / 2  # window centre = first + half
    inside = [f for f in firsts if lo <= f + half <= hi]
    for ax, (_task, key, ylabel) in zip(axes, _TASKS, strict=True):
        if inside:
            ax.axvspan(
                min(inside) - 0.4,
                max(inside) + 0.4,
                color=COLORS["paper"],
                alpha=0.15,
                label=f"paper: {summary['paper']['words']} (scaled)",
            )
        ax.axhline(base[key], ls="--", color="black", lw=1, label="baseline")
        for name, style in _SET_STYLE.items():
            if name not in ko:
                continue
            ys = [ko[name][w][key] for w in windows]
            es = [ko[name][w][f"{key}_se"] for w in windows]
            ax.errorbar(firsts, ys, yerr=es, capsize=2, lw=1.5, ms=4, **style)
            if "all" in ko[name]:
                e = ko[name]["all"]
                ax.errorbar(
                    [x_all], [e[key]], yerr=[e[f"{key}_se"]], capsize=2, ms=5, ls="none",
                    color=style["color"], marker=style["marker"],
                )  # fmt: skip
        ax.set_xticks([*firsts, x_all], [*windows, "all"], fontsize=8)
        ax.set_xlabel(f"blocked layers (window of {summary['window']}, by first layer)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{summary['model_id']}: localization")
    axes[1].set_title(f"{summary['model_id']}: classification")
    axes[0].legend(fontsize=7, loc="center right")
    fig.tight_layout()
    return fig
