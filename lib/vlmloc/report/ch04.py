"""Chapter 4's tables and findings: where a visual token's row and column can be read, beside the paper's peaks.

The numbers come from :func:`vlmloc.experiments.ch04_position_decoding.position_summary` (probe
accuracies per site, peaks per stage, the random-init control, corners against edges and the
interior); the paper's peak layers from :mod:`vlmloc.paper`. Everything takes the summary dict, so the tables and the one-sentence
findings are testable without a model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..experiments.ch04_position_decoding import (
    CHAPTER,
    CONTROL_MIN,
    CONTROL_Z,
    mean_row_col,
    paper_scale_cost,
)
from ..families import FAMILIES, Family
from ..paper import MODELS, POSITION_PEAKS, POSITION_PROBES
from .common import chapter_runs

__all__ = [
    "axis_finding",
    "control_finding",
    "control_table",
    "corner_finding",
    "corner_table",
    "corner_verdict",
    "decoding_finding",
    "paper_scale_rows",
    "peak_table",
    "site_table",
    "tower_finding",
    "views_finding",
    "views_table",
]


# --------------------------------------------------------------------------- tables


def paper_scale_rows() -> list[dict]:
    """The cost table's rows for the paper's runs (50k/10k images): activations per batch (batch 16
    on LLaVA, 4 on InternVL), image forwards, GPU hours at 150 TFLOP/s and one LLM layer's training
    tokens, which streaming never holds."""
    rows = []
    for mid in POSITION_PEAKS:
        batch = 16 if "llava" in mid else 4
        c = paper_scale_cost(
            mid,
            POSITION_PROBES["n_train"],
            POSITION_PROBES["n_test"],
            POSITION_PROBES["epochs"],
            batch_size=batch,
        )
        rows.append(
            {
                "model": f"{mid} at 50k/10k",
                "activations per batch": f"{c['batch_gb']:.1f} GB (batch {batch})",
                "image forwards": c["forwards"],
                "time": f"~{c['hours']:.0f} GPU hours at 150 TFLOP/s",
                "one LLM layer, all training tokens": f"{c['one_llm_layer_all_train_gb']:.0f} GB (never held)",
            }
        )
    return rows


def site_table(summary: Mapping) -> pd.DataFrame:
    """One row per site in path order: row, column and cell accuracy, chance, and the random-init control.

    The control columns (the copy's row/column mean and the selectivity, in points with its
    image-level SE) are empty where no copy was probed (the LLM input, or a run without control).
    """
    per_site = (summary.get("control") or {}).get("sites", {})
    rows = []
    for s in summary["sites"]:
        g = s["grid"]
        c = per_site.get(s["site"])
        rows.append(
            {
                "site": s["site"],
                "stage": s["stage"],
                "grid": f"{g[0]}x{g[1]}",
                "row %": s["row_acc"],
                "col %": s["col_acc"],
                "cell %": s["cell_acc"],
                "chance row %": round(100 / g[0], 2),
                "row/col %": round(mean_row_col(s), 2),
                "random-init row/col %": None if c is None else round(c["random_init_acc"], 2),
                "selectivity": None if c is None else f"{c['selectivity']:+.1f} ± {c['se']:.1f}",
            }
        )
    return pd.DataFrame(rows).set_index("site")


def control_table(summary: Mapping) -> pd.DataFrame:
    """Per stage, at its peak site: the trained model, the random-init copy, the selectivity and the verdict."""
    rows = []
    for stage, c in ((summary.get("control") or {}).get("stages") or {}).items():
        rows.append({"stage": stage, "site": c["site"], "trained row/col %": round(c["acc"], 1),
                     "random-init row/col %": round(c["random_init_acc"], 1),
                     "selectivity (points)": f"{c['selectivity']:+.1f} ± {c['se']:.1f}",
                     f"passes (> {CONTROL_Z:g} SE, >= {CONTROL_MIN:g} points)": c["ok"]})  # fmt: skip
    return pd.DataFrame(rows).set_index("stage") if rows else pd.DataFrame()


_GROUPS = ("corners", "edges", "interior")


def corner_table(summary: Mapping) -> pd.DataFrame:
    """Cell, row and column accuracy at the corners, the other border cells (edges) and the interior, ± SE."""
    rows = []
    for label, reg in summary["corners"].items():
        for metric in ("cell_acc", "row_acc", "col_acc"):
            rows.append({"site": f"{reg['site']} ({label.replace('_', ' ')})", "metric": metric.replace("_acc", ""),
                         **{f"{g} %": _group_cell(reg[metric], g) for g in _GROUPS}})  # fmt: skip
    return pd.DataFrame(rows).set_index(["site", "metric"])


def _group_cell(d: Mapping, group: str) -> str:
    if d.get(group) is None:
        return "—"
    se = (d.get("se") or {}).get(group)
    return f"{d[group]:.1f}" + ("" if se is None else f" ± {se:.1f}")


def peak_table(collected: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """The results page's rows: per model run, the peak per stage and the corners, beside the paper's peaks."""
    rows = []
    for model, s in chapter_runs(collected, CHAPTER):
        p = s["peaks"]
        first, last = (t for t in (s["sites"][0], [x for x in s["sites"] if x["stage"] == "tower"][-1]))
        rows.append(
            {
                "model": model,
                "source": "this book",
                "tower first -> last (row/col mean %)": f"{mean_row_col(first):.1f} -> {mean_row_col(last):.1f}",
                "projector %": round(mean_row_col(p["projector"]), 1),
                "LLM peak layer": f"{p['llm']['layer']} of {sum(x['stage'] == 'llm' and x['layer'] >= 0 for x in s['sites'])}",
                "LLM peak %": round(mean_row_col(p["llm"]), 1),
                "LLM peak vs random-init LLM (points)": _selectivity(s, "llm"),
                "corners / edges / interior at projector (cell %)": _ci(
                    s["corners"]["projector"]["cell_acc"]
                ),
                "chance row %": s["chance"]["row"],
            }
        )
    for mid, peak in POSITION_PEAKS.items():
        rows.append(
            {
                "model": MODELS[mid],
                "source": "paper",
                "LLM peak layer": f"{peak['layer']} of {peak['n_layers']}",
            }
        )
    return pd.DataFrame(rows)


def _ci(d: Mapping) -> str:
    return " / ".join("—" if d.get(g) is None else f"{d[g]:.1f}" for g in _GROUPS)


def _selectivity(summary: Mapping, stage: str) -> str:
    c = ((summary.get("control") or {}).get("stages") or {}).get(stage)
    return "—" if c is None else f"{c['selectivity']:+.1f} ± {c['se']:.1f}"


# --------------------------------------------------------------------------- findings in one sentence


def tower_finding(summary: Mapping) -> str:
    """Whether the tower keeps or loses positions by its last layer."""
    tower = [s for s in summary["sites"] if s["stage"] == "tower"]
    first, last = tower[0], tower[-1]
    ch = summary["tower_chance"]["row"]
    a, b = mean_row_col(first), mean_row_col(last)
    model = summary["model_id"]
    if max(a, b) < ch + 2:
        verdict = f"{model}'s tower carries almost no position at any layer (within 2 points of chance)"
    elif b >= 0.9 * a:
        verdict = (f"{model}'s tower keeps positions to its last layer, unlike the CLIP-like towers of the paper; "
                   "that is a finding about the toy")  # fmt: skip
    elif b <= ch + 0.25 * (a - ch):
        verdict = f"as in the paper, {model}'s tower has lost most of the positional signal by its last layer"
    else:
        verdict = f"{model}'s tower loses part of the positional signal with depth, less than the paper describes for CLIP"
    return (
        f"Row and column accuracy (mean of the two) {_moves(a, b)} from {a:.1f}% after tower layer {first['layer']} to "
        f"{b:.1f}% after layer {last['layer']} (chance {ch:.1f}% on its {first['grid'][0]}x{first['grid'][1]} patch "
        f"grid): {verdict}."
    )


def _moves(a: float, b: float) -> str:
    """'falls', 'rises' or 'stays about the same' from ``a`` to ``b`` (percent; half a point is noise)."""
    return "falls" if b < a - 0.5 else "rises" if b > a + 0.5 else "stays about the same"


def _depth_words(depth: float, paper_depth: float) -> str:
    if abs(depth - paper_depth) <= 0.15:
        return "at a similar depth"
    return "deeper" if depth > paper_depth else "earlier"


def decoding_finding(summary: Mapping) -> str:
    """Where decodability falls and rises along the path, beside the paper's peak."""
    p, ch = summary["peaks"], summary["chance"]["row"]
    sites = {s["site"]: s for s in summary["sites"]}
    n_llm = sum(s["stage"] == "llm" and s["layer"] >= 0 for s in summary["sites"])
    proj, llm_in, best = sites["projector"], sites["llm.input"], p["llm"]
    last = sites[f"llm.{n_llm - 1}"]
    b, e = mean_row_col(best), mean_row_col(last)
    paper = summary.get("paper_peak")
    head = (
        f"On {summary['model_id']}, row/column accuracy (the mean of the two probes) is {mean_row_col(proj):.1f}% at "
        f"the projector and {mean_row_col(llm_in):.1f}% at the LLM input (chance {ch:.1f}%)"
    )
    if b - mean_row_col(llm_in) <= 5:
        tail = f" and does not rise in the LLM (best {b:.1f}% after layer {best['layer']})"
        ref = (
            f", unlike the paper's {paper['model']}, whose probes peak at layer {paper['layer']} of {paper['n_layers']}"
            if paper
            else ""
        )
        return head + tail + ref + "."
    layers = [s for s in summary["sites"] if s["stage"] == "llm" and s["layer"] >= 0]
    if b - e > 3:
        at = best
        tail = (f", then rises in the LLM to a peak of {b:.1f}% after layer {best['layer']} of {n_llm} "
                f"(depth {best['depth']:.2f}) and falls to {e:.1f}% after the last")  # fmt: skip
    else:
        first = next(s for s in layers if mean_row_col(s) >= b - 1)
        at = {**first, "depth": round((first["layer"] + 1) / n_llm, 3)}
        tail = (f", then rises in the LLM and levels off: within a point of its best ({b:.1f}%) from layer "
                f"{at['layer']} of {n_llm} (depth {at['depth']:.2f}) to the last")  # fmt: skip
    ref = ""
    if paper:
        pd_ = paper["layer"] / paper["n_layers"]
        ref = (f"; the paper's {paper['model']} also rebuilds positions in the LLM, peaking at layer {paper['layer']} "
               f"of {paper['n_layers']} (depth {pd_:.2f}), so this one gets there {_depth_words(at['depth'], pd_)}")  # fmt: skip
    return head + tail + ref + "."


