"""Chapter 4, position decoding: where along the path a visual token's row and column can be read.

The paper's claim: CLIP-like towers lose each patch's place in their last layers, yet linear
probes read a visual token's row and column again from the LLM's hidden states, peaking in its
middle layers (LLaVA-1.5-7B layer 12 of 32, InternVL-3.5 layer 7 of 36); the projector keeps
the four corners decodable, anchors from which the LLM can find where the 1-D sequence breaks
into rows. This module runs :mod:`vlmloc.probes` on a split of images, resumably, and turns the
test accuracies into the chapter's summary, tables and one-sentence findings.

    images = probe_images(annotations, image_dir)
    train, test = split_images(images, n_train, n_test, seed)
    results = run_probes(vlm, train, test, params, store, config, batch_size=16)
    summary = position_summary(model_id, results, n_train=..., n_test=...)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..adapter import VLM
from ..paper import MODELS, POSITION_PEAKS
from ..probes import ProbeBank, ProbeParams, image_batches, split_images
from ..sites import HiddenSite
from ..store import ResultsStore, config_key

__all__ = [
    "PAPER_GEOMETRY",
    "STAGES",
    "corner_table",
    "paper_scale_cost",
    "corner_interior",
    "corner_finding",
    "axis_finding",
    "decoding_finding",
    "image_set_key",
    "paper_peak",
    "peak_table",
    "position_summary",
    "probe_images",
    "run_probes",
    "site_table",
    "split_images",
    "tower_finding",
]

STAGES: tuple[str, ...] = ("tower", "projector", "llm")
CHAPTER = "04_position_decoding"


def probe_images(annotations: str | Path, images: str | Path) -> list[str]:
    """Every image a COCO-format file lists that exists in ``images`` (probes need images, not objects)."""
    raw = json.loads(Path(annotations).read_text())
    folder = Path(images)
    paths = sorted({str(folder / r["file_name"]) for r in raw.get("images", [])})
    return [p for p in paths if Path(p).is_file()]


def image_set_key(paths: Sequence[str]) -> str:
    """A short fingerprint of an image list (order included), for the records' configuration."""
    import hashlib

    h = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:12]
    return f"{len(paths)}:{h}"


