"""Chapter 2's tables and findings: ablation, padding and shuffling beside the paper's Tables 1 and 2.

Everything takes the summary of :mod:`vlmloc.experiments.ch02_containerization` (or parts of it),
so the tables are testable without a model. The paper's numbers, also those quoted in the
findings, come from :mod:`vlmloc.paper`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import pandas as pd

from ..experiments.ch02_containerization import ABLATIONS, PADDINGS, SHUFFLES
from ..paper import INTERNVL_8B, LLAVA_7B, MODELS, RESULTS, conditions_of, paper_result
from ..stats import se_of_difference
from .common import can_drop, rate_cell

__all__ = [
    "LABELS",
    "PAPER_CONDITION",
    "ablation_finding",
    "ablation_table",
    "contrast_findings",
    "contrast_table",
    "ig_table",
    "padding_examples_finding",
    "padding_finding",
    "padding_table",
    "shuffle_finding",
    "sets_finding",
    "shuffle_table",
]

#: How the tables name each condition.
LABELS = {
    "baseline": "baseline",
    "object": "object tokens",
    "register": "register tokens",
    "ig": "Integrated Gradients",
    "random": "random tokens",
    "object+1": "object +1 padding",
    "object+2": "object +2 padding",
    "global": "global shuffle",
    "intra_object": "intra-object shuffle",
}
#: Our condition -> the paper's name in :data:`vlmloc.paper.RESULTS`.
PAPER_CONDITION = conditions_of("baseline", "ablation", "shuffle")


def _paper(model: str, condition: str) -> dict | None:
    """The paper's numbers for our ``condition`` on ``model``; None if it reports none."""
    return paper_result(model, PAPER_CONDITION.get(condition))


_cell = partial(rate_cell, digits=2)  # Loc/Cls cells of this chapter's tables


def _paper_cells(condition: str) -> dict[str, str]:
    cells = {}
    for mid, name in MODELS.items():
        p, b = _paper(mid, condition), RESULTS[mid]["baseline"]
        for task, key in (("Loc", "loc"), ("Cls", "cls")):
            if p is None or p.get(key) is None:
                cells[f"{name} {task}"] = "—"
            elif condition == "baseline":
                cells[f"{name} {task}"] = f"{p[key]:.2f}"
            else:
                cells[f"{name} {task}"] = _cell(p[key], change=p[key] - b[key])
    return cells


def _our_cells(entry: Mapping, base: bool = False) -> dict[str, str]:
    return {
        "Loc %": _cell(entry["loc"], entry["loc_se"], None if base else entry["d_loc"]),
        "Cls %": _cell(entry["cls"], entry["cls_se"], None if base else entry["d_cls"]),
    }


def ablation_table(summary: Mapping) -> pd.DataFrame:
    """The paper's Table 1 form: strategy (token share), Loc and Cls with SE and change; paper beside."""
    model = summary["model_id"]
    rows = [
        {
            "strategy": "baseline",
            "tokens %": "0",
            **_our_cells(summary["baseline"], True),
            **_paper_cells("baseline"),
        }
    ]
    for name in ABLATIONS:
        e = summary["ablation"][name]
        paper_share = (_paper(LLAVA_7B, name) or {}).get("share")
        share = f"{e['token_share']:.1f}" + (f" (paper {paper_share:.0f})" if paper_share else "")
        rows.append({"strategy": LABELS[name], "tokens %": share, **_our_cells(e), **_paper_cells(name)})
    df = pd.DataFrame(rows).set_index("strategy")
    return df.rename(columns={"Loc %": f"Loc % ({model})", "Cls %": f"Cls % ({model})"})


def shuffle_table(summary: Mapping) -> pd.DataFrame:
    """The paper's Table 2 form: baseline, global and intra-object shuffle, Loc and Cls; paper beside."""
    model = summary["model_id"]
    rows = [{"perturbation": "baseline", **_our_cells(summary["baseline"], True), **_paper_cells("baseline")}]
    for kind in SHUFFLES:
        rows.append(
            {"perturbation": LABELS[kind], **_our_cells(summary["shuffle"][kind]), **_paper_cells(kind)}
        )
    df = pd.DataFrame(rows).set_index("perturbation")
    return df.rename(columns={"Loc %": f"Loc % ({model})", "Cls %": f"Cls % ({model})"})


