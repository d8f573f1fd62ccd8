"""Chapter 1's tables and findings: the baselines beside the paper's, and the control set.

Everything takes plain records and summaries, so the tables are testable without a model; the
summaries come from :mod:`vlmloc.experiments.ch01_baselines` and :mod:`vlmloc.control_set`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..metrics import THRESHOLDS
from ..paper import CONTROL_SET, MODELS, RESULTS
from .common import number, styled

__all__ = [
    "baseline_table",
    "control_set_table",
    "finding_baseline",
    "finding_control",
    "finding_gallery",
    "finding_iou",
    "finding_sizes",
    "paper_baselines",
    "styled",
]


def baseline_table(model_id: str, ours: Mapping[str, float]) -> pd.DataFrame:
    """One row for this run and one per paper model: Loc, IoU successes, Cls, each with its SE."""
    rows = [
        {
            "model": f"{model_id} (this run)",
            "Loc %": number(ours["loc"]),
            "± SE": number(ours.get("loc_se")),
            **{f"IoU≥{t} %": number(ours.get(f"iou@{t}")) for t in THRESHOLDS},
            "Cls %": number(ours["cls"]),
            "± SE ": number(ours.get("cls_se")),
            "n": ours.get("n"),
        }
    ]
    for mid, name in MODELS.items():
        base = RESULTS[mid]["baseline"]
        rows.append(
            {
                "model": f"{name} (paper)",
                "Loc %": base["loc"],
                "± SE": None,
                **{f"IoU≥{t} %": None for t in THRESHOLDS},
                "Cls %": base["cls"],
                "± SE ": None,
                "n": None,
            }
        )
    df = pd.DataFrame(rows).set_index("model")
    df["n"] = df["n"].astype("Int64")
    return df


def control_set_table(model_id: str, summary: Mapping[str, Any]) -> pd.DataFrame:
    """Candidates, kept pairs and images of this run beside the paper's control set."""
    paper_name = MODELS[str(CONTROL_SET["model_id"])]
    df = pd.DataFrame(
        [
            {
                "model": f"{model_id} (this run)",
                "classified correctly (candidates)": summary["n_candidates"],
                "kept pairs (annotations)": summary["n_kept"],
                "images": summary["n_images"],
                "inpainting": summary["method"],
            },
            {
                "model": f"{paper_name} (paper)",
                "classified correctly (candidates)": None,
                "kept pairs (annotations)": CONTROL_SET["n_kept"],
                "images": CONTROL_SET["n_images"],
                "inpainting": CONTROL_SET["method"],
            },
        ]
    ).set_index("model")
    for col in ("classified correctly (candidates)", "kept pairs (annotations)", "images"):
        df[col] = df[col].astype("Int64")
    return df


# --------------------------------------------------------------------------- findings in one sentence
# The numbers change with every model and run, so the sentences are computed, never hand-written.


def paper_baselines() -> str:
    """The paper's baselines in one clause ("Loc a / Cls b for LLaVA-1.5-7B and c / d for ..."), from :mod:`vlmloc.paper`."""
    parts = []
    for i, (mid, name) in enumerate(MODELS.items()):
        b = RESULTS[mid]["baseline"]
        loc, cls = f"{b['loc']:.2f}", f"{b['cls']:.2f}"
        parts.append(f"Loc {loc} / Cls {cls} for {name}" if i == 0 else f"{loc} / {cls} for {name}")
    return " and ".join(parts) + " on COCO"


def finding_baseline(model_id: str, b: Mapping[str, float]) -> str:
    """The baseline table in one sentence, beside the paper's numbers."""
    if b["loc"] < b["cls"]:
        order = "Localization is harder than classification here, as for both paper models."
    elif b["loc"] == b["cls"]:
        order = "Loc and Cls are equal here; for both paper models localization is the harder task."
    else:
        order = "Localization scores higher than classification here, unlike for both paper models."
    return (
        f"On {b['n']} objects, {model_id} reaches Loc {b['loc']:.1f}% ± {b['loc_se']:.1f} and "
        f"Cls {b['cls']:.1f}% ± {b['cls_se']:.1f}; the paper reports {paper_baselines()}. {order}"
    )


def finding_iou(b: Mapping[str, float], records: Sequence[Mapping]) -> str:
    """The IoU histogram in one sentence."""
    ious = sorted(float(r["iou"] or 0.0) for r in records)
    median = ious[len(ious) // 2] if len(ious) % 2 else (ious[len(ious) // 2 - 1] + ious[len(ious) // 2]) / 2
    return (
        f"The median IoU is {median:.2f}: {b['iou@0.5']:.0f}% of the boxes reach IoU 0.5, "
        f"{b['iou@0.7']:.0f}% reach 0.7 and {b['iou@0.9']:.0f}% reach 0.9, and {b['unparsable']} of "
        f"{b['n']} answers contained no box (counted as IoU 0)."
    )


def finding_gallery(records: Sequence[Mapping], sample_ids: Sequence[str]) -> str:
    """The box gallery in one sentence."""
    wanted = set(sample_ids)
    shown = [r for r in records if r["sample_id"] in wanted]
    good = sum((r.get("iou") or 0.0) >= 0.5 for r in shown)
    none = sum(r.get("iou") is None for r in shown)
    return (
        f"Of the {len(shown)} objects shown, {good} get a box with IoU ≥ 0.5, "
        f"{len(shown) - good - none} a box that misses by more, and {none} no box at all."
    )


def finding_sizes(table: pd.DataFrame) -> str:
    """The size split in one sentence."""
    loc, cls = table["Loc %"].astype(float), table["Cls %"].astype(float)
    if loc.max() == loc.min():
        where = f"Localization is {loc.max():.1f}% for every size class present"
    else:
        where = (
            f"Localization is best on {loc.idxmax()} objects ({loc.max():.1f}%) and worst on "
            f"{loc.idxmin()} ones ({loc.min():.1f}%)"
        )
    spread = (
        f"classification is {cls.max():.1f}% for every size"
        if cls.max() == cls.min()
        else f"classification ranges from {cls.min():.1f}% ({cls.idxmin()}) to {cls.max():.1f}% ({cls.idxmax()})"
    )
    return f"{where}; {spread}."


def finding_control(model_id: str, summary: Mapping[str, Any], n_samples: int) -> str:
    """The control set in one sentence, beside the paper's counts."""
    paper = f"the paper keeps {CONTROL_SET['n_kept']:,} annotations over {CONTROL_SET['n_images']:,} images for LLaVA-1.5-7B with LaMa"
    if not summary["n_candidates"]:
        return (
            f"{model_id} classified none of the {n_samples} objects correctly, so nothing was inpainted and "
            f"its control set is empty ({paper}); the figure shows {summary['method']} inpainting of the "
            "first samples instead."
        )
    share = 100 * summary["n_kept"] / summary["n_candidates"]
    return (
        f"After {summary['method']} inpainting, {summary['n_kept']} of the {summary['n_candidates']} objects that "
        f"{model_id} classified correctly ({share:.0f}%, over {summary['n_images']} images) are no longer named "
        f"and form the control set; {paper}."
    )
