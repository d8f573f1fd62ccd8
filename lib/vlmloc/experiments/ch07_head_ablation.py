"""Chapter 7, head ablation: does localization need the heads that classification needs?

The paper's test of "recognition before localization": silence the heads with the largest
mediation fraction (chapter 6) for one task and measure both tasks. Read naively, "the
classification heads hurt localization" confounds three things, so this chapter separates them
(the book's methods page, chapter 7):

- **Shared heads.** A head in both tasks' top-k would hurt localization whatever the order of
  the computations. We ablate the *cls-only* heads (the classification top-k minus the
  localization top-k) and the *loc-only* heads (the reverse).
- **Where heads sit.** Early heads are needed by everything after them. Every head set gets
  random heads *matched layer by layer* (as many from each layer, drawn outside both top-k
  lists), ``n_draws`` times.
- **Direction.** Recognition before localization predicts an asymmetry: cls-only heads cost
  localization more than their random match, while loc-only heads cost classification no more
  than theirs. Both directions are measured, as paired differences over the same objects.

The verdict per k is ``supported``, ``not supported`` or ``inconclusive`` (:func:`verdict`).
Heads are ranked on chapter 6's pairs; the objects evaluated here share no object and no image
with them (:func:`evaluation_set`), so the test is out of sample whatever the data and seeds.

Heads are zero-ablated (or set to their mean output) at every position and every generation
step (:class:`~vlmloc.interventions.HeadAblation`); each condition is a greedy evaluation of the
shared :class:`~vlmloc.experiments.base.Experiment` runner, so it resumes from the store::

    rankings = load_rankings(results_dir, model_id)
    samples, drawn = evaluation_set(all_samples, rankings, n_samples)
    exp = HeadAblationExperiment(vlm, samples, HeadAblationParams(config=config, rankings=rankings), store)
    result = exp.run_all()   # baseline, per k: heads, conditions, effects, verdict
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
from ..scoring import position_ids
from ..stats import paired_difference, per_object
from ..store import ResultsStore, read_summary
from .base import Experiment, RunParams, rate
from .ch06_mediation import CH1, top_heads
from .ch06_mediation import CHAPTER as CH6

__all__ = [
    "CHAPTER",
    "EFFECTS",
    "HEAD_SETS",
    "KS",
    "MIN_EFFECT",
    "OUTCOMES",
    "HeadAblationExperiment",
    "HeadAblationParams",
    "HeadSets",
    "InsufficientDataError",
    "Rankings",
    "evaluation_set",
    "head_means",
    "head_sets",
    "load_rankings",
    "matched_random",
    "random_mean",
    "summary",
    "verdict",
]

CHAPTER = "07_head_ablation"
#: The head sets ablated: each task's top-k heads minus the other task's top-k.
HEAD_SETS: tuple[str, ...] = ("cls_only", "loc_only")
#: Numbers of heads k: ours (the paper gives no k).
KS: tuple[int, ...] = (5, 10, 20)
#: The four effects: (head set, metric) -> name. Each is the set's drop beyond its matched random heads.
EFFECTS: dict[tuple[str, str], str] = {
    ("cls_only", "loc"): "cls_heads_on_loc",
    ("loc_only", "cls"): "loc_heads_on_cls",
    ("cls_only", "cls"): "cls_heads_on_cls",
    ("loc_only", "loc"): "loc_heads_on_loc",
}
#: The smallest excess drop (points) that would matter; an effect whose upper bound is below it is ruled out.
MIN_EFFECT = 5.0
OUTCOMES: tuple[str, ...] = ("supported", "not supported", "inconclusive")
#: What a condition's entry keeps of the runner's Loc/Cls summary (the chapter's JSON schema).
ENTRY_KEYS: tuple[str, ...] = ("loc", "cls", "loc_se", "cls_se", "n")
_METRIC_TASK = {"loc": "localization", "cls": "classification"}


class InsufficientDataError(ValueError):
    """Too few objects are left outside chapter 6's images to evaluate out of sample."""


