"""Chapter 3's tables and findings: InternVL's thumbnail and tiles beside the paper's Table 3.

The numbers come from :mod:`vlmloc.experiments.ch03_views` (its summary, overall and by size
class); the paper's, also those quoted in the findings, from :mod:`vlmloc.paper`. Everything takes
plain summaries, so the tables and findings are testable without a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import pandas as pd

from ..data import Sample
from ..experiments.ch03_views import CONDITIONS, MIN_FINDING_N, SIZE_CLASSES, Selection
from ..paper import MODELS, RESULTS, VIEWS_BY_SIZE, VIEWS_CONDITIONS
from ..stats import se_of_difference
from .common import can_drop, chapter_runs, rate_cell

__all__ = [
    "LABELS",
    "PAPER_CONDITION",
    "PAPER_MODEL",
    "by_size_table",
    "example_finding",
    "findings",
    "results_table",
    "selection_finding",
    "token_table",
    "views_table",
]

LABELS = {
    "baseline": "baseline",
    "global": "object, thumbnail only",
    "local": "object, tiles only",
    "both": "object, both views",
    "random_global": "random, thumbnail",
    "random_local": "random, tiles",
}
#: Our condition -> the paper's (InternVL-3.5-8B): Table 3 for one view, Table 1 for both.
PAPER_CONDITION = VIEWS_CONDITIONS
PAPER_MODEL = "OpenGVLab/InternVL3_5-8B-HF"


# --- tables ------------------------------------------------------------------------------------


_cell = partial(rate_cell, digits=1)  # Loc/Cls cells of this chapter's tables


def _paper(condition: str) -> dict | None:
    name = PAPER_CONDITION.get(condition)
    return RESULTS[PAPER_MODEL].get(name) if name else None


def _paper_cell(condition: str, key: str) -> str:
    p, b = _paper(condition), RESULTS[PAPER_MODEL]["baseline"]
    if p is None or p.get(key) is None:
        return "—"
    if condition == "baseline":
        return f"{p[key]:.2f}"
    return _cell(p[key], change=p[key] - b[key]).replace(f"{p[key]:.1f}", f"{p[key]:.2f}", 1)


def _conditions(summary: Mapping) -> list[tuple[str, Mapping]]:
    return [("baseline", summary["baseline"])] + [
        (c, summary["ablation"][c]) for c in CONDITIONS if c in summary["ablation"]
    ]


def views_table(summary: Mapping) -> pd.DataFrame:
    """Table 3's form, over all sizes: condition, tokens replaced, Loc and Cls ± SE (change); paper beside."""
    model, paper = summary["model_id"], MODELS[PAPER_MODEL]
    rows = []
    for name, e in _conditions(summary):
        base = name == "baseline"
        rows.append(
            {
                "condition": LABELS[name],
                "tokens %": "0" if base else f"{e['token_share']:.1f}",
                f"Loc % ({model})": _cell(e["loc"], e["loc_se"], None if base else e["d_loc"]),
                f"Cls % ({model})": _cell(e["cls"], e["cls_se"], None if base else e["d_cls"]),
                f"{paper} Loc (paper)": _paper_cell(name, "loc"),
                f"{paper} Cls (paper)": _paper_cell(name, "cls"),
            }
        )
    return pd.DataFrame(rows).set_index("condition")


def _paper_size_note(size: str, condition: str) -> str:
    p = VIEWS_BY_SIZE.get(size, {}).get(condition)
    if not p:
        return ""
    number = f" (Loc ↑{p['d_loc']:.1f})" if p.get("d_loc") else ""
    return f"{p['statement']}{number}"


