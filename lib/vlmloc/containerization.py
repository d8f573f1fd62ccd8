"""Chapter 2, containerization: token ablation, padding and shuffling at the LLM input.

The paper's claim: a model localizes an object by *where its tokens are* (a "container"), not by
what the tokens inside say. Three interventions test it, all on the visual tokens after the
projector (METHODS.md "Token ablation" and "Containerization"):

- **Ablation.** Replace a token set by the mean visual embedding: the object's tokens, register
  tokens (high-norm outliers), the top Integrated-Gradients tokens, random tokens (as many as the
  object has) and the object grown by 1 or 2 rings ("object+1", "object+2").
- **Padding.** Grow the object by ``p`` rings and fill the ring with random copies of the object's
  own tokens (per view); the predicted box should grow with ``p``.
- **Shuffle.** Permute all tokens of each view (global) or only the object's (intra-object).

Every token set and edit is per sample and per view, so LLaVA's single view and InternVL's tiles
plus thumbnail go through the same code. Randomness is seeded per sample
(:func:`sample_rng`), so a resumed run draws exactly what an uninterrupted one would.

    exp = Containerization(vlm, samples, ContainerizationParams(config, mean), store)
    summary = exp.run_all()                # or exp.ablation(), exp.padding(), exp.shuffle()
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .adapter import VLM
from .attribution import integrated_gradients, teacher_forced_answer, top_k
from .data import Sample
from .evaluate import EditFor, run_condition, summarize
from .families import TASKS
from .geometry import ImageLayout
from .interventions import (
    grown_indices,
    pad_within_views,
    random_indices,
    register_indices,
    replace_with,
    shuffle_within_views,
)
from .paper import MODELS, RESULTS, SUMMARY_CONDITIONS
from .store import ResultsStore

__all__ = [
    "ABLATIONS",
    "PADDINGS",
    "SHUFFLES",
    "Containerization",
    "ContainerizationParams",
    "ablation_finding",
    "ablation_table",
    "index_layout",
    "padding_finding",
    "padding_table",
    "run_containerization",
    "sample_rng",
    "shuffle_finding",
    "shuffle_table",
]

#: Ablated token sets, in the order of the chapter's Table 1.
ABLATIONS: tuple[str, ...] = ("object", "register", "ig", "random", "object+1", "object+2")
#: Shuffles of Table 2.
SHUFFLES: tuple[str, ...] = ("global", "intra_object")
#: Padding rings p.
PADDINGS: tuple[int, ...] = (0, 1, 2)

LABELS = {
    "baseline": "baseline",
    "object": "object tokens",
    "register": "register tokens",
    "ig": "Integrated Gradients",
    "random": "random tokens",
    "object+1": "object +1 padding",
    "object+2": "object +2 padding",
    "global": "global shuffle",
    "intra_object": "intra-object shuffle",
}
#: Our condition -> the paper's name in :data:`vlmloc.paper.RESULTS`.
PAPER_CONDITION = {
    key.rpartition(".")[2]: name
    for key, name in SUMMARY_CONDITIONS.items()
    if key.partition(".")[0] in ("baseline", "ablation", "shuffle")
}


@dataclass
class ContainerizationParams:
    """What the experiments need besides the model, the samples and the store.

    ``config`` keys every condition's records (weights, dtype, data, n_samples, seed, ...); the
    strategy parameters are added per condition. ``mean`` is the replacement vector, the mean
    visual embedding over a reference set disjoint from the samples.
    """

    config: dict
    mean: torch.Tensor
    seed: int = 0
    batch_size: int = 16
    ig_steps: int = 16
    ig_step_batch: int | None = None
    n_std: float = 2.0
    max_new_tokens: int = 24
    extra: dict = field(default_factory=dict)  # copied into the summary (e.g. the reference set)


def sample_rng(seed: int, tag: str, sample_id: str) -> np.random.Generator:
    """A generator fixed by (seed, what it is for, which sample): independent of batching and resuming."""
    return np.random.default_rng([int(seed), zlib.crc32(tag.encode()), zlib.crc32(sample_id.encode())])


def index_layout(vlm: VLM, sample: Sample) -> ImageLayout:
    """The sample's views with ``positions = 0..n-1``: token sets as indices, without encoding a prompt."""
    size = (sample.width, sample.height)
    views = vlm.views(size)
    return ImageLayout(torch.arange(sum(v.n_tokens for v in views)), views, size)