@dataclass(frozen=True)
class Rankings:
    """Every head ranked by chapter 6's mean MF per task, and the data that ranking saw."""

    classification: list[list[int]]
    localization: list[list[int]]
    objects: frozenset[str]  # sample ids of chapter 6's pairs and mismatched sources
    images: frozenset[int]  # their images

    def top(self, task: str, k: int) -> list[list[int]]:
        return [list(h) for h in getattr(self, task)[:k]]


def load_rankings(results_dir: str | Path, model_id: str) -> Rankings:
    """Chapter 6's rankings and the objects and images it ranked on, from its summary."""
    cmd = f"`python -m vlmloc.chapters run --chapters {CH1} {CH6} --models {model_id}` (same results_dir)"
    try:
        s = read_summary(results_dir, model_id, CH6)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no results of chapter 6 for {model_id} in {results_dir}; run {cmd} first"
        ) from None
    if "ranking_data" not in s:
        raise ValueError(
            f"chapter 6's results for {model_id} do not say which objects ranked the heads (written by an "
            f"older version), so chapter 7 cannot evaluate out of sample; rerun {cmd}"
        )
    ranked = {}
    for task in TASKS:
        mf = np.asarray(s["mf"][task], dtype=np.float64)
        ranked[task] = top_heads(mf, mf.size)
    used = s["ranking_data"]
    return Rankings(
        ranked["classification"],
        ranked["localization"],
        frozenset(str(o) for o in used["objects"]),
        frozenset(int(i) for i in used["images"]),
    )


def evaluation_set(
    samples: Sequence[Sample], rankings: Rankings, n: int
) -> tuple[list[Sample], dict[str, Any]]:
    """The first ``n`` of ``samples`` (chapter 1's seeded order) whose image chapter 6 never used.

    Excluding whole images excludes every object chapter 6 saw and every other object of the
    same scenes. Returns the samples and how they were drawn (the summary's ``evaluation_set``);
    raises :class:`InsufficientDataError` when fewer than ``n`` are left.
    """
    kept = [s for s in samples if s.image_id not in rankings.images]
    if len(kept) < n:
        raise InsufficientDataError(
            f"only {len(kept)} of {len(samples)} objects lie outside the {len(rankings.images)} images chapter 6 "
            f"ranked heads on; pass -p n_samples {len(kept)} or less, or use a larger annotations file"
        )
    chosen = kept[:n]
    return chosen, {
        "drawn": "the first n objects of chapter 1's seeded order whose image chapter 6 did not use",
        "n": len(chosen),
        "skipped": sum(1 for s in samples[: samples.index(chosen[-1]) + 1] if s.image_id in rankings.images),
        "mediation_overlap": {
            "objects": len({s.sample_id for s in chosen} & rankings.objects),
            "images": len({s.image_id for s in chosen} & rankings.images),
        },
    }


@dataclass(frozen=True)
class HeadSets:
    """The head sets at one k: both top-k lists, what they share, and each one's own heads."""

    k: int
    cls_top: list[list[int]]
    loc_top: list[list[int]]

    @property
    def shared(self) -> list[list[int]]:
        loc = {tuple(h) for h in self.loc_top}
        return [h for h in self.cls_top if tuple(h) in loc]

    @property
    def cls_only(self) -> list[list[int]]:
        loc = {tuple(h) for h in self.loc_top}
        return [h for h in self.cls_top if tuple(h) not in loc]

    @property
    def loc_only(self) -> list[list[int]]:
        cls = {tuple(h) for h in self.cls_top}
        return [h for h in self.loc_top if tuple(h) not in cls]

    def of(self, name: str) -> list[list[int]]:
        if name not in HEAD_SETS:
            raise ValueError(f"unknown head set {name!r}; use one of {HEAD_SETS}")
        return getattr(self, name)

    def as_dict(self) -> dict[str, list[list[int]]]:
        return {"cls_top": self.cls_top, "loc_top": self.loc_top, "shared": self.shared,
                "cls_only": self.cls_only, "loc_only": self.loc_only}  # fmt: skip

    def excluded(self) -> set[tuple[int, int]]:
        """Heads no random control may draw: everything in either top-k list."""
        return {tuple(h) for h in self.cls_top + self.loc_top}


