"""Chapter 7, head ablation: does localization need the heads that classification needs?

The paper's test of "recognition before localization": silence the heads with the largest
mediation fraction (chapter 6) for one task and measure both tasks. If localization reads what
recognition computed, ablating the *classification* heads must hurt localization too, while as
many random heads must not (METHODS.md "Head ablation").

Heads are zero-ablated (or set to their mean output) at every position and every generation
step (:class:`~vlmloc.interventions.HeadAblation`); evaluation is chapter 1's, greedy, through
:func:`vlmloc.evaluate.run_condition`, so every condition resumes from the results store.

    exp = HeadAblationExperiment(vlm, samples, HeadAblationParams(config, ranking), store)
    summary = exp.run()
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .evaluate import run_condition, summarize
from .families import TASKS
from .interventions.heads import Head, HeadAblation, HeadRead
from .mediation import top_heads
from .scoring import position_ids
from .store import ResultsStore, read_summary

__all__ = [
    "HEAD_SETS",
    "KS",
    "HeadAblationExperiment",
    "HeadAblationParams",
    "head_means",
    "load_rankings",
    "random_heads",
    "verdict",
]

#: The head sets ablated: each task's top heads by MF, and random heads (the control).
HEAD_SETS = ("classification_heads", "localization_heads", "random")
KS = (1, 5, 10, 20)
CH6 = "06_mediation"


def load_rankings(results_dir: str | Path, model_id: str) -> dict[str, list[list[int]]]:
    """Every head of the model ranked by chapter 6's mean MF, per task (largest first)."""
    try:
        s = read_summary(results_dir, model_id, CH6)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no results of chapter 6 for {model_id} in {results_dir}; run "
            f"`python -m vlmloc.chapters run --chapters 01_data_and_baselines 06_mediation --models {model_id}` "
            "(same results_dir) first"
        ) from None
    out = {}
    for task in TASKS:
        mf = np.asarray(s["mf"][task], dtype=np.float64)
        out[f"{task}_heads"] = top_heads(mf, mf.size)
    return out


