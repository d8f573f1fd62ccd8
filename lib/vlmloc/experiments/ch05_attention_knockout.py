"""Chapter 5, attention knockout: in which decoder layers does the text read the object?

The book's methods page (book/methods.md, chapter 5): every position after the image span (the
prompt text and every generated token) is kept from attending to a set of visual tokens, in all
heads of a window of ``window`` consecutive layers that slides over depth by ``stride``, and in
all layers at once. Three token sets per window:

- **object**: the object's tokens (every view; chapter 1's mask-to-token rule);
- **random**: as many visual tokens drawn uniformly (the control; the same draw as chapter 2's);
- **image**: every visual token (the upper bound: the text sees no image in that window).

Generation holds the block on every step (:class:`~vlmloc.interventions.AttentionKnockout`); the
chapter's null check is :meth:`~vlmloc.interventions.AttentionKnockout.null`, which runs the same
mask hooks in every layer and step but blocks nothing. Token sets are index sets over the image's
visual tokens, fixed per sample and seed, so a resumed run blocks exactly what an uninterrupted
one would.

Tables and findings are in :mod:`vlmloc.report.ch05`, the figures in :mod:`vlmloc.plots.knockout`::

    params = KnockoutParams.from_vlm(vlm, data=ann_path, n_samples=64, seed=0, window=4, stride=1)
    exp = Knockout(vlm, samples, params, store)
    summary = exp.run_all()    # written to 05_attention_knockout.json
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..adapter import VLM, Prefix
from ..data import Sample
from ..evaluate import InterventionsFor, PrefixFor
from ..families import TASKS
from ..geometry import ImageLayout, index_layout
from ..interventions import AttentionKnockout, layer_windows, random_indices
from ..paper import KNOCKOUT_LAYERS, MODELS, N_LAYERS, knockout_layers
from ..stats import se_of_difference
from ..store import ResultsStore
from .base import Experiment, RunParams, rate, sample_rng, with_change

__all__ = [
    "CHAPTER",
    "paper_range",
    "TOKEN_SETS",
    "Knockout",
    "KnockoutParams",
    "critical_windows",
    "harm_depth",
    "most_harmful",
    "query_from",
    "window_first",
    "window_label",
]

CHAPTER = "05_attention_knockout"
#: Blocked token sets: the object, the random control, the whole image (upper bound).
TOKEN_SETS: tuple[str, ...] = ("object", "random", "image")
#: Which rate each task is scored by in a summary entry.
KEY = {"localization": "loc", "classification": "cls"}


def paper_range(paper_model: str | None, n_layers: int) -> dict | None:
    """The paper's knockout range for its model of this family, scaled to ``n_layers`` (None for a
    family the paper did not study: there is no range of its to compare with)."""
    if paper_model is None:
        return None
    first, last = knockout_layers(paper_model, n_layers)
    return {
        "model": MODELS[paper_model],
        "words": KNOCKOUT_LAYERS[paper_model]["words"],
        "fraction": list(KNOCKOUT_LAYERS[paper_model]["fraction"]),  # type: ignore[arg-type]
        "layers": [first, last],
        "paper_layers": list(knockout_layers(paper_model, N_LAYERS[paper_model])),
    }


def window_label(first: int, last: int) -> str:
    """``"0-3"`` for layers 0..3."""
    return f"{first}-{last}"


def query_from(layout: ImageLayout) -> int:
    """The first position after the image span: the first query the knockout blocks."""
    return int(layout.positions.max()) + 1


@dataclass(kw_only=True)
class KnockoutParams(RunParams):
    """:class:`RunParams` plus the windows: ``window`` consecutive layers, sliding by ``stride``.

    The token set and the layers are added to ``config`` per condition.
    """

    window: int = 4
    stride: int = 1
    reuse_prefix: bool = True  # run the image prefix once per batch for all conditions (exact)


class Knockout(Experiment):
    """Runs chapter 5's conditions for one model and sample set, resumably, and summarizes them."""

    params: KnockoutParams

    def __init__(
        self, vlm: VLM, samples: Sequence[Sample], params: KnockoutParams, store: ResultsStore
    ) -> None:
        super().__init__(vlm, samples, params, store)
        self.windows = layer_windows(vlm.n_layers, params.window, params.stride)
        self.sets: dict[str, dict[str, np.ndarray]] = {}
        self._prefixes: dict[bytes, Prefix] = {}

    # --- what is blocked where -----------------------------------------------------------------
    def layer_sets(self) -> dict[str, list[int]]:
        """``{"0-3": [0, 1, 2, 3], ..., "all": [0 .. n_layers - 1]}`` in the order of the plots."""
        out = {window_label(a, b): list(range(a, b + 1)) for a, b in self.windows}
        out["all"] = list(range(self.vlm.n_layers))
        return out

    def token_sets(self) -> dict[str, dict[str, np.ndarray]]:
        """Per sample: indices (into the visual tokens) of ``object``, ``random`` and ``image``."""
        if not self.sets:
            for s in self.samples:
                lay = index_layout(self.vlm, s)
                obj = lay.object_indices(self.mask(s))
                self.sets[s.sample_id] = {
                    "object": obj,
                    "random": random_indices(
                        lay, len(obj), sample_rng(self.params.seed, "random", s.sample_id)
                    ),
                    "image": np.arange(lay.n_tokens),
                }
        return self.sets

    def interventions_for(self, token_set: str, layers: Sequence[int]) -> InterventionsFor:
        """A batch's knockout of ``token_set`` in ``layers``, in absolute positions per row."""
        if token_set not in TOKEN_SETS:
            raise ValueError(f"unknown token set {token_set!r}; use one of {TOKEN_SETS}")
        sets = self.token_sets()

        def build(chunk: Sequence[Sample], layouts: Sequence[ImageLayout]) -> list[AttentionKnockout]:
            keys = [
                lay.positions[sets[s.sample_id][token_set]] for s, lay in zip(chunk, layouts, strict=True)
            ]
            return [AttentionKnockout(layers, keys, [query_from(lay) for lay in layouts])]

        return build

    def prefix_for(self) -> PrefixFor | None:
        """The batch's image prefix, computed once and reused by every condition of the batch.

        Exact: a knockout blocks queries from the first position after the image span on, so no
        position before it (in any row) changes; the prefix ends at the earliest such position.
        """
        if not self.params.reuse_prefix:
            return None

        def get(chunk: Sequence[Sample], enc: Any, layouts: Sequence[ImageLayout]) -> Prefix:
            key = enc["input_ids"].cpu().numpy().tobytes()
            if key not in self._prefixes:
                self._prefixes[key] = self.vlm.prefix(enc, min(query_from(lay) for lay in layouts))
            return self._prefixes[key]

        return get

    def knockout_condition(self, token_set: str, label: str, layers: Sequence[int]) -> dict[str, Any]:
        """:meth:`Experiment.run`'s arguments for the knockout of ``token_set`` in ``layers`` (window
        ``label``): its condition name, its config and the hooks that block the tokens."""
        return {
            "condition": f"ko-{token_set}-{label}",
            "progress": False,
            "config": {"block": token_set, "layers": layers},
            "interventions_for": self.interventions_for(token_set, layers),
            "prefix_for": self.prefix_for(),
        }

    def run_knockout(
        self,
        token_set: str,
        label: str,
        layers: Sequence[int],
        task: str,
        samples: Sequence[Sample] | None = None,
    ) -> list[dict]:
        """The knockout of ``token_set`` in ``layers`` (window ``label``) on ``task``, resumably.

        ``samples``: a subset to run now (one batch); see :meth:`Experiment.run`.
        """
        return self.run(task=task, samples=samples, **self.knockout_condition(token_set, label, layers))

    # --- experiments ---------------------------------------------------------------------------
    def conditions(self, token_sets: Sequence[str] = TOKEN_SETS) -> list[tuple[str, str, list[int]]]:
        """``(token set, window label, layers)`` of every knockout condition."""
        unknown = [n for n in token_sets if n not in TOKEN_SETS]
        if unknown:
            raise ValueError(f"unknown token set(s) {unknown}; use some of {TOKEN_SETS}")
        return [(n, label, layers) for n in token_sets for label, layers in self.layer_sets().items()]

    def knockout(self, progress: bool = True, token_sets: Sequence[str] = TOKEN_SETS) -> dict:
        """``{token set: {window: {loc, cls, loc_se, cls_se, n, d_loc, d_cls}}}`` over every window and "all".

        Batch by batch: every condition runs on one batch before the next batch starts, so the
        batch's image prefix is computed once (``reuse_prefix``) and only one batch's is held.
        """
        base = self.baseline(progress)
        conds = self.conditions(token_sets)
        with self.timings.timed("knockout"):
            bs = self.params.batch_size
            chunks = [self.samples[i : i + bs] for i in range(0, len(self.samples), bs)]
            bar = tqdm(total=len(chunks) * len(conds) * len(TASKS), desc="knockout", disable=not progress)
            for chunk in chunks:
                for task in TASKS:
                    for name, label, layers in conds:
                        self.run(task=task, samples=chunk, **self.knockout_condition(name, label, layers))
                        bar.update()
                self._prefixes.clear()
            bar.close()
            out: dict[str, dict] = {}
            for name, label, layers in conds:
                for task in TASKS:  # every record is there now: this only reads them back
                    self.run_knockout(name, label, layers, task)
                out.setdefault(name, {})[label] = with_change(self.loc_cls(f"ko-{name}-{label}"), base)
        return out

    def answers(self, token_set: str, task: str) -> dict[str, list[str]]:
        """The recorded answers of ``token_set``'s knockout per window label (after :meth:`knockout`)."""
        out = {}
        for label in self.layer_sets():
            recs = self.records.get((f"ko-{token_set}-{label}", task))
            if recs is not None:
                out[label] = [r["answer"] for r in recs]
        return out

    def token_share(self, name: str) -> float:
        """Mean share (%) of an image's visual tokens a set blocks."""
        sets = self.token_sets()
        return float(np.mean([100 * len(v[name]) / len(v["image"]) for v in sets.values()]))

    def summary(self, knockout: Mapping) -> dict:
        out = {
            "model_id": self.vlm.model_id,
            "n_samples": len(self.samples),
            "seed": self.params.seed,
            "n_layers": self.vlm.n_layers,
            "window": self.params.window,
            "stride": self.params.stride,
            "windows": list(self.layer_sets()),
            "token_share": {n: rate(self.token_share(n)) for n in TOKEN_SETS},
            "baseline": self.loc_cls("baseline"),
            "knockout": dict(knockout),
            "paper": paper_range(self.vlm.family.paper_model, self.vlm.n_layers),
            "timings_s": self.timings.rounded(),
            **self.provenance(),
            "max_new_tokens": self.params.max_new_tokens,
            "reuse_prefix": self.params.reuse_prefix,
            **self.params.extra,
        }
        out["most_harmful"] = {task: most_harmful(out, task) for task in TASKS}
        out["critical"] = {task: critical_windows(out, task) for task in TASKS}
        out["harm_depth"] = {task: harm_depth(out, task) for task in TASKS}
        return out

    def run_all(self, progress: bool = True) -> dict:
        return self.summary(self.knockout(progress))