def _mean_key(mean: torch.Tensor) -> str:
    """A short fingerprint of the replacement vector for the result configs."""
    m = mean.float()
    return f"{m.numel()}:{float(m.norm()):.6g}:{float(m.sum()):.6g}"


def _rate(x: float) -> float:
    return round(float(x), 4)


class Containerization:
    """Runs chapter 2's conditions for one model and sample set, resumably, and summarizes them."""

    def __init__(
        self, vlm: VLM, samples: Sequence[Sample], params: ContainerizationParams, store: ResultsStore
    ) -> None:
        if not samples:
            raise ValueError("Containerization needs at least one sample; check n_samples")
        self.vlm = vlm
        self.samples = list(samples)
        self.params = params
        self.store = store
        self.sets: dict[str, dict[str, Any]] = {}
        self.ig_records: dict[str, dict[str, dict]] = {}
        self.records: dict[tuple[str, str], list[dict]] = {}
        self.timings: dict[str, float] = {}
        self._masks: dict[str, np.ndarray] = {}

    # --- helpers -------------------------------------------------------------------------------
    def mask(self, sample: Sample) -> np.ndarray:
        """The object mask, decoded once per batch (a small cache: COCO masks are large)."""
        if sample.sample_id not in self._masks:
            if len(self._masks) >= 64:
                self._masks.clear()
            self._masks[sample.sample_id] = sample.mask()
        return self._masks[sample.sample_id]

    def config(self, **extra: Any) -> dict:
        return {**self.params.config, **extra}

    def run(
        self, condition: str, task: str, edit_for: EditFor | None, progress: bool, **extra: Any
    ) -> list[dict]:
        """One condition on one task through :func:`vlmloc.evaluate.run_condition` (resumable)."""
        recs = run_condition(
            self.vlm,
            self.samples,
            task,
            self.store,
            condition,
            self.config(**extra, max_new_tokens=self.params.max_new_tokens),
            batch_size=self.params.batch_size,
            edit_for=edit_for,
            max_new_tokens=self.params.max_new_tokens,
            progress=progress,
        )
        self.records[(condition, task)] = recs
        return recs

    # --- token sets ----------------------------------------------------------------------------
    def token_sets(self, progress: bool = True, ig_tasks: Sequence[str] = TASKS) -> dict[str, dict[str, Any]]:
        """Per sample: ``n_visual`` and the index sets object, object+1, object+2, random, register, ig:<task>.

        IG runs for ``ig_tasks`` only (the expensive part; the rest is computed once); a later
        call adds the missing tasks. Register and IG sets are stored, so a rerun reads them back.
        """
        if not self.sets:
            t0 = time.perf_counter()
            seed = self.params.seed
            for s in self.samples:
                lay = index_layout(self.vlm, s)
                mask = self.mask(s)
                obj = lay.object_indices(mask)
                self.sets[s.sample_id] = {
                    "n_visual": lay.n_tokens,
                    "object": obj,
                    "object+1": grown_indices(lay, mask, 1),
                    "object+2": grown_indices(lay, mask, 2),
                    "random": random_indices(lay, len(obj), sample_rng(seed, "random", s.sample_id)),
                }
            self._register_sets(progress)
            self.timings["register"] = time.perf_counter() - t0
        for task in ig_tasks:
            if task in self.ig_records:
                continue
            t1 = time.perf_counter()
            self._ig_sets(task, progress)
            self.timings[f"ig {task}"] = time.perf_counter() - t1
        return self.sets

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
            f"tokens-ig-{task}", self.config(ig_steps=p.ig_steps, baseline="mean", mean=_mean_key(p.mean))
        )
        pending = set(log.pending([s.sample_id for s in self.samples]))
        for s in tqdm(self.samples, desc=f"IG · {task}", disable=not progress, leave=False):
            if s.sample_id not in pending:
                continue
            image = s.load_image()
            answer = teacher_forced_answer(self.vlm, task, s.category, s.box, image.size)
            res = integrated_gradients(
                self.vlm,
                image,
                self.vlm.prompt(task, s.category),
                answer,
                p.mean,
                p.ig_steps,
                p.ig_step_batch,
            )
            obj = self.sets[s.sample_id]["object"]
            idx = top_k(res.per_token_abs, len(obj))
            log.append(
                {
                    "sample_id": s.sample_id,
                    "indices": idx.tolist(),
                    "k": len(obj),
                    "on_object": int(np.isin(idx, obj).sum()),
                    "f_input": res.f_input,
                    "f_baseline": res.f_baseline,
                    "attr_sum": float(res.per_token.sum()),
                }
            )
        self.ig_records[task] = {}
        for r in log.records():
            if r["sample_id"] in self.sets:
                self.sets[r["sample_id"]][f"ig:{task}"] = np.asarray(r["indices"], dtype=np.int64)
                self.ig_records[task][r["sample_id"]] = r

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
    def baseline(self, progress: bool = True) -> dict:
        t0 = time.perf_counter()
        for task in TASKS:
            self.run("baseline", task, None, progress)
        self.timings.setdefault("baseline", time.perf_counter() - t0)
        return self._loc_cls("baseline")

    def _loc_cls(self, condition: str) -> dict:
        loc = summarize(self.records[(condition, "localization")], "localization")
        cls = summarize(self.records[(condition, "classification")], "classification")
        return {
            "loc": _rate(loc["loc"]),
            "loc_se": _rate(loc["loc_se"]),
            "cls": _rate(cls["rate"]),
            "cls_se": _rate(cls["se"]),
            "unparsable": int(loc["unparsable"]),
            "n": int(loc["n"]),
        }

    def _with_change(self, entry: dict, base: dict) -> dict:
        return {
            **entry,
            "d_loc": _rate(entry["loc"] - base["loc"]),
            "d_cls": _rate(entry["cls"] - base["cls"]),
        }

    def ablation(self, progress: bool = True, names: Sequence[str] = ABLATIONS) -> dict:
        """Table 1: every set of ``names`` (default :data:`ABLATIONS`) replaced by the mean, both tasks."""
        unknown = [n for n in names if n not in ABLATIONS]
        if unknown:
            raise ValueError(f"unknown token set(s) {unknown}; use some of {ABLATIONS}")
        base = self.baseline(progress)
        self.token_sets(progress, ig_tasks=TASKS if "ig" in names else ())
        t0 = time.perf_counter()
        out = {}
        mk = _mean_key(self.params.mean)
        for name in names:
            extra: dict[str, Any] = {"ablate": name, "replacement": "mean", "mean": mk}
            if name == "ig":
                extra["ig_steps"] = self.params.ig_steps
            if name == "register":
                extra["n_std"] = self.params.n_std
            for task in TASKS:
                self.run(f"ablate-{name}", task, self.ablation_edit(name, task), progress, **extra)
            entry = self._with_change(self._loc_cls(f"ablate-{name}"), base)
            out[name] = {**entry, "token_share": _rate(self.token_share(name))}
        self.timings["ablation"] = self.timings.get("ablation", 0.0) + time.perf_counter() - t0
        return out

    def padding(self, progress: bool = True) -> dict:
        """Predicted box area (% of the image) for p = 0, 1, 2 rings of copied object tokens (localization)."""
        self.baseline(progress)
        t0 = time.perf_counter()
        out = {}
        for p in PADDINGS:
            if p == 0:
                recs = self.records[("baseline", "localization")]
            else:
                recs = self.run(f"pad-{p}", "localization", self.padding_edit(p), progress, pad_rings=p)
            areas = [r["box_area"] for r in recs if r.get("box_area") is not None]
            loc = summarize(recs, "localization")
            out[str(p)] = {
                "box_area": _rate(np.mean(areas)) if areas else None,  # None: no parsable box at all
                "box_area_se": _rate(np.std(areas, ddof=1) / math.sqrt(len(areas)))
                if len(areas) > 1
                else 0.0,
                "container_area": _rate(np.mean([self.container_area(s, p) for s in self.samples])),
                "n_boxes": len(areas),
                "loc": _rate(loc["loc"]),
                "loc_se": _rate(loc["loc_se"]),
            }
        self.timings["padding"] = time.perf_counter() - t0
        return out

    def padding_records(self) -> dict[int, list[dict]]:
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

    def shuffle(self, progress: bool = True) -> dict:
        """Table 2: global and intra-object shuffles, both tasks."""
        base = self.baseline(progress)
        t0 = time.perf_counter()
        out = {}
        for kind in SHUFFLES:
            for task in TASKS:
                self.run(f"shuffle-{kind}", task, self.shuffle_edit(kind), progress, shuffle=kind)
            out[kind] = self._with_change(self._loc_cls(f"shuffle-{kind}"), base)
        self.timings["shuffle"] = time.perf_counter() - t0
        return out

    def ig_summary(self) -> dict:
        """How IG behaved: completeness (sum of attributions vs f(x) - f(x')) and overlap with the object."""
        out = {"steps": self.params.ig_steps}
        for task, recs in self.ig_records.items():
            rs = list(recs.values())
            gaps = [abs(r["attr_sum"] - (r["f_input"] - r["f_baseline"])) for r in rs]
            deltas = [abs(r["f_input"] - r["f_baseline"]) for r in rs]
            out[task] = {
                "median_abs_gap": _rate(np.median(gaps)) if rs else None,
                "median_abs_delta": _rate(np.median(deltas)) if rs else None,
                "on_object": _rate(100 * sum(r["on_object"] for r in rs) / max(1, sum(r["k"] for r in rs))),
            }
        return out

    def summary(self, ablation: dict, padding: dict, shuffle: dict) -> dict:
        base = self._loc_cls("baseline")
        reg = [len(v["register"]) for v in self.sets.values() if "register" in v]
        return {
            "model_id": self.vlm.model_id,
            "n_samples": len(self.samples),
            "seed": self.params.seed,
            "ig_steps": self.params.ig_steps,
            "baseline": base,
            "ablation": ablation,
            "padding": padding,
            "shuffle": shuffle,
            "ig": self.ig_summary(),
            "register_tokens_per_image": _rate(np.mean(reg)) if reg else None,
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            **self.params.extra,
        }

    def run_all(self, progress: bool = True) -> dict:
        ablation = self.ablation(progress)
        padding = self.padding(progress)
        shuffle = self.shuffle(progress)
        return self.summary(ablation, padding, shuffle)


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


