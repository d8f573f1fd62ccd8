"""Tables for the chapters and the summary page: our numbers beside the paper's, as pandas frames.

Everything takes plain records and summaries (what :mod:`vlmloc.evaluate` and
:func:`vlmloc.store.write_summary` produce), so the tables are testable without a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .evaluate import summarize
from .metrics import THRESHOLDS
from .paper import CONTROL_SET, MODELS, RESULTS

__all__ = [
    "SIZE_ORDER",
    "baseline_summary",
    "baseline_table",
    "by_size",
    "collect_summaries",
    "condition_table",
    "control_set_table",
    "headline_table",
]

SIZE_ORDER = ("small", "medium", "large")


def _r(x: Any, nd: int = 2) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else round(x, nd)


def baseline_summary(records: Mapping[str, Sequence[dict]]) -> dict:
    """``{"loc", "loc_se", "iou@0.5", ..., "cls", "cls_se", "n"}`` in percent from both tasks' records."""
    loc = summarize(records["localization"], "localization")
    cls = summarize(records["classification"], "classification")
    out = {"loc": loc["loc"], "loc_se": loc["loc_se"]}
    out.update({f"iou@{t}": loc[f"iou@{t}"] for t in THRESHOLDS})
    out.update(
        {
            "mean_iou": loc["mean_iou"],
            "unparsable": int(loc["unparsable"]),
            "cls": cls["rate"],
            "cls_se": cls["se"],
            "n": int(loc["n"]),
        }
    )
    return out


