"""Chapter 5's tables and findings: the layer windows where the text reads the object, beside the paper's range.

The numbers come from :mod:`vlmloc.experiments.ch05_attention_knockout` (its summary, with the most
harmful and the critical windows per task already in it); the paper's range, scaled to the
model's depth, is in the summary too (from :mod:`vlmloc.paper`). Everything takes plain
summaries, so each finding's rule is testable on a hand-made one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import pandas as pd

from ..experiments.ch05_attention_knockout import (
    CHAPTER,
    KEY,
    TOKEN_SETS,
    critical_windows,
    harm_depth,
    most_harmful,
    window_first,
)
from ..families import TASKS
from ..paper import KNOCKOUT_LAYERS, MODELS, N_LAYERS, knockout_layers
from ..stats import se_of_difference
from .common import can_drop, chapter_runs, rate_cell

__all__ = [
    "NAME",
    "depth_finding",
    "guess_finding",
    "knockout_table",
    "paper_finding",
    "paper_ranges",
    "power_finding",
    "results_table",
    "task_finding",
]

NAME = {"localization": "Loc", "classification": "Cls"}


# --- tables and findings ---------------------------------------------------------------------


def _cell(e: Mapping, k: str) -> str:
    return rate_cell(e[k], e[f"{k}_se"])


def knockout_table(summary: Mapping) -> pd.DataFrame:
    """Per window (and "all"): Loc and Cls with SE when the object, random tokens or the image is blocked."""
    ko, b = summary["knockout"], summary["baseline"]
    rows = [
        {
            "layers": "none (baseline)",
            **{f"{NAME[t]} {n}": _cell(b, KEY[t]) for t in TASKS for n in TOKEN_SETS},
        }
    ]
    for w in summary["windows"]:
        rows.append(
            {
                "layers": w,
                **{
                    f"{NAME[t]} {n}": _cell(ko[n][w], KEY[t])
                    for t in TASKS
                    for n in TOKEN_SETS
                    if w in ko.get(n, {})
                },
            }
        )
    return pd.DataFrame(rows).set_index("layers")


def task_finding(summary: Mapping, task: str) -> str:
    """One sentence: which windows matter for ``task``, against random tokens and the whole image."""
    m, k, name = summary["model_id"], KEY[task], NAME[task]
    b, ko = summary["baseline"], summary["knockout"]
    mh = most_harmful(summary, task)
    if mh["window"] is None:
        return f"On {m}, no layer window fits the depth; only the all-layer knockout was run."
    w = mh["window"]
    crit = critical_windows(summary, task)
    allk = ko["object"]["all"][k]
    head = (
        f"On {m}, blocking the text from the object's tokens hurts {task} most in layers {w} "
        f"({name} {b[k]:.1f}→{mh['score']:.1f}%, random tokens {mh['random']:.1f}%, "
        f"whole image {ko['image'][w][k]:.1f}%; all layers {allk:.1f}%)"
    )
    if not can_drop(b, k):
        return head + f"; the baseline {name} is too low for a drop to show."
    if not crit:
        return (
            head + "; no window costs more than 2 standard errors beyond both the baseline and random tokens."
        )
    return (
        head
        + f"; the windows that cost at least half of that drop, beyond 2 SE of baseline and random tokens: {', '.join(crit)}."
    )


def depth_finding(summary: Mapping) -> str:
    """One sentence: does localization need later layers than classification?"""
    m = summary["model_id"]
    crit = {t: critical_windows(summary, t) for t in TASKS}
    if not crit["localization"] or not crit["classification"]:
        none = " and ".join(t for t in TASKS if not crit[t])
        return (
            f"On {m}, no window matters beyond 2 standard errors for {none}, so this run cannot say whether "
            "localization needs later layers than classification (the paper: both share early layers, "
            "localization needs more)."
        )
    depth = {t: harm_depth(summary, t) for t in TASKS}
    last = {t: max(window_first(w) for w in crit[t]) for t in TASKS}
    first = {t: min(window_first(w) for w in crit[t]) for t in TASKS}
    shared = sorted(set(crit["localization"]) & set(crit["classification"]), key=window_first)
    head = (
        f"On {m}, the object's tokens matter for localization in windows {', '.join(crit['localization'])} and "
        f"for classification in {', '.join(crit['classification'])}"
        + (f" (shared: {', '.join(shared)})" if shared else " (none shared)")
        + f"; weighted by the cost beyond random tokens, localization reads the object at mean layer "
        f"{depth['localization']:.1f} and classification at {depth['classification']:.1f}"
    )
    if last["localization"] > last["classification"]:
        tail = (
            "; localization's windows reach later layers than classification's, as the paper reports "
            "(recognition, then localization)."
        )
    elif last["localization"] == last["classification"] and first["localization"] == first["classification"]:
        tail = "; both tasks need the same layers, unlike the paper, where localization needs further layers."
    else:
        tail = "; localization does not need later layers than classification, unlike the paper."
    return head + tail


def paper_finding(summary: Mapping) -> str:
    """One sentence: where the most harmful windows sit against the paper's range scaled by depth."""
    m, p = summary["model_id"], summary["paper"]
    mh = {t: most_harmful(summary, t) for t in TASKS}
    if p is None:
        where = ", ".join(f"{NAME[t]} {mh[t]['window']}" for t in TASKS if mh[t]["window"] is not None)
        return (
            f"The paper did not study {m}'s family, so it has no range to compare with; the most harmful "
            f"windows are {where or 'none'} (the paper's ranges for its two models, scaled to "
            f"{summary['n_layers']} layers, are below)."
        )
    lo, hi = p["layers"]
    range_ = f"{p['words']} ({p['model']}; at {summary['n_layers']} layers, layers {lo}-{hi})"
    if any(mh[t]["window"] is None for t in TASKS):
        return f"On {m}, there are no sliding windows to compare with the paper's {range_}."
    parts = [f"{NAME[t]} {mh[t]['window']}" for t in TASKS]
    inside = [mh[t]["in_paper_range"] for t in TASKS]
    where = "inside" if all(inside) else "outside" if not any(inside) else "partly inside"
    return f"On {m}, the most harmful windows ({', '.join(parts)}) lie {where} the paper's {range_}."


