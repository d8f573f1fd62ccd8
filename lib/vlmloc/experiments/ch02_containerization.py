"""Chapter 2, containerization: token ablation, padding and shuffling at the LLM input.

The paper's claim: a model localizes an object by *where its tokens are* (a "container"), not by
what the tokens inside say. Three interventions test it, all on the visual tokens after the
projector (the book's methods page, chapter 2):

- **Ablation.** Replace a token set by the mean visual embedding: the object's tokens, register
  tokens (high-norm outliers), the top Integrated-Gradients tokens, random tokens (as many as the
  object has) and the object grown by 1 or 2 rings ("object+1", "object+2").
- **Padding.** Grow the object by ``p`` rings and fill the ring with random copies of the object's
  own tokens (per view); the predicted box should grow with ``p``.
- **Shuffle.** Permute all tokens of each view (global) or only the object's (intra-object).

Every token set and edit is per sample and per view, so LLaVA's single view and InternVL's tiles
plus thumbnail go through the same code. Randomness is seeded per sample
(:func:`~vlmloc.experiments.base.sample_rng`), so a resumed run draws exactly what an
uninterrupted one would. Tables and findings are in :mod:`vlmloc.report.ch02`.

    exp = Containerization(vlm, samples, ContainerizationParams(config=config, mean=mean), store)
    summary = exp.run_all()                # or exp.ablation(), exp.padding(), exp.shuffle()
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapter import VLM
from ..attribution import integrated_gradients, teacher_forced_answer, top_k
from ..data import Sample
from ..evaluate import EditFor, summarize
from ..families import TASKS
from ..geometry import ImageLayout, index_layout
from ..interventions import (
    grown_indices,
    pad_within_views,
    random_indices,
    register_indices,
    replace_with,
    shuffle_within_views,
)
from ..store import ResultsStore
from .base import Experiment, RunParams, mean_key, rate, sample_rng, with_change

__all__ = [
    "ABLATIONS",
    "PADDINGS",
    "SHUFFLES",
    "Containerization",
    "ContainerizationParams",
    "contrast_model",
    "padding_example_order",
    "run_containerization",
]

#: Ablated token sets, in the order of the chapter's Table 1.
ABLATIONS: tuple[str, ...] = ("object", "register", "ig", "random", "object+1", "object+2")
#: Shuffles of Table 2.
SHUFFLES: tuple[str, ...] = ("global", "intra_object")
#: Padding rings p.
PADDINGS: tuple[int, ...] = (0, 1, 2)


@dataclass(kw_only=True)
class ContainerizationParams(RunParams):
    """:class:`RunParams` plus the replacement vector and the token-set settings.

    ``mean`` is the mean visual embedding over a reference set disjoint from the samples.
    """

    mean: torch.Tensor
    ig_steps: int = 16
    ig_step_batch: int | None = None
    n_std: float = 2.0


class Containerization(Experiment):
    """Runs chapter 2's conditions for one model and sample set, resumably, and summarizes them."""

    params: ContainerizationParams

    def __init__(
        self, vlm: VLM, samples: Sequence[Sample], params: ContainerizationParams, store: ResultsStore
    ) -> None:
        super().__init__(vlm, samples, params, store)
        self.sets: dict[str, dict[str, Any]] = {}
        self.ig_records: dict[str, dict[str, dict]] = {}

    # --- token sets ----------------------------------------------------------------------------
    def token_sets(self, progress: bool = True, ig_tasks: Sequence[str] = TASKS) -> dict[str, dict[str, Any]]:
        """Per sample: ``n_visual`` and the index sets object, object+1, object+2, random, register, ig:<task>.

        IG runs for ``ig_tasks`` only (the expensive part; the rest is computed once); a later
        call adds the missing tasks. Register and IG sets are stored, so a rerun reads them back.
        """
        if not self.sets:
            with self.timings.timed("register"):
                self._geometric_sets()
                self._register_sets(progress)
        for task in ig_tasks:
            if task not in self.ig_records:
                with self.timings.timed(f"ig {task}"):
                    self._ig_sets(task, progress)
        return self.sets

    def _geometric_sets(self) -> None:
        """The sets that follow from the mask and the seed alone: object, grown and random."""
        for s in self.samples:
            lay = index_layout(self.vlm, s)
            mask = self.mask(s)
            obj = lay.object_indices(mask)
            self.sets[s.sample_id] = {
                "n_visual": lay.n_tokens,
                "object": obj,
                "object+1": grown_indices(lay, mask, 1),
                "object+2": grown_indices(lay, mask, 2),
                "random": random_indices(lay, len(obj), sample_rng(self.params.seed, "random", s.sample_id)),
            }

    def _register_sets(self, progress: bool) -> None:
        """High-norm tokens (norm > mean + n_std std within the image) from one LLM-input pass."""
        log = self.store.condition("tokens-register", self.config(n_std=self.params.n_std))
        pending = set(log.pending([s.sample_id for s in self.samples]))
        todo = [s for s in self.samples if s.sample_id in pending]
        prompt = self.vlm.prompt("classification")  # the visual rows do not depend on the prompt
        bs = self.params.batch_size
        for i in tqdm(range(0, len(todo), bs), desc="register tokens", disable=not progress, leave=False):
            chunk = todo[i : i + bs]
            images = [s.load_image() for s in chunk]
            enc = self.vlm.encode(images, [prompt] * len(chunk))
            emb = self.vlm.input_embeddings(enc)
            for row, (s, lay) in enumerate(zip(chunk, self.vlm.layouts(enc, images), strict=True)):
                idx = register_indices(emb[row, lay.positions.to(emb.device)], self.params.n_std)
                log.append({"sample_id": s.sample_id, "indices": idx.tolist()})
        for r in log.records():
            if r["sample_id"] in self.sets:
                self.sets[r["sample_id"]]["register"] = np.asarray(r["indices"], dtype=np.int64)

    def _ig_sets(self, task: str, progress: bool) -> None:
        """Top-k Integrated-Gradients tokens per sample (k = number of object tokens), stored resumably."""
        p = self.params
        log = self.store.condition(
            f"tokens-ig-{task}", self.config(ig_steps=p.ig_steps, baseline="mean", mean=mean_key(p.mean))
        )
        pending = set(log.pending([s.sample_id for s in self.samples]))
        for s in tqdm(self.samples, desc=f"IG · {task}", disable=not progress, leave=False):
            if s.sample_id in pending:
                log.append(self._ig_record(s, task))
        self.ig_records[task] = {}
        for r in log.records():
            if r["sample_id"] in self.sets:
                self.sets[r["sample_id"]][f"ig:{task}"] = np.asarray(r["indices"], dtype=np.int64)
                self.ig_records[task][r["sample_id"]] = r

    def _ig_record(self, s: Sample, task: str) -> dict:
        """One sample's IG top-k set and the numbers that check it (completeness, overlap with the object)."""
        p = self.params
        image = s.load_image()
        answer = teacher_forced_answer(self.vlm, task, s.category, s.box, image.size)
        prompt = self.vlm.prompt(task, s.category)
        res = integrated_gradients(self.vlm, image, prompt, answer, p.mean, p.ig_steps, p.ig_step_batch)
        obj = self.sets[s.sample_id]["object"]
        idx = top_k(res.per_token_abs, len(obj))
        return {
            "sample_id": s.sample_id,
            "indices": idx.tolist(),
            "k": len(obj),
            "on_object": int(np.isin(idx, obj).sum()),
            "f_input": res.f_input,
            "f_baseline": res.f_baseline,
            "attr_sum": float(res.per_token.sum()),
        }

    def token_share(self, name: str) -> float:
        """Mean share (%) of an image's visual tokens that a set touches."""
        keys = [f"ig:{t}" for t in TASKS] if name == "ig" else [name]
        shares = [100 * len(v[k]) / v["n_visual"] for v in self.sets.values() for k in keys]
        return float(np.mean(shares))

    # --- edits ---------------------------------------------------------------------------------
    def ablation_edit(self, name: str, task: str) -> EditFor:
        """Replace set ``name`` (``ig`` means the task's own IG set) by the mean visual embedding."""
        key = f"ig:{task}" if name == "ig" else name
        mean = self.params.mean

        def edit_for(sample: Sample, layout: ImageLayout):
            return replace_with(layout, self.sets[sample.sample_id][key], mean)

        return edit_for

    def shuffle_edit(self, kind: str) -> EditFor:
        """Permute all tokens of each view (``global``) or the object's tokens of each view (``intra_object``)."""
        if kind not in SHUFFLES:
            raise ValueError(f"unknown shuffle {kind!r}; use one of {SHUFFLES}")
        seed = self.params.seed

        def edit_for(sample: Sample, layout: ImageLayout):
            sid = sample.sample_id
            idx = np.arange(layout.n_tokens) if kind == "global" else layout.object_indices(self.mask(sample))
            return shuffle_within_views(layout, idx, sample_rng(seed, f"shuffle-{kind}", sid))

        return edit_for

    def padding_edit(self, rings: int) -> EditFor:
        """Grow the object by ``rings`` and fill the ring with random copies of the view's object tokens."""
        seed = self.params.seed

        def edit_for(sample: Sample, layout: ImageLayout):
            rng = sample_rng(seed, f"pad-{rings}", sample.sample_id)
            return pad_within_views(layout, self.mask(sample), rings, rng)[0]

        return edit_for

    # --- experiments ---------------------------------------------------------------------------
    def _ablation_config(self, name: str) -> dict[str, Any]:
        """The settings that key an ablation's records: the set, the replacement and how the set was made."""
        extra: dict[str, Any] = {"ablate": name, "replacement": "mean", "mean": mean_key(self.params.mean)}
        if name == "ig":
            extra["ig_steps"] = self.params.ig_steps
        if name == "register":
            extra["n_std"] = self.params.n_std
        return extra

    def ablation(self, progress: bool = True, names: Sequence[str] = ABLATIONS) -> dict:
        """Table 1: every set of ``names`` (default :data:`ABLATIONS`) replaced by the mean, both tasks."""
        unknown = [n for n in names if n not in ABLATIONS]
        if unknown:
            raise ValueError(f"unknown token set(s) {unknown}; use some of {ABLATIONS}")
        base = self.baseline(progress)
        self.token_sets(progress, ig_tasks=TASKS if "ig" in names else ())
        out = {}
        with self.timings.timed("ablation"):
            for name in names:
                for task in TASKS:
                    edit = self.ablation_edit(name, task)
                    self.run(f"ablate-{name}", task, progress, self._ablation_config(name), edit_for=edit)
                entry = with_change(self.loc_cls(f"ablate-{name}"), base)
                out[name] = {**entry, "token_share": rate(self.token_share(name))}
        return out

    def padding(self, progress: bool = True) -> dict:
        """Predicted box area (% of the image) for p = 0, 1, 2 rings of copied object tokens (localization)."""
        self.baseline(progress)
        with self.timings.timed("padding"):
            for p in PADDINGS[1:]:
                self.run(
                    f"pad-{p}", "localization", progress, {"pad_rings": p}, edit_for=self.padding_edit(p)
                )
            return {str(p): self._padding_entry(p, recs) for p, recs in self.padding_records().items()}

    def _padding_entry(self, p: int, recs: list[dict]) -> dict:
        """Mean predicted box area with its SE, the container's area and Loc for ``p`` rings."""
        areas = [r["box_area"] for r in recs if r.get("box_area") is not None]
        loc = summarize(recs, "localization")
        return {
            "box_area": rate(np.mean(areas)) if areas else None,  # None: no parsable box at all
            "box_area_se": rate(np.std(areas, ddof=1) / math.sqrt(len(areas))) if len(areas) > 1 else 0.0,
            "container_area": rate(np.mean([self.container_area(s, p) for s in self.samples])),
            "n_boxes": len(areas),
            "loc": rate(loc["loc"]),
            "loc_se": rate(loc["loc_se"]),
        }

    def padding_records(self) -> dict[int, list[dict]]:
        """Localization records per ``p``; ``p = 0`` is the baseline."""
        return {
            p: self.records[("baseline", "localization") if p == 0 else (f"pad-{p}", "localization")]
            for p in PADDINGS
        }

    def container_cells(self, sample: Sample, rings: int) -> tuple[Any, np.ndarray]:
        """The global view and its grid of object cells grown by ``rings``."""
        lay = index_layout(self.vlm, sample)
        view = lay.views_of_kind("global")[0]
        grid = lay.grid_of(view, grown_indices(lay, self.mask(sample), rings, kind="global"))
        return view, grid

    def container_area(self, sample: Sample, rings: int) -> float:
        """Area of the bounding box of the grown object cells in the global view, % of the image."""
        view, grid = self.container_cells(sample, rings)
        if not grid.any():
            return 0.0
        rows, cols = np.nonzero(grid)
        x0, y0, _, _ = view.cell_box(int(rows.min()), int(cols.min()))
        _, _, x1, y1 = view.cell_box(int(rows.max()), int(cols.max()))
        w, h = sample.width, sample.height
        x0, x1 = max(0.0, x0), min(float(w), x1)
        y0, y1 = max(0.0, y0), min(float(h), y1)
        return 100 * max(0.0, x1 - x0) * max(0.0, y1 - y0) / (w * h)

    def padding_examples(self, k: int = 3) -> list[dict]:
        """What the padding figure draws for ``k`` objects (:func:`padding_example_order` picks them).

        Per object: the image, its global view, the true box and, per ``p``, the edit, the grown
        container's grid, the predicted box and its area (% of the image; 0 without a box).
        Run :meth:`padding` first.
        """
        by_id = {p: {r["sample_id"]: r for r in rs} for p, rs in self.padding_records().items()}
        examples = []
        for s in padding_example_order(self.samples, by_id)[:k]:
            lay = index_layout(self.vlm, s)
            per_p = {}
            for p in PADDINGS:
                r = by_id[p][s.sample_id]
                per_p[p] = {
                    "edit": self.padding_edit(p)(s, lay) if p else None,
                    "grid": self.container_cells(s, p)[1],
                    "pred": r.get("box"),
                    "area": r.get("box_area") or 0.0,
                }
            view = lay.views_of_kind("global")[0]
            examples.append(
                {"image": s.load_image(), "view": view, "box": s.box, "category": s.category, "p": per_p}
            )
        return examples

    def shuffle(self, progress: bool = True) -> dict:
        """Table 2: global and intra-object shuffles, both tasks."""
        base = self.baseline(progress)
        out = {}
        with self.timings.timed("shuffle"):
            for kind in SHUFFLES:
                entry = self.run_both(
                    f"shuffle-{kind}", progress, {"shuffle": kind}, edit_for=self.shuffle_edit(kind)
                )
                out[kind] = with_change(entry, base)
        return out

    def ig_summary(self) -> dict:
        """How IG behaved: completeness (sum of attributions vs f(x) - f(x')) and overlap with the object."""
        out: dict[str, Any] = {"steps": self.params.ig_steps}
        for task, recs in self.ig_records.items():
            rs = list(recs.values())
            gaps = [abs(r["attr_sum"] - (r["f_input"] - r["f_baseline"])) for r in rs]
            deltas = [abs(r["f_input"] - r["f_baseline"]) for r in rs]
            out[task] = {
                "median_abs_gap": rate(np.median(gaps)) if rs else None,
                "median_abs_delta": rate(np.median(deltas)) if rs else None,
                "on_object": rate(100 * sum(r["on_object"] for r in rs) / max(1, sum(r["k"] for r in rs))),
            }
        return out

    def summary(self, ablation: dict, padding: dict, shuffle: dict) -> dict:
        """The chapter's headline numbers, as written to ``02_containerization.json``."""
        reg = [len(v["register"]) for v in self.sets.values() if "register" in v]
        return {
            "model_id": self.vlm.model_id,
            "n_samples": len(self.samples),
            "seed": self.params.seed,
            "ig_steps": self.params.ig_steps,
            "baseline": self.loc_cls("baseline"),
            "ablation": ablation,
            "padding": padding,
            "shuffle": shuffle,
            "ig": self.ig_summary(),
            "register_tokens_per_image": rate(np.mean(reg)) if reg else None,
            "timings_s": self.timings.rounded(),
            **self.provenance(),
            **self.params.extra,
        }

    def containers_only(self, progress: bool = True) -> dict:
        """Padding and shuffles with their baseline: what chapter 2 runs on a contrast model."""
        padding = self.padding(progress)
        shuffle = self.shuffle(progress)
        return {
            "model_id": self.vlm.model_id,
            "n_samples": len(self.samples),
            "baseline": self.loc_cls("baseline"),
            "padding": padding,
            "shuffle": shuffle,
            "timings_s": self.timings.rounded(),
        }

    def run_all(self, progress: bool = True) -> dict:
        """Ablation, padding and shuffle, then :meth:`summary`."""
        ablation = self.ablation(progress)
        padding = self.padding(progress)
        shuffle = self.shuffle(progress)
        return self.summary(ablation, padding, shuffle)