def axis_finding(summary: Mapping, family: str | None = None) -> str:
    """Rows against columns at the best LLM layer (the paper reports them together); ``family``
    says how its decoder's positions tell rows from columns (None: 1-D positions, as LLaVA's)."""
    best, ch = summary["peaks"]["llm"], summary["chance"]
    r, c = best["row_acc"], best["col_acc"]
    if r - c > 15:
        cue = (FAMILIES[family] if family else Family).row_column_cue
        what = f"rows come back far better than columns: {cue}"
    elif c - r > 15:
        what = "columns come back far better than rows"
    else:
        what = "rows and columns come back alike"
    return (
        f"At the best LLM layer of {summary['model_id']} ({best['site']}) {what} (row {r:.1f}%, column {c:.1f}%, "
        f"exact cell {best['cell_acc']:.1f}%; chance {ch['row']:.1f}% / {ch['col']:.1f}% / {ch['cell']:.2f}%); "
        "the paper reports the two axes together."
    )


def _beats(d: Mapping, a: str, b: str) -> bool:
    """Whether group ``a`` is more accurate than ``b`` by over two standard errors (5 points without SEs)."""
    if d.get(a) is None or d.get(b) is None:
        return False
    se = d.get("se") or {}
    if se.get(a) is None or se.get(b) is None:
        return d[a] > d[b] + 5
    return d[a] - d[b] > 2 * (se[a] ** 2 + se[b] ** 2) ** 0.5


