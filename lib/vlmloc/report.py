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
from .paper import CONTROL_SET, MODELS, RESULTS, SUMMARY_CONDITIONS

__all__ = [
    "SIZE_ORDER",
    "baseline_summary",
    "baseline_table",
    "by_size",
    "collect_summaries",
    "condition_table",
    "control_set_table",
    "finding_baseline",
    "finding_control",
    "finding_gallery",
    "finding_iou",
    "finding_sizes",
    "headline_table",
    "styled",
]

SIZE_ORDER = ("small", "medium", "large")


def _r(x: Any, nd: int = 2) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else round(x, nd)


def styled(table: pd.DataFrame, precision: int = 2):
    """A table for display: fixed decimals and an em dash where a number is not reported."""
    return table.style.format(precision=precision, na_rep="—")


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
    df = pd.DataFrame(rows).set_index("model")
    df["n"] = df["n"].astype("Int64")
    return df


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


# --------------------------------------------------------------------------- the summary page


def collect_summaries(results_dir: str | Path) -> dict[str, dict[str, dict]]:
    """``{model_id: {chapter: summary}}`` from every ``<results_dir>/<model>/*.json``.

    The model id is the summary's ``model_id`` when it has one, else the folder name. Unreadable
    files are skipped with their error recorded under the chapter key ``"_errors"``. Only chapter
    summaries (``NN_name.json``) count; sidecars such as ``mean_visual_embedding.json`` do not.
    """
    out: dict[str, dict[str, dict]] = {}
    root = Path(results_dir)
    if not root.is_dir():
        return out
    for path in sorted(root.glob("*/[0-9][0-9]_*.json")):
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
    df = pd.DataFrame(rows)
    for col in ("n", "control pairs"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


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

    A condition named in :data:`vlmloc.paper.SUMMARY_CONDITIONS` (e.g. ``ablation.object``), or whose normalized
    name contains a paper condition's name (e.g. ``ablation.object_tokens``), gets that paper
    condition's numbers for each paper model.
    """
    rows = []
    paper_conds = sorted({c for rows_ in RESULTS.values() for c in rows_}, key=len, reverse=True)
    for model, chapters in sorted(collected.items()):
        summ = chapters.get(chapter)
        if not summ:
            continue
        for cond, entry in _conditions(summ).items():
            loc, loc_se, cls, cls_se = _loc_cls(entry)
            match = SUMMARY_CONDITIONS.get(cond) or next((p for p in paper_conds if p in _norm(cond)), None)
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


# --------------------------------------------------------------------------- findings in one sentence
# The numbers change with every model and run, so the sentences are computed, never hand-written.

_PAPER_BASELINES = (
    "the paper reports Loc 35.34 / Cls 58.10 for LLaVA-1.5-7B and 72.64 / 83.30 for InternVL-3.5-8B on COCO"
)


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
        f"Cls {b['cls']:.1f}% ± {b['cls_se']:.1f}; {_PAPER_BASELINES}. {order}"
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