def run_probes(
    vlm: VLM,
    train: Sequence[str],
    test: Sequence[str],
    params: ProbeParams,
    store: ResultsStore,
    config: Mapping[str, Any],
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[dict[str, dict], ProbeBank | None]:
    """Train every site's probe on ``train`` and test it on ``test``; resumable.

    The bank is checkpointed after each epoch next to the records, and each site's test result is
    one record of the ``probes`` condition, so a rerun skips finished work: with every site
    recorded it returns the records without running the model (and ``None`` as the bank).
    """
    config = {
        **config,
        **params.config(),
        "batch_size": batch_size,
        "n_train": len(train),
        "n_test": len(test),
    }
    log = store.condition("probes", config)
    bank = ProbeBank.for_model(vlm, params)
    if not log.pending(bank.sites):
        return {r["sample_id"]: r for r in log.records()}, None
    checkpoint = store.directory / f"probes-{config_key(config)}.pt"
    bank.fit(vlm, image_batches(train, batch_size), progress=progress, checkpoint=checkpoint)
    results = bank.evaluate(vlm, image_batches(test, batch_size), progress=progress)
    done = log.done_ids()
    for site, res in results.items():
        if site not in done:
            log.append({"sample_id": site, **res})
    return {s: {"sample_id": s, **r} for s, r in results.items()}, bank


# --------------------------------------------------------------------------- cost at the paper's scale

#: The paper's models as their released configs describe them, for the cost table (no model is
#: loaded for it): vision layers, tower tokens per view (CLS included) and width; decoder layers,
#: visual tokens per view and width; parameters; views of a typical 4:3 photo (InternVL: 12 tiles
#: and the thumbnail at ``max_patches = 12``).
PAPER_GEOMETRY: dict[str, dict[str, float]] = {
    "llava-hf/llava-1.5-7b-hf": dict(vision_layers=24, tower_tokens=577, vision_width=1024, layers=32,
                                     view_tokens=576, width=4096, params=7.06e9, views=1, text_tokens=40),
    "OpenGVLab/InternVL3_5-8B-HF": dict(vision_layers=24, tower_tokens=1025, vision_width=1024, layers=36,
                                        view_tokens=256, width=4096, params=8.5e9, views=13, text_tokens=40),
}  # fmt: skip


def paper_scale_cost(
    model_id: str, n_train: int = 50_000, n_test: int = 10_000, epochs: int = 10, batch_size: int = 16,
    bytes_per_value: int = 2, flops_per_s: float = 150e12,
) -> dict[str, float]:  # fmt: skip
    """What streaming probes cost on a paper model: activations per batch, per layer over the data, time.

    Time counts the forwards only (``epochs * n_train + n_test`` images, ``2 * params`` FLOPs per
    token at ``flops_per_s`` sustained); the probes' own steps add a few percent.
    """
    g = PAPER_GEOMETRY[model_id]
    views = g["views"]
    tower = g["vision_layers"] * views * g["tower_tokens"] * g["vision_width"]
    llm = (g["layers"] + 2) * views * g["view_tokens"] * g["width"]  # projector, LLM input, layers
    per_image = (tower + llm) * bytes_per_value
    layer_all = views * g["view_tokens"] * g["width"] * bytes_per_value * n_train
    tokens = views * g["view_tokens"] + g["text_tokens"]
    forwards = epochs * n_train + n_test
    seconds = forwards * 2 * g["params"] * tokens / flops_per_s
    return {
        "batch_gb": per_image * batch_size / 1e9,
        "one_llm_layer_all_train_gb": layer_all / 1e9,
        "all_sites_all_train_tb": per_image * n_train / 1e12,
        "forwards": forwards,
        "hours": seconds / 3600,
    }


# --------------------------------------------------------------------------- summary


def _site_key(name: str) -> tuple[str, int]:
    s = HiddenSite.parse(name)
    return s.stage, s.layer


def _mean_rc(r: Mapping) -> float:
    return (r["row_acc"] + r["col_acc"]) / 2


def corner_interior(cells: Sequence[Sequence[float]]) -> dict[str, float]:
    """Mean accuracy of the four corner cells, the other border cells and the interior of a grid."""
    a = np.asarray(cells, float)
    border = np.zeros(a.shape, bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    corners = np.zeros(a.shape, bool)
    corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    mean = lambda m: round(float(a[m].mean()), 2) if m.any() else None  # noqa: E731
    return {"corners": mean(corners), "edges": mean(border & ~corners), "interior": mean(~border)}


def paper_peak(model_id: str, family: str | None = None) -> dict | None:
    """The paper's peak LLM layer for ``model_id``, or for the paper model of the same family."""
    if model_id in POSITION_PEAKS:
        return {"model": MODELS[model_id], **POSITION_PEAKS[model_id]}
    for mid, peak in POSITION_PEAKS.items():
        if family and family in mid.lower():
            return {"model": MODELS[mid], **peak}
    return None


def position_summary(model_id: str, results: Mapping[str, Mapping], family: str, **extra: Any) -> dict:
    """The chapter's JSON: sites in path order, chance, peaks per stage, corners against the interior.

    Accuracies are in percent. ``layer`` is the site's index within its stage: tower and LLM
    layers count from 0 (``llm.i`` is the output of decoder layer ``i``, so ``i + 1`` layers
    have run), the projector is 0 and the LLM input -1.
    """
    names = sorted(results, key=lambda n: HiddenSite.parse(n).order)
    sites = []
    for n in names:
        r = results[n]
        stage, layer = _site_key(n)
        sites.append(
            {
                "site": n,
                "stage": stage,
                "layer": layer,
                "row_acc": r["row_acc"],
                "col_acc": r["col_acc"],
                "cell_acc": r["cell_acc"],
                "grid": r["grid"],
                "control": r["control"],
                "by_kind": r.get("by_kind", {}),
                "n_tokens": r["n_tokens"],
            }
        )
    token_grid = results["projector"]["grid"]
    tower_grid = next((s["grid"] for s in sites if s["stage"] == "tower"), token_grid)
    pct = lambda n: round(100.0 / n, 3)  # noqa: E731
    chance = {
        "row": pct(token_grid[0]),
        "col": pct(token_grid[1]),
        "cell": pct(token_grid[0] * token_grid[1]),
    }
    tower_chance = {
        "row": pct(tower_grid[0]),
        "col": pct(tower_grid[1]),
        "cell": pct(tower_grid[0] * tower_grid[1]),
    }
    peaks = {}
    for stage in STAGES:
        cand = [s for s in sites if s["stage"] == stage and not (stage == "llm" and s["layer"] < 0)]
        best = max(cand, key=_mean_rc)
        peaks[stage] = {"site": best["site"], "layer": best["layer"], "row_acc": best["row_acc"],
                        "col_acc": best["col_acc"], "cell_acc": best["cell_acc"]}  # fmt: skip
    n_llm = sum(s["stage"] == "llm" and s["layer"] >= 0 for s in sites)
    peaks["llm"]["depth"] = round((peaks["llm"]["layer"] + 1) / n_llm, 3)
    regions = {}
    for label, site in (("projector", "projector"), ("best_llm", peaks["llm"]["site"])):
        cells = results[site]["cells"]
        regions[label] = {
            "site": site,
            **{k: corner_interior(cells[k]) for k in ("cell_acc", "row_acc", "col_acc")},
        }
    paper = paper_peak(model_id, family)
    return {
        "model_id": model_id,
        "sites": sites,
        "chance": chance,
        "tower_chance": tower_chance,
        "token_grid": token_grid,
        "tower_grid": tower_grid,
        "peaks": peaks,
        "corners": regions,
        "paper_peak": paper,
        **extra,
    }


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
    for model, chapters in sorted(collected.items()):
        s = chapters.get(CHAPTER)
        if not s:
            continue
        p = s["peaks"]
        first, last = (t for t in (s["sites"][0], [x for x in s["sites"] if x["stage"] == "tower"][-1]))
        rows.append(
            {
                "model": model,
                "source": "this book",
                "tower first -> last (row/col mean %)": f"{_mean_rc(first):.1f} -> {_mean_rc(last):.1f}",
                "projector %": round(_mean_rc(p["projector"]), 1),
                "LLM peak layer": f"{p['llm']['layer']} of {sum(x['stage'] == 'llm' and x['layer'] >= 0 for x in s['sites'])}",
                "LLM peak %": round(_mean_rc(p["llm"]), 1),
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
    a, b = _mean_rc(first), _mean_rc(last)
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
    b, e = _mean_rc(best), _mean_rc(last)
    paper = summary.get("paper_peak")
    head = (
        f"On {summary['model_id']}, row/column accuracy (the mean of the two probes) is {_mean_rc(proj):.1f}% at "
        f"the projector and {_mean_rc(llm_in):.1f}% at the LLM input (chance {ch:.1f}%)"
    )
    if b - _mean_rc(llm_in) <= 5:
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
        first = next(s for s in layers if _mean_rc(s) >= b - 1)
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