def corner_verdict(d: Mapping) -> str:
    """``"corners"`` (they beat the other border cells), ``"border"`` (only the interior) or ``"none"``."""
    if _beats(d, "corners", "edges") and (d.get("interior") is None or _beats(d, "corners", "interior")):
        return "corners"
    return "border" if _beats(d, "corners", "interior") else "none"


def corner_finding(summary: Mapping) -> str:
    """Whether the four corners stand out against the other border cells and the interior.

    The fair comparison is with the other border cells: a border row or column is easier for
    any row/column classifier, so corners that only beat the interior show no corner signal.
    """
    words = {
        "corners": "the corners stand out, against the other border cells too",
        "border": "the corners beat the interior but not the other border cells: the border advantage any "
        "row/column classifier has, not a corner signal",
        "none": "no corner advantage",
    }
    out = []
    for reg in summary["corners"].values():
        d = reg["cell_acc"]
        inside = "—" if d.get("interior") is None else f"{d['interior']:.1f}%"
        edges = "—" if d.get("edges") is None else f"{d['edges']:.1f}%"
        out.append(f"at {reg['site']} {d['corners']:.1f}% at the corners, {edges} on the other border cells and "
                   f"{inside} inside ({words[corner_verdict(d)]})")  # fmt: skip
    proj = corner_verdict(summary["corners"]["projector"]["cell_acc"])
    agree = {
        "corners": "as the paper reports for the projector",
        "border": "so the paper's corner signal after the projector shows here only as the border advantage",
        "none": "unlike the paper, which finds strong corner signals after the projector",
    }[proj]
    return f"Exact-cell accuracy on {summary['model_id']}: " + "; ".join(out) + f", {agree}."


