"""The resumable experiment runner every chapter builds on.

A chapter's experiment is a set of named *conditions* (baseline, "ablate-object", a knockout of
layers 3-5, ...), each run on both tasks over the same samples through
:func:`vlmloc.evaluate.run_condition`. This module holds what every chapter needs around that:

- :class:`RunParams`, the config that keys the records in the :class:`~vlmloc.store.ResultsStore`
  (so a rerun resumes and a changed setting starts afresh), the seed, batch size and answer length;
  :meth:`RunParams.from_vlm` builds that config the one way every chapter keys its records;
- :class:`Experiment`, which runs a condition on a task, keeps its records per (condition, task),
  and summarizes them as Loc/Cls with standard errors and the change from the baseline;
- :class:`Timings`, wall-clock seconds per part that add up over repeated calls;
- :func:`sample_rng`, randomness fixed per sample, so a resumed run draws what an uninterrupted
  one would; :func:`by_size`, Loc/Cls per COCO size class; :func:`mean_key`, the fingerprint of a
  replacement vector in a condition's config.

A chapter subclasses :class:`Experiment` (or uses it as is), extends :class:`RunParams` with its
own settings and adds its conditions; chapter 2's shuffles, in short
(:class:`~vlmloc.experiments.ch02_containerization.Containerization`)::

    @dataclass(kw_only=True)
    class ContainerizationParams(RunParams):
        mean: torch.Tensor

    class Containerization(Experiment):
        def shuffle(self, progress=True):
            base = self.baseline(progress)
            out = {}
            with self.timings.timed("shuffle"):
                for kind in SHUFFLES:
                    entry = self.run_both(f"shuffle-{kind}", progress, {"shuffle": kind},
                                          edit_for=self.shuffle_edit(kind))  # a hook run_condition accepts
                    out[kind] = with_change(entry, base)
            return out

    params = ContainerizationParams.from_vlm(vlm, data=ann_path, n_samples=100, seed=0, mean=mean)
    Containerization(vlm, samples, params, ResultsStore(results_dir, model_id, chapter)).shuffle()
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import torch

from ..adapter import VLM
from ..data import Sample
from ..evaluate import run_condition, summarize
from ..families import TASKS, Task
from ..store import ResultsStore

__all__ = [
    "SIZE_ORDER",
    "Experiment",
    "RunParams",
    "Timings",
    "by_size",
    "largest_object",
    "loc_cls",
    "mean_key",
    "rate",
    "record_config",
    "sample_rng",
    "with_change",
]

#: COCO's size classes, smallest first (the book's methods page).
SIZE_ORDER: tuple[str, ...] = ("small", "medium", "large")


def rate(x: float) -> float:
    """Round a percentage for a summary: 4 decimals keep the SE meaningful and the JSON readable."""
    return round(float(x), 4)


def sample_rng(seed: int, tag: str, sample_id: str) -> np.random.Generator:
    """A generator fixed by (seed, what it is for, which sample): independent of batching and resuming."""
    return np.random.default_rng([int(seed), zlib.crc32(tag.encode()), zlib.crc32(sample_id.encode())])


def largest_object(samples: Sequence[Sample], sets: Mapping[str, Mapping], among: int = 20) -> Sample:
    """The object with the most tokens among the first ``among`` samples: the example a chapter draws.

    A large object shows its token sets best; looking at the first few only keeps the choice
    stable when ``n_samples`` grows. ``sets`` maps a sample id to its token sets (``"object"``).
    """
    return max(samples[:among], key=lambda s: len(sets[s.sample_id]["object"]))


def mean_key(mean: torch.Tensor) -> str:
    """A short fingerprint of a replacement vector (the mean visual embedding) for a condition's config."""
    m = mean.float()
    return f"{m.numel()}:{float(m.norm()):.6g}:{float(m.sum()):.6g}"


def record_config(vlm: VLM, **keys: Any) -> dict:
    """``{"model": <weights' fingerprint>, "dtype": "float32", **keys}``: what keys a chapter's records.

    The weights' fingerprint (:func:`vlmloc.registry.weights_fingerprint`) and the dtype come from
    the loaded model, so results of other weights or another precision are never resumed; ``keys``
    are the chapter's own (data, n_samples, seed, ...). For chapters without :class:`RunParams`
    (probes, mediation); the others use :meth:`RunParams.from_vlm`.
    """
    return {"model": vlm.fingerprint, "dtype": str(vlm.dtype).removeprefix("torch."), **keys}