# --- tables and findings ---------------------------------------------------------------------


def _paper(model: str, condition: str) -> dict | None:
    name = PAPER_CONDITION.get(condition)
    return RESULTS[model].get(name) if name else None


def _cell(value: float, se: float | None = None, change: float | None = None) -> str:
    text = f"{value:.2f}"
    if se is not None:
        text += f" ± {se:.2f}"
    if change is not None:
        text += f" {'↑' if change > 0 else '↓'}{abs(change):.1f}"
    return text


def _paper_cells(condition: str) -> dict[str, str]:
    cells = {}
    for mid, name in MODELS.items():
        p, b = _paper(mid, condition), RESULTS[mid]["baseline"]
        for task, key in (("Loc", "loc"), ("Cls", "cls")):
            if p is None or p.get(key) is None:
                cells[f"{name} {task}"] = "—"
            elif condition == "baseline":
                cells[f"{name} {task}"] = f"{p[key]:.2f}"
            else:
                cells[f"{name} {task}"] = _cell(p[key], change=p[key] - b[key])
    return cells


def _our_cells(entry: Mapping, base: bool = False) -> dict[str, str]:
    return {
        "Loc %": _cell(entry["loc"], entry["loc_se"], None if base else entry["d_loc"]),
        "Cls %": _cell(entry["cls"], entry["cls_se"], None if base else entry["d_cls"]),
    }