def control_finding(summary: Mapping) -> str:
    """What each stage's training adds to the position a probe reads, against its random-init copy."""
    stages = (summary.get("control") or {}).get("stages") or {}
    if not stages:
        return f"No random-init control was run on {summary['model_id']}: its probes' numbers are unchecked."
    names = {"tower": "tower", "projector": "projector", "llm": "LLM"}
    parts, verdicts = [], []
    for stage, c in stages.items():
        where = "" if c["site"] == stage else f" ({c['site']})"
        parts.append(f"the {names[stage]}{where} {c['acc']:.1f}% against {c['random_init_acc']:.1f}% "
                     f"({c['selectivity']:+.1f} ± {c['se']:.1f} points)")  # fmt: skip
        if c["ok"]:
            verdicts.append(f"the trained {names[stage]} adds position a random one does not")
        elif c["selectivity"] < -CONTROL_Z * c["se"]:
            verdicts.append(f"a random {names[stage]} keeps more position than the trained one")
        else:
            verdicts.append(f"the trained {names[stage]} reads no better than a random one")
    llm = stages.get("llm")
    claim = ""
    if llm is not None:
        claim = (" The chapter's claim, that the LLM's training rebuilds the grid, passes this control."
                 if llm["ok"] else " The chapter's claim, that the LLM's training rebuilds the grid, fails this control.")  # fmt: skip
    return (
        f"Against copies of {summary['model_id']} with one stage randomly initialised (its input the trained "
        f"model's), row/column accuracy at each stage's best site is: "
        + "; ".join(parts)
        + ". So "
        + "; ".join(verdicts)
        + "."
        + claim
    )


# --------------------------------------------------------------------------- several views (InternVL)


def _view_kinds(summary: Mapping) -> dict[str, dict]:
    """``{site: by_kind}`` of the sites probed over more than one kind of view."""
    return {s["site"]: s["by_kind"] for s in summary["sites"] if len(s["by_kind"]) > 1}


def views_table(summary: Mapping) -> pd.DataFrame | None:
    """Row, column and cell accuracy per view kind and site; None for a model with one view."""
    kinds = _view_kinds(summary)
    if not kinds:
        return None
    return pd.DataFrame(
        {
            site: {f"{k} {m}": v[f"{m}_acc"] for k, v in bk.items() for m in ("row", "col", "cell")}
            for site, bk in kinds.items()
        }  # fmt: skip
    ).T.round(1)


def views_finding(summary: Mapping) -> str | None:
    """How much better the LLM's rows read on the global view than on the tiles (mean over layers)."""
    kinds = _view_kinds(summary)
    if not kinds:
        return None
    gl = [
        bk["global"]["row_acc"] - bk["local"]["row_acc"]
        for site, bk in kinds.items()
        if site.startswith("llm.")
    ]
    return (
        f"On {summary['model_id']} one probe serves tiles and thumbnail, and in the LLM its row accuracy is "
        f"{abs(np.mean(gl)):.1f} points {'higher' if np.mean(gl) > 0 else 'lower'} on the global view "
        "than on the tiles (mean over layers)."
    )