def by_size_table(summary: Mapping) -> pd.DataFrame:
    """Loc and Cls ± SE (change from the size's baseline) per condition and size class, n in the header.

    The last column quotes what the paper says per size (it reports one number, the Loc that
    large objects gain without their tile tokens: ``VIEWS_BY_SIZE`` in :mod:`vlmloc.paper`).
    """
    sizes = [c for c in SIZE_CLASSES if c in summary["baseline"].get("by_size", {})]
    rows = []
    for name, e in _conditions(summary):
        base = name == "baseline"
        row: dict[str, str] = {"condition": LABELS[name]}
        for c in sizes:
            n = summary["baseline"]["by_size"][c]["n"]
            se = e.get("by_size", {}).get(c)
            if se is None:
                row[f"{c} (n={n}) Loc %"] = row[f"{c} (n={n}) Cls %"] = "—"
                continue
            b = summary["baseline"]["by_size"][c]
            for key, t in (("loc", "Loc"), ("cls", "Cls")):
                change = None if base else se[key] - b[key]
                row[f"{c} (n={n}) {t} %"] = _cell(se[key], se[f"{key}_se"], change)
        notes = [f"{c}: {t}" for c in SIZE_CLASSES if (t := _paper_size_note(c, name))]
        row[f"{MODELS[PAPER_MODEL]} (paper)"] = "; ".join(notes) or "—"
        rows.append(row)
    return pd.DataFrame(rows).set_index("condition")