def ablation_table(summary: Mapping) -> pd.DataFrame:
    """The paper's Table 1 form: strategy (token share), Loc and Cls with SE and change; paper beside."""
    model = summary["model_id"]
    rows = [
        {
            "strategy": "baseline",
            "tokens %": "0",
            **_our_cells(summary["baseline"], True),
            **_paper_cells("baseline"),
        }
    ]
    for name in ABLATIONS:
        e = summary["ablation"][name]
        paper_share = (_paper("llava-hf/llava-1.5-7b-hf", name) or {}).get("share")
        share = f"{e['token_share']:.1f}" + (f" (paper {paper_share:.0f})" if paper_share else "")
        rows.append({"strategy": LABELS[name], "tokens %": share, **_our_cells(e), **_paper_cells(name)})
    df = pd.DataFrame(rows).set_index("strategy")
    return df.rename(columns={"Loc %": f"Loc % ({model})", "Cls %": f"Cls % ({model})"})


def shuffle_table(summary: Mapping) -> pd.DataFrame:
    """The paper's Table 2 form: baseline, global and intra-object shuffle, Loc and Cls; paper beside."""
    model = summary["model_id"]
    rows = [{"perturbation": "baseline", **_our_cells(summary["baseline"], True), **_paper_cells("baseline")}]
    for kind in SHUFFLES:
        rows.append(
            {"perturbation": LABELS[kind], **_our_cells(summary["shuffle"][kind]), **_paper_cells(kind)}
        )
    df = pd.DataFrame(rows).set_index("perturbation")
    return df.rename(columns={"Loc %": f"Loc % ({model})", "Cls %": f"Cls % ({model})"})


