"""Chapter 7's tables and findings: head ablation beside the paper's recognition-then-localization claim.

The numbers and the verdict come from :mod:`vlmloc.experiments.ch07_head_ablation`; the paper's
claim, in words, from :data:`vlmloc.paper.HEAD_ABLATION`. The paper gives no k, so every k here
is ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..experiments.ch07_head_ablation import CHAPTER, EFFECTS
from ..paper import HEAD_ABLATION, MODELS
from .common import chapter_runs

__all__ = [
    "ablation_table",
    "effects_table",
    "finding_effects",
    "finding_sample",
    "finding_sample_size",
    "finding_verdict",
    "head_table",
    "results_table",
]

_SETS = {
    "cls_only": "cls-only heads",
    "random_cls_only": "random, matched to cls-only",
    "loc_only": "loc-only heads",
    "random_loc_only": "random, matched to loc-only",
}
_EFFECT_NAMES = {
    "cls_heads_on_loc": "cls-only on Loc (A)",
    "loc_heads_on_cls": "loc-only on Cls (B)",
    "cls_heads_on_cls": "cls-only on Cls",
    "loc_heads_on_loc": "loc-only on Loc",
}


def _heads(heads: Sequence[Sequence[int]]) -> str:
    return ", ".join(f"L{la}.H{h}" for la, h in heads) or "none"


def head_table(heads_by_k: Mapping[Any, Mapping[str, Sequence]]) -> pd.DataFrame:
    """Per k: each task's own heads and the heads both top-k lists share (:meth:`HeadSets.as_dict`)."""
    rows = [
        {"k": int(k), "cls-only heads": _heads(h["cls_only"]), "loc-only heads": _heads(h["loc_only"]),
         "shared": _heads(h["shared"])}
        for k, h in heads_by_k.items()
    ]  # fmt: skip
    return pd.DataFrame(rows).set_index("k")


def ablation_table(result: Mapping) -> pd.DataFrame:
    """Loc and Cls (± SE) of every head set and its layer-matched random heads, the baseline first."""
    b = result["baseline"]
    rows = [{"heads": "none (baseline)", "k": 0, "n heads": 0, "Loc %": b["loc"], "± Loc": b["loc_se"],
             "Cls %": b["cls"], "± Cls": b["cls_se"]}]  # fmt: skip
    for k, block in sorted(result["by_k"].items(), key=lambda kv: int(kv[0])):
        for name, label in _SETS.items():
            e = block["conditions"].get(name)
            if e is None:
                continue
            size = len(block["heads"][name.removeprefix("random_")])
            rows.append({"heads": label, "k": int(k), "n heads": size, "Loc %": e["loc"], "± Loc": e["loc_se"],
                         "Cls %": e["cls"], "± Cls": e["cls_se"]})  # fmt: skip
    return pd.DataFrame(rows).set_index(["k", "heads"])


