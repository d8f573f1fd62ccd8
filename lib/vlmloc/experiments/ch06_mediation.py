"""Chapter 6's runner: causal mediation per head, which attention heads carry the object's effect.

For one source/base pair (the real image and the same image with the object inpainted away,
chapter 1's control set: :class:`~vlmloc.control_set.MediationPair`) and one task, let ``P`` be
the perplexity of the teacher-forced ground-truth answer (:mod:`vlmloc.scoring`). Patching head
``(l, h)``'s output from the source run into the base run, at every position after the image
span, gives ``P_patched`` and the **mediation fraction** (the book's methods page, chapter 6)::

    MF = (P_base - P_patched) / (P_base - P_src)

Two ways to get it for every head, both run here per pair, resumably:

- **Exact**: one patched forward per head (:func:`vlmloc.sweeps.head_patch_scores`, batched,
  with the image prefix and the layers below the patched one reused).
- **Attribution patching**: the first-order estimate from one forward and one backward of the
  base run (:func:`vlmloc.attribution.attribution_patching`).

MF maps, their ranking and comparison are :mod:`vlmloc.mediation_maps`, the statistics
:mod:`vlmloc.stats`, tables and findings :mod:`vlmloc.report.ch06`, figures
:mod:`vlmloc.plots.mediation`::

    exp = Mediation(vlm, pairs, MediationParams(config), store)
    exact = exp.exact("localization")          # {sample_id: record}, resumable
    mf = exp.mf(exact)                          # MFResult: mean map, per-pair maps, pairs used
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..attribution import attribution_patching
from ..control_set import CONTROL_SET_CHAPTER, MediationPair, build_control_set, control_dir
from ..families import TASKS
from ..mediation_maps import MFResult, aggregate, overlap, top_heads
from ..stats import chance_overlap, overlap_p_value, sparsity, spearman
from ..store import ResultsStore
from ..sweeps import PATCH_POSITIONS, check_positions, first_after_image, head_patch_scores
from .base import Experiment, RunParams

__all__ = [
    "CH1",
    "CHAPTER",
    "Mediation",
    "MediationParams",
    "ensure_control_set",
    "other_positions",
    "summary",
]

CHAPTER = "06_mediation"
#: Chapter 1, whose object-removal control set gives the pairs.
CH1 = CONTROL_SET_CHAPTER


# --------------------------------------------------------------------------- the control set


def ensure_control_set(
    vlm: Any,
    results_dir: str | Path,
    samples: Sequence[Any],
    config: Mapping,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[Path, bool]:
    """The control set's manifest, built exactly as chapter 1 builds it when it is missing.

    Chapter 1's classification baseline of ``samples`` (its store, ``config`` as chapter 1 keys
    it, through the same :class:`~vlmloc.experiments.base.Experiment` runner) is read back when
    chapter 1 ran and computed otherwise; then :func:`vlmloc.control_set.build_control_set`
    inpaints and keeps the flips. Returns the manifest and whether it was built now.
    """
    manifest = control_dir(results_dir, vlm.model_id) / "pairs.json"
    if manifest.is_file():
        return manifest, False
    store = ResultsStore(results_dir, vlm.model_id, CH1)
    ch1 = Experiment(vlm, samples, RunParams(config=dict(config), batch_size=batch_size), store)
    records = ch1.run("baseline", "classification", progress)
    build_control_set(
        vlm, samples, records, store, results_dir, dict(config), batch_size=batch_size, progress=progress
    )
    return manifest, True


# --------------------------------------------------------------------------- the experiment


@dataclass
class MediationParams:
    """``config`` keys every record (weights, dtype, control set); the rest says how to run and
    how to read the records (neither changes a record, so neither is in ``config``).

    ``patch_positions``: ``"after_image"`` patches every position after the image span (ours:
    it lets the image prefix run once per pair), ``"all"`` every position, the image's included.
    ``min_rel_gap`` and ``drop_reversed``: which pairs MF averages over
    (:func:`vlmloc.mediation_maps.aggregate`).
    """

    config: dict
    batch_size: int = 64  # heads per forward in the exact sweep
    progress: bool = True
    patch_positions: str = "after_image"
    min_rel_gap: float = 0.05
    drop_reversed: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_positions(self.patch_positions)


def other_positions(positions: str) -> str:
    """The patch setting that is not ``positions``: the robustness run sweeps it too."""
    (other,) = [p for p in PATCH_POSITIONS if p != check_positions(positions)]
    return other


def _rounded(values: Any, nd: int = 7) -> list[float]:
    return [float(f"{v:.{nd}g}") for v in (values.tolist() if hasattr(values, "tolist") else values)]


class Mediation:
    """Runs chapter 6's sweeps over ``pairs`` for one model, resumably through ``store``.

    Every method returns ``{sample_id: record}`` in pair order; a record is written as soon as its
    pair is done, so an interrupted run resumes with the next pair.
    """

    def __init__(
        self, vlm: Any, pairs: Sequence[MediationPair], params: MediationParams, store: ResultsStore
    ):
        self.vlm, self.pairs, self.params, self.store = vlm, list(pairs), params, store

    def _log(self, task: str, kind: str, extra: Mapping | None = None):
        cfg = {
            "task": task,
            "kind": kind,
            "weights": self.vlm.fingerprint,
            **self.params.config,
            **(extra or {}),
        }
        return self.store.condition(f"{task}-{kind}", cfg)

    def _pending(self, log: Any, pairs: Sequence[MediationPair], desc: str) -> Iterator[MediationPair]:
        """The pairs ``log`` has no record of yet, in order, under a progress bar over all of them."""
        todo = set(log.pending([p.sample_id for p in pairs]))
        for p in tqdm(pairs, desc=desc, disable=not self.params.progress):
            if p.sample_id in todo:
                yield p

    @staticmethod
    def _write(log: Any, pair: MediationPair, t0: float, **record: Any) -> None:
        """Append ``pair``'s record at once (a rerun resumes after it), with its seconds since ``t0``."""
        log.append({"sample_id": pair.sample_id, **record, "seconds": round(time.perf_counter() - t0, 4)})

    @staticmethod
    def _by_pair(log: Any, pairs: Sequence[MediationPair]) -> dict:
        """Every record of ``log``, as ``{sample_id: record}`` in the order of ``pairs``."""
        by_id = {r["sample_id"]: r for r in log.records()}
        return {p.sample_id: by_id[p.sample_id] for p in pairs}

    def exact(self, task: str, positions: str | None = None) -> dict[str, dict]:
        """Every head patched from source into base, per pair: ``p_src``, ``p_base``, ``p_patched`` (layer-major).

        ``positions`` overrides the params' ``patch_positions`` (the robustness run of the other setting).
        """
        positions = check_positions(positions or self.params.patch_positions)
        kind = "exact" if positions == "after_image" else f"exact-{positions}"
        log = self._log(task, kind)
        for p in self._pending(log, self.pairs, f"{kind} · {task}"):
            t0 = time.perf_counter()
            src, base, answer = p.encode(self.vlm, task)
            r = head_patch_scores(
                self.vlm, src, base, answer, task, batch_size=self.params.batch_size, positions=positions
            )
            self._write(
                log, p, t0,
                p_src=float(r.source.perplexity[0]),
                p_base=float(r.base.perplexity[0]),
                p_patched=_rounded(r.patched.perplexity),
            )  # fmt: skip
        return self._by_pair(log, self.pairs)

    def attribution(self, task: str) -> dict[str, dict]:
        """Attribution patching per pair: ``p_src``, ``p_base`` and ``dlogp`` (layer-major)."""
        log = self._log(task, "attribution")
        for p in self._pending(log, self.pairs, f"attribution · {task}"):
            t0 = time.perf_counter()
            src, base, answer = p.encode(self.vlm, task)
            a = attribution_patching(self.vlm, src, base, answer, task)
            self._write(log, p, t0, p_src=a.p_src, p_base=a.p_base, dlogp=_rounded(a.dlogp))
        return self._by_pair(log, self.pairs)

    def mf(self, records: Mapping[str, Mapping], **kwargs: Any) -> MFResult:
        """MF of ``records`` over this model's heads, the pairs chosen by the params' ``min_rel_gap``
        and ``drop_reversed`` (``kwargs`` override them or pass ``key``/``denominators`` on to
        :func:`~vlmloc.mediation_maps.aggregate`)."""
        opts = {"min_rel_gap": self.params.min_rel_gap, "drop_reversed": self.params.drop_reversed, **kwargs}
        return aggregate(records, self.vlm.n_layers, self.vlm.n_heads, **opts)

    def scored_answers(self, pair: MediationPair | None = None) -> list[dict]:
        """Per task, the answer P scores on ``pair`` (the first by default), its scored tokens, P_src and P_base."""
        pair = pair or self.pairs[0]
        rows = []
        for task in TASKS:
            src, base, answer = pair.encode(self.vlm, task)
            s, b = self.vlm.score(src, [answer], task), self.vlm.score(base, [answer], task)
            rows.append({"task": task, "answer": answer, "scored tokens": int(s.n_tokens[0]),
                         "P_src": float(s.perplexity[0]), "P_base": float(b.perplexity[0])})  # fmt: skip
        return rows

    def sequence_lengths(self, pair: MediationPair | None = None) -> tuple[int, dict[str, int], int]:
        """``(prefix, {task: suffix}, views)`` of ``pair``: the image prefix's length, the tokens
        after it per task (prompt text and answer), and the image's views; the cost model's geometry."""
        pair = pair or self.pairs[0]
        encs = {t: pair.encode(self.vlm, t) for t in TASKS}
        prefix = first_after_image(self.vlm, encs["classification"][1]["input_ids"])
        tok = self.vlm.tokenizer
        suffix = {
            t: e[1]["input_ids"].shape[1] + len(tok(e[2], add_special_tokens=False)["input_ids"]) - prefix
            for t, e in encs.items()
        }
        return prefix, suffix, len(self.vlm.views(pair.images()[0].size))

    def mismatched_source(self, pair: MediationPair, task: str) -> MediationPair | None:
        """Another pair's original image with the same token layout under ``pair``'s prompt and another class.

        The next such pair after ``pair`` in order (cyclically) whose original is another image (on
        COCO one image holds several objects, and the same scene is no stranger); ``None`` when
        there is none.
        """
        i = self.pairs.index(pair)
        _, base = pair.images()
        prompt = self.vlm.prompt(task, pair.category)
        want = self.vlm.encode([base], [prompt])["input_ids"]
        for other in self.pairs[i + 1 :] + self.pairs[:i]:
            if other.category == pair.category or other.image_id == pair.image_id:
                continue
            im = Image.open(other.original).convert("RGB")
            if im.size == base.size or torch.equal(self.vlm.encode([im], [prompt])["input_ids"], want):
                return other
        return None

    def mismatched(self, task: str, n_pairs: int) -> dict[str, dict]:
        """The noise floor: every head patched into the base from *another* image (another class).

        For the first ``n_pairs`` pairs, the source is :meth:`mismatched_source`'s original image
        under this pair's prompt; MF keeps this pair's denominator. Pairs without a partner get
        a record with ``source_id = None`` and no scores.
        """
        positions = self.params.patch_positions
        log = self._log(task, "mismatched", None if positions == "after_image" else {"positions": positions})
        pairs = self.pairs[:n_pairs]
        for p in self._pending(log, pairs, f"mismatched · {task}"):
            t0 = time.perf_counter()
            other = self.mismatched_source(p, task)
            if other is None:
                self._write(log, p, t0, source_id=None)
                continue
            src, base, answer = p.encode(self.vlm, task, source_image=other.images()[0])
            r = head_patch_scores(
                self.vlm, src, base, answer, task, batch_size=self.params.batch_size, positions=positions
            )
            self._write(
                log, p, t0,
                source_id=other.sample_id,
                p_base=float(r.base.perplexity[0]),
                p_patched=_rounded(r.patched.perplexity),
            )  # fmt: skip
        return self._by_pair(log, pairs)

    def ranking_data(self, mismatched: Mapping[str, Mapping[str, Mapping]]) -> dict[str, list]:
        """The objects and images the ranking saw: every pair and every mismatched source.

        ``mismatched`` is ``{task: records}`` of :meth:`mismatched`. Chapter 7 evaluates on none
        of these images, so its test of the ranked heads is out of sample.
        """
        by_id = {p.sample_id: p for p in self.pairs}
        objects = set(by_id)
        for records in mismatched.values():
            objects |= {r["source_id"] for r in records.values() if r.get("source_id")}
        images = {by_id[o].image_id for o in objects if o in by_id}
        return {"objects": sorted(objects), "images": sorted(int(i) for i in images)}

    def base_into_base(self, task: str, pair: MediationPair | None = None) -> dict:
        """The null control: the base run patched into itself, every head, so MF must be 0.

        Runs the plain loop (one full forward per head, which must reproduce P_base bit for bit)
        and the batched sweep (equal to rounding: its rows run in batches of other shapes, after a
        cached prefix, with lower layers taken from the base rows). MF uses the pair's real denominator. Also times
        the plain loop, the cost of the unbatched exact sweep for one pair.
        """
        pair = pair or self.pairs[0]
        src, base, answer = pair.encode(self.vlm, task)
        p_src = float(self.vlm.score(src, [answer], task).perplexity[0])
        positions = self.params.patch_positions
        t0 = time.perf_counter()
        loop = head_patch_scores(
            self.vlm, base, base, answer, task, batch_size=1, reuse_prefix=False, positions=positions
        )
        loop_seconds = time.perf_counter() - t0
        fast = head_patch_scores(
            self.vlm, base, base, answer, task, batch_size=self.params.batch_size, positions=positions
        )
        p_base = float(loop.base.perplexity[0])

        def max_mf(r: Any) -> float:
            return float(((r.base.perplexity - r.patched.perplexity) / (p_base - p_src)).abs().max())

        return {
            "sample_id": pair.sample_id,
            "p_src": p_src,
            "p_base": p_base,
            "loop_seconds": loop_seconds,
            "loop_exact": bool(
                torch.equal(loop.patched.perplexity, loop.base.perplexity.expand(len(loop.heads)))
            ),
            "loop_max_abs_mf": max_mf(loop),
            "batched_max_abs_mf": max_mf(fast),
            # rounding of the batched sweep itself, free of the pair's denominator (a pair whose
            # P_src is close to P_base magnifies it in MF)
            "batched_max_rel_change": float(((fast.patched.perplexity - p_base) / p_base).abs().max()),
        }