def random_heads(n_layers: int, n_heads: int, k: int, seed: int, draw: int) -> list[list[int]]:
    """``k`` heads drawn without replacement; draw ``d`` is one fixed permutation, so sets grow with ``k``."""
    perm = np.random.default_rng([int(seed), 7, int(draw)]).permutation(n_layers * n_heads)[:k]
    return [[int(i // n_heads), int(i % n_heads)] for i in perm]


def head_means(vlm: Any, samples: Sequence[Any], batch_size: int = 16) -> torch.Tensor:
    """Each head's mean output ``[layers, heads, head_dim]`` over every real position of both prompts."""
    total = torch.zeros(vlm.n_layers, vlm.n_heads * vlm.head_dim, dtype=torch.float64)
    count = 0
    items = [(s, t) for s in samples for t in TASKS]
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        enc = vlm.encode([s.load_image() for s, _ in chunk], [vlm.prompt(t, s.category) for s, t in chunk])
        read = HeadRead(range(vlm.n_layers))
        vlm.forward({**enc, "position_ids": position_ids(enc["attention_mask"])}, [read], logits_at=False)
        real = enc["attention_mask"].bool().cpu()
        for layer, z in read.values.items():
            total[layer] += z[real].double().sum(0)
        count += int(real.sum())
    return (total / count).float().view(vlm.n_layers, vlm.n_heads, vlm.head_dim)


@dataclass
class HeadAblationParams:
    """``config`` keys every record; ``rankings`` are :func:`load_rankings`' lists."""

    config: dict
    rankings: Mapping[str, Sequence[Sequence[int]]]
    ks: Sequence[int] = KS
    n_draws: int = 3
    seed: int = 0
    mode: str = "zero"  # or "mean"
    means: torch.Tensor | None = None
    batch_size: int = 16
    max_new_tokens: int = 24
    progress: bool = True
    extra: dict = field(default_factory=dict)


def _entry(records: Mapping[str, Sequence[dict]]) -> dict:
    loc = summarize(records["localization"], "localization")
    cls = summarize(records["classification"], "classification")
    return {
        "loc": round(loc["loc"], 4),
        "loc_se": round(loc["loc_se"], 4),
        "cls": round(cls["rate"], 4),
        "cls_se": round(cls["se"], 4),
        "n": int(loc["n"]),
    }


class HeadAblationExperiment:
    """Runs chapter 7's conditions for one model over ``samples``, resumably through ``store``."""

    def __init__(self, vlm: Any, samples: Sequence[Any], params: HeadAblationParams, store: ResultsStore):
        if params.mode not in ("zero", "mean"):
            raise ValueError(f"mode must be 'zero' or 'mean', got {params.mode!r}")
        if params.mode == "mean" and params.means is None:
            raise ValueError("mean ablation needs the heads' means (head_means)")
        self.vlm, self.samples, self.params, self.store = vlm, list(samples), params, store
        self.timings: dict[str, float] = {}

    def heads(self, head_set: str, k: int, draw: int = 0) -> list[list[int]]:
        if head_set == "random":
            return random_heads(self.vlm.n_layers, self.vlm.n_heads, k, self.params.seed, draw)
        return [list(h) for h in self.params.rankings[head_set][:k]]

    def evaluate(self, condition: str, heads: Sequence[Head] | None, progress: bool = False) -> dict:
        """Both tasks under ``heads`` ablated (``None``: the baseline); Loc, Cls and their SEs."""
        p = self.params
        ivs, extra = [], {}
        if heads is not None:
            values = p.means if p.mode == "mean" else None
            ivs = [HeadAblation([tuple(h) for h in heads], values=values)]
            extra = {"heads": sorted([list(h) for h in heads]), "mode": p.mode}
        records = {
            task: run_condition(
                self.vlm,
                self.samples,
                task,
                self.store,
                condition,
                {**p.config, **extra},
                batch_size=p.batch_size,
                max_new_tokens=p.max_new_tokens,
                progress=progress,
                interventions=ivs,
            )  # fmt: skip
            for task in TASKS
        }
        return _entry(records)

    def run(self) -> dict:
        """Baseline, every head set at every k, and the random draws; the summary's ``ablation`` block."""
        p = self.params
        t0 = time.perf_counter()
        baseline = self.evaluate("baseline", None)
        self.timings["baseline"] = time.perf_counter() - t0
        plan = [(hs, k, 0) for hs in HEAD_SETS[:2] for k in p.ks]
        plan += [("random", k, d) for d in range(p.n_draws) for k in p.ks]
        out: dict[str, dict] = {hs: {} for hs in HEAD_SETS}
        draws: dict[str, list[dict]] = {}
        t0 = time.perf_counter()
        for hs, k, d in tqdm(plan, desc="head ablation", disable=not p.progress):
            heads = self.heads(hs, k, d)
            name = f"{hs}-k{k}" + (f"-draw{d}" if hs == "random" else "")
            entry = {**self.evaluate(name, heads), "heads": heads}
            if hs == "random":
                draws.setdefault(str(k), []).append({**entry, "draw": d})
            else:
                out[hs][str(k)] = entry
        self.timings["ablation"] = time.perf_counter() - t0
        for k, ds in draws.items():
            mean = {m: round(float(np.mean([e[m] for e in ds])), 4) for m in ("loc", "cls")}
            spread = {
                f"{m}_sd": round(float(np.std([e[m] for e in ds], ddof=1)) if len(ds) > 1 else 0.0, 4)
                for m in ("loc", "cls")
            }
            # the SE of a mean over draws: the per-draw SEs combined, plus the spread between draws
            se = {
                f"{m}_se": round(float(np.sqrt(np.mean([e[f"{m}_se"] ** 2 for e in ds]) / len(ds) + (spread[f"{m}_sd"] ** 2) / len(ds))), 4)
                for m in ("loc", "cls")
            }  # fmt: skip
            out["random"][k] = {**mean, **se, **spread, "n": ds[0]["n"], "draws": len(ds)}
        return {"baseline": baseline, "ablation": out, "draws": draws}


def verdict(summary: Mapping, k: int, z: float = 2.0) -> dict[str, Any]:
    """At ``k`` heads: does ablating classification heads cripple localization beyond random heads,
    and does ablating localization heads spare classification? Differences count beyond ``z`` SEs."""
    a, b = summary["ablation"], summary["baseline"]
    key = str(k)
    cls_h, loc_h, rnd = a["classification_heads"][key], a["localization_heads"][key], a["random"][key]

    def beyond(x: Mapping, y: Mapping, m: str) -> float:
        """How far ``x`` falls below ``y`` on metric ``m`` in combined SEs (positive: x lower)."""
        se = float(np.hypot(x[f"{m}_se"], y[f"{m}_se"])) or 1e-9
        return (y[m] - x[m]) / se

    loc_drop = b["loc"] - cls_h["loc"]
    return {
        "k": k,
        "loc_drop_cls_heads": round(loc_drop, 2),
        "loc_drop_random": round(b["loc"] - rnd["loc"], 2),
        "cls_heads_cripple_loc": bool(beyond(cls_h, rnd, "loc") > z),
        "cls_drop_loc_heads": round(b["cls"] - loc_h["cls"], 2),
        "cls_drop_random": round(b["cls"] - rnd["cls"], 2),
        "loc_heads_spare_cls": bool(beyond(loc_h, rnd, "cls") <= z),
        "recognition_then_localization": bool(beyond(cls_h, rnd, "loc") > z),
    }
