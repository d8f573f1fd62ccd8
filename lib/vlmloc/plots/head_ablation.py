"""Figure of chapter 7 (head ablation): both tasks against the number of ablated heads."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .common import COLORS

__all__ = ["plot_head_ablation"]

_ROWS = {
    "classification_heads": "classification heads ablated",
    "localization_heads": "localization heads ablated",
}
_COLS = {"cls": ("Cls %", COLORS["cls"]), "loc": ("Loc %", COLORS["loc"])}


def plot_head_ablation(summary: Mapping, title: str) -> Figure:
    """2 x 2: {classification, localization} heads x {Cls, Loc} against k, with the random heads' band.

    Lines are the top-k heads of a task (± 1 SE); the grey band is random heads (mean over draws
    ± 1 SE), the dotted line the unablated baseline.
    """
    ab, base = summary["ablation"], summary["baseline"]
    fig, axes = plt.subplots(2, 2, figsize=(8.6, 5.6), sharex=True, squeeze=False)
    for i, (hs, row_title) in enumerate(_ROWS.items()):
        ks = sorted(int(k) for k in ab[hs])
        for j, (m, (label, color)) in enumerate(_COLS.items()):
            ax = axes[i][j]
            y = np.array([ab[hs][str(k)][m] for k in ks])
            se = np.array([ab[hs][str(k)][f"{m}_se"] for k in ks])
            r = np.array([ab["random"][str(k)][m] for k in ks])
            rse = np.array([ab["random"][str(k)][f"{m}_se"] for k in ks])
            ax.fill_between(
                ks, r - rse, r + rse, color=COLORS["paper"], alpha=0.3, lw=0, label="random heads"
            )
            ax.plot(ks, r, color=COLORS["paper"], lw=1)
            ax.errorbar(ks, y, yerr=se, color=color, marker="o", ms=4, lw=1.8, capsize=2, label=row_title)
            ax.axhline(base[m], color="black", ls=":", lw=1, label="no ablation")
            ax.set_ylim(0, max(100, float(np.nanmax(y + se)) + 2))
            ax.set_xscale("log")
            ax.set_xticks(ks)
            ax.set_xticklabels([str(k) for k in ks])
            ax.set_ylabel(label)
            if i == 1:
                ax.set_xlabel("heads ablated (k)")
            ax.set_title(f"{row_title}: {label.split()[0]}", fontsize=9)
            if j == 0:
                ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