# --------------------------------------------------------------------------- the summary

_NULL_KEYS = ("loop_exact", "loop_max_abs_mf", "batched_max_abs_mf", "batched_max_rel_change")


def summary(
    exp: Mediation,
    results: Mapping[str, MFResult],
    *,
    other: Mapping[str, MFResult],
    mismatched: Mapping[str, Mapping],
    floor: Mapping[str, MFResult],
    null: Mapping[str, Mapping],
    attribution: Mapping[str, Mapping],
    seconds: Mapping[str, float],
    paper_band: Sequence[int],
    k: int = 10,
) -> dict:
    """The chapter's summary JSON (without findings and runtimes, which the notebook adds).

    ``results`` are the exact sweep's MF per task, ``other`` the same under the other patch
    setting (empty when it did not run), ``mismatched``/``floor`` the mismatched-source records
    and their MF, ``null`` the :meth:`Mediation.base_into_base` checks, ``attribution`` the
    :func:`~vlmloc.mediation_maps.agreement` of attribution patching with the exact sweep.
    """
    vlm, config = exp.vlm, exp.params.config
    n = vlm.n_layers * vlm.n_heads
    tops = {t: top_heads(r.mean, k) for t, r in results.items()}
    shared = overlap(tops["classification"], tops["localization"])
    return {
        "model_id": vlm.model_id, "weights": config["model"], "dtype": config["dtype"],
        "control_set": config["pairs"], "n_layers": vlm.n_layers, "n_heads": vlm.n_heads,
        "min_rel_gap": exp.params.min_rel_gap, "drop_reversed": exp.params.drop_reversed,
        "patch_positions": exp.params.patch_positions,
        "positions_robustness": _robustness(results, other, exp.params.patch_positions, k),
        "ranking_data": exp.ranking_data(mismatched),
        "mf": {t: np.round(r.mean, 5).tolist() for t, r in results.items()},
        "mf_se": {t: np.round(r.se, 5).tolist() for t, r in results.items()},
        "top10": tops, "overlap": len(shared), "overlap_heads": shared,
        "overlap_chance": chance_overlap(k, n), "overlap_p": overlap_p_value(len(shared), k, n),
        "n_pairs": {t: r.counts() for t, r in results.items()},
        "sparsity": {t: {key: round(v, 2) for key, v in sparsity(r.mean).items()} for t, r in results.items()},
        "paper_band": list(paper_band),
        "attribution": {t: {"spearman": round(float(a["spearman"]), 4), "top10_overlap": int(a["top10_overlap"])}
                        for t, a in attribution.items()},
        "seconds": {key: round(v, 2) for key, v in seconds.items()},
        "mismatched": {t: {"pairs": len(f.used), "top10_mean_mf": round(float(np.mean([f.mean[la, h] for la, h in tops[t]])), 4)}
                       for t, f in floor.items() if f.used},
        "null": {t: {key: c[key] for key in _NULL_KEYS} for t, c in null.items()},
    }  # fmt: skip


def _robustness(
    results: Mapping[str, MFResult], other: Mapping[str, MFResult], positions: str, k: int
) -> dict:
    """Per task swept under both patch settings: how the other setting's map agrees with ours."""
    out = {}
    for t, o in other.items():
        top, top_other = top_heads(results[t].mean, k), top_heads(o.mean, k)
        out[t] = {"other": other_positions(positions), "top10_overlap": len(overlap(top, top_other)),
                  "spearman": round(float(spearman(results[t].mean, o.mean)), 4), "top10_other": top_other}  # fmt: skip
    return out