def effects_table(result: Mapping) -> pd.DataFrame:
    """Per k: each head set's drop beyond its matched random heads (points, ± paired SE) and the verdict."""
    rows = []
    for k, block in sorted(result["by_k"].items(), key=lambda kv: int(kv[0])):
        row: dict[str, Any] = {"k": int(k)}
        for effect in EFFECTS.values():
            e = block["effects"].get(effect)
            row[_EFFECT_NAMES[effect]] = f"{e['drop']:+.1f} ± {e['se']:.1f}" if e else "—"
        row["verdict"] = block["verdict"]["outcome"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("k")


def finding_sample(model_id: str, drawn: Mapping) -> str:
    """How the evaluation objects were drawn, and that they share nothing with chapter 6's ranking."""
    o = drawn["mediation_overlap"]
    return (
        f"{model_id} is evaluated on {drawn['n']} objects, {drawn['drawn']} ({drawn['skipped']} skipped); "
        f"they share {o['objects']} objects and {o['images']} images with the pairs and mismatched sources "
        "chapter 6 ranked the heads on."
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _unmatched(block: Mapping) -> str:
    """Random heads that had to come from a neighbouring layer (the top lists filled theirs)."""
    worst = {name: max(v) for name, v in block.get("unmatched_layers", {}).items() if v and max(v)}
    if not worst:
        return "; every random head from its own layer"
    parts = [f"{n} for {name.replace('_', '-')}" for name, n in worst.items()]
    return f"; random heads from a neighbouring layer, where the top lists filled theirs: {', '.join(parts)}"


def finding_effects(model_id: str, result: Mapping, k: int) -> str:
    """Both directions at ``k``: each task's own heads against layer-matched random heads, on the other task."""
    block = result["by_k"][str(k)]
    h, eff = block["heads"], block["effects"]
    if "cls_heads_on_loc" not in eff or "loc_heads_on_cls" not in eff:
        return (
            f"At k = {k} the top-{k} lists of {model_id} share every head, so no task has heads of its own."
        )
    a, b = eff["cls_heads_on_loc"], eff["loc_heads_on_cls"]
    own_c, own_l = eff["cls_heads_on_cls"], eff["loc_heads_on_loc"]
    return (
        f"At k = {k} on {model_id} ({_count(len(h['shared']), 'head')} shared by both top-{k} lists"
        f"{_unmatched(block)}), ablating the "
        f"{len(h['cls_only'])} cls-only heads costs Loc {a['drop']:+.1f} ± {a['se']:.1f} points beyond "
        f"layer-matched random heads (their own task, Cls: {own_c['drop']:+.1f} ± {own_c['se']:.1f}); the "
        f"{len(h['loc_only'])} loc-only heads cost Cls {b['drop']:+.1f} ± {b['se']:.1f} beyond theirs (Loc: "
        f"{own_l['drop']:+.1f} ± {own_l['se']:.1f}). Paired over {a['n']} objects and {a['draws']} random draws."
    )


def finding_sample_size(model_id: str, result: Mapping, k: int, min_effect: float, z: float = 2.0) -> str:
    """The SE reached at ``k`` and the objects needed to resolve ``min_effect`` at ``z`` SE (draw noise aside)."""
    eff = result["by_k"][str(k)]["effects"].get("cls_heads_on_loc")
    if eff is None:
        return f"At k = {k} {model_id} has no cls-only heads, so there is no effect to size."
    target = min_effect / z
    need = int(np.ceil(eff["n"] * (eff["se_objects"] / target) ** 2)) if eff["se_objects"] > 0 else eff["n"]
    draws = (
        f"; the random draws alone add {eff['se_draws']:.1f}, which only more draws shrink"
        if eff["se_draws"] > target / 2 else ""
    )  # fmt: skip
    return (
        f"At k = {k} the cls-only heads' excess Loc drop on {model_id} has SE {eff['se']:.1f} points over "
        f"{eff['n']} objects and {eff['draws']} draws (objects {eff['se_objects']:.1f}, draws {eff['se_draws']:.1f}); "
        f"resolving {min_effect:g} points at {z:g} SE needs an SE of {target:.1f}, about {need} objects at this "
        f"spread{draws}."
    )


def _paper_models() -> str:
    return " and ".join(MODELS[m] for m in HEAD_ABLATION["models"])  # type: ignore[union-attr]


def finding_verdict(model_id: str, result: Mapping, k: int) -> str:
    """The recognition-then-localization verdict at every k (the reason at ``k``), beside the paper's."""
    per_k = ", ".join(f"{outcome} at k = {kk}" for kk, outcome in result["verdict"].items())
    v = result["by_k"][str(k)]["verdict"]
    return (
        f"Recognition before localization on {model_id}: {per_k} (at k = {k}: {v['reason']}); paper: "
        f"supported on {_paper_models()} ({HEAD_ABLATION['claim']}), with no k given and no random-head "
        "control reported."
    )


def results_table(collected: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """For the results page: each model's verdict and both directions at its ``verdict_k``, beside the paper.

    ``collected`` is :func:`vlmloc.report.summary.collect_summaries`'s ``{model: {chapter: summary}}``.
    """
    rows = []
    for model, s in chapter_runs(collected, CHAPTER):
        k = str(s.get("verdict_k", 10))
        block = s.get("by_k", {}).get(k)
        if block is None:
            continue
        eff = block["effects"]
        cell = lambda e: f"{e['drop']:+.1f} ± {e['se']:.1f}" if e else "—"  # noqa: E731
        rows.append({"model": model, "source": "this book", "k": int(k),
                     "cls-only heads on Loc": cell(eff.get("cls_heads_on_loc")),
                     "loc-only heads on Cls": cell(eff.get("loc_heads_on_cls")),
                     "recognition then localization": block["verdict"]["outcome"]})  # fmt: skip
    for model_id in HEAD_ABLATION["models"]:  # type: ignore[union-attr]
        rows.append(
            {"model": MODELS[model_id], "source": "paper", "recognition then localization": "supported"}
        )
    return pd.DataFrame(rows).set_index(["model", "source"])