@dataclass(kw_only=True)
class RunParams:
    """What every experiment needs besides the model, the samples and the store.

    ``config`` keys every condition's records (weights, dtype, data, n_samples, seed, ...); a
    condition adds its own settings to it. ``extra`` is copied into the chapter's summary (e.g.
    the size of a reference set), so the JSON says how it was made.
    """

    config: dict
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int | None = None  # None: the family's answer_tokens (24 for LLaVA and InternVL)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_vlm(
        cls,
        vlm: VLM,
        *,
        data: str | Path,
        n_samples: int | None = None,
        seed: int = 0,
        record: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Self:
        """The params of a run of ``vlm``, with the record ``config`` every chapter keys its records by.

        ``config`` is ``{"model", "dtype", "data", "n_samples", "seed", **record}`` (see
        :func:`record_config`), equal to the one the notebooks built by hand, so a run resumes
        from records written before.

        - ``vlm``: the loaded model; its weights' fingerprint and dtype key the records.
        - ``data``: the annotations file the samples come from (recorded as ``str(data)``).
        - ``n_samples``: the chapter's ``n_samples`` parameter; None leaves the key out (chapter 3
          keys its records by its area filter instead, through ``record``).
        - ``seed``: the seed of the sample order and of every draw; in the config and ``params.seed``.
        - ``record``: the chapter's further keys, after those (e.g. ``{"n_reference": 64}``).
        - ``fields``: the params' other fields: ``batch_size``, ``max_new_tokens``, ``extra`` and
          a subclass's own (``mean``, ``window``, ...).
        """
        keys: dict[str, Any] = {"data": str(data)}
        if n_samples is not None:
            keys["n_samples"] = n_samples
        keys["seed"] = seed
        return cls(config=record_config(vlm, **keys, **(record or {})), seed=seed, **fields)


class Timings(dict[str, float]):
    """Seconds per part of an experiment; timing the same part again adds to it.

    A notebook often runs a part in two calls (some ablations, then the rest), and the summary
    must report the time of both, not of the last.
    """

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the wall-clock time of the ``with`` block to ``self[name]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - t0

    def rounded(self) -> dict[str, float]:
        """The timings to 0.1 s, for the summary JSON."""
        return {k: round(v, 1) for k, v in self.items()}


def loc_cls(records: Mapping[Task, Sequence[dict]]) -> dict:
    """Loc and Cls with their standard errors (percent) from one condition's records on both tasks."""
    loc = summarize(records["localization"], "localization")
    cls = summarize(records["classification"], "classification")
    return {
        "loc": rate(loc["loc"]),
        "loc_se": rate(loc["loc_se"]),
        "cls": rate(cls["rate"]),
        "cls_se": rate(cls["se"]),
        "unparsable": int(loc["unparsable"]),
        "n": int(loc["n"]),
    }


def with_change(entry: Mapping, base: Mapping) -> dict:
    """``entry`` with ``d_loc`` and ``d_cls``, its change from the baseline in points."""
    return {**entry, "d_loc": rate(entry["loc"] - base["loc"]), "d_cls": rate(entry["cls"] - base["cls"])}


def _round(x: float, nd: int) -> float | None:
    return None if x is None or np.isnan(x) else round(float(x), nd)


def by_size(records: Mapping[Task, Sequence[dict]]) -> pd.DataFrame:
    """Loc and Cls (with SE and n) per COCO size class present in one condition's records.

    The paper finds small objects hardest; every chapter can ask whether an intervention hurts
    them more.
    """
    rows = []
    for size in SIZE_ORDER:
        loc_r = [r for r in records.get("localization", ()) if r.get("size") == size]
        cls_r = [r for r in records.get("classification", ()) if r.get("size") == size]
        if not loc_r and not cls_r:
            continue
        row: dict[str, Any] = {"size": size}
        if loc_r:
            s = summarize(loc_r, "localization")
            row.update(
                {
                    "Loc %": _round(s["loc"], 2),
                    "Loc SE": _round(s["loc_se"], 2),
                    "mean IoU": _round(s["mean_iou"], 3),
                }
            )
        if cls_r:
            s = summarize(cls_r, "classification")
            row.update({"Cls %": _round(s["rate"], 2), "Cls SE": _round(s["se"], 2)})
        row["n"] = max(len(loc_r), len(cls_r))
        rows.append(row)
    return pd.DataFrame(rows).set_index("size") if rows else pd.DataFrame()


