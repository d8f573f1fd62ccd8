"""Figures of chapter 2 (containerization): token sets, ablation bars, padding and shuffling.

Token edits are drawn in pixel space: each visual token is shown as the image patch of its cell,
so "copy token s into cell t" moves patch s to cell t. This is what the edit does to the LLM's
input sequence, with patches standing in for the (unreadable) embedding vectors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from ..paper import INTERNVL_8B, LLAVA_7B, MODELS, conditions_of, paper_result
from .common import COLORS

__all__ = [
    "plot_ablation_bars",
    "plot_box_area_by_padding",
    "plot_grounding_contrast",
    "plot_padding_examples",
    "plot_shuffle",
    "plot_token_sets",
    "view_pixels",
]

_PAD = (0.481, 0.458, 0.408)  # CLIP's mean colour, what LLaVA pads with
_SET_COLORS = {
    "object": COLORS["object"],
    "register": "#7b2cbf",
    "ig": "#2a9d8f",
    "random": "#6c757d",
    "object+1": "#f4a261",
    "object+2": "#e9c46a",
}
_PAPER_MARKERS = {LLAVA_7B: "D", INTERNVL_8B: "s"}
#: Chapter 2's condition names (baseline, ablated sets, shuffles) -> the paper's.
_PAPER_CONDITION = conditions_of("baseline", "ablation", "shuffle")
_LABELS = {
    "baseline": "baseline",
    "object": "object",
    "register": "register",
    "ig": "IG",
    "random": "random",
    "object+1": "object+1",
    "object+2": "object+2",
    "global": "global\nshuffle",
    "intra_object": "intra-object\nshuffle",
}


# --- pixel-space rendering of a view --------------------------------------------------------------


def view_pixels(image: Image.Image, view: Any, px: int = 12) -> np.ndarray:
    """The view as the model sees it, ``px`` pixels per token cell: ``(rows*px, cols*px, 3)`` floats in [0, 1].

    The view's region of the original image (which may extend past it: LLaVA's padding) is
    resampled onto its token grid; outside the image is CLIP's mean colour.
    """
    x0, y0, x1, y1 = view.region
    w, h = view.cols * px, view.rows * px
    canvas = Image.new("RGB", (w, h), tuple(int(255 * c) for c in _PAD))
    sx, sy = w / (x1 - x0), h / (y1 - y0)
    iw, ih = image.size
    # the part of the image inside the region, pasted at its place on the canvas
    cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(iw), x1), min(float(ih), y1)
    if cx1 > cx0 and cy1 > cy0:
        part = image.crop((int(cx0), int(cy0), int(math.ceil(cx1)), int(math.ceil(cy1))))
        size = (max(1, round((cx1 - cx0) * sx)), max(1, round((cy1 - cy0) * sy)))
        canvas.paste(part.resize(size, Image.BILINEAR), (round((cx0 - x0) * sx), round((cy0 - y0) * sy)))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _apply_copies(pixels: np.ndarray, view: Any, edit: Any, px: int) -> np.ndarray:
    """Move patches as a copy/permute ``TokenEdit`` moves tokens (positions are token indices here)."""
    out = pixels.copy()
    if edit is None or edit.sources is None:
        return out
    for t, s in zip(edit.positions.tolist(), edit.sources.tolist(), strict=True):
        lt, ls = t - view.offset, s - view.offset
        if not (0 <= lt < view.n_tokens and 0 <= ls < view.n_tokens):
            continue
        (rt, ct), (rs, cs) = divmod(lt, view.cols), divmod(ls, view.cols)
        out[rt * px : (rt + 1) * px, ct * px : (ct + 1) * px] = pixels[
            rs * px : (rs + 1) * px, cs * px : (cs + 1) * px
        ]
    return out


def _to_view(view: Any, box: Sequence[float], px: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = view.region
    sx, sy = view.cols * px / (x1 - x0), view.rows * px / (y1 - y0)
    return ((box[0] - x0) * sx, (box[1] - y0) * sy, (box[2] - x0) * sx, (box[3] - y0) * sy)


def _rect(ax, box, color, ls="-", lw=1.8, fill=False, alpha=1.0) -> None:
    x0, y0, x1, y1 = box
    ax.add_patch(
        Rectangle(
            (x0, y0),
            x1 - x0,
            y1 - y0,
            fill=fill,
            ec=color if not fill else "none",
            fc=color,
            ls=ls,
            lw=lw,
            alpha=alpha,
        )
    )


def _cells(ax, grid: np.ndarray, px: int, color: str, alpha: float = 0.45, outline: bool = False) -> None:
    for r, c in zip(*np.nonzero(grid), strict=True):
        if outline:
            ax.add_patch(Rectangle((c * px, r * px), px, px, fill=False, ec=color, lw=0.8))
        else:
            ax.add_patch(Rectangle((c * px, r * px), px, px, fc=color, ec="none", alpha=alpha))


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _grid_of(view: Any, indices: np.ndarray) -> np.ndarray:
    g = np.zeros(view.n_tokens, bool)
    local = np.asarray(indices, dtype=np.int64) - view.offset
    g[local[(local >= 0) & (local < view.n_tokens)]] = True
    return g.reshape(view.rows, view.cols)


# --- figures --------------------------------------------------------------------------------------


def plot_token_sets(
    image: Image.Image,
    view: Any,
    sets: Mapping[str, np.ndarray],
    n_visual: int,
    title: str = "",
    px: int = 12,
) -> Figure:
    """One panel per token set: its cells of ``view`` (for InternVL the thumbnail) filled on the image.

    ``sets`` maps a strategy name to token indices over all views; each panel's title gives the
    set's size over all views, ``n_visual`` tokens in total.
    """
    pixels = view_pixels(image, view, px)
    names = list(sets)
    fig, axes = plt.subplots(1, len(names), figsize=(2.5 * len(names), 2.9), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        ax.imshow(pixels)
        idx = np.asarray(sets[name])
        grid = _grid_of(view, idx)
        _cells(ax, grid, px, _SET_COLORS.get(name, "#333333"), alpha=0.6)
        ax.set_title(
            f"{name}: {len(idx)} tokens\n({100 * len(idx) / n_visual:.1f}% of {n_visual})", fontsize=9
        )
        _clean(ax)
    fig.suptitle(title or f"Token sets, drawn on the {view.name} view", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def _paper_marks(ax, x: float, condition: str, key: str, label_done: set) -> None:
    """Open markers at the paper's ``key`` rate for ``condition``, one per paper model that reports it."""
    for mid, marker in _PAPER_MARKERS.items():
        p = paper_result(mid, _PAPER_CONDITION.get(condition))
        if p is None or p.get(key) is None:
            continue
        label = f"{MODELS[mid]} (paper)"
        ax.plot(
            x,
            p[key],
            marker=marker,
            mfc="white",
            mec="black",
            ms=6,
            ls="none",
            label=None if label in label_done else label,
        )
        label_done.add(label)