def head_sets(rankings: Rankings, k: int) -> HeadSets:
    return HeadSets(k, rankings.top("classification", k), rankings.top("localization", k))


def matched_random(
    heads: Sequence[Sequence[int]],
    exclude: set[tuple[int, int]],
    n_layers: int,
    n_heads: int,
    rng: np.random.Generator,
) -> tuple[list[list[int]], int]:
    """As many random heads in each layer as ``heads`` has there, none of them in ``exclude``.

    When a layer has too few heads left (both top-k lists fill it), the rest are drawn from the
    nearest layers with free heads. Returns the heads (sorted) and how many could not be matched
    to their own layer.
    """
    taken = set(exclude)
    out: list[list[int]] = []
    unmatched = 0
    wanted = np.bincount([int(la) for la, _ in heads], minlength=n_layers)
    for layer in range(n_layers):
        for _ in range(int(wanted[layer])):
            for la in sorted(range(n_layers), key=lambda x: (abs(x - layer), x)):
                free = [h for h in range(n_heads) if (la, h) not in taken]
                if free:
                    h = int(rng.choice(free))
                    taken.add((la, h))
                    out.append([la, h])
                    unmatched += la != layer
                    break
            else:
                raise ValueError(f"no free head left for a random control of {len(heads)} heads")
    return sorted(out), unmatched


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


def verdict(effects: Mapping[str, Mapping], z: float = 2.0, min_effect: float = MIN_EFFECT) -> dict[str, Any]:
    """Recognition before localization at one k, from the effects of :meth:`HeadAblationExperiment.effects`.

    With ``A`` the cls-only heads' Loc drop beyond their matched random heads and ``B`` the
    loc-only heads' Cls drop beyond theirs (each ± SE):

    - **supported**: ``A > z SE`` and not ``B > z SE``: localization needs the classification
      heads, classification does not need the localization heads;
    - **not supported**: both beyond ``z`` SE (the tasks need each other's heads alike), only
      ``B`` is (the reverse order), or ``A + z SE < min_effect`` (an effect that matters is ruled out);
    - **inconclusive**: otherwise (``A`` within noise but not ruled out), or a set is empty (the
      two top-k lists are the same heads).
    """
    a, b = effects.get("cls_heads_on_loc"), effects.get("loc_heads_on_cls")
    if a is None or b is None:
        return {"outcome": "inconclusive", "reason": "the top-k lists of both tasks are the same heads"}
    a_sig = a["drop"] > z * a["se"]
    b_sig = b["drop"] > z * b["se"]
    if a_sig and not b_sig:
        outcome, reason = (
            "supported",
            "cls-only heads cost Loc beyond random heads; loc-only heads do not cost Cls",
        )
    elif a_sig and b_sig:
        outcome, reason = "not supported", "each task needs the other's heads beyond random heads (no order)"
    elif b_sig:
        outcome, reason = (
            "not supported",
            "loc-only heads cost Cls beyond random heads, cls-only heads do not cost Loc",
        )
    elif a["drop"] + z * a["se"] < min_effect:
        outcome, reason = (
            "not supported",
            f"the cls-only heads' excess Loc drop is ruled out above {min_effect:g} points",
        )
    else:
        outcome, reason = (
            "inconclusive",
            "the cls-only heads' excess Loc drop is within noise but not ruled out",
        )
    return {"outcome": outcome, "reason": reason, "z": z, "min_effect": min_effect,
            "A": a["drop"], "A_se": a["se"], "B": b["drop"], "B_se": b["se"]}  # fmt: skip