class Experiment:
    """Runs named conditions for one model and sample set, resumably, and summarizes them."""

    def __init__(self, vlm: VLM, samples: Sequence[Sample], params: RunParams, store: ResultsStore) -> None:
        if not samples:
            raise ValueError(f"{type(self).__name__} needs at least one sample; check n_samples")
        self.vlm = vlm
        self.samples = list(samples)
        family = getattr(vlm, "family", None)  # (unit tests pass stand-ins without one)
        if params.max_new_tokens is None and family is not None:
            params = dataclasses.replace(params, max_new_tokens=family.answer_tokens)
        self.params = params
        self.store = store
        self.records: dict[tuple[str, Task], list[dict]] = {}
        self.timings = Timings()
        self._masks: dict[str, np.ndarray] = {}

    def mask(self, sample: Sample) -> np.ndarray:
        """The object mask, decoded once per batch (a small cache: COCO masks are large)."""
        if sample.sample_id not in self._masks:
            if len(self._masks) >= 64:
                self._masks.clear()
            self._masks[sample.sample_id] = sample.mask()
        return self._masks[sample.sample_id]

    def provenance(self) -> dict:
        """``weights``, ``dtype`` and ``data`` of the run's config (those it has): what a summary says
        it was made from."""
        c = self.params.config
        return {
            name: c[key]
            for name, key in (("weights", "model"), ("dtype", "dtype"), ("data", "data"))
            if key in c
        }

    def config(self, **extra: Any) -> dict:
        """The run's config with a condition's own settings: what keys its records."""
        return {**self.params.config, **extra}

    def run(
        self,
        condition: str,
        task: Task,
        progress: bool = True,
        config: Mapping[str, Any] | None = None,
        samples: Sequence[Sample] | None = None,
        **hooks: Any,
    ) -> list[dict]:
        """Run ``condition`` on ``task`` over the samples (resuming stored records); returns every record.

        ``config`` holds the condition's settings, which key its records. ``hooks`` are how the
        condition reaches the model, batch by batch (``edit_for``, the per-sample token edit;
        ``interventions_for`` and ``prefix_for``); they go to :func:`vlmloc.evaluate.run_condition`
        unchanged, so a new kind of hook needs no change here. A condition without hooks is the
        unedited model. ``samples``: a subset to run now (one batch, say); the records are then
        returned but not kept, since they are not the condition's all.
        """
        p = self.params
        recs = run_condition(
            self.vlm,
            self.samples if samples is None else samples,
            task,
            self.store,
            condition,
            self.config(**(config or {}), max_new_tokens=p.max_new_tokens),
            batch_size=p.batch_size,
            max_new_tokens=p.max_new_tokens,
            progress=progress,
            **hooks,
        )
        if samples is None:
            self.records[(condition, task)] = recs
        return recs

    def run_both(
        self, condition: str, progress: bool = True, config: Mapping[str, Any] | None = None, **hooks: Any
    ) -> dict:
        """:meth:`run` on both tasks; returns the condition's :func:`loc_cls` entry."""
        for task in TASKS:
            self.run(condition, task, progress, config, **hooks)
        return self.loc_cls(condition)

    def task_records(self, condition: str) -> dict[Task, list[dict]]:
        """``{task: records}`` of a condition that has run (on the tasks it ran on)."""
        return {t: recs for (c, t), recs in self.records.items() if c == condition}

    def baseline(self, progress: bool = True) -> dict:
        """The unedited model on both tasks (run once, then read back); its Loc/Cls entry."""
        with self.timings.timed("baseline"):
            for task in TASKS:
                if ("baseline", task) not in self.records:
                    self.run("baseline", task, progress)
        return self.loc_cls("baseline")

    def loc_cls(self, condition: str) -> dict:
        """Loc/Cls with SEs of a condition that has run on both tasks."""
        return loc_cls(self.task_records(condition))

    def by_size(self, condition: str = "baseline") -> pd.DataFrame:
        """Loc and Cls per size class of a condition that has run (see :func:`by_size`)."""
        return by_size(self.task_records(condition))
