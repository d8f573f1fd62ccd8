"""Chapter 4's tables and findings: where a visual token's row and column can be read, beside the paper's peaks.

The numbers come from :func:`vlmloc.experiments.ch04_position_decoding.position_summary` (probe
accuracies per site, peaks per stage, corners against the interior); the paper's peak layers from
:mod:`vlmloc.paper`. Everything takes the summary dict, so the tables and the one-sentence
findings are testable without a model.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..experiments.ch04_position_decoding import CHAPTER, mean_row_col
from ..paper import MODELS, POSITION_PEAKS
from .common import chapter_runs

__all__ = [
    "axis_finding",
    "corner_finding",
    "corner_table",
    "decoding_finding",
    "peak_table",
    "site_table",
    "tower_finding",
]


# --------------------------------------------------------------------------- tables


def site_table(summary: Mapping) -> pd.DataFrame:
    """One row per site in path order: row, column and cell accuracy, the shuffled-label control, chance."""
    rows = []
    for s in summary["sites"]:
        g = s["grid"]
        rows.append(
            {
                "site": s["site"],
                "stage": s["stage"],
                "grid": f"{g[0]}x{g[1]}",
                "row %": s["row_acc"],
                "col %": s["col_acc"],
                "cell %": s["cell_acc"],
                "control row %": s["control"]["row_acc"],
                "control cell %": s["control"]["cell_acc"],
                "chance row %": round(100 / g[0], 2),
            }
        )
    return pd.DataFrame(rows).set_index("site")


def corner_table(summary: Mapping) -> pd.DataFrame:
    """Cell, row and column accuracy at the corners, the other border cells and the interior."""
    rows = []
    for label, reg in summary["corners"].items():
        for metric in ("cell_acc", "row_acc", "col_acc"):
            rows.append({"site": f"{reg['site']} ({label.replace('_', ' ')})", "metric": metric.replace("_acc", ""),
                         **{k: v for k, v in reg[metric].items()}})  # fmt: skip
    return pd.DataFrame(rows).set_index(["site", "metric"])


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
                "corners / interior at projector (cell %)": _ci(s["corners"]["projector"]["cell_acc"]),
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
    interior = "—" if d["interior"] is None else f"{d['interior']:.1f}"
    return f"{d['corners']:.1f} / {interior}"


# --------------------------------------------------------------------------- findings in one sentence


def tower_finding(summary: Mapping) -> str:
    """Whether the tower keeps or loses positions by its last layer."""
    tower = [s for s in summary["sites"] if s["stage"] == "tower"]
    first, last = tower[0], tower[-1]
    ch = summary["tower_chance"]["row"]
    a, b = mean_row_col(first), mean_row_col(last)
    model = summary["model_id"]
    if b >= 0.9 * a:
        verdict = (f"{model}'s tower keeps positions to its last layer, unlike the CLIP-like towers of the paper; "
                   "that is a finding about the toy")  # fmt: skip
    elif b <= ch + 0.25 * (a - ch):
        verdict = f"as in the paper, {model}'s tower has lost most of the positional signal by its last layer"
    else:
        verdict = f"{model}'s tower loses part of the positional signal with depth, less than the paper describes for CLIP"
    return (
        f"Row and column accuracy (mean of the two) falls from {a:.1f}% after tower layer {first['layer']} to "
        f"{b:.1f}% after layer {last['layer']} (chance {ch:.1f}% on its {first['grid'][0]}x{first['grid'][1]} patch "
        f"grid): {verdict}."
    )


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


def axis_finding(summary: Mapping) -> str:
    """Rows against columns at the best LLM layer (the paper reports them together)."""
    best, ch = summary["peaks"]["llm"], summary["chance"]
    r, c = best["row_acc"], best["col_acc"]
    if r - c > 15:
        what = ("rows come back far better than columns: a token's place in the 1-D sequence gives its row "
                "directly, while its column needs the row breaks")  # fmt: skip
    elif c - r > 15:
        what = "columns come back far better than rows"
    else:
        what = "rows and columns come back alike"
    return (
        f"At the best LLM layer of {summary['model_id']} ({best['site']}) {what} (row {r:.1f}%, column {c:.1f}%, "
        f"exact cell {best['cell_acc']:.1f}%; chance {ch['row']:.1f}% / {ch['col']:.1f}% / {ch['cell']:.2f}%); "
        "the paper reports the two axes together."
    )


def corner_finding(summary: Mapping) -> str:
    """Whether the four corners stand out at the projector and at the best LLM layer."""
    out = []
    for reg in summary["corners"].values():
        d = reg["cell_acc"]
        stands = d["interior"] is not None and d["corners"] > d["interior"] + 5
        out.append(f"{d['corners']:.1f}% at the corners against {d['interior']:.1f}% inside at {reg['site']}"
                   + (" (they stand out)" if stands else " (no corner advantage)"))  # fmt: skip
    proj = summary["corners"]["projector"]["cell_acc"]
    agree = (
        "as the paper reports for the projector"
        if proj["interior"] is not None and proj["corners"] > proj["interior"] + 5
        else "unlike the paper, which finds strong corner signals after the projector"
    )
    return f"Exact-cell accuracy on {summary['model_id']}: " + "; ".join(out) + f", {agree}."
