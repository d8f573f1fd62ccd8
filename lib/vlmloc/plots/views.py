"""Figures of chapter 3 (InternVL's views): Loc and Cls per condition and size, and one example's views."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from PIL import Image

from ..paper import MODELS, RESULTS, VIEWS_CONDITIONS
from .common import COLORS
from .containers import view_pixels

__all__ = ["VIEW_COLORS", "plot_view_example", "plot_views_by_size"]

_PAPER_MODEL = "OpenGVLab/InternVL3_5-8B-HF"
#: One colour per condition: object tokens in warm colours, random controls in greys.
VIEW_COLORS = {
    "baseline": "#4d4d4d",
    "global": "#e4572e",
    "local": "#2e86ab",
    "both": "#7b2cbf",
    "random_global": "#f2b6a0",
    "random_local": "#a9cfe0",
}
_LABELS = {
    "baseline": "baseline",
    "global": "object, thumbnail",
    "local": "object, tiles",
    "both": "object, both",
    "random_global": "random, thumbnail",
    "random_local": "random, tiles",
}


def plot_views_by_size(summary: Mapping, min_n: int = 30) -> Figure:
    """Grouped bars (± 1 SE): condition x size class, Loc above and Cls below; the paper as markers.

    Groups are all objects, then each size class with its n; a class with fewer than ``min_n``
    objects is drawn faded and labelled "no finding". Open diamonds mark InternVL-3.5-8B's numbers
    (over all sizes) where the paper reports one.
    """
    names = ["baseline", *[c for c in _LABELS if c != "baseline" and c in summary["ablation"]]]
    entries = {"baseline": summary["baseline"], **summary["ablation"]}
    sizes = [c for c in ("small", "medium", "large") if c in summary["baseline"].get("by_size", {})]
    groups = ["all", *sizes]
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.2), sharex=True)
    width = 0.8 / len(names)
    x = np.arange(len(groups))
    for ax, key, title in zip(
        axes, ("loc", "cls"), ("Localization (Loc)", "Classification (Cls)"), strict=True
    ):
        for i, name in enumerate(names):
            e = entries[name]
            vals, errs, alphas = [], [], []
            for g in groups:
                s = e if g == "all" else e.get("by_size", {}).get(g)
                vals.append(s[key] if s else 0.0)
                errs.append(s[f"{key}_se"] if s else 0.0)
                n = summary["baseline"]["n"] if g == "all" else summary["baseline"]["by_size"][g]["n"]
                alphas.append(1.0 if g == "all" or n >= min_n else 0.35)
            xs = x - 0.4 + (i + 0.5) * width
            bars = ax.bar(xs, vals, width, yerr=errs, color=VIEW_COLORS[name], capsize=2, label=_LABELS[name])
            for b, a in zip(bars, alphas, strict=True):
                b.set_alpha(a)
            paper = RESULTS[_PAPER_MODEL].get(VIEWS_CONDITIONS.get(name, ""), {}).get(key)
            if paper is not None:
                ax.plot(xs[0], paper, marker="D", mfc="white", mec="black", ms=6, ls="none")
        ax.set_ylabel(f"{key.capitalize()} %")
        ax.set_ylim(0, 105)
        ax.set_title(title, fontsize=10)
    labels = []
    for g in groups:
        n = summary["baseline"]["n"] if g == "all" else summary["baseline"]["by_size"][g]["n"]
        labels.append(f"{g}\n(n={n})" + ("\nno finding" if g != "all" and n < min_n else ""))
    axes[1].set_xticks(x, labels)
    handles, lbls = axes[0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], marker="D", mfc="white", mec="black", ls="none"))
    lbls.append(f"{MODELS[_PAPER_MODEL]} (paper, all sizes)")
    fig.legend(handles, lbls, loc="lower center", ncol=4, frameon=False, fontsize=8)
    fig.suptitle(
        f"{summary['model_id']}: the object's tokens replaced by the mean in one view or both "
        f"(n = {summary['n_samples']}, bars ± 1 SE)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _cells(ax, view: Any, indices: np.ndarray, px: int, color: str) -> int:
    local = np.asarray(indices, dtype=np.int64) - view.offset
    local = local[(local >= 0) & (local < view.n_tokens)]
    for k in local.tolist():
        r, c = divmod(k, view.cols)
        ax.add_patch(Rectangle((c * px, r * px), px, px, fc=color, ec="white", lw=0.4, alpha=0.65))
    return len(local)


def plot_view_example(
    image: Image.Image,
    views: Sequence[Any],
    sets: Mapping[str, np.ndarray],
    box: Sequence[float],
    title: str = "",
    px: int = 12,
) -> Figure:
    """The image, then every view as the model sees it with the tokens each ablation removes.

    ``sets`` holds the ``global`` (thumbnail) and ``local`` (tiles) index sets over all views;
    thumbnail cells are filled in the thumbnail's colour, tile cells in the tiles' colour.
    """
    fig, axes = plt.subplots(1, 1 + len(views), figsize=(2.6 * (1 + len(views)), 3.1), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(image)
    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=COLORS["object"], lw=1.5))
    for v in views:
        if v.kind == "local":
            rx0, ry0, rx1, ry1 = v.region
            ax.add_patch(Rectangle((rx0, ry0), rx1 - rx0, ry1 - ry0, fill=False, ec="white", ls="--", lw=1))
    ax.set_title(f"image {image.width}x{image.height}\n(dashed: tiles)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    for ax, v in zip(axes[0, 1:], views, strict=True):
        ax.imshow(view_pixels(image, v, px))
        which = "global" if v.kind == "global" else "local"
        n = _cells(ax, v, sets[which], px, VIEW_COLORS[which])
        ax.set_title(f"{v.name}: {n} of {v.n_tokens}\ntokens removed", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend(
        handles=[
            Patch(fc=VIEW_COLORS["global"], alpha=0.65, label="removed in 'thumbnail only'"),
            Patch(fc=VIEW_COLORS["local"], alpha=0.65, label="removed in 'tiles only'"),
            Patch(fc="none", ec=COLORS["object"], label="true box"),
        ],
        loc="lower center",
        ncol=3,
        frameon=False,
        fontsize=8,
    )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return fig
