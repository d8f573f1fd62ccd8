"""Chapter 6's tables, findings and cost model: what the mediation maps say, beside the paper.

The numbers come from :mod:`vlmloc.experiments.ch06_mediation` and :mod:`vlmloc.mediation_maps`;
the paper's from :mod:`vlmloc.paper`.

The findings are one sentence each, with the model named and the paper's number beside ours.
The cost model (the FLOPs and the memory of the three ways to get every head's MF on the real
models: exact sweep, exact sweep with the prefix reused, attribution patching) is
:mod:`vlmloc.gpu_cost`'s: the chapter calls it to say what a run costs on one GPU before anyone
starts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..experiments.ch06_mediation import CHAPTER
from ..families import FAMILIES
from ..mediation_maps import MFResult, overlap, top_heads
from ..paper import (
    MEDIATION_LAYERS,
    MEDIATION_TOP10_OVERLAP,
    MODELS,
    N_HEADS,
    N_LAYERS,
)
from ..stats import chance_overlap, overlap_p_value, sparsity, spearman
from .common import chapter_runs

__all__ = [
    "finding_attribution",
    "finding_controls",
    "finding_map",
    "finding_overlap",
    "finding_positions",
    "finding_precision",
    "finding_sparsity",
    "paper_band",
    "paper_layers",
    "paper_model",
    "results_table",
    "robustness_table",
    "top_table",
]


# --------------------------------------------------------------------------- the paper's layers


def paper_model(family: str) -> str | None:
    """The paper model of a model family whose mediation layers the paper reports, if any."""
    model_id = FAMILIES[family].paper_model if family in FAMILIES else None
    return model_id if model_id in MEDIATION_LAYERS else None


def paper_layers(family: str) -> tuple[str, tuple[int, int], int] | None:
    """``(paper model name, (first, last) layer, the paper model's layers)`` for a model family."""
    model_id = paper_model(family)
    if model_id is None:
        return None
    return MODELS[model_id], MEDIATION_LAYERS[model_id], N_LAYERS[model_id]


def paper_band(family: str, n_layers: int) -> list[int]:
    """This model's layers whose share of the depth overlaps the paper's band for the family.

    Layer ``l`` of ``L`` spans depth ``[l / L, (l + 1) / L)``; the paper's layers ``a..b`` of
    ``L'`` span ``[a / L', (b + 1) / L')``. On the paper's own model this gives its layers back.
    """
    ref = paper_layers(family)
    if ref is None:
        return []
    _, (a, b), total = ref
    lo, hi = a / total, (b + 1) / total
    return [la for la in range(n_layers) if la / n_layers < hi and (la + 1) / n_layers > lo]


# --------------------------------------------------------------------------- tables


def top_table(results: Mapping[str, MFResult], k: int = 10) -> pd.DataFrame:
    """The top-``k`` heads of each task with their MF ± standard error over pairs."""
    rows = []
    for task, res in results.items():
        se = res.se
        for rank, (la, h) in enumerate(top_heads(res.mean, k), start=1):
            rows.append(
                {"task": task, "rank": rank, "head": f"L{la}.H{h}", "MF": res.mean[la, h], "± se": se[la, h]}
            )
    table = pd.DataFrame(rows)
    return (
        table.pivot(index="rank", columns="task", values=["head", "MF", "± se"])
        .swaplevel(axis=1)
        .sort_index(axis=1, level=0, sort_remaining=False)
    )


def robustness_table(
    results: Mapping[str, MFResult],
    kept: Mapping[str, MFResult],
    other: Mapping[str, MFResult],
    other_positions: str,
) -> pd.DataFrame:
    """Does each task's top-10 survive the median instead of the mean, the reversed pairs kept
    (``kept``: MF without dropping them) and, when it ran, the other patch setting (``other``)?"""
    rows = []
    for task, r in results.items():
        top = top_heads(r.mean, 10)
        row = {
            "task": task,
            "pairs": len(r.used),
            "top-10 shared with the median's": len(overlap(top, top_heads(r.median))),
            "Spearman mean vs median": spearman(r.mean, r.median),
            "pairs with reversed ones kept": len(kept[task].used),
            "top-10 shared when they are kept": len(overlap(top, top_heads(kept[task].mean))),
        }
        if other:
            row[f"top-10 shared with patch_positions={other_positions}"] = len(
                overlap(top, top_heads(other[task].mean, 10))
            )
            row[f"Spearman vs {other_positions}"] = spearman(r.mean, other[task].mean)
        rows.append(row)
    return pd.DataFrame(rows).set_index("task")


# --------------------------------------------------------------------------- findings


def _heads(heads: Sequence[Sequence[int]]) -> str:
    return ", ".join(f"L{la}.H{h}" for la, h in heads)


def finding_map(model_id: str, family: str, task: str, res: MFResult, k: int = 10) -> str:
    """Where the task's top heads sit, against the paper's layers scaled to this model's depth."""
    n_layers, n_heads = res.mean.shape
    if not res.used:
        return f"No {task} pair of {model_id} had a usable denominator, so there is no MF map."
    top = top_heads(res.mean, k)
    best = top[0]
    band = paper_band(family, n_layers)
    ref = paper_layers(family)
    in_band = sum(la in band for la, _ in top)
    layers = sorted({la for la, _ in top})
    text = (
        f"For {task} on {model_id} ({len(res.used)} pairs) the largest mean MF is "
        f"{res.mean[best[0], best[1]]:.2f} ± {res.se[best[0], best[1]]:.2f} at L{best[0]}.H{best[1]}; "
        f"the top-{k} heads sit in layers {', '.join(map(str, layers))}" + (";" if ref and band else "")
    )
    if ref and band:
        name, (a, b), total = ref
        share = 100 * len(band) / n_layers
        text += (
            f" {in_band} of them in layers {band[0]}-{band[-1]} (the paper's band scaled to this depth, "
            f"{share:.0f}% of the heads); paper: {name}, layers {a}-{b} of {total}."
        )
    else:
        text += "."
    return text


def finding_overlap(
    model_id: str, family: str, tops: Mapping[str, Sequence[Sequence[int]]], n_heads_total: int
) -> str:
    """How many heads the two tasks' top-k lists share, against chance and the paper's 1-2."""
    a, b = tops["classification"], tops["localization"]
    k = len(a)
    shared = overlap(a, b)
    p = overlap_p_value(len(shared), k, n_heads_total)
    lo, hi = MEDIATION_TOP10_OVERLAP
    ref = paper_model(family)
    paper = f"paper: {lo}-{hi} shared"
    if ref is not None:
        total = N_LAYERS[ref] * N_HEADS[ref]
        paper += f" of {MODELS[ref]}'s {total:,} heads, where chance gives {chance_overlap(k, total):.1f}"
    return (
        f"The top-{k} heads of classification and localization on {model_id} share {len(shared)}"
        + (f" ({_heads(shared)})" if shared else "")
        + f", where two random sets of {k} of its {n_heads_total} heads share {chance_overlap(k, n_heads_total):.1f} "
        f"on average (P(overlap >= {len(shared)}) = {p:.2f}); {paper}."
    )


def finding_sparsity(model_id: str, results: Mapping[str, MFResult]) -> str:
    """The share of the summed positive MF carried by the top 1, 5 and 10 heads of each task."""
    parts = []
    uniform = None
    for task, res in results.items():
        s = sparsity(res.mean)
        uniform = s
        parts.append(f"{s['top1']:.0f}%, {s['top5']:.0f}% and {s['top10']:.0f}% for {task}")
    assert uniform is not None
    return (
        f"On {model_id} the top 1, 5 and 10 heads carry {' and '.join(parts)} of the summed positive MF, "
        f"against {uniform['uniform1']:.1f}%, {uniform['uniform5']:.1f}% and {uniform['uniform10']:.1f}% "
        "if every head carried the same; paper: a few heads carry almost all of the causal effect."
    )


def finding_controls(
    model_id: str,
    null: Mapping[str, Mapping],
    floor: Mapping[str, MFResult],
    results: Mapping[str, MFResult],
    k: int = 10,
) -> str:
    """Base into base is a null edit; the mismatched source gives the noise floor the top heads must clear."""
    exact = all(n["loop_exact"] for n in null.values())
    worst = max(n["batched_max_abs_mf"] for n in null.values())
    parts = []
    for task, res in results.items():
        f = floor.get(task)
        if f is None or not f.used:
            continue
        top = top_heads(res.mean, k)
        ours, theirs = _at(res.mean, top).mean(), _at(f.mean, top).mean()
        parts.append(
            f"{task}: the top-{k} heads average MF {ours:.2f} with the real source and {theirs:.2f} with a "
            f"mismatched one ({len(f.used)} pairs; largest mismatched MF of any head {np.nanmax(f.mean):.2f})"
        )
    return (
        f"Patching {model_id}'s base run into itself gives MF = 0 "
        + ("exactly with one forward per head" if exact else "only to rounding with one forward per head")
        + f" (largest |MF| {worst:.1e} in the batched sweep); "
        + ("; ".join(parts) if parts else "no mismatched pair was found")
        + ". The paper reports no such control."
    )


def _at(values: np.ndarray, heads: Sequence[Sequence[int]]) -> np.ndarray:
    """``values[layer, head]`` of each head, in the list's order."""
    return np.array([values[la, h] for la, h in heads])


def finding_precision(model_id: str, results: Mapping[str, MFResult], k: int = 10) -> str:
    """How precisely the pairs pin down the top heads' MF: their mean MF and standard errors."""
    parts = []
    for task, res in results.items():
        if len(res.used) < 2:
            continue
        top = top_heads(res.mean, k)
        mf, se = _at(res.mean, top), _at(res.se, top)
        parts.append(
            f"{task} ({len(res.used)} pairs): MF {mf.min():.2f}-{mf.max():.2f}, SE {se.min():.2f}-{se.max():.2f} "
            f"(median {np.median(se):.2f})"
        )
    if not parts:
        return f"Too few pairs of {model_id} were kept to estimate standard errors."
    return (
        f"The top-{k} heads of {model_id} have " + "; ".join(parts) + ". Heads whose MFs differ by less than "
        "about two standard errors are not reliably ordered; the paper gives no standard errors."
    )


def finding_positions(
    model_id: str,
    tops: Mapping[str, Sequence[Sequence[int]]],
    other: Mapping[str, Sequence[Sequence[int]]],
    positions: str,
    other_positions: str,
) -> str:
    """How many of the top-10 heads stay when the patch covers the other set of positions."""
    parts = [
        f"{len(overlap(tops[t], other[t]))} of the top {len(tops[t])} for {t}" for t in tops if t in other
    ]
    return (
        f"Patching {model_id}'s heads at {_POSITIONS[other_positions]} instead of {_POSITIONS[positions]} "
        f"keeps {' and '.join(parts)}; the paper does not say where it patches."
    )


_POSITIONS = {"after_image": "the positions after the image", "all": "every position"}


def finding_attribution(model_id: str, stats: Mapping[str, Mapping], seconds: Mapping[str, float]) -> str:
    """How well the first-order screen ranks the heads, and what it costs."""
    parts = [
        f"Spearman {s['spearman']:.2f} and {s['top10_overlap']}/10 shared top heads for {task}"
        for task, s in stats.items()
    ]
    ratio = seconds["exact"] / seconds["attribution"] if seconds["attribution"] > 0 else float("nan")
    return (
        f"Attribution patching ranks {model_id}'s heads like the exact sweep with {' and '.join(parts)}, "
        f"in {seconds['attribution']:.0f} s against {seconds['exact']:.0f} s ({ratio:.1f}x faster here; the "
        "ratio grows with the number of heads); the paper uses the exact sweep only."
    )


# --------------------------------------------------------------------------- the results page


def results_table(collected: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """For the results page: one row per model that ran chapter 6, the paper's models beside them.

    ``collected`` is :func:`vlmloc.report.summary.collect_summaries`'s ``{model: {chapter: summary}}``.
    """
    rows = []
    for model, s in chapter_runs(collected, CHAPTER):
        band = s.get("paper_band") or []
        row = {"model": model, "source": "this book", "heads": s["n_layers"] * s["n_heads"]}
        for task, short in (("classification", "cls"), ("localization", "loc")):
            top = s["top10"][task]
            row[f"top-10 layers ({short})"] = ", ".join(str(la) for la in sorted({la for la, _ in top}))
            row[f"in band ({short})"] = sum(la in band for la, _ in top)
            row[f"top-10 share % ({short})"] = round(s["sparsity"][task]["top10"], 1)
            row[f"attribution rho ({short})"] = round(s["attribution"][task]["spearman"], 2)
            row[f"pairs ({short})"] = s["n_pairs"][task]["used"]
        row["top-10 overlap"] = s["overlap"]
        row["chance"] = round(s["overlap_chance"], 2)
        row["paper band"] = f"{band[0]}-{band[-1]}" if band else ""
        rows.append(row)
    lo, hi = MEDIATION_TOP10_OVERLAP
    for model_id, (first, last) in MEDIATION_LAYERS.items():
        n = N_LAYERS[model_id] * N_HEADS[model_id]
        rows.append({"model": MODELS[model_id], "source": "paper", "heads": n, "top-10 overlap": f"{lo}-{hi}",
                     "chance": round(chance_overlap(10, n), 2), "paper band": f"{first}-{last}"})  # fmt: skip
    return pd.DataFrame(rows).set_index(["model", "source"])