def baseline_table(model_id: str, ours: Mapping[str, float]) -> pd.DataFrame:
    """One row for this run and one per paper model: Loc, IoU successes, Cls, each with its SE."""
    rows = [
        {
            "model": f"{model_id} (this run)",
            "Loc %": _r(ours["loc"]),
            "± SE": _r(ours.get("loc_se")),
            **{f"IoU≥{t} %": _r(ours.get(f"iou@{t}")) for t in THRESHOLDS},
            "Cls %": _r(ours["cls"]),
            "± SE ": _r(ours.get("cls_se")),
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
    return pd.DataFrame(rows).set_index("model")


def by_size(records: Mapping[str, Sequence[dict]]) -> pd.DataFrame:
    """Loc and Cls (with SE and n) per COCO size class present in the records."""
    rows = []
    for size in SIZE_ORDER:
        loc_r = [r for r in records["localization"] if r.get("size") == size]
        cls_r = [r for r in records["classification"] if r.get("size") == size]
        if not loc_r and not cls_r:
            continue
        row: dict[str, Any] = {"size": size}
        if loc_r:
            s = summarize(loc_r, "localization")
            row.update({"Loc %": _r(s["loc"]), "Loc SE": _r(s["loc_se"]), "mean IoU": _r(s["mean_iou"], 3)})
        if cls_r:
            s = summarize(cls_r, "classification")
            row.update({"Cls %": _r(s["rate"]), "Cls SE": _r(s["se"])})
        row["n"] = max(len(loc_r), len(cls_r))
        rows.append(row)
    return pd.DataFrame(rows).set_index("size") if rows else pd.DataFrame()


def control_set_table(model_id: str, summary: Mapping[str, Any]) -> pd.DataFrame:
    """Candidates, kept pairs and images of this run beside the paper's control set."""
    paper_name = MODELS[str(CONTROL_SET["model_id"])]
    return pd.DataFrame(
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


# --------------------------------------------------------------------------- the summary page


def collect_summaries(results_dir: str | Path) -> dict[str, dict[str, dict]]:
    """``{model_id: {chapter: summary}}`` from every ``<results_dir>/<model>/*.json``.

    The model id is the summary's ``model_id`` when it has one, else the folder name. Unreadable
    files are skipped with their error recorded under the chapter key ``"_errors"``.
    """
    out: dict[str, dict[str, dict]] = {}
    root = Path(results_dir)
    if not root.is_dir():
        return out
    for path in sorted(root.glob("*/*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            out.setdefault(path.parent.name, {}).setdefault("_errors", {})[path.name] = str(err)
            continue
        if not isinstance(doc, dict):
            continue
        model = str(doc.get("model_id") or path.parent.name)
        out.setdefault(model, {})[path.stem] = doc
    return out


def _loc_cls(entry: Any) -> tuple[float | None, float | None, float | None, float | None]:
    """(loc, loc_se, cls, cls_se) from a summary entry such as ``{"loc": .., "cls": ..}``."""
    if not isinstance(entry, Mapping):
        return None, None, None, None
    return (_r(entry.get("loc")), _r(entry.get("loc_se")), _r(entry.get("cls")), _r(entry.get("cls_se")))


def headline_table(collected: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """Baseline Loc/Cls of every model run (chapter 1) beside the paper's baselines."""
    rows = []
    for model, chapters in sorted(collected.items()):
        ch1 = chapters.get("01_data_and_baselines")
        if not ch1:
            continue
        loc, loc_se, cls, cls_se = _loc_cls(ch1.get("baseline"))
        cs = ch1.get("control_set") or {}
        rows.append(
            {
                "model": model,
                "source": "this book",
                "Loc %": loc,
                "Loc SE": loc_se,
                "Cls %": cls,
                "Cls SE": cls_se,
                "n": ch1.get("n_samples"),
                "control pairs": cs.get("n_kept"),
                "inpainting": cs.get("method"),
            }
        )
    for mid, name in MODELS.items():
        b = RESULTS[mid]["baseline"]
        rows.append(
            {
                "model": name,
                "source": "paper",
                "Loc %": b["loc"],
                "Loc SE": None,
                "Cls %": b["cls"],
                "Cls SE": None,
                "n": None,
                "control pairs": CONTROL_SET["n_kept"] if mid == CONTROL_SET["model_id"] else None,
                "inpainting": CONTROL_SET["method"] if mid == CONTROL_SET["model_id"] else None,
            }
        )
    return pd.DataFrame(rows)


def _conditions(summary: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every (possibly nested) entry of a summary that holds a ``loc`` or ``cls`` number."""
    found: dict[str, Any] = {}
    for key, value in summary.items():
        if not isinstance(value, Mapping):
            continue
        name = f"{prefix}{key}"
        if any(isinstance(value.get(k), int | float) for k in ("loc", "cls")):
            found[name] = value
        else:
            found.update(_conditions(value, prefix=f"{name}."))
    return found


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(" ", "_").replace(".", "_")


def condition_table(collected: Mapping[str, Mapping[str, dict]], chapter: str) -> pd.DataFrame:
    """Every condition with Loc/Cls numbers in ``chapter``'s summaries, ours beside the paper's.

    A condition whose (normalized) name contains a paper condition's name, e.g.
    ``ablation.object_tokens`` and ``object_tokens``, gets that paper number for each paper model.
    """
    rows = []
    paper_conds = sorted({c for rows_ in RESULTS.values() for c in rows_}, key=len, reverse=True)
    for model, chapters in sorted(collected.items()):
        summ = chapters.get(chapter)
        if not summ:
            continue
        for cond, entry in _conditions(summ).items():
            loc, loc_se, cls, cls_se = _loc_cls(entry)
            match = next((p for p in paper_conds if p in _norm(cond)), None)
            row = {
                "model": model,
                "condition": cond,
                "Loc %": loc,
                "Loc SE": loc_se,
                "Cls %": cls,
                "Cls SE": cls_se,
            }
            for mid, name in MODELS.items():
                p = RESULTS[mid].get(match) if match else None
                row[f"{name} Loc (paper)"] = p["loc"] if p else None
                row[f"{name} Cls (paper)"] = p["cls"] if p else None
            rows.append(row)
    return pd.DataFrame(rows)
