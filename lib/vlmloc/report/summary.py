"""The results page: every model's chapter summaries beside the paper's numbers.

Reads what the chapters wrote (``<results_dir>/<model>/NN_name.json``), so the page shows any
model that has been run, toy or real, without running anything itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..paper import CONTROL_SET, MODELS, RESULTS, SUMMARY_CONDITIONS
from .common import chapter_runs, number, styled

__all__ = [
    "collect_summaries",
    "condition_table",
    "finding_headline",
    "found_text",
    "headline_table",
    "styled",
]


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


def found_text(collected: Mapping[str, Mapping[str, dict]], results_dir: str | Path) -> str:
    """One line for the page's top: how many models have results in ``results_dir``, and which chapters."""
    import os

    where = os.path.relpath(Path(results_dir).resolve())
    runs = ", ".join(
        f"`{m}` ({', '.join(sorted(c for c in chs if not c.startswith('_')))})"
        for m, chs in sorted(collected.items())
    )
    return f"Found results of **{len(collected)}** model(s) in `{where}`: " + (runs or "none yet") + "."


def _loc_cls(entry: Any) -> tuple[float | None, float | None, float | None, float | None]:
    """(loc, loc_se, cls, cls_se) from a summary entry such as ``{"loc": .., "cls": ..}``."""
    if not isinstance(entry, Mapping):
        return None, None, None, None
    return (
        number(entry.get("loc")),
        number(entry.get("loc_se")),
        number(entry.get("cls")),
        number(entry.get("cls_se")),
    )


def headline_table(collected: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """Baseline Loc/Cls of every model run (chapter 1) beside the paper's baselines."""
    rows = []
    for model, ch1 in chapter_runs(collected, "01_data_and_baselines"):
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
    for model, summ in chapter_runs(collected, chapter):
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


def _paper_pair(model_id: str) -> str:
    b = RESULTS[model_id]["baseline"]
    return f"{b['loc']:.2f} / {b['cls']:.2f}"


def finding_headline(ours: pd.DataFrame) -> str:
    """The headline table in one sentence: the best-localizing model run here, beside the paper's baselines."""
    best = ours.loc[ours["Loc %"].idxmax()]
    (first, first_name), *others = MODELS.items()
    paper = f"the paper's {first_name} reaches {_paper_pair(first)}"
    paper += "".join(f" and {name} {_paper_pair(mid)}" for mid, name in others)
    return (
        f"Of the {len(ours)} model(s) run here, `{best['model']}` localizes best with "
        f"Loc {best['Loc %']:.1f}% (Cls {best['Cls %']:.1f}%); {paper} on COCO."
    )