@dataclass(kw_only=True)
class HeadAblationParams(RunParams):
    """The runner's settings plus chapter 7's: ``rankings`` are :func:`load_rankings`' result."""

    rankings: Rankings
    ks: Sequence[int] = KS
    n_draws: int = 3
    mode: str = "zero"  # or "mean"
    means: torch.Tensor | None = None
    z: float = 2.0
    min_effect: float = MIN_EFFECT
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

    def random_for(self, sets: HeadSets, name: str, draw: int) -> tuple[list[list[int]], int]:
        """Draw ``draw`` of the layer-matched random heads for head set ``name`` at ``sets.k``."""
        rng = np.random.default_rng([int(self.params.seed), 7, sets.k, HEAD_SETS.index(name), int(draw)])
        return matched_random(sets.of(name), sets.excluded(), self.vlm.n_layers, self.vlm.n_heads, rng)

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

    def scores(self, condition: str, metric: str) -> dict[str, float]:
        """Per-object score (percent) of a condition that has run, for ``metric`` ``"loc"`` or ``"cls"``."""
        task = _METRIC_TASK[metric]
        return per_object(self.records[(condition, task)], task)

    def effects(self, k: int, conditions: Mapping[str, str], randoms: Mapping[str, Sequence[str]]) -> dict:
        """The four paired effects at ``k``: each set's drop beyond its matched random heads."""
        out = {}
        for (name, metric), effect in EFFECTS.items():
            if name in conditions:
                rnd = [self.scores(c, metric) for c in randoms[name]]
                out[effect] = paired_difference(self.scores(conditions[name], metric), rnd)
        return out

    def run_k(self, k: int, bar: Any = None) -> dict:
        """Every condition at ``k``: the head sets, their random matches, entries, effects and the verdict."""
        p = self.params
        sets = head_sets(p.rankings, k)
        block: dict[str, Any] = {
            "heads": sets.as_dict(),
            "conditions": {},
            "random_heads": {},
            "unmatched_layers": {},
        }
        conditions, randoms = {}, {}
        for name in HEAD_SETS:
            heads = sets.of(name)
            if not heads:
                continue
            conditions[name] = f"{name}-k{k}"
            block["conditions"][name] = self.ablate(conditions[name], heads)
            draws, randoms[name] = [], []
            for d in range(p.n_draws):
                rnd, unmatched = self.random_for(sets, name, d)
                randoms[name].append(f"random-{name}-k{k}-draw{d}")
                draws.append({**self.ablate(randoms[name][-1], rnd), "draw": d})
                block["random_heads"].setdefault(name, []).append(rnd)
                block["unmatched_layers"].setdefault(name, []).append(unmatched)
                if bar is not None:
                    bar.update(1)
            block["conditions"][f"random_{name}"] = random_mean(draws)
            if bar is not None:
                bar.update(1)
        block["effects"] = self.effects(k, conditions, randoms)
        block["verdict"] = verdict(block["effects"], p.z, p.min_effect)
        return block

    def run_all(self) -> dict:
        """Baseline and every k; ``{"baseline", "by_k": {k: block}, "verdict": {k: outcome}}``."""
        p = self.params
        baseline = _entry(self.baseline(progress=False))
        total = len(p.ks) * len(HEAD_SETS) * (1 + p.n_draws)
        by_k = {}
        with (
            self.timings.timed("ablation"),
            tqdm(total=total, desc="head ablation", disable=not p.progress) as bar,
        ):
            for k in p.ks:
                by_k[str(k)] = self.run_k(k, bar)
        return {
            "baseline": baseline,
            "by_k": by_k,
            "verdict": {k: b["verdict"]["outcome"] for k, b in by_k.items()},
        }


def summary(
    model_id: str,
    config: Mapping,
    result: Mapping,
    drawn: Mapping,
    *,
    ks: Sequence[int],
    n_draws: int,
    mode: str,
    verdict_k: int,
    min_effect: float,
) -> dict:
    """The chapter's summary JSON (without findings and runtimes, which the notebook adds)."""
    return {
        "model_id": model_id, "weights": config["model"], "dtype": config["dtype"], "data": config["data"],
        "n_samples": result["baseline"]["n"], "seed": config["seed"], "ks": list(ks), "ks_source": "ours (the paper gives no k)",
        "n_draws": n_draws, "ablation_mode": mode, "min_effect": min_effect, "verdict_k": verdict_k,
        "evaluation_set": {k: v for k, v in drawn.items() if k != "mediation_overlap"},
        "mediation_overlap": dict(drawn["mediation_overlap"]),
        "baseline": result["baseline"], "by_k": result["by_k"], "verdict": result["verdict"],
    }  # fmt: skip


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
