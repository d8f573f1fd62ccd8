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

Maps of heads (chapter 6) are compared by rank (:func:`spearman`), by how many top heads two
lists share against chance (:func:`chance_overlap`, :func:`overlap_p_value`), and by how few
heads carry the effect (:func:`sparsity`, :func:`cumulative_share`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .metrics import loc_success

__all__ = [
    "chance_overlap",
    "cumulative_share",
    "loc_score",
    "overlap_p_value",
    "paired_difference",
    "per_object",
    "se_of_difference",
    "sparsity",
    "spearman",
]


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


# --------------------------------------------------------------------------- maps of heads (chapter 6)


def chance_overlap(k: int, n: int) -> float:
    """Expected overlap of two independent random ``k``-subsets of ``n`` heads: ``k^2 / n``."""
    return k * k / n


def overlap_p_value(observed: int, k: int, n: int) -> float:
    """``P(overlap >= observed)`` for two independent random ``k``-subsets of ``n`` heads (hypergeometric)."""
    total = math.comb(n, k)
    return sum(math.comb(k, i) * math.comb(n - k, k - i) for i in range(observed, k + 1)) / total


def sparsity(mf: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Share (in %) of the summed positive MF carried by the top ``k`` heads, and the uniform reference.

    Heads with negative MF (patching them moves P away from the source's) carry none of the
    effect, so the shares are over ``max(MF, 0)``; ``uniform@k`` is ``100 k / heads``, what equal
    heads would give.
    """
    pos = np.sort(np.clip(np.nan_to_num(np.asarray(mf, dtype=np.float64).ravel()), 0, None))[::-1]
    total = pos.sum()
    out = {}
    for k in ks:
        out[f"top{k}"] = float(100 * pos[:k].sum() / total) if total > 0 else float("nan")
        out[f"uniform{k}"] = 100 * k / pos.size
    return out


def cumulative_share(mf: np.ndarray) -> np.ndarray:
    """Cumulative share (in %) of the summed positive MF over heads sorted by MF, largest first."""
    pos = np.sort(np.clip(np.nan_to_num(np.asarray(mf, dtype=np.float64).ravel()), 0, None))[::-1]
    total = pos.sum()
    return 100 * np.cumsum(pos) / total if total > 0 else np.full(pos.size, np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (average ranks for ties), NaNs excluded."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    rx, ry = pd.Series(x[ok]).rank().to_numpy(), pd.Series(y[ok]).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])