def padding_table(padding: Mapping) -> pd.DataFrame:
    """Predicted box area against p, beside the area of the container (the grown token cells' box)."""
    rows = []
    for p in PADDINGS:
        e = padding[str(p)]
        rows.append(
            {
                "p (rings)": p,
                "predicted box % of image": "—"
                if e["box_area"] is None
                else _cell(e["box_area"], e["box_area_se"]),
                "container box % of image": f"{e['container_area']:.1f}",
                "boxes parsed": e["n_boxes"],
                "Loc %": _cell(e["loc"], e["loc_se"]),
            }
        )
    return pd.DataFrame(rows).set_index("p (rings)")


def _se(*ses: float) -> float:
    """Standard error of a difference, treating the conditions as independent (conservative when paired)."""
    return math.sqrt(sum(s * s for s in ses))


#: How a finding ends when the baseline leaves no room for the drop the paper reports.
_UNTESTABLE = "; the {what} too low for a drop to show, so this run cannot test the paper's claim."


def _can_drop(baseline: Mapping, key: str) -> bool:
    """Is the baseline rate ``key`` far enough above zero (2 SE, at least 2 points) for a drop to show?"""
    return baseline[key] >= 2 * max(baseline[f"{key}_se"], 1.0)


def ablation_finding(summary: Mapping) -> str:
    """One sentence: does ablating the object hurt Loc and Cls more than random tokens, as in the paper?"""
    m, b, a = summary["model_id"], summary["baseline"], summary["ablation"]
    obj, rnd = a["object"], a["random"]
    head = (
        f"On {m}, replacing the object's tokens ({obj['token_share']:.1f}% of the image) by the mean moves Loc "
        f"{b['loc']:.1f}→{obj['loc']:.1f}% and Cls {b['cls']:.1f}→{obj['cls']:.1f}%, against "
        f"{rnd['loc']:.1f}% and {rnd['cls']:.1f}% for as many random tokens"
    )
    names = {"loc": "Loc", "cls": "Cls"}
    testable = [t for t in ("loc", "cls") if _can_drop(b, t)]
    if not testable:
        return head + _UNTESTABLE.format(what="baselines are")
    hurt = [t for t in testable if rnd[t] - obj[t] > 2 * _se(obj[f"{t}_se"], rnd[f"{t}_se"])]
    paper = (
        "InternVL-3.5-8B: Loc 72.64→11.27 and Cls 83.30→33.19 for object tokens"
        if "internvl" in m.lower()
        else "LLaVA-1.5-7B: Loc 35.34→5.92 and Cls 58.10→19.44 for object vs 35.09 and 56.58 for random tokens"
    )
    untestable = (
        "" if len(testable) == 2 else f" ({names[({'loc', 'cls'} - set(testable)).pop()]} is too low to drop)"
    )
    if hurt == testable:
        which = " and ".join(names[t] for t in hurt)
        return (
            head
            + f"; as in the paper ({paper}), the object's tokens matter far more for {which}{untestable}."
        )
    if hurt:
        return head + (
            f"; partly as in the paper ({paper}): the object's tokens matter more for {names[hurt[0]]} "
            f"but not for {names[(set(testable) - set(hurt)).pop()]} beyond 2 standard errors."
        )
    return (
        head
        + f"; unlike the paper ({paper}), the object's tokens matter no more than random ones beyond 2 standard errors{untestable}."
    )


