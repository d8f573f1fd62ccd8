"""Chapter 3, InternVL's two views: the thumbnail carries space, the tiles carry detail.

InternVL-3.5 sees an image twice: as up to 12 high-resolution local tiles and as one global
thumbnail (last in the sequence). The paper ablates the object's tokens in one view at a time
(Table 3, InternVL-3.5-8B): the thumbnail costs 36.4 points of Loc, the tiles 9.7. Small objects
are sensitive to both views; large objects localize from the thumbnail, and removing their tile
tokens even raises Loc by 6.5 points.

This module reuses chapter 2's machinery (mean-embedding replacement, seeded random controls,
index layouts, resumable conditions) and adds what is new here (the book's methods page, chapter 3):

- **size classes by the object's share of its image**, scaled to COCO's typical 640x480
  (:func:`size_class`), and an area filter lowered to 0.1% (:data:`MIN_AREA_FRAC`);
- **which objects can take part**: only those in images with both a thumbnail and tiles (a
  one-tile image has no thumbnail), drawn stratified by size (:func:`select_stratified`);
- **view-restricted token sets** (:func:`view_token_sets`): the object's tokens in the thumbnail,
  in the tiles, in both, and random tokens of the same count within the same view kind;
- a synthetic set whose size range reaches small objects (:func:`views_dataset`).

Tables and findings are in :mod:`vlmloc.report.ch03`, the figures in :mod:`vlmloc.plots.views`::

    params = ViewParams.from_vlm(vlm, data=ann_path, seed=seed, mean=mean,
                                 record={"min_area_frac": MIN_AREA_FRAC, "n_reference": 64})
    exp = ViewAblation(vlm, samples, sizes, params, store)
    summary = exp.run_all()                  # baseline + :data:`CONDITIONS`, overall and by size
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..adapter import VLM
from ..data import Sample
from ..evaluate import EditFor
from ..families import TASKS
from ..geometry import ImageLayout, View, index_layout
from ..interventions import random_indices, replace_with
from ..params import ParameterError
from ..store import ResultsStore
from .base import Experiment, RunParams, loc_cls, mean_key, rate, sample_rng, with_change

__all__ = [
    "CONDITIONS",
    "MIN_AREA_FRAC",
    "MIN_FINDING_N",
    "SIZE_CLASSES",
    "Selection",
    "SingleViewModelError",
    "ViewAblation",
    "ViewParams",
    "example_object",
    "has_both_views",
    "multi_view_ids",
    "reference_samples",
    "require_multi_view",
    "select_stratified",
    "size_class",
    "view_token_sets",
    "views_dataset",
]

#: Ablated token sets: the object's tokens in the thumbnail, the tiles, both; random controls.
CONDITIONS: tuple[str, ...] = ("global", "local", "both", "random_global", "random_local")
SIZE_CLASSES: tuple[str, ...] = ("small", "medium", "large")

#: the book's methods page, chapter 3: size classes by the object's share of its image, scaled to 640x480.
REFERENCE_PIXELS = 640 * 480
SMALL_MAX_SHARE = 32**2 / REFERENCE_PIXELS  # 0.33%
LARGE_MIN_SHARE = 96**2 / REFERENCE_PIXELS  # 3.0%
#: The area filter of this chapter (chapters 1-2 keep 1%): small objects must pass it.
MIN_AREA_FRAC = 0.001
#: A size class with fewer objects gets no finding.
MIN_FINDING_N = 30
#: The chapter's synthetic set: the usual generator with its size ranges (fractions of the
#: image's short side) extended down from 0.12 / 0.10, so that small objects exist (the book's methods page, chapter 3).
FIRST_SIZE: tuple[float, float] = (0.05, 0.75)
DISTRACTOR_SIZE: tuple[float, float] = (0.05, 0.35)
N_IMAGES = 500
#: Model families whose images are seen in several views (tiles and a thumbnail).
MULTI_VIEW_FAMILIES: tuple[str, ...] = ("internvl",)


class SingleViewModelError(ParameterError):
    """The chapter needs a model that sees an image in several views."""


def multi_view_ids() -> list[str]:
    """Registered model ids of a family with several views (InternVL)."""
    from ..registry import get_spec, model_ids

    return [m for m in model_ids() if get_spec(m).family in MULTI_VIEW_FAMILIES]


def require_multi_view(model_id: str) -> None:
    """Raise :class:`SingleViewModelError` (one sentence) for a single-view model, before it is loaded."""
    from ..registry import get_spec

    family = get_spec(model_id).family
    if family not in MULTI_VIEW_FAMILIES:
        raise SingleViewModelError(
            f"this chapter compares an image's views, but {model_id} ({family}) sees each image in one "
            f"view; run it with a model that has several views: {', '.join(multi_view_ids())}."
        )


def size_class(sample: Sample) -> str:
    """``small`` / ``medium`` / ``large`` by the object's share of its image (the book's methods page, chapter 3)."""
    share = sample.area / (sample.width * sample.height)
    if share < SMALL_MAX_SHARE:
        return "small"
    return "large" if share > LARGE_MIN_SHARE else "medium"


def has_both_views(views: Sequence[View]) -> bool:
    """Whether an image is seen as tiles *and* a thumbnail (a one-tile InternVL image is not)."""
    kinds = {v.kind for v in views}
    return "global" in kinds and "local" in kinds


def views_dataset(n_images: int = N_IMAGES, root: str | Path | None = None) -> tuple[Path, Path]:
    """``(annotations, images)`` of this chapter's synthetic set (the held-out seed, sizes from 0.05).

    Written once into the same cache as the embedded set, under its own folder name; the embedded
    set of chapters 1-2 is untouched.
    """
    from ..synthetic import EVAL_SEED, embedded_dataset

    return embedded_dataset(n_images, EVAL_SEED, root, first_size=FIRST_SIZE, distractor_size=DISTRACTOR_SIZE)


@dataclass
class Selection:
    """The evaluated objects and how they were drawn: counts per size class at each step."""

    samples: list[Sample]
    sizes: dict[str, str]  # sample_id -> size class
    pool: dict[str, int]  # objects passing the data filter
    qualified: dict[str, int]  # ... of them in images with tiles and a thumbnail
    drawn: dict[str, int]

    def record(self) -> dict:
        """The counts per size class at each step and how the draw went, for the summary JSON."""
        return {
            "pool": self.pool,
            "multi_view": self.qualified,
            "drawn": self.drawn,
            "how": "seeded shuffle, then round-robin over small, medium, large among objects of multi-view images",
        }

    def table(self) -> pd.DataFrame:
        rows = [
            {
                "size": c,
                "objects (filter)": self.pool.get(c, 0),
                "in multi-view images": self.qualified.get(c, 0),
                "drawn": self.drawn.get(c, 0),
            }
            for c in SIZE_CLASSES
        ]
        df = pd.DataFrame(rows).set_index("size")
        df.loc["all"] = df.sum()
        return df


def select_stratified(
    samples: Sequence[Sample],
    n: int,
    views_of: Callable[[tuple[int, int]], Sequence[View]],
    classify: Callable[[Sample], str] = size_class,
) -> Selection:
    """Draw up to ``n`` objects of multi-view images, stratified by size class.

    ``samples`` come in their seeded order (:func:`vlmloc.data.load_coco` shuffles them); the draw
    goes round-robin over :data:`SIZE_CLASSES`, taking each class's next qualifying object, so the
    classes get equal shares while they last and a short class leaves its share to the others.
    """
    queues: dict[str, list[Sample]] = {c: [] for c in SIZE_CLASSES}
    pool = dict.fromkeys(SIZE_CLASSES, 0)
    sizes = {}
    for s in samples:
        c = classify(s)
        pool[c] += 1
        if has_both_views(views_of((s.width, s.height))):
            queues[c].append(s)
            sizes[s.sample_id] = c
    qualified = {c: len(q) for c, q in queues.items()}
    chosen: list[Sample] = []
    heads = dict.fromkeys(SIZE_CLASSES, 0)
    while len(chosen) < n and any(heads[c] < len(queues[c]) for c in SIZE_CLASSES):
        for c in SIZE_CLASSES:
            if len(chosen) < n and heads[c] < len(queues[c]):
                chosen.append(queues[c][heads[c]])
                heads[c] += 1
    return Selection(
        samples=chosen,
        sizes={s.sample_id: sizes[s.sample_id] for s in chosen},
        pool=pool,
        qualified=qualified,
        drawn=heads,
    )


def reference_samples(every: Sequence[Sample], evaluated: Sequence[Sample], n: int) -> list[Sample]:
    """One object each of up to ``n`` images no evaluated object comes from, from the end of the list."""
    taken = {s.image_id for s in evaluated}
    out, seen = [], set()
    for s in reversed(every):
        if len(out) >= n:
            break
        if s.image_id not in taken and s.image_id not in seen:
            out.append(s)
            seen.add(s.image_id)
    return out


def example_object(samples: Sequence[Sample], sizes: Mapping[str, str]) -> Sample:
    """The object the chapter draws view by view: the first medium one (else the first of all),
    large enough to show in the thumbnail, small enough to leave most of the tiles untouched."""
    return next((s for s in samples if sizes[s.sample_id] == "medium"), samples[0])


def view_token_sets(layout: ImageLayout, mask: np.ndarray, seed: int, sample_id: str) -> dict[str, Any]:
    """The index sets of :data:`CONDITIONS` for one object, plus the view sizes.

    ``global``: the object's tokens in the thumbnail; ``local``: in the tiles; ``both``: all of
    them. ``random_global`` draws as many thumbnail tokens as ``global`` has, uniformly from the
    thumbnail; ``random_local`` as many tile tokens as ``local`` has, from all tiles. Draws are
    seeded per object (:func:`vlmloc.containerization.sample_rng`).
    """
    if not has_both_views(layout.views):
        raise ValueError(
            f"object {sample_id} is in an image with one view; this chapter needs tiles and a thumbnail"
        )
    g = layout.object_indices(mask, kind="global")
    loc = layout.object_indices(mask, kind="local")
    return {
        "global": g,
        "local": loc,
        "both": layout.object_indices(mask),
        "random_global": random_indices(
            layout, len(g), sample_rng(seed, "random_global", sample_id), "global"
        ),
        "random_local": random_indices(
            layout, len(loc), sample_rng(seed, "random_local", sample_id), "local"
        ),
        "n_visual": layout.n_tokens,
        "n_global": sum(v.n_tokens for v in layout.views_of_kind("global")),
        "n_local": sum(v.n_tokens for v in layout.views_of_kind("local")),
    }


@dataclass(kw_only=True)
class ViewParams(RunParams):
    """:class:`RunParams` plus ``mean``, the replacement vector (the mean visual embedding over a
    reference set disjoint from the samples)."""

    mean: torch.Tensor


class ViewAblation(Experiment):
    """Runs chapter 3's conditions for one multi-view model, resumably, overall and by size class."""

    params: ViewParams

    def __init__(
        self,
        vlm: VLM,
        samples: Sequence[Sample],
        sizes: Mapping[str, str],
        params: ViewParams,
        store: ResultsStore,
    ) -> None:
        super().__init__(vlm, samples, params, store)
        self.sizes = dict(sizes)
        missing = [s.sample_id for s in self.samples if s.sample_id not in self.sizes]
        if missing:
            raise ValueError(f"no size class for {len(missing)} sample(s), e.g. {missing[0]}")
        self.sets: dict[str, dict[str, Any]] = {}

    def token_sets(self) -> dict[str, dict[str, Any]]:
        """Per sample: the index sets of :func:`view_token_sets` (computed once)."""
        if not self.sets:
            for s in self.samples:
                lay = index_layout(self.vlm, s)
                self.sets[s.sample_id] = view_token_sets(lay, self.mask(s), self.params.seed, s.sample_id)
        return self.sets

    def edit(self, name: str) -> EditFor:
        """Replace set ``name`` of :data:`CONDITIONS` by the mean visual embedding."""
        if name not in CONDITIONS:
            raise ValueError(f"unknown condition {name!r}; use one of {CONDITIONS}")
        sets, mean = self.token_sets(), self.params.mean

        def edit_for(sample: Sample, layout: ImageLayout):
            return replace_with(layout, sets[sample.sample_id][name], mean)

        return edit_for

    def token_share(self, name: str) -> float:
        """Mean share (%) of an image's visual tokens that set ``name`` replaces."""
        return float(np.mean([100 * len(v[name]) / v["n_visual"] for v in self.token_sets().values()]))

    def entry(self, condition: str) -> dict:
        """Loc and Cls with SE and n, overall and under ``by_size``, for a condition that has run."""
        loc_recs = self.records[(condition, "localization")]
        cls_recs = self.records[(condition, "classification")]
        out = loc_cls({"localization": loc_recs, "classification": cls_recs})
        out["by_size"] = {}
        for c in SIZE_CLASSES:
            lr = [r for r in loc_recs if self.sizes[r["sample_id"]] == c]
            cr = [r for r in cls_recs if self.sizes[r["sample_id"]] == c]
            if lr and cr:
                out["by_size"][c] = loc_cls({"localization": lr, "classification": cr})
        return out

    def baseline(self, progress: bool = True) -> dict:
        """The unedited model on both tasks; its :meth:`entry` (overall and by size)."""
        super().baseline(progress)
        return self.entry("baseline")

    def ablation(self, progress: bool = True, names: Sequence[str] = CONDITIONS) -> dict:
        """Each of ``names`` replaced by the mean, both tasks; entries carry the change from the baseline."""
        base = self.baseline(progress)
        self.token_sets()
        out = {}
        mk = mean_key(self.params.mean)
        with self.timings.timed("ablation"):
            for name in names:
                config = {"ablate": name, "replacement": "mean", "mean": mk}
                for task in TASKS:
                    self.run(f"views-{name}", task, progress, config, edit_for=self.edit(name))
                e = _with_change(self.entry(f"views-{name}"), base)
                out[name] = {**e, "token_share": rate(self.token_share(name))}
        return out

    def summary(self, ablation: Mapping, selection: Selection | None = None) -> dict:
        """The chapter's summary JSON (without findings and runtimes, which the notebook adds);
        ``selection`` says how the objects were drawn."""
        sets = self.token_sets().values()
        out = {
            "model_id": self.vlm.model_id,
            "n_samples": len(self.samples),
            "seed": self.params.seed,
            "baseline": self.entry("baseline"),
            "ablation": dict(ablation),
            "sizes": {c: sum(v == c for v in self.sizes.values()) for c in SIZE_CLASSES},
            "tokens": {
                "thumbnail_per_image": rate(np.mean([v["n_global"] for v in sets])),
                "tiles_per_image": rate(np.mean([v["n_local"] for v in sets])),
                "object_in_thumbnail": rate(np.mean([len(v["global"]) for v in sets])),
                "object_in_tiles": rate(np.mean([len(v["local"]) for v in sets])),
            },
            "timings_s": self.timings.rounded(),
            **self.provenance(),
            "min_area_frac": MIN_AREA_FRAC,
            "size_classes": {"small_below_share": SMALL_MAX_SHARE, "large_above_share": LARGE_MIN_SHARE},
            **self.params.extra,
        }
        if selection is not None:
            out["selection"] = selection.record()
        return out

    def run_all(self, progress: bool = True) -> dict:
        return self.summary(self.ablation(progress))


def _with_change(entry: dict, base: Mapping) -> dict:
    out = with_change(entry, base)
    out["by_size"] = {
        c: with_change(e, base["by_size"][c])
        for c, e in entry.get("by_size", {}).items()
        if c in base.get("by_size", {})
    }
    return out