def results_table(collected: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """The results page: every model's chapter-3 conditions, overall and by size, the paper beside."""
    rows = []
    paper = MODELS[PAPER_MODEL]
    for model, summ in chapter_runs(collected, "03_views"):
        for name, e in _conditions(summ):
            p = _paper(name)
            row = {
                "model": model,
                "condition": LABELS[name],
                "n": e.get("n"),
                "Loc %": e["loc"],
                "Loc SE": e["loc_se"],
                "Cls %": e["cls"],
                "Cls SE": e["cls_se"],
            }
            for c in SIZE_CLASSES:
                s = e.get("by_size", {}).get(c)
                row[f"Loc {c}"] = s["loc"] if s else None
                row[f"Cls {c}"] = s["cls"] if s else None
            row[f"{paper} Loc (paper)"] = p["loc"] if p else None
            row[f"{paper} Cls (paper)"] = p["cls"] if p else None
            rows.append(row)
    return pd.DataFrame(rows)


# --- findings ----------------------------------------------------------------------------------


def _drops(base: Mapping, e: Mapping, key: str) -> bool:
    """Does ``e`` fall below ``base`` on ``key`` by more than 2 standard errors?"""
    return base[key] - e[key] > 2 * se_of_difference(base[f"{key}_se"], e[f"{key}_se"])


def _rises(base: Mapping, e: Mapping, key: str) -> bool:
    return e[key] - base[key] > 2 * se_of_difference(base[f"{key}_se"], e[f"{key}_se"])


_NAMES = {"loc": "Loc", "cls": "Cls"}


def _finding_task(summary: Mapping, key: str) -> str:
    """Overall: does the thumbnail matter more than the tiles for ``key``, as in the paper?"""
    m, b, a = summary["model_id"], summary["baseline"], summary["ablation"]
    g, loc = a["global"], a["local"]
    t = _NAMES[key]
    pb, pg, pl = (RESULTS[PAPER_MODEL][PAPER_CONDITION[c]][key] for c in ("baseline", "global", "local"))
    paper = f"InternVL-3.5-8B: {t} {pb:.2f}→{pg:.2f} for the thumbnail, →{pl:.2f} for the tiles"
    head = (
        f"On {m} ({b['n']} objects), removing the object from the thumbnail moves {t} {b[key]:.1f}→{g[key]:.1f}% "
        f"and from the tiles to {loc[key]:.1f}%"
    )
    if not can_drop(b, key):
        return (
            head
            + f"; the baseline {t} is too low for a drop to show, so this run cannot test the paper ({paper})."
        )
    thumb = b[key] - g[key]
    tiles = b[key] - loc[key]
    diff_se = se_of_difference(g[f"{key}_se"], loc[f"{key}_se"])
    if thumb - tiles > 2 * diff_se and _drops(b, g, key):
        verdict = "the thumbnail matters more than the tiles, as in the paper"
    elif tiles - thumb > 2 * diff_se and _drops(b, loc, key):
        verdict = "the tiles matter more than the thumbnail, unlike the paper"
    elif _drops(b, g, key) or _drops(b, loc, key):
        verdict = "both views matter about equally (within 2 standard errors), unlike the paper's clear order"
    else:
        verdict = "neither view's tokens matter beyond 2 standard errors, unlike the paper"
    return head + f"; {verdict} ({paper})."


def _finding_controls(summary: Mapping) -> str:
    m, a = summary["model_id"], summary["ablation"]
    g, loc, rg, rl = a["global"], a["local"], a["random_global"], a["random_local"]
    head = (
        f"On {m}, as many random tokens in the same view leave Loc at "
        f"{rg['loc']:.1f}% (thumbnail) and {rl['loc']:.1f}% (tiles), Cls {rg['cls']:.1f}% and {rl['cls']:.1f}%, "
        f"against {g['loc']:.1f}/{loc['loc']:.1f}% and {g['cls']:.1f}/{loc['cls']:.1f}% for the object's own tokens"
    )
    specific = [
        f"{_NAMES[k]} in the {view}"
        for view, obj, rnd in (("thumbnail", g, rg), ("tiles", loc, rl))
        for k in ("loc", "cls")
        if rnd[k] - obj[k] > 2 * se_of_difference(obj[f"{k}_se"], rnd[f"{k}_se"])
    ]
    if not specific:
        return head + "; no drop is specific to the object beyond 2 standard errors."
    return (
        head + f"; the drop is specific to the object for {', '.join(specific)} (beyond 2 standard errors)."
    )


def _finding_size(summary: Mapping, size: str) -> str:
    m = summary["model_id"]
    b = summary["baseline"]["by_size"].get(size)
    n = b["n"] if b else 0
    if n < MIN_FINDING_N:
        return (
            f"Only {n} {size} objects were evaluated on {m} (fewer than {MIN_FINDING_N}), so this run draws no "
            f"conclusion about them."
        )
    g = summary["ablation"]["global"]["by_size"][size]
    loc = summary["ablation"]["local"]["by_size"][size]
    parts, effects = [], {}
    for key in ("loc", "cls"):
        t = _NAMES[key]
        parts.append(f"{t} {b[key]:.1f}→{g[key]:.1f}% (thumbnail) / {loc[key]:.1f}% (tiles)")
        effects[key] = {
            "testable": can_drop(b, key),
            "global": _drops(b, g, key),
            "local": _drops(b, loc, key),
            "local_rises": _rises(b, loc, key),
        }
    head = f"For the {n} {size} objects on {m}: " + ", ".join(parts)
    if size == "small":
        untestable = [_NAMES[k] for k, e in effects.items() if not e["testable"]]
        tail = f" ({' and '.join(untestable)} too low at baseline to drop)" if untestable else ""
        both = [_NAMES[k] for k, e in effects.items() if e["testable"] and e["global"] and e["local"]]
        one = [
            f"{_NAMES[k]} drops only without the {'thumbnail' if e['global'] else 'tiles'}"
            for k, e in effects.items()
            if e["testable"] and e["global"] != e["local"]
        ]
        if both:
            verdict = f"small objects are sensitive to both views for {' and '.join(both)}, as in the paper"
        elif one:
            verdict = f"{' and '.join(one)}, where the paper finds small objects sensitive to both views"
        else:
            verdict = "neither view's removal moves small objects beyond 2 standard errors, unlike the paper"
        return head + f"; {verdict}{tail}."
    if size == "large":
        e = effects["loc"]
        if not e["testable"]:
            return head + "; the baseline Loc of large objects is too low to test the paper's claim."
        thumb = (
            "Loc depends on the thumbnail, as in the paper,"
            if e["global"]
            else "Loc does not drop without the thumbnail, unlike the paper,"
        )
        rise = float(VIEWS_BY_SIZE["large"]["local"]["d_loc"])  # type: ignore[arg-type]
        if e["local_rises"]:
            tiles = f"and rises without the tiles, as in the paper ({MODELS[PAPER_MODEL]}: Loc ↑{rise:.1f})"
        elif e["local"]:
            tiles = f"and drops without the tiles, where the paper sees it rise by {rise:.1f} points"
        else:
            tiles = f"and stays within 2 standard errors without the tiles (the paper: Loc ↑{rise:.1f})"
        return head + f"; {thumb} {tiles}."
    return head + " (the paper gives no statement for medium objects)."


def findings(summary: Mapping) -> dict[str, str]:
    """One sentence each: Loc and Cls by view, the random controls, small and large objects."""
    return {
        "loc": _finding_task(summary, "loc"),
        "cls": _finding_task(summary, "cls"),
        "controls": _finding_controls(summary),
        "small": _finding_size(summary, "small"),
        "large": _finding_size(summary, "large"),
    }


# --- the objects and their token sets (the notebook's first sections) -------------------------


def selection_finding(model_id: str, selection: Selection) -> str:
    """How the objects were drawn: the pool, those in multi-view images and the draw per size class."""
    table = selection.table()
    short = [c for c in SIZE_CLASSES if selection.drawn[c] < MIN_FINDING_N]
    tail = (
        f" ({', '.join(short)} below {MIN_FINDING_N}, so no finding for {'it' if len(short) == 1 else 'them'})."
        if short
        else f" (every class has at least {MIN_FINDING_N}, enough for a finding each)."
    )
    return (
        f"Of the {table.loc['all', 'objects (filter)']} objects that pass the filter, "
        f"{table.loc['all', 'in multi-view images']} lie in images that {model_id} sees as tiles and a "
        "thumbnail; the draw took " + ", ".join(f"{selection.drawn[c]} {c}" for c in SIZE_CLASSES) + tail
    )


def token_table(sets: Mapping[str, Mapping], sizes: Mapping[str, str]) -> pd.DataFrame:
    """Mean object and view token counts per size class and overall (``sets`` per sample id)."""
    rows = []
    for c in (*SIZE_CLASSES, "all"):
        ids = [i for i in sets if c in ("all", sizes[i])]
        if not ids:
            continue
        rows.append(
            {
                "size": c,
                "objects": len(ids),
                "object tokens in the thumbnail": np.mean([len(sets[i]["global"]) for i in ids]),
                "object tokens in the tiles": np.mean([len(sets[i]["local"]) for i in ids]),
                "thumbnail tokens": np.mean([sets[i]["n_global"] for i in ids]),
                "tile tokens": np.mean([sets[i]["n_local"] for i in ids]),
            }
        )
    return pd.DataFrame(rows).set_index("size").round(1)


def example_finding(
    model_id: str, example: Sample, samples: Sequence[Sample], sizes: Mapping[str, str], sets: Mapping
) -> str:
    """The example's object tokens per view, beside the mean per size class over all ``samples``."""
    view_sets = sets[example.sample_id]
    per_size = {}
    for c in SIZE_CLASSES:
        ids = [s.sample_id for s in samples if sizes[s.sample_id] == c]
        if ids:
            per_size[c] = (
                np.mean([len(sets[i]["global"]) for i in ids]),
                np.mean([len(sets[i]["local"]) for i in ids]),
            )
    return (
        f"This {example.category} covers {len(view_sets['global'])} of the thumbnail's {view_sets['n_global']} tokens "
        f"and {len(view_sets['local'])} of the tiles' {view_sets['n_local']}; over the {len(samples)} objects on "
        f"{model_id} the thumbnail holds "
        + ", ".join(f"{g:.1f}" for g, _ in per_size.values())
        + " and the tiles "
        + ", ".join(f"{t:.1f}" for _, t in per_size.values())
        + f" object tokens for {', '.join(per_size)} objects."
    )