# --- the windows that matter, for the summary ------------------------------------------------


def _windows(summary: Mapping) -> list[str]:
    return [w for w in summary["windows"] if w != "all"]


def window_first(label: str) -> int:
    """The first layer of a window label such as ``"2-5"``."""
    return int(label.split("-")[0])


def _inside(label: str, layers: Sequence[int]) -> bool:
    """Does the window's centre lie in the inclusive layer range?"""
    a, b = (int(x) for x in label.split("-"))
    return layers[0] <= (a + b) / 2 <= layers[1]


def most_harmful(summary: Mapping, task: str) -> dict:
    """The window (not "all") whose object knockout leaves the lowest score of ``task``.

    ``beyond_random``: the object's score is below the random control's by more than 2 standard
    errors; ``in_paper_range``: the window's centre lies in the paper's range scaled to this depth.
    """
    k = KEY[task]
    ko = summary["knockout"]
    wins = _windows(summary)
    if not wins:
        return {"window": None}
    best = min(wins, key=lambda w: (ko["object"][w][k], window_first(w)))
    obj, rnd = ko["object"][best], ko["random"][best]
    base = summary["baseline"]
    return {
        "window": best,
        "score": obj[k],
        "drop": rate(base[k] - obj[k]),
        "random": rnd[k],
        "beyond_random": bool(rnd[k] - obj[k] > 2 * se_of_difference(obj[f"{k}_se"], rnd[f"{k}_se"])),
        "in_paper_range": _inside(best, summary["paper"]["layers"]) if summary["paper"] else None,
    }


