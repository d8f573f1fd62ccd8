"""Chapter 7, head ablation: does localization need the heads that classification needs?

The paper's test of "recognition before localization": silence the heads with the largest
mediation fraction (chapter 6) for one task and measure both tasks. If localization reads what
recognition computed, ablating the *classification* heads must hurt localization too, while as
many random heads must not (METHODS.md "Head ablation").

Heads are zero-ablated (or set to their mean output) at every position and every generation
step (:class:`~vlmloc.interventions.HeadAblation`). Every condition is a condition of the shared
:class:`~vlmloc.experiments.base.Experiment` runner, greedy as in chapter 1, so it resumes from the
results store; the ablation reaches the model through ``run_condition``'s ``interventions_for``
hook. The verdict, tables and findings are in :mod:`vlmloc.report.ch07`::

    exp = HeadAblationExperiment(vlm, samples, HeadAblationParams(config=config, rankings=ranking), store)
    result = exp.run_all()     # {"baseline", "ablation", "draws"}, written to 07_head_ablation.json
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapter import VLM
from ..data import Sample
from ..evaluate import InterventionsFor
from ..families import TASKS
from ..interventions.heads import Head, HeadAblation, HeadRead
from ..paper import HEAD_ABLATION
from ..scoring import position_ids
from ..store import ResultsStore, read_summary
from .base import Experiment, RunParams, rate
from .ch06_mediation import CH1, top_heads
from .ch06_mediation import CHAPTER as CH6

__all__ = [
    "CHAPTER",
    "HEAD_SETS",
    "KS",
    "HeadAblationExperiment",
    "HeadAblationParams",
    "head_means",
    "load_rankings",
    "random_heads",
    "random_mean",
]

CHAPTER = "07_head_ablation"
#: The head sets ablated: each task's top heads by MF, and random heads (the control).
HEAD_SETS: tuple[str, ...] = ("classification_heads", "localization_heads", "random")
#: Numbers of heads ablated by default: the paper's.
KS: tuple[int, ...] = tuple(HEAD_ABLATION["ks"])  # type: ignore[arg-type]
#: What a condition's entry keeps of the runner's Loc/Cls summary (the chapter's JSON schema).
ENTRY_KEYS: tuple[str, ...] = ("loc", "cls", "loc_se", "cls_se", "n")


def load_rankings(results_dir: str | Path, model_id: str) -> dict[str, list[list[int]]]:
    """Every head of the model ranked by chapter 6's mean MF, per task (largest first)."""
    try:
        s = read_summary(results_dir, model_id, CH6)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no results of chapter 6 for {model_id} in {results_dir}; run "
            f"`python -m vlmloc.chapters run --chapters {CH1} {CH6} --models {model_id}` "
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


@dataclass(kw_only=True)
class HeadAblationParams(RunParams):
    """The runner's settings plus chapter 7's: ``rankings`` are :func:`load_rankings`' lists."""

    rankings: Mapping[str, Sequence[Sequence[int]]]
    ks: Sequence[int] = KS
    n_draws: int = 3
    mode: str = "zero"  # or "mean"
    means: torch.Tensor | None = None
    progress: bool = True


def _entry(summary: Mapping) -> dict:
    return {k: summary[k] for k in ENTRY_KEYS}


class HeadAblationExperiment(Experiment):
    """Runs chapter 7's conditions for one model over ``samples``, resumably through ``store``."""

    params: HeadAblationParams

    def __init__(
        self, vlm: VLM, samples: Sequence[Sample], params: HeadAblationParams, store: ResultsStore
    ) -> None:
        if params.mode not in ("zero", "mean"):
            raise ValueError(f"mode must be 'zero' or 'mean', got {params.mode!r}")
        if params.mode == "mean" and params.means is None:
            raise ValueError("mean ablation needs the heads' means (head_means)")
        super().__init__(vlm, samples, params, store)

    def heads(self, head_set: str, k: int, draw: int = 0) -> list[list[int]]:
        """The ``k`` heads of ``head_set`` (a task's top heads, or random draw ``draw``)."""
        if head_set == "random":
            return random_heads(self.vlm.n_layers, self.vlm.n_heads, k, self.params.seed, draw)
        if head_set not in HEAD_SETS:
            raise ValueError(f"unknown head set {head_set!r}; use one of {HEAD_SETS}")
        return [list(h) for h in self.params.rankings[head_set][:k]]

    def interventions_for(self, heads: Sequence[Head]) -> InterventionsFor:
        """Every batch gets the same ablation of ``heads`` (zero or the heads' means)."""
        p = self.params
        ablation = [HeadAblation([tuple(h) for h in heads], values=p.means if p.mode == "mean" else None)]
        return lambda chunk, layouts: ablation

    def ablate(self, condition: str, heads: Sequence[Head], progress: bool = False) -> dict:
        """Both tasks with ``heads`` ablated; Loc, Cls, their SEs and n."""
        config = {"heads": sorted([list(h) for h in heads]), "mode": self.params.mode}
        return _entry(
            self.run_both(condition, progress, config, interventions_for=self.interventions_for(heads))
        )

    def run_all(self) -> dict:
        """Baseline, every head set at every k, and the random draws; the summary's ``ablation`` block."""
        p = self.params
        baseline = _entry(self.baseline(progress=False))
        plan = [(hs, k, 0) for hs in HEAD_SETS[:2] for k in p.ks]
        plan += [("random", k, d) for d in range(p.n_draws) for k in p.ks]
        out: dict[str, dict] = {hs: {} for hs in HEAD_SETS}
        draws: dict[str, list[dict]] = {}
        with self.timings.timed("ablation"):
            for hs, k, d in tqdm(plan, desc="head ablation", disable=not p.progress):
                heads = self.heads(hs, k, d)
                name = f"{hs}-k{k}" + (f"-draw{d}" if hs == "random" else "")
                entry = {**self.ablate(name, heads), "heads": heads}
                if hs == "random":
                    draws.setdefault(str(k), []).append({**entry, "draw": d})
                else:
                    out[hs][str(k)] = entry
        for k, ds in draws.items():
            out["random"][k] = random_mean(ds)
        return {"baseline": baseline, "ablation": out, "draws": draws}


def random_mean(draws: Sequence[Mapping]) -> dict:
    """The random heads' entry at one k: the mean over draws, its spread, and the SE of that mean.

    The SE combines the per-draw sampling error with the spread between draws (one draw may hit
    a head the model cannot do without).
    """
    mean = {m: rate(np.mean([e[m] for e in draws])) for m in ("loc", "cls")}
    spread = {
        f"{m}_sd": rate(np.std([e[m] for e in draws], ddof=1)) if len(draws) > 1 else 0.0
        for m in ("loc", "cls")
    }
    se = {
        f"{m}_se": rate(
            np.sqrt(
                np.mean([e[f"{m}_se"] ** 2 for e in draws]) / len(draws) + spread[f"{m}_sd"] ** 2 / len(draws)
            )
        )
        for m in ("loc", "cls")
    }
    return {**mean, **se, **spread, "n": draws[0]["n"], "draws": len(draws)}