def padding_table(padding: Mapping) -> pd.DataFrame:
    """Predicted box area against p, beside the area of the container (the grown token cells' box)."""
    rows = []
    for p in PADDINGS:
        e = padding[str(p)]
        rows.append(
            {
                "p (rings)": p,
                "predicted box % of image": "—"
                if e["box_area"] is None
                else _cell(e["box_area"], e["box_area_se"]),
                "container box % of image": f"{e['container_area']:.1f}",
                "boxes parsed": e["n_boxes"],
                "Loc %": _cell(e["loc"], e["loc_se"]),
            }
        )
    return pd.DataFrame(rows).set_index("p (rings)")


#: How a finding ends when the baseline leaves no room for the drop the paper reports.
_UNTESTABLE = "; the {what} too low for a drop to show, so this run cannot test the paper's claim."


def _paper_ablation(model: str) -> str:
    """The paper's object-token ablation for ``model`` in one clause (with the random control where reported)."""
    r = RESULTS[model]
    b, obj, rnd = r["baseline"], r["object_tokens"], r.get("random_tokens")
    text = f"{MODELS[model]}: Loc {b['loc']:.2f}→{obj['loc']:.2f} and Cls {b['cls']:.2f}→{obj['cls']:.2f} for object"
    if rnd is None:
        return text + " tokens"
    return text + f" vs {rnd['loc']:.2f} and {rnd['cls']:.2f} for random tokens"


def ablation_finding(summary: Mapping) -> str:
    """One sentence: does ablating the object hurt Loc and Cls more than random tokens, as in the paper?"""
    m, b, a = summary["model_id"], summary["baseline"], summary["ablation"]
    obj, rnd = a["object"], a["random"]
    head = (
        f"On {m}, replacing the object's tokens ({obj['token_share']:.1f}% of the image) by the mean moves Loc "
        f"{b['loc']:.1f}→{obj['loc']:.1f}% and Cls {b['cls']:.1f}→{obj['cls']:.1f}%, against "
        f"{rnd['loc']:.1f}% and {rnd['cls']:.1f}% for as many random tokens"
    )
    names = {"loc": "Loc", "cls": "Cls"}
    testable = [t for t in ("loc", "cls") if can_drop(b, t)]
    if not testable:
        return head + _UNTESTABLE.format(what="baselines are")
    hurt = [t for t in testable if rnd[t] - obj[t] > 2 * se_of_difference(obj[f"{t}_se"], rnd[f"{t}_se"])]
    paper = _paper_ablation(INTERNVL_8B if "internvl" in m.lower() else LLAVA_7B)
    untestable = (
        "" if len(testable) == 2 else f" ({names[({'loc', 'cls'} - set(testable)).pop()]} is too low to drop)"
    )
    if hurt == testable:
        which = " and ".join(names[t] for t in hurt)
        return (
            head
            + f"; as in the paper ({paper}), the object's tokens matter far more for {which}{untestable}."
        )
    if hurt:
        return head + (
            f"; partly as in the paper ({paper}): the object's tokens matter more for {names[hurt[0]]} "
            f"but not for {names[(set(testable) - set(hurt)).pop()]} beyond 2 standard errors."
        )
    return (
        head
        + f"; unlike the paper ({paper}), the object's tokens matter no more than random ones beyond 2 standard errors{untestable}."
    )


def padding_finding(summary: Mapping) -> str:
    """One sentence: does the predicted box grow with the padding, as the paper reports?"""
    m, pad = summary["model_id"], summary["padding"]
    areas = [pad[str(p)]["box_area"] for p in PADDINGS]
    ses = [pad[str(p)]["box_area_se"] for p in PADDINGS]
    cont = [pad[str(p)]["container_area"] for p in PADDINGS]
    shown = ", ".join("no box" if a is None or math.isnan(a) else f"{a:.1f}%" for a in areas)
    head = (
        f"On {m}, the mean predicted box covers {shown} of the image for p = 0, 1, 2 "
        f"(the token container's box: {cont[0]:.1f}%, {cont[1]:.1f}%, {cont[2]:.1f}%)"
    )
    if any(a is None or math.isnan(a) for a in areas):
        return (
            head
            + "; some conditions produced no parsable box, so the paper's growing boxes cannot be checked."
        )
    grows = areas[2] - areas[0] > 2 * se_of_difference(ses[0], ses[2]) and areas[1] >= areas[0] - ses[0]
    return head + (
        "; the boxes grow with the padding, as the paper reports for LLaVA-1.5-7B."
        if grows
        else "; the boxes do not grow with the padding beyond 2 standard errors, unlike the paper's LLaVA-1.5-7B."
    )