def padding_example_order(samples: Sequence[Sample], by_id: Mapping[int, Mapping[str, dict]]) -> list[Sample]:
    """``samples`` best first for the padding figure: most parsed boxes over ``p``, then most growth.

    ``by_id[p][sample_id]`` is the sample's localization record with ``p`` rings. Growth is the
    predicted box area at the largest ``p`` minus that at ``p = 0`` (0 when either has no box), so
    the figure shows boxes at every ``p`` where it can and, among those, the clearest growth.
    """

    def rank(s: Sample) -> tuple[int, float]:
        areas = [by_id[p][s.sample_id].get("box_area") for p in PADDINGS]
        growth = areas[-1] - areas[0] if None not in (areas[0], areas[-1]) else 0.0
        return (sum(a is not None for a in areas), growth)

    return sorted(samples, key=rank, reverse=True)


def contrast_model(model_id: str, requested: str | None = "auto") -> str | None:
    """The model whose padding and shuffles chapter 2 runs beside ``model_id``'s, or None.

    ``"auto"`` takes the registry's contrast of ``model_id``: toy-llava names its precise twin
    (tokens that know sub-patch edges); toy-internvl (to keep CI's time in check) and the hub
    models name none. ``""`` or None asks for none; any other value must be a registered model id.
    """
    from ..params import ParameterError
    from ..registry import REGISTRY, get_spec, model_ids

    if not requested:
        return None
    if requested == "auto":
        return get_spec(model_id).contrast if model_id in REGISTRY else None
    if requested not in REGISTRY:
        raise ParameterError(
            f"contrast_model_id {requested!r} is not a supported model id; pass one of "
            f'{", ".join(model_ids())}, "auto" or "" (none).'
        )
    return requested


def run_containerization(
    vlm: VLM,
    samples: Sequence[Sample],
    params: ContainerizationParams,
    store: ResultsStore,
    progress: bool = True,
) -> dict:
    """All of chapter 2 for one model: the summary written to ``02_containerization.json``.

    Keys: ``model_id, n_samples, seed, baseline {loc, cls, ...}``, ``ablation`` (each of
    :data:`ABLATIONS`: ``loc, cls, token_share, loc_se, cls_se, d_loc, d_cls``), ``shuffle``
    (``global``, ``intra_object``), ``padding`` (``"0"``, ``"1"``, ``"2"``: ``box_area`` in % of the
    image, ...), ``ig`` diagnostics. All rates are in percent.
    """
    return Containerization(vlm, samples, params, store).run_all(progress)
