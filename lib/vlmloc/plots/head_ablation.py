"""Figure of chapter 7 (head ablation): each head set's drop beyond layer-matched random heads."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .common import COLORS

__all__ = ["plot_head_ablation"]

#: One panel per head set: (effect on the other task, effect on its own task).
_PANELS = {
    "cls-only heads ablated": (
        ("cls_heads_on_loc", "Loc", COLORS["loc"]),
        ("cls_heads_on_cls", "Cls", COLORS["cls"]),
    ),
    "loc-only heads ablated": (
        ("loc_heads_on_cls", "Cls", COLORS["cls"]),
        ("loc_heads_on_loc", "Loc", COLORS["loc"]),
    ),
}


def plot_head_ablation(result: Mapping, title: str, min_effect: float | None = None) -> Figure:
    """Drop beyond layer-matched random heads (points, ± 2 paired SE) against k, per head set and task.

    Above zero: the set hurts that task more than random heads in the same layers. The verdict
    reads the first series of each panel (the other task): recognition before localization
    predicts the left one above zero and the right one not.
    """
    ks = sorted(int(k) for k in result["by_k"])
    fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.4), sharey=True, squeeze=False)
    for ax, (panel, series) in zip(axes[0], _PANELS.items(), strict=True):
        for j, (effect, metric, color) in enumerate(series):
            pts = [(k, result["by_k"][str(k)]["effects"].get(effect)) for k in ks]
            pts = [(k, e) for k, e in pts if e is not None]
            if not pts:
                continue
            x = np.array([k for k, _ in pts], dtype=float) * (1.04 if j else 0.96)
            y = np.array([e["drop"] for _, e in pts])
            err = 2 * np.array([e["se"] for _, e in pts])
            style = (
                {"lw": 1.8, "marker": "o"} if j == 0 else {"lw": 1.0, "marker": "s", "ls": "--", "alpha": 0.7}
            )
            ax.errorbar(x, y, yerr=err, color=color, ms=4, capsize=2, label=f"on {metric}", **style)
        ax.axhline(0, color="black", lw=0.8)
        if min_effect:
            ax.axhline(min_effect, color=COLORS["paper"], lw=0.8, ls=":", label=f"{min_effect:g} points")
        ax.set_xscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("k (top heads per task)")
        ax.set_title(panel, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("drop beyond random heads (points)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