def shuffle_finding(summary: Mapping) -> str:
    """One sentence: does a global shuffle break localization while an intra-object shuffle does not?"""
    m, b, sh = summary["model_id"], summary["baseline"], summary["shuffle"]
    g, i = sh["global"], sh["intra_object"]
    head = (
        f"On {m}, a global shuffle moves Loc {b['loc']:.1f}→{g['loc']:.1f}% and an intra-object shuffle "
        f"to {i['loc']:.1f}% (Cls {g['cls']:.1f}% and {i['cls']:.1f}%, baseline {b['cls']:.1f}%)"
    )
    if not can_drop(b, "loc"):
        return head + _UNTESTABLE.format(what="baseline Loc is")
    global_breaks = b["loc"] - g["loc"] > 2 * se_of_difference(b["loc_se"], g["loc_se"])
    intra_keeps = abs(b["loc"] - i["loc"]) <= 2 * se_of_difference(b["loc_se"], i["loc_se"])
    p = {c: RESULTS[LLAVA_7B][c]["loc"] for c in ("baseline", "global_shuffle", "intra_object_shuffle")}
    paper = f"{MODELS[LLAVA_7B]}: {p['baseline']:.2f}→{p['global_shuffle']:.2f}"
    if global_breaks and intra_keeps:
        tail = f"; as in the paper ({paper} global, {p['intra_object_shuffle']:.2f} intra-object), only the global shuffle breaks localization."
    elif global_breaks:
        tail = "; the global shuffle breaks localization as in the paper, but unlike there the intra-object shuffle also moves Loc beyond 2 standard errors."
    else:
        tail = f"; unlike the paper ({paper}), the global shuffle does not break localization beyond 2 standard errors."
    return head + tail


# ---------------------------------------------------------------------------------------------
# the contrast model: the same shuffles and padding on a toy whose tokens know sub-patch edges
# ---------------------------------------------------------------------------------------------


def contrast_table(summary: Mapping, contrast: Mapping) -> pd.DataFrame:
    """Loc under each shuffle and the predicted box area under each padding, this model beside the
    contrast model (same objects, same seeds)."""

    def column(s: Mapping) -> dict[str, str]:
        col = {"baseline Loc %": _cell(s["baseline"]["loc"], s["baseline"]["loc_se"])}
        for kind in SHUFFLES:
            e = s["shuffle"][kind]
            col[f"{LABELS[kind]} Loc %"] = _cell(e["loc"], e["loc_se"], e["d_loc"])
        for p in PADDINGS:
            e = s["padding"][str(p)]
            area = "—" if e["box_area"] is None else _cell(e["box_area"], e["box_area_se"])
            col[f"box area % at p = {p}"] = area
        return col

    return pd.DataFrame({summary["model_id"]: column(summary), contrast["model_id"]: column(contrast)})


def _intra_cost(s: Mapping) -> tuple[float, float]:
    """Loc points the intra-object shuffle costs, with their standard error."""
    b, i = s["baseline"], s["shuffle"]["intra_object"]
    return b["loc"] - i["loc"], se_of_difference(b["loc_se"], i["loc_se"])


def _growth(s: Mapping) -> tuple[float | None, float]:
    """Growth of the mean predicted box area from p = 0 to p = 2, with its standard error."""
    a0, a2 = s["padding"]["0"], s["padding"]["2"]
    if a0["box_area"] is None or a2["box_area"] is None:
        return None, 0.0
    return a2["box_area"] - a0["box_area"], se_of_difference(a0["box_area_se"], a2["box_area_se"])


