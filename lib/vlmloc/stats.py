"""The statistics behind "beyond random" claims: differences of rates, paired over objects or not.

:func:`se_of_difference` is the conservative SE of a difference of two rates measured on
independent (or unpaired-treated) runs; every chapter's findings and chapter 5's critical windows
use it.

Two ablations evaluated on the *same* objects are paired: most of the variation between objects
(easy and hard ones) cancels in their per-object difference, so the standard error of a
difference of means is that of the per-object differences, not the combined SE of two
independent rates. When one side is a random control drawn several times (random heads), the
draws are a second source of noise: one draw may hit a head the model cannot do without. The
SE of :func:`paired_difference` adds the spread between draws to the spread between objects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .metrics import loc_success

__all__ = ["loc_score", "paired_difference", "per_object", "se_of_difference"]


def se_of_difference(*ses: float) -> float:
    """Standard error of a difference, treating the conditions as independent (conservative when paired)."""
    return math.sqrt(sum(s * s for s in ses))


def loc_score(iou: float | None) -> float:
    """One object's Loc in percent: the share of the IoU thresholds its box meets (no box: 0)."""
    return 100.0 * loc_success(iou)


def per_object(records: Sequence[Mapping], task: str) -> dict[str, float]:
    """``{sample_id: score in percent}``: Loc for localization records, 0/100 for classification."""
    if task == "classification":
        return {r["sample_id"]: 100.0 * bool(r["correct"]) for r in records}
    return {r["sample_id"]: loc_score(r.get("iou")) for r in records}


def paired_difference(
    treated: Mapping[str, float], controls: Sequence[Mapping[str, float]]
) -> dict[str, float]:
    """How much lower ``treated`` scores than the ``controls`` on the same objects, with its SE.

    ``drop = mean_i(c_i - t_i)`` with ``c_i`` the mean over control draws of object ``i``
    (positive: the treatment hurts more than the control). Its SE combines the spread of the
    per-object differences, ``sd_i(c_i - t_i) / sqrt(n)``, with the spread between the draws'
    mean differences, ``sd_d(D_d) / sqrt(draws)``; the second term is 0 for one draw. Only
    objects present in every mapping count.
    """
    if not controls:
        raise ValueError("paired_difference needs at least one control draw")
    ids = sorted(set(treated).intersection(*[set(c) for c in controls]))
    if not ids:
        raise ValueError(
            "the treated and control runs share no object; they must be evaluated on the same objects"
        )
    t = np.array([treated[i] for i in ids], dtype=np.float64)
    c = np.array([[draw[i] for i in ids] for draw in controls], dtype=np.float64)  # [draws, objects]
    diff = c.mean(0) - t
    n, draws = len(ids), c.shape[0]
    se_objects = diff.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    per_draw = (c - t).mean(1)
    se_draws = per_draw.std(ddof=1) / math.sqrt(draws) if draws > 1 else 0.0
    return {
        "drop": round(float(diff.mean()), 4),
        "se": round(float(math.sqrt(se_objects**2 + se_draws**2)), 4),
        "se_objects": round(float(se_objects), 4),
        "se_draws": round(float(se_draws), 4),
        "n": n,
        "draws": draws,
    }
