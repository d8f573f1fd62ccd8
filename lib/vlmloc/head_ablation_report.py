"""Chapter 7's tables and findings: head ablation beside the paper's recognition-then-localization claim."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .head_ablation import HEAD_SETS, verdict
from .paper import HEAD_ABLATION

__all__ = ["ablation_table", "finding_cls_heads", "finding_loc_heads", "finding_verdict", "summary_table"]

_NAMES = {
    "classification_heads": "classification heads",
    "localization_heads": "localization heads",
    "random": "random heads",
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


def _drop(summary: Mapping, hs: str, k: str, m: str) -> tuple[float, float]:
    e = summary["ablation"][hs][k]
    return summary["baseline"][m] - e[m], e[f"{m}_se"]


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


def finding_verdict(model_id: str, summary: Mapping, k: int) -> str:
    v = verdict(summary, k)
    yes = v["recognition_then_localization"]
    return (
        f"Recognition before localization on {model_id} at k = {k}: "
        + ("supported (classification heads hurt localization beyond random heads by more than 2 SE)" if yes
           else "not supported (classification heads do not hurt localization beyond random heads by 2 SE)")
        + f"; paper: supported on LLaVA-1.5 and InternVL-3.5 ({HEAD_ABLATION['claim']})."
    )  # fmt: skip


def summary_table(collected: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """The results page's verdict per model, beside the paper's."""
    rows = []
    for model, chapters in sorted(collected.items()):
        s = chapters.get("07_head_ablation")
        if not s:
            continue
        k = int(s.get("verdict_k", 10))
        v = verdict(s, k)
        rows.append({"model": model, "source": "this book", "k": k,
                     "Loc drop, cls heads": v["loc_drop_cls_heads"], "Loc drop, random": v["loc_drop_random"],
                     "Cls drop, loc heads": v["cls_drop_loc_heads"], "Cls drop, random": v["cls_drop_random"],
                     "recognition then localization": "yes" if v["recognition_then_localization"] else "no"})  # fmt: skip
    for name in ("LLaVA-1.5-7B", "InternVL-3.5-8B"):
        rows.append({"model": name, "source": "paper", "recognition then localization": "yes"})
    return pd.DataFrame(rows).set_index(["model", "source"])