def contrast_findings(summary: Mapping, contrast: Mapping) -> dict[str, str]:
    """Two sentences: what the intra-object shuffle and the padding do on this model against the
    contrast model. Differences count only beyond 2 standard errors."""
    m, c = summary["model_id"], contrast["model_id"]
    (dm, sm), (dc, sc) = _intra_cost(summary), _intra_cost(contrast)
    head = (
        f"The intra-object shuffle costs {m} {dm:.1f} points of Loc ({summary['baseline']['loc']:.1f}% "
        f"baseline) and {c} {dc:.1f} points ({contrast['baseline']['loc']:.1f}%)"
    )
    gap = se_of_difference(sm, sc)
    if dc - dm > 2 * gap:
        shuffle = head + (
            f"; the tokens that know where inside their patch an edge runs make the container's content "
            f"matter, so scrambling it inside the container hurts {c} more, and {m} is closer to the "
            f"paper's LLaVA-1.5-7B ({RESULTS[LLAVA_7B]['baseline']['loc']:.2f}→"
            f"{RESULTS[LLAVA_7B]['intra_object_shuffle']['loc']:.2f})."
        )
    elif dm - dc > 2 * gap:
        shuffle = head + f"; unexpectedly, the weakly grounded {m} loses more than {c}."
    else:
        shuffle = head + "; the two do not differ beyond 2 standard errors."
    (gm, em), (gc, ec) = _growth(summary), _growth(contrast)
    if gm is None or gc is None:
        padding = f"Padding gave no parsable box in some condition on {m if gm is None else c}, so the two cannot be compared."
    else:
        cont = summary["padding"]["2"]["container_area"] - summary["padding"]["0"]["container_area"]
        padding = (
            f"Two rings of padding grow the predicted box by {gm:+.1f} points of the image on {m} and "
            f"{gc:+.1f} on {c} (the container grows by {cont:+.1f})"
        )
        if abs(gm - gc) > 2 * se_of_difference(em, ec):
            more = m if gm > gc else c
            padding += f"; {more} follows the container more."
        else:
            padding += "; they do not differ beyond 2 standard errors."
    return {"contrast_shuffle": shuffle, "contrast_padding": padding}


# --- token sets and the padding examples (the notebook's figures) -----------------------------


def sets_finding(model_id: str, sets: Mapping[str, Mapping], ig: Mapping, object_share: float) -> str:
    """How the IG sets and register tokens came out: ``sets`` per object (from
    :meth:`~vlmloc.experiments.ch02_containerization.Containerization.token_sets`), ``ig`` its
    ``ig_summary()``, ``object_share`` the mean share (%) of tokens the object covers."""
    registers = np.mean([len(v["register"]) for v in sets.values()])
    return (
        f"Over the {len(sets)} objects of {model_id}, {ig['localization']['on_object']:.0f}% of the top IG tokens "
        f"for localization fall on the object, which covers {object_share:.1f}% of the tokens "
        "(what random tokens would hit); "
        f"an image has {registers:.1f} register tokens on average."
    )


def ig_table(ig_records: Mapping[str, Mapping[str, Mapping]], ig: Mapping) -> pd.DataFrame:
    """IG's completeness per task: the attributions must add up to ``f(x) - f(x')`` on every object.

    ``ig_records`` are the per-object IG records per task, ``ig`` the experiment's ``ig_summary()``.
    """
    rows = []
    for task, recs in ig_records.items():
        delta = np.array([r["f_input"] - r["f_baseline"] for r in recs.values()])
        gap = np.abs(np.array([r["attr_sum"] for r in recs.values()]) - delta)
        rows.append(
            {
                "task": task,
                "median |f(x) - f(x')|": np.median(np.abs(delta)),
                "median |sum a - (f(x) - f(x'))|": np.median(gap),
                "median relative gap %": 100 * np.median(gap / np.maximum(np.abs(delta), 1e-9)),
                "top-k IG tokens on the object %": ig[task]["on_object"],
                "objects": len(delta),
            }
        )
    return pd.DataFrame(rows).set_index("task").round(4)


def padding_examples_finding(model_id: str, examples: Sequence[Mapping]) -> str:
    """What the padding examples show: their mean predicted box area per ``p``, over the examples
    with a box at every ``p`` (``examples`` from
    :meth:`~vlmloc.experiments.ch02_containerization.Containerization.padding_examples`)."""
    grown = [ex for ex in examples if all(ex["p"][p]["pred"] is not None for p in PADDINGS)]
    if grown:
        areas = ", ".join(f"{np.mean([ex['p'][p]['area'] for ex in grown]):.1f}%" for p in PADDINGS)
        return (
            f"In the {len(grown)} examples shown with a box at every p (picked for the largest growth), "
            f"{model_id}'s predicted box covers {areas} of the image on average for p = 0, 1, 2."
        )
    boxes = sum(ex["p"][p]["pred"] is not None for ex in examples for p in PADDINGS)
    return (
        f"No object shown got a parsable box from {model_id} at every p, so these examples cannot show "
        f"growth ({boxes} of {3 * len(examples)} panels have a box)."
    )