def _bars(ax, names: Sequence[str], entries: Sequence[Mapping], key: str, color: str, ylabel: str) -> None:
    x = np.arange(len(names))
    vals = [e[key] for e in entries]
    errs = [e.get(f"{key}_se", 0.0) for e in entries]
    ax.bar(
        x,
        vals,
        0.6,
        yerr=errs,
        color=[COLORS["paper"] if n == "baseline" else color for n in names],
        capsize=3,
    )
    done: set = set()
    for xi, n in zip(x, names, strict=True):
        _paper_marks(ax, xi, n, key, done)
    ax.axhline(entries[0][key], color="black", lw=0.8, ls=":")
    ax.set_xticks(x, [_LABELS.get(n, n) for n in names], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    if done:
        ax.legend(frameon=False, fontsize=7, loc="upper right")


def plot_ablation_bars(summary: Mapping) -> Figure:
    """Loc and Cls under each ablation (bars, ± 1 SE), the paper's numbers as open markers."""
    names = ["baseline", *summary["ablation"]]
    entries = [summary["baseline"], *summary["ablation"].values()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    _bars(axes[0], names, entries, "loc", COLORS["loc"], "Loc %")
    _bars(axes[1], names, entries, "cls", COLORS["cls"], "Cls %")
    axes[0].set_title("Localization", fontsize=10)
    axes[1].set_title("Classification", fontsize=10)
    fig.suptitle(
        f"{summary['model_id']}: tokens replaced by the mean visual embedding (n = {summary['n_samples']}, bars ± 1 SE)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def plot_padding_examples(
    examples: Sequence[Mapping],
    px: int = 12,
) -> Figure:
    """Rows of examples, columns p = 0, 1, 2: the padded view (patches moved as the tokens are), the
    ring of copies outlined, the true box (solid) and the predicted box (dashed).

    Each example is ``{"image", "view", "box", "category", "p": {p: {"edit", "grid", "pred", "area"}}}``
    with ``grid`` the grown object cells of ``view`` and ``pred`` the predicted box (or None).
    """
    ps = sorted(examples[0]["p"]) if examples else [0, 1, 2]
    fig, axes = plt.subplots(
        len(examples), len(ps), figsize=(2.7 * len(ps), 2.8 * len(examples)), squeeze=False
    )
    for row, ex in zip(axes, examples, strict=True):
        base = view_pixels(ex["image"], ex["view"], px)
        for ax, p in zip(row, ps, strict=True):
            d = ex["p"][p]
            ax.imshow(_apply_copies(base, ex["view"], d.get("edit"), px))
            _cells(ax, d["grid"], px, "white", outline=True)
            _rect(ax, _to_view(ex["view"], ex["box"], px), COLORS["object"])
            if d.get("pred") is not None:
                _rect(ax, _to_view(ex["view"], d["pred"], px), COLORS["pred"], ls="--", lw=2.2)
                label = f"box {d['area']:.0f}% of image"
            else:
                label = "no box parsed"
            ax.set_title(f"{ex['category']}, p = {p}: {label}", fontsize=8)
            ax.set_xlim(-0.5, base.shape[1] - 0.5)
            ax.set_ylim(base.shape[0] - 0.5, -0.5)
            _clean(ax)
    fig.tight_layout()
    return fig


def plot_box_area_by_padding(
    areas: Mapping[int, Sequence[float]], container: Mapping[int, float], model_id: str = ""
) -> Figure:
    """Per p, the predicted box areas of all samples (dots and box plot), their mean, and the
    mean area of the container's box (the grown token cells) for comparison."""
    ps = sorted(areas)
    fig, ax = plt.subplots(figsize=(6.2, 3.4))
    rng = np.random.default_rng(0)
    data = [np.asarray([a for a in areas[p] if a is not None], float) for p in ps]
    non_empty = [i for i, d in enumerate(data) if len(d)]
    if non_empty:
        ax.boxplot(
            [data[i] for i in non_empty], positions=[ps[i] for i in non_empty], widths=0.35, showfliers=False
        )
    first = next((ps[i] for i in non_empty), None)
    for p, d in zip(ps, data, strict=True):
        if len(d):
            ax.scatter(
                p + rng.uniform(-0.12, 0.12, len(d)), d, s=8, color=COLORS["pred"], alpha=0.5, zorder=3
            )
            ax.plot(
                p,
                d.mean(),
                "o",
                color="black",
                ms=6,
                zorder=4,
                label="mean predicted" if p == first else None,
            )
    ax.plot(ps, [container[p] for p in ps], "s--", color=COLORS["object"], label="container box (mean)")
    ax.set_xticks(ps, [f"p = {p}\n({len(d)} boxes)" for p, d in zip(ps, data, strict=True)])
    ax.set_xlim(min(ps) - 0.5, max(ps) + 0.5)
    ax.set_ylabel("predicted box, % of image area")
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(f"{model_id}: predicted box area against the padding p", fontsize=10)
    fig.tight_layout()
    return fig


def plot_shuffle(
    summary: Mapping,
    image: Image.Image,
    view: Any,
    edits: Mapping[str, Any],
    object_grid: np.ndarray,
    px: int = 12,
) -> Figure:
    """Left: the view with its patches moved as each shuffle moves the tokens. Right: Loc and Cls."""
    base = view_pixels(image, view, px)
    fig = plt.figure(figsize=(12, 3.3))
    gs = fig.add_gridspec(1, 5, width_ratios=[1, 1, 1, 1.3, 1.3])
    panels = [("original", None), *[(k, edits[k]) for k in edits]]
    for i, (name, edit) in enumerate(panels):
        ax = fig.add_subplot(gs[0, i])
        ax.imshow(_apply_copies(base, view, edit, px))
        _cells(ax, object_grid, px, "white", outline=True)
        ax.set_title(_LABELS.get(name, name).replace("\n", " "), fontsize=9)
        _clean(ax)
    names = ["baseline", *summary["shuffle"]]
    entries = [summary["baseline"], *summary["shuffle"].values()]
    for j, (key, color, label) in enumerate(
        (("loc", COLORS["loc"], "Loc %"), ("cls", COLORS["cls"], "Cls %"))
    ):
        ax = fig.add_subplot(gs[0, 3 + j])
        _bars(ax, names, entries, key, color, label)
    fig.suptitle(
        f"{summary['model_id']}: shuffled visual tokens (object cells outlined; bars ± 1 SE, markers = paper)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def plot_grounding_contrast(summary: Mapping, contrast: Mapping) -> Figure:
    """Left: Loc at baseline and under each shuffle, this model beside the contrast model.
    Right: mean predicted box area against the padding p for both, with the container's box."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    conds = ["baseline", "intra_object", "global"]
    width = 0.38
    for k, (s, color) in enumerate(((summary, COLORS["loc"]), (contrast, COLORS["pred"]))):
        entries = [s["baseline"], *(s["shuffle"][c] for c in conds[1:])]
        xs = np.arange(len(conds)) + (k - 0.5) * width
        ax1.bar(
            xs,
            [e["loc"] for e in entries],
            width,
            yerr=[e["loc_se"] for e in entries],
            color=color,
            alpha=0.9 if k == 0 else 0.6,
            label=s["model_id"],
            capsize=3,
        )
        ps = [int(p) for p in s["padding"]]
        areas = [s["padding"][str(p)]["box_area"] for p in ps]
        ses = [s["padding"][str(p)]["box_area_se"] for p in ps]
        ax2.errorbar(
            ps,
            [np.nan if a is None else a for a in areas],
            yerr=ses,
            marker="o",
            color=color,
            label=s["model_id"],
            capsize=3,
        )
    ps = [int(p) for p in summary["padding"]]
    ax2.plot(
        ps,
        [summary["padding"][str(p)]["container_area"] for p in ps],
        "s--",
        color=COLORS["object"],
        label="container box",
    )
    ax1.set_xticks(range(len(conds)), ["baseline", "intra-object\nshuffle", "global\nshuffle"])
    ax1.set_ylabel("Loc %")
    ax1.set_ylim(0, 100)
    ax1.legend(frameon=False, fontsize=8)
    ax1.set_title("localization under shuffles (± 1 SE)", fontsize=10)
    ax2.set_xticks(ps, [f"p = {p}" for p in ps])
    ax2.set_ylabel("mean predicted box, % of image")
    ax2.set_ylim(bottom=0)
    ax2.legend(frameon=False, fontsize=8)
    ax2.set_title("predicted box area against the padding", fontsize=10)
    fig.tight_layout()
    return fig