def padding_finding(summary: Mapping) -> str:
    """One sentence: does the predicted box grow with the padding, as the paper reports?"""
    m, pad = summary["model_id"], summary["padding"]
    areas = [pad[str(p)]["box_area"] for p in PADDINGS]
    ses = [pad[str(p)]["box_area_se"] for p in PADDINGS]
    cont = [pad[str(p)]["container_area"] for p in PADDINGS]
    shown = ", ".join("no box" if a is None or math.isnan(a) else f"{a:.1f}%" for a in areas)
    head = (
        f"On {m}, the mean predicted box covers {shown} of the image for p = 0, 1, 2 "
        f"(the token container's box: {cont[0]:.1f}%, {cont[1]:.1f}%, {cont[2]:.1f}%)"
    )
    if any(a is None or math.isnan(a) for a in areas):
        return (
            head
            + "; some conditions produced no parsable box, so the paper's growing boxes cannot be checked."
        )
    grows = areas[2] - areas[0] > 2 * _se(ses[0], ses[2]) and areas[1] >= areas[0] - ses[0]
    return head + (
        "; the boxes grow with the padding, as the paper reports for LLaVA-1.5-7B."
        if grows
        else "; the boxes do not grow with the padding beyond 2 standard errors, unlike the paper's LLaVA-1.5-7B."
    )


def shuffle_finding(summary: Mapping) -> str:
    """One sentence: does a global shuffle break localization while an intra-object shuffle does not?"""
    m, b, sh = summary["model_id"], summary["baseline"], summary["shuffle"]
    g, i = sh["global"], sh["intra_object"]
    head = (
        f"On {m}, a global shuffle moves Loc {b['loc']:.1f}→{g['loc']:.1f}% and an intra-object shuffle "
        f"to {i['loc']:.1f}% (Cls {g['cls']:.1f}% and {i['cls']:.1f}%, baseline {b['cls']:.1f}%)"
    )
    if not _can_drop(b, "loc"):
        return head + _UNTESTABLE.format(what="baseline Loc is")
    global_breaks = b["loc"] - g["loc"] > 2 * _se(b["loc_se"], g["loc_se"])
    intra_keeps = abs(b["loc"] - i["loc"]) <= 2 * _se(b["loc_se"], i["loc_se"])
    if global_breaks and intra_keeps:
        tail = "; as in the paper (LLaVA-1.5-7B: 35.34→1.90 global, 35.30 intra-object), only the global shuffle breaks localization."
    elif global_breaks:
        tail = "; the global shuffle breaks localization as in the paper, but unlike there the intra-object shuffle also moves Loc beyond 2 standard errors."
    else:
        tail = "; unlike the paper (LLaVA-1.5-7B: 35.34→1.90), the global shuffle does not break localization beyond 2 standard errors."
    return head + tail
