"""Chapter 7's verdict, tables and findings: head ablation beside the paper's recognition-then-localization claim.

The numbers come from :mod:`vlmloc.experiments.ch07_head_ablation`; the paper's claim, in words,
from :data:`vlmloc.paper.HEAD_ABLATION`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from ..experiments.ch07_head_ablation import CHAPTER, HEAD_SETS
from ..paper import HEAD_ABLATION, MODELS
from .common import chapter_runs, se_of_difference

__all__ = [
    "ablation_table",
    "finding_cls_heads",
    "finding_loc_heads",
    "finding_verdict",
    "results_table",
    "verdict",
]

_NAMES = {
    "classification_heads": "classification heads",
    "localization_heads": "localization heads",
    "random": "random heads",
}


def verdict(summary: Mapping, k: int, z: float = 2.0) -> dict[str, Any]:
    """At ``k`` heads: does ablating classification heads cripple localization beyond random heads,
    and does ablating localization heads spare classification? Differences count beyond ``z`` SEs."""
    a, b = summary["ablation"], summary["baseline"]
    key = str(k)
    cls_h, loc_h, rnd = a["classification_heads"][key], a["localization_heads"][key], a["random"][key]

    def beyond(x: Mapping, y: Mapping, m: str) -> float:
        """How far ``x`` falls below ``y`` on metric ``m`` in combined SEs (positive: x lower)."""
        se = se_of_difference(x[f"{m}_se"], y[f"{m}_se"]) or 1e-9
        return (y[m] - x[m]) / se

    return {
        "k": k,
        "loc_drop_cls_heads": round(b["loc"] - cls_h["loc"], 2),
        "loc_drop_random": round(b["loc"] - rnd["loc"], 2),
        "cls_heads_cripple_loc": bool(beyond(cls_h, rnd, "loc") > z),
        "cls_drop_loc_heads": round(b["cls"] - loc_h["cls"], 2),
        "cls_drop_random": round(b["cls"] - rnd["cls"], 2),
        "loc_heads_spare_cls": bool(beyond(loc_h, rnd, "cls") <= z),
        "recognition_then_localization": bool(beyond(cls_h, rnd, "loc") > z),
    }


def ablation_table(summary: Mapping) -> pd.DataFrame:
    """Loc and Cls (± SE) for every head set and k, the baseline first."""
    b = summary["baseline"]
    rows = [
        {
            "heads": "none (baseline)",
            "k": 0,
            "Loc %": b["loc"],
            "± Loc": b["loc_se"],
            "Cls %": b["cls"],
            "± Cls": b["cls_se"],
        }
    ]
    for hs in HEAD_SETS:
        for k, e in sorted(summary["ablation"][hs].items(), key=lambda kv: int(kv[0])):
            rows.append({"heads": _NAMES[hs], "k": int(k), "Loc %": e["loc"], "± Loc": e["loc_se"],
                         "Cls %": e["cls"], "± Cls": e["cls_se"]})  # fmt: skip
    return pd.DataFrame(rows).set_index(["heads", "k"])


def finding_cls_heads(model_id: str, summary: Mapping, k: int) -> str:
    """Does ablating the classification heads cripple localization, beyond random heads?"""
    v = verdict(summary, k)
    r = summary["ablation"]["random"][str(k)]
    c = summary["ablation"]["classification_heads"][str(k)]
    own = summary["ablation"]["localization_heads"][str(k)]
    return (
        f"Ablating the top {k} classification heads of {model_id} moves Loc from {summary['baseline']['loc']:.1f}% "
        f"to {c['loc']:.1f}% ± {c['loc_se']:.1f} (Cls to {c['cls']:.1f}%), against {r['loc']:.1f}% ± {r['loc_se']:.1f} "
        f"for {k} random heads and {own['loc']:.1f}% for the top {k} localization heads themselves: "
        f"{'it cripples localization' if v['cls_heads_cripple_loc'] else 'no more than random heads do'}"
        f"; paper: {HEAD_ABLATION['claim']}."
    )


def finding_loc_heads(model_id: str, summary: Mapping, k: int) -> str:
    """Does ablating the localization heads spare classification?"""
    v = verdict(summary, k)
    r = summary["ablation"]["random"][str(k)]
    loc = summary["ablation"]["localization_heads"][str(k)]
    return (
        f"Ablating the top {k} localization heads of {model_id} moves Cls from {summary['baseline']['cls']:.1f}% to "
        f"{loc['cls']:.1f}% ± {loc['cls_se']:.1f} (Loc to {loc['loc']:.1f}%), against {r['cls']:.1f}% for random heads: "
        f"{'classification is spared' if v['loc_heads_spare_cls'] else 'classification suffers more than with random heads'}"
        "; the paper does not report this direction."
    )


def _paper_models() -> str:
    return " and ".join(MODELS[m] for m in HEAD_ABLATION["models"])  # type: ignore[union-attr]


def finding_verdict(model_id: str, summary: Mapping, k: int) -> str:
    """The recognition-then-localization verdict at ``k`` heads, beside the paper's."""
    v = verdict(summary, k)
    yes = v["recognition_then_localization"]
    return (
        f"Recognition before localization on {model_id} at k = {k}: "
        + ("supported (classification heads hurt localization beyond random heads by more than 2 SE)" if yes
           else "not supported (classification heads do not hurt localization beyond random heads by 2 SE)")
        + f"; paper: supported on {_paper_models()} ({HEAD_ABLATION['claim']})."
    )  # fmt: skip


def results_table(collected: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """For the results page: the verdict per model, beside the paper's.

    ``collected`` is :func:`vlmloc.report.summary.collect_summaries`'s ``{model: {chapter: summary}}``.
    """
    rows = []
    for model, s in chapter_runs(collected, CHAPTER):
        k = int(s.get("verdict_k", 10))
        v = verdict(s, k)
        rows.append({"model": model, "source": "this book", "k": k,
                     "Loc drop, cls heads": v["loc_drop_cls_heads"], "Loc drop, random": v["loc_drop_random"],
                     "Cls drop, loc heads": v["cls_drop_loc_heads"], "Cls drop, random": v["cls_drop_random"],
                     "recognition then localization": "yes" if v["recognition_then_localization"] else "no"})  # fmt: skip
    for model_id in HEAD_ABLATION["models"]:  # type: ignore[union-attr]
        rows.append({"model": MODELS[model_id], "source": "paper", "recognition then localization": "yes"})
    return pd.DataFrame(rows).set_index(["model", "source"])