def paper_ranges(n_layers: int) -> str:
    """One sentence: the paper's knockout ranges (words) as layers of its own models and at ``n_layers``."""
    parts = []
    for model, r in KNOCKOUT_LAYERS.items():
        a, b = knockout_layers(model, N_LAYERS[model])
        c, d = knockout_layers(model, n_layers)
        parts.append(
            f"{MODELS[model]}'s {r['words']} are its layers {a}-{b} of {N_LAYERS[model]} "
            f"(layers {c}-{d} at {n_layers} layers)"
        )
    return "Read as thirds of depth, " + " and ".join(parts) + "."


def power_finding(summary: Mapping) -> str:
    """One sentence: this run's standard errors beside its largest single-window drops, in SEs."""
    m, n, b = summary["model_id"], summary["n_samples"], summary["baseline"]
    head = (
        f"At n = {n} objects, {m}'s baseline has standard errors of Loc ± {b['loc_se']:.1f} and "
        f"Cls ± {b['cls_se']:.1f} points"
    )
    parts, resolved = [], []
    for task in TASKS:
        mh = most_harmful(summary, task)
        if mh["window"] is None:
            continue
        k = KEY[task]
        se = se_of_difference(b[f"{k}_se"], summary["knockout"]["object"][mh["window"]][f"{k}_se"])
        ratio = mh["drop"] / se if se > 0 else float("inf")
        parts.append(
            f"{mh['drop']:.1f} points for {task} (layers {mh['window']}, {ratio:.1f} standard errors)"
        )
        resolved.append(ratio > 2)
    if not parts:
        return head + "; no sliding window was run, so there is no single-window drop to compare."
    head += "; the largest drop from blocking the object in one window is " + " and ".join(parts)
    if all(resolved):
        return head + ": both beyond 2 standard errors, so this n resolves them."
    return head + ": a drop within 2 standard errors is within noise at this n; pass a larger n_samples."


def _normalised(answer: str) -> str:
    return answer.strip().strip(".!,;:\"'").strip().lower()


def guess_finding(summary: Mapping, image_answers: Mapping[str, Sequence[str]]) -> str:
    """One sentence: where blocking the whole image leaves Cls *above* blocking the object alone, and
    the most frequent answer there (a model without the image can still guess a class).

    ``image_answers``: the classification answers of the image knockout per window label
    (:meth:`~vlmloc.experiments.ch05_attention_knockout.Knockout.answers`).
    """
    m, ko = summary["model_id"], summary["knockout"]
    gaps = {
        w: ko["image"][w]["cls"] - ko["object"][w]["cls"] for w in summary["windows"] if image_answers.get(w)
    }
    if not gaps or max(gaps.values()) <= 0:
        return (
            f"On {m}, blocking the whole image never leaves Cls above blocking the object alone: "
            "here the image knockout bounds the harm."
        )
    w = max(gaps, key=lambda x: gaps[x])
    answers = image_answers[w]
    top, count = Counter(_normalised(a) for a in answers).most_common(1)[0]
    where = "in all layers" if w == "all" else f"in layers {w}"
    return (
        f"On {m}, blocking the whole image {where} leaves Cls at {ko['image'][w]['cls']:.1f}%, above the "
        f"{ko['object'][w]['cls']:.1f}% of blocking the object alone; its most frequent answer there is "
        f"“{top}” ({count} of {len(answers)} objects)."
    )


def results_table(collected: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """For the results page: per model and task, the most harmful window beside the paper's range.

    ``collected`` is :func:`vlmloc.report.collect_summaries`'s ``{model: {chapter: summary}}``.
    """
    rows = []
    for model, s in chapter_runs(collected, CHAPTER):
        p = s["paper"]
        for task in TASKS:
            mh = s["most_harmful"][task]
            k = KEY[task]
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "most harmful window": mh["window"],
                    "% there (baseline)": f"{NAME[task]} {mh['score']:.1f} ({s['baseline'][k]:.1f})"
                    if mh["window"]
                    else "—",
                    "random tokens there": f"{mh['random']:.1f}" if mh["window"] else "—",
                    "windows needed": ", ".join(s["critical"][task]) or "none",
                    "paper's range (scaled)": f"{p['words']} of {p['model']}: layers {p['layers'][0]}-{p['layers'][1]} "
                    f"of {s['n_layers']}"
                    if p
                    else "not studied",
                    "in range": {True: "yes", False: "no"}.get(mh.get("in_paper_range"), "—"),
                    "n": s["n_samples"],
                }
            )
    return pd.DataFrame(rows)