def harm_depth(summary: Mapping, task: str) -> float | None:
    """The mean depth (layer index of the window's centre) weighted by what blocking the object
    costs ``task`` there beyond the random control: a rule-free summary of where a task reads the
    object (None when no window costs anything)."""
    k = KEY[task]
    ko = summary["knockout"]
    w = {x: max(0.0, ko["random"][x][k] - ko["object"][x][k]) for x in _windows(summary)}
    total = sum(w.values())
    if total <= 0:
        return None
    return round(sum(sum(int(v) for v in x.split("-")) / 2 * c for x, c in w.items()) / total, 2)


def critical_windows(summary: Mapping, task: str) -> list[str]:
    """Windows that matter for ``task``: blocking the object there costs more than 2 SE against
    both the baseline and the random control, and at least half of the task's largest drop.

    The half-maximum rule separates the windows a task *needs* from those that only dent it, so
    that the two tasks' ranges can be compared (on a toy every window may cost a few points).
    """
    k = KEY[task]
    base, ko = summary["baseline"], summary["knockout"]
    wins = _windows(summary)
    drops = {w: base[k] - ko["object"][w][k] for w in wins}
    top = max(drops.values(), default=0.0)
    out = []
    for w in wins:
        obj, rnd = ko["object"][w], ko["random"][w]
        below_base = drops[w] > 2 * se_of_difference(base[f"{k}_se"], obj[f"{k}_se"])
        below_rnd = rnd[k] - obj[k] > 2 * se_of_difference(rnd[f"{k}_se"], obj[f"{k}_se"])
        if below_base and below_rnd and drops[w] >= top / 2:
            out.append(w)
    return out
