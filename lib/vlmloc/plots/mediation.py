"""Figures of chapter 6 (causal mediation per head): MF maps, sparsity, controls, attribution.

Every function takes plain arrays (``[layers, heads]`` maps, lists of ``[layer, head]``) and
returns the figure; nothing here runs a model or imports an experiment module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .common import COLORS

__all__ = ["plot_attribution", "plot_controls", "plot_mf_maps", "plot_sparsity"]

_TASK_COLORS = {"classification": COLORS["cls"], "localization": COLORS["loc"]}


def _norm(maps: Sequence[np.ndarray]) -> TwoSlopeNorm:
    finite = np.concatenate([np.asarray(m, dtype=float).ravel() for m in maps])
    finite = finite[np.isfinite(finite)]
    hi = max(float(np.percentile(finite, 99.5)) if finite.size else 1.0, 1e-3)
    lo = min(float(np.percentile(finite, 0.5)) if finite.size else -1.0, -1e-3)
    return TwoSlopeNorm(0.0, max(lo, -hi), hi)  # negative tails are clipped to the positive range


def plot_mf_maps(
    maps: Mapping[str, np.ndarray],
    tops: Mapping[str, Sequence[Sequence[int]]],
    band: Sequence[int],
    title: str,
    band_label: str = "paper's layers, scaled",
) -> Figure:
    """One layer x head heatmap of mean MF per task; top heads outlined, the paper's layers bracketed."""
    tasks = list(maps)
    n_layers, n_heads = np.asarray(maps[tasks[0]]).shape
    width = max(3.2, 0.16 * n_heads + 1.6)
    height = max(2.8, 0.16 * n_layers + 1.0)
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(width * len(tasks) + 0.8, height + 0.5), squeeze=False, layout="constrained"
    )
    norm = _norm(list(maps.values()))
    im = None
    for ax, task in zip(axes[0], tasks, strict=True):
        im = ax.imshow(
            maps[task], cmap="RdBu_r", norm=norm, aspect="auto", origin="lower", interpolation="nearest"
        )
        for la, h in tops.get(task, []):
            ax.add_patch(Rectangle((h - 0.5, la - 0.5), 1, 1, fill=False, ec="black", lw=1.4))
        if band:
            ax.axhspan(band[0] - 0.5, band[-1] + 0.5, xmin=0, xmax=0.02, color="black")
            ax.axhline(band[0] - 0.5, color="black", lw=0.6, ls=":")
            ax.axhline(band[-1] + 0.5, color="black", lw=0.6, ls=":", label=band_label)
        ax.set_title(f"{task} (top {len(tops.get(task, []))} outlined)", fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        step = max(1, n_heads // 8)
        ax.set_xticks(range(0, n_heads, step))
        ax.set_yticks(range(0, n_layers, max(1, n_layers // 8)))
    if band:
        fig.legend(
            *axes[0][0].get_legend_handles_labels(), loc="outside lower center", fontsize=7, frameon=False
        )
    fig.colorbar(im, ax=axes[0].tolist(), label="mean MF", shrink=0.9)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_sparsity(curves: Mapping[str, np.ndarray], title: str, marks: Sequence[int] = (1, 5, 10)) -> Figure:
    """Cumulative share of the summed positive MF over heads ranked by MF, against equal heads."""
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    n = 0
    for task, curve in curves.items():
        curve = np.asarray(curve, dtype=float)
        n = curve.size
        x = np.arange(1, n + 1)
        color = _TASK_COLORS.get(task)
        ax.plot(x, curve, color=color, lw=1.8, label=task)
        for k in marks:
            if k <= n and np.isfinite(curve[k - 1]):
                ax.plot(k, curve[k - 1], "o", color=color, ms=4)
                ax.annotate(
                    f"{curve[k - 1]:.0f}%",
                    (k, curve[k - 1]),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                    color=color,
                )
    if n:
        ax.plot([0, n], [0, 100], color=COLORS["paper"], ls="--", lw=1, label="every head the same")
    ax.set_xscale("log")
    ax.set_xlabel("top heads (ranked by MF)")
    ax.set_ylabel("share of summed positive MF, %")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_controls(
    real: Mapping[str, np.ndarray],
    mismatched: Mapping[str, np.ndarray],
    se: Mapping[str, np.ndarray],
    title: str,
) -> Figure:
    """Every head's mean MF with the real source (ranked, ± 2 SE) and with a mismatched source (dots)."""
    tasks = list(real)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.3), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        r = np.asarray(real[task], dtype=float).ravel()
        order = np.argsort(-np.nan_to_num(r, nan=-np.inf), kind="stable")
        x = np.arange(1, r.size + 1)
        color = _TASK_COLORS.get(task)
        r, s = r[order], np.asarray(se[task], dtype=float).ravel()[order]
        ax.fill_between(x, r - 2 * s, r + 2 * s, color=color, alpha=0.25, lw=0)
        ax.plot(x, r, color=color, lw=1.6, label="real source (± 2 SE)")
        lo, hi = float(np.nanmin(r)), float(np.nanmax(r))
        if task in mismatched:
            m = np.asarray(mismatched[task], dtype=float).ravel()[order]
            lo, hi = min(lo, float(np.nanpercentile(m, 10))), max(hi, float(np.nanmax(m)))
            pad = 0.1 * (hi - lo)
            inside = (m >= lo - pad) & (m <= hi + pad)
            ax.plot(x[inside], m[inside], ".", color="black", ms=3, label="mismatched source")
            if (~inside).any():  # off-scale points sit on the edge, as triangles
                edge = np.where(m[~inside] < lo, lo - pad, hi + pad)
                ax.plot(x[~inside], edge, "v", color="black", ms=3, label="mismatched, off scale")
        pad = 0.12 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
        ax.axhline(0, color=COLORS["paper"], lw=0.8)
        ax.set_xlabel("head rank (by real-source MF)")
        ax.set_ylabel("mean MF")
        ax.set_title(task, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_attribution(
    exact: Mapping[str, np.ndarray],
    estimate: Mapping[str, np.ndarray],
    tops: Mapping[str, Sequence[Sequence[int]]],
    title: str,
) -> Figure:
    """Attribution-patching MF against the exact MF, one dot per head; the exact top heads highlighted."""
    tasks = list(exact)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        e, a = np.asarray(exact[task], dtype=float), np.asarray(estimate[task], dtype=float)
        color = _TASK_COLORS.get(task)
        ax.scatter(e.ravel(), a.ravel(), s=10, color=color, alpha=0.6, lw=0)
        top = tops.get(task, [])
        if top:
            ax.scatter(
                [e[la, h] for la, h in top],
                [a[la, h] for la, h in top],
                s=28,
                facecolor="none",
                edgecolor="black",
                lw=1,
                label="exact top heads",
            )
            ax.legend(fontsize=7)
        finite = np.concatenate([e.ravel(), a.ravel()])
        finite = finite[np.isfinite(finite)]
        if finite.size:
            lo, hi = float(np.percentile(finite, 1)), float(np.percentile(finite, 99))
            ax.plot([lo, hi], [lo, hi], color=COLORS["paper"], lw=0.8, ls="--")
        ax.set_xlabel("exact MF")
        ax.set_ylabel("attribution-patching MF")
        ax.set_title(task, fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
