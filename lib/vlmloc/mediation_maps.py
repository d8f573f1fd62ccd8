"""Mediation-fraction maps: per pair, averaged over pairs, ranked, compared.

Chapter 6's runner (:mod:`vlmloc.experiments.ch06_mediation`) records, per source/base pair,
``P_src``, ``P_base`` and every head's patched perplexity (or its attribution estimate). This
module turns those records into the **mediation fraction** (the book's methods page, chapter 6)::

    MF = (P_base - P_patched) / (P_base - P_src)

per pair and head, drops the pairs whose denominator says nothing (near zero, or reversed), and
averages the rest into one ``layers x heads`` map (:class:`MFResult`). Ranking the map, and
comparing two rankings (mean against median, one patch setting against the other, attribution
patching against the exact sweep), is the rest of the chapter's analysis; the statistics behind
it are in :mod:`vlmloc.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .stats import spearman

__all__ = [
    "MFResult",
    "agreement",
    "aggregate",
    "attribution_mf",
    "near_zero",
    "overlap",
    "seconds",
    "top_heads",
]


@dataclass
class MFResult:
    """MF of one task: the mean map and the per-pair maps of the pairs used."""

    mean: np.ndarray  # [layers, heads]
    per_pair: np.ndarray  # [used, layers, heads]
    used: list[str]
    dropped: list[str]  # denominator near zero
    reversed: list[str]  # the object made the answer *less* likely (P_src > P_base), when those are dropped
    gaps: dict[str, float]  # P_base - P_src per pair (all pairs)

    @property
    def median(self) -> np.ndarray:
        return np.median(self.per_pair, 0) if len(self.used) else np.full(self.mean.shape, np.nan)

    @property
    def se(self) -> np.ndarray:
        """Standard error of the mean MF per head, over pairs."""
        n = len(self.used)
        return self.per_pair.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.full(self.mean.shape, np.nan)

    def counts(self) -> dict[str, int]:
        """``used``, ``dropped`` (all dropped pairs) and the reasons: ``near_zero``, ``reversed``."""
        return {
            "used": len(self.used),
            "dropped": len(self.dropped) + len(self.reversed),
            "near_zero": len(self.dropped),
            "reversed": len(self.reversed),
        }


def near_zero(p_src: float, p_base: float, min_rel_gap: float) -> bool:
    """True when ``|P_base - P_src| < min_rel_gap * P_src``: the object barely moves P, so MF is a ratio of noise."""
    return abs(p_base - p_src) < min_rel_gap * p_src


def aggregate(
    records: Mapping[str, Mapping],
    n_layers: int,
    n_heads: int,
    min_rel_gap: float = 0.05,
    drop_reversed: bool = True,
    key: str = "p_patched",
    denominators: Mapping[str, Mapping] | None = None,
) -> MFResult:
    """Per-pair MF maps and their mean over the pairs with a clear denominator.

    A pair is dropped when ``|P_base - P_src| < min_rel_gap * P_src`` (near zero) and, with
    ``drop_reversed``, when ``P_base < P_src``: removing the object made the answer *more* likely,
    so there is no effect of the object for a head to carry and MF's sign would flip.
    ``records[sid][key]`` are patched perplexities (layer-major), or for ``key="dlogp"``
    attribution estimates (turned into ``P_base * exp(-dlogp)``). ``denominators`` takes
    ``p_src`` and ``p_base`` from other records (the mismatched control uses its real pair's).
    """
    maps, used, dropped, rev, gaps = [], [], [], [], {}
    for sid, r in records.items():
        if r.get(key) is None:
            continue
        d = (denominators or records)[sid]
        p_src, p_base = float(d["p_src"]), float(d["p_base"])
        gaps[sid] = p_base - p_src
        if near_zero(p_src, p_base, min_rel_gap):
            dropped.append(sid)
            continue
        if drop_reversed and p_base < p_src:
            rev.append(sid)
            continue
        vals = np.asarray(r[key], dtype=np.float64)
        patched = p_base * np.exp(-vals) if key == "dlogp" else vals
        maps.append(((p_base - patched) / (p_base - p_src)).reshape(n_layers, n_heads))
        used.append(sid)
    per_pair = np.stack(maps) if maps else np.zeros((0, n_layers, n_heads))
    mean = per_pair.mean(0) if maps else np.full((n_layers, n_heads), np.nan)
    return MFResult(mean, per_pair, used, dropped, rev, gaps)


def attribution_mf(
    records: Mapping[str, Mapping],
    n_layers: int,
    n_heads: int,
    min_rel_gap: float = 0.05,
    drop_reversed: bool = True,
) -> MFResult:
    """MF estimated by attribution patching (see :func:`aggregate` with ``key="dlogp"``)."""
    return aggregate(records, n_layers, n_heads, min_rel_gap, drop_reversed, key="dlogp")


def top_heads(mf: np.ndarray, k: int = 10) -> list[list[int]]:
    """The ``k`` heads of largest MF as ``[layer, head]``, largest first (ties: lower layer, head)."""
    flat = np.nan_to_num(np.asarray(mf, dtype=np.float64).ravel(), nan=-np.inf)
    order = np.lexsort((np.arange(flat.size), -flat))[:k]
    n_heads = mf.shape[1]
    return [[int(i // n_heads), int(i % n_heads)] for i in order]


def overlap(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> list[list[int]]:
    """Heads in both lists, in ``a``'s order."""
    bs = {tuple(x) for x in b}
    return [list(x) for x in a if tuple(x) in bs]


def seconds(records: Mapping[str, Mapping]) -> float:
    """Total compute time of a set of records (each record timed when it was made)."""
    return float(sum(r.get("seconds", 0.0) for r in records.values()))


def agreement(a: Mapping[str, MFResult], b: Mapping[str, MFResult], k: int = 10) -> dict[str, dict]:
    """Per task, how two maps of the same heads agree: Spearman's rank correlation of their means
    and how many of their top-``k`` heads they share (``top10_overlap`` at the default ``k``)."""
    return {
        task: {
            "spearman": spearman(a[task].mean, b[task].mean),
            f"top{k}_overlap": len(overlap(top_heads(a[task].mean, k), top_heads(b[task].mean, k))),
        }
        for task in a
    }
