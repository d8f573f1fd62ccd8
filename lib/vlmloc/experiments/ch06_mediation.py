"""Chapter 6, causal mediation per head: which attention heads carry the object's effect.

For one source/base pair (the real image and the same image with the object inpainted away,
chapter 1's control set) and one task, let ``P`` be the perplexity of the teacher-forced
ground-truth answer (:mod:`vlmloc.scoring`). Patching head ``(l, h)``'s output from the source
run into the base run, at every position after the image span, gives ``P_patched`` and the
**mediation fraction** (the book's methods page, chapter 6)::

    MF = (P_base - P_patched) / (P_base - P_src)

1 means the head alone brings the source's answer back, 0 that it changes nothing. MF is
computed per pair and averaged over pairs; pairs whose denominator is near zero
(``|P_base - P_src| < min_rel_gap * P_src``) are dropped and counted.

Two ways to get it for every head:

- **Exact**: one patched forward per head (:func:`vlmloc.sweeps.head_patch_scores`, batched,
  with the image prefix and the layers below the patched one reused).
- **Attribution patching** (Nanda 2023; Syed et al. 2023): the first-order estimate from one
  forward and one backward of the base run, :func:`attribution_patching`.

Tables, findings and the cost model on the real models are in :mod:`vlmloc.report.ch06`, the
figures in :mod:`vlmloc.plots.mediation`::

    exp = Mediation(vlm, pairs, MediationParams(config), store)
    exact = exp.exact("localization")          # {sample_id: record}, resumable
    mf = aggregate(exact, vlm.n_layers, vlm.n_heads)
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..control_set import build_control_set, control_dir, load_pairs
from ..interventions.heads import Head, HeadPatch, HeadRead, all_heads
from ..scoring import answer_scores, scored_answer, teacher_forced_inputs
from ..sites import SiteMap
from ..store import ResultsStore
from ..sweeps import _suffix_inputs, check_positions, first_after_image, head_patch_scores
from .base import Experiment, RunParams

__all__ = [
    "CH1",
    "CHAPTER",
    "AttributionScores",
    "MFResult",
    "Mediation",
    "MediationPair",
    "MediationParams",
    "aggregate",
    "attribution_mf",
    "attribution_patching",
    "chance_overlap",
    "control_set_command",
    "cumulative_share",
    "ensure_control_set",
    "finite_difference",
    "mediation_pairs",
    "overlap",
    "overlap_p_value",
    "seconds",
    "spearman",
    "sparsity",
    "top_heads",
]

CHAPTER = "06_mediation"
#: Chapter 1, whose object-removal control set gives the pairs.
CH1 = "01_data_and_baselines"


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class MediationPair:
    """One kept pair of chapter 1's control set: the original image and its inpainted twin."""

    sample_id: str
    category: str
    box: tuple[float, float, float, float]
    original: str
    inpainted: str

    @classmethod
    def from_manifest(cls, p: Mapping) -> MediationPair:
        return cls(str(p["sample_id"]), p["category"], tuple(p["box"]), p["original"], p["inpainted"])

    @property
    def image_id(self) -> int:
        """The original image's id (a sample id is ``"<image_id>:<ann_id>"``)."""
        return int(self.sample_id.split(":")[0])

    def images(self) -> tuple[Image.Image, Image.Image]:
        src, base = Image.open(self.original).convert("RGB"), Image.open(self.inpainted).convert("RGB")
        if src.size != base.size:
            raise ValueError(
                f"pair {self.sample_id}: the inpainted image is {base.size}, the original {src.size}; "
                "both images of a pair must have the same size (same token layout)"
            )
        return src, base

    def answer(self, vlm: Any, task: str, size: tuple[int, int]) -> str:
        """The ground-truth answer P scores: the class name, or the box in the model's own format."""
        return self.category if task == "classification" else vlm.format_box(self.box, size, self.category)

    def encode(self, vlm: Any, task: str, source_image: Image.Image | None = None) -> tuple[Any, Any, str]:
        """``(source encoding, base encoding, answer)`` for ``task``; ``source_image`` replaces the original."""
        src, base = self.images()
        src = src if source_image is None else source_image
        prompt = vlm.prompt(task, self.category)
        return vlm.encode([src], [prompt]), vlm.encode([base], [prompt]), self.answer(vlm, task, base.size)


def control_set_command(model_id: str) -> str:
    """The command that builds chapter 1's control set for ``model_id``."""
    return f"python -m vlmloc.chapters run --chapters {CH1} --models {model_id}"


def mediation_pairs(results_dir: str | Path, model_id: str, n_pairs: int) -> list[MediationPair]:
    """The first ``n_pairs`` kept pairs of chapter 1's control set (its seeded order)."""
    manifest = control_dir(results_dir, model_id) / "pairs.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"no object-removal control set for {model_id} at {manifest}; build it with "
            f"`{control_set_command(model_id)}` (same results_dir), or pass -p build_control_set True"
        )
    return [MediationPair.from_manifest(p) for p in load_pairs(manifest)[:n_pairs]]


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


# --------------------------------------------------------------------------- attribution patching


@dataclass
class AttributionScores:
    """One pair: P on source and base, and each head's first-order change of the mean log-probability."""

    heads: list[Head]
    p_src: float
    p_base: float
    dlogp: torch.Tensor  # [heads]: grad(mean log p) . (z_src - z_base), summed over positions and head dims

    @property
    def p_patched_estimate(self) -> torch.Tensor:
        """``P_base * exp(-dlogp)``: the first-order change of log P, mapped through the exponential."""
        return self.p_base * torch.exp(-self.dlogp)


def attribution_patching(
    vlm: Any, source_enc: Any, base_enc: Any, answer: str, task: str
) -> AttributionScores:
    """First-order estimate of patching every head from source into base (attribution patching).

    With ``z_l`` the input of layer ``l``'s ``o_proj`` (head ``h`` is its slice ``[h d, (h+1) d)``,
    the site of :class:`~vlmloc.interventions.HeadPatch`) and ``f`` the mean log-probability of
    the scored answer tokens (``f = -log P``), the estimate for head ``(l, h)`` is

        dlogp[l, h] = sum_{t >= first after image, i in head h} df/dz_l[t, i] * (z_src - z_base)_l[t, i]

    from one forward and one backward of the base run (its image prefix runs once without
    gradients: nothing before the patched positions can change) plus the source forward that
    reads ``z_src``. The gradient is the total derivative (through every later layer), taken in
    the unpatched base run.
    """
    if not torch.equal(source_enc["input_ids"], base_enc["input_ids"]):
        raise ValueError("source and base must have the same tokens (same prompt, same image size)")
    if source_enc["input_ids"].shape[0] != 1:
        raise ValueError("attribution_patching takes one source/base pair at a time")
    layers = list(range(vlm.n_layers))
    read = HeadRead(layers)
    p_src = float(vlm.score(source_enc, [answer], task, [read]).perplexity[0])
    ids, mask = scored_answer(vlm.tokenizer, task, answer)
    inputs, targets, _ = teacher_forced_inputs(base_enc, [ids], vlm.tokenizer.pad_token_id)
    start = first_after_image(vlm, inputs["input_ids"])
    prompt_len = base_enc["input_ids"].shape[1]
    inputs["position_ids"] = vlm.position_ids(inputs)  # the family's positions (3-D under M-RoPE)
    cache = vlm.prefix(inputs, start).cache
    suffix = _suffix_inputs(inputs, start, 1, cache)
    sm = SiteMap(vlm.family.sites, vlm.hf)
    captured: dict[int, torch.Tensor] = {}

    def grab(layer: int, _module: Any, args: tuple) -> None:
        captured[layer] = args[0]

    handles = [sm.o_proj(la).register_forward_pre_hook(partial(grab, la)) for la in layers]
    try:
        with torch.enable_grad():
            logits = vlm.hf(**suffix, use_cache=True).logits
            s = prompt_len - 1 - start
            scores = answer_scores(logits[:, s : s + targets.shape[1]], targets, torch.as_tensor([mask]))
            f = scores.mean_logprob[0]
            grads = torch.autograd.grad(f, [captured[la] for la in layers])
    finally:
        for h in handles:
            h.remove()
    n_heads, d = vlm.n_heads, vlm.head_dim
    out = []
    for la, g in zip(layers, grads, strict=True):
        z_base = captured[la].detach()
        z_src = read.values[la][:, start:].to(z_base.device, z_base.dtype)
        prod = (g.float() * (z_src - z_base).float()).reshape(*g.shape[:2], n_heads, d)
        out.append(prod.sum((0, 1, 3)))
    return AttributionScores(
        all_heads(vlm.n_layers, n_heads), p_src, float(torch.exp(-f.detach())), torch.cat(out).cpu()
    )


def finite_difference(
    vlm: Any, source_enc: Any, base_enc: Any, answer: str, task: str, head: Head, eps: float = 1e-2
) -> float:
    """Central difference of the mean log-probability along ``z_base -> z_src`` for one head.

    Patches ``head`` with ``z_base + t (z_src - z_base)`` at ``t = +-eps`` (positions after the
    image, through :class:`~vlmloc.interventions.HeadPatch`) and returns
    ``(f(+eps) - f(-eps)) / (2 eps)``: what :func:`attribution_patching` estimates for that head.
    """
    layer = int(head[0])
    src, base = HeadRead([layer]), HeadRead([layer])
    vlm.score(source_enc, [answer], task, [src])
    vlm.score(base_enc, [answer], task, [base])
    start = first_after_image(vlm, base_enc["input_ids"])
    f = []
    for t in (eps, -eps):
        mix = {layer: base.values[layer] + t * (src.values[layer] - base.values[layer])}
        patch = HeadPatch([[(layer, int(head[1]))]], mix, from_pos=start)
        f.append(float(vlm.score(base_enc, [answer], task, [patch]).mean_logprob[0]))
    return (f[0] - f[1]) / (2 * eps)


# --------------------------------------------------------------------------- the experiment


@dataclass
class MediationParams:
    """``config`` keys every record (weights, dtype, control set); the rest says how to run.

    ``patch_positions``: ``"after_image"`` patches every position after the image span (ours:
    it lets the image prefix run once per pair), ``"all"`` every position, the image's included.
    """

    config: dict
    batch_size: int = 64  # heads per forward in the exact sweep
    progress: bool = True
    patch_positions: str = "after_image"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_positions(self.patch_positions)


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

    def _run(
        self, task: str, kind: str, pairs: Sequence[MediationPair], fn, extra: Mapping | None = None
    ) -> dict:
        log = self._log(task, kind, extra)
        todo = set(log.pending([p.sample_id for p in pairs]))
        bar = tqdm(pairs, desc=f"{kind} · {task}", disable=not self.params.progress)
        for p in bar:
            if p.sample_id in todo:
                t0 = time.perf_counter()
                rec = fn(p)
                log.append({"sample_id": p.sample_id, **rec, "seconds": round(time.perf_counter() - t0, 4)})
        by_id = {r["sample_id"]: r for r in log.records()}
        return {p.sample_id: by_id[p.sample_id] for p in pairs}

    def _sweep(self, src: Any, base: Any, answer: str, task: str, positions: str | None = None) -> Any:
        return head_patch_scores(
            self.vlm, src, base, answer, task, batch_size=self.params.batch_size,
            positions=positions or self.params.patch_positions,
        )  # fmt: skip

    def exact(self, task: str, positions: str | None = None) -> dict[str, dict]:
        """Every head patched from source into base, per pair: ``p_src``, ``p_base``, ``p_patched`` (layer-major).

        ``positions`` overrides the params' ``patch_positions`` (the robustness run of the other setting).
        """
        positions = check_positions(positions or self.params.patch_positions)

        def one(p: MediationPair) -> dict:
            src, base, answer = p.encode(self.vlm, task)
            r = self._sweep(src, base, answer, task, positions)
            return {
                "p_src": float(r.source.perplexity[0]),
                "p_base": float(r.base.perplexity[0]),
                "p_patched": _rounded(r.patched.perplexity),
            }

        kind = "exact" if positions == "after_image" else f"exact-{positions}"
        return self._run(task, kind, self.pairs, one)

    def attribution(self, task: str) -> dict[str, dict]:
        """Attribution patching per pair: ``p_src``, ``p_base`` and ``dlogp`` (layer-major)."""

        def one(p: MediationPair) -> dict:
            src, base, answer = p.encode(self.vlm, task)
            a = attribution_patching(self.vlm, src, base, answer, task)
            return {"p_src": a.p_src, "p_base": a.p_base, "dlogp": _rounded(a.dlogp)}

        return self._run(task, "attribution", self.pairs, one)

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

        def one(p: MediationPair) -> dict:
            other = self.mismatched_source(p, task)
            if other is None:
                return {"source_id": None}
            src, base, answer = p.encode(self.vlm, task, source_image=other.images()[0])
            r = self._sweep(src, base, answer, task)
            return {
                "source_id": other.sample_id,
                "p_base": float(r.base.perplexity[0]),
                "p_patched": _rounded(r.patched.perplexity),
            }

        extra = (
            None
            if self.params.patch_positions == "after_image"
            else {"positions": self.params.patch_positions}
        )
        return self._run(task, "mismatched", self.pairs[:n_pairs], one, extra)

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
        fast = self._sweep(base, base, answer, task)
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


# --------------------------------------------------------------------------- aggregation


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


def chance_overlap(k: int, n: int) -> float:
    """Expected overlap of two independent random ``k``-subsets of ``n`` heads: ``k^2 / n``."""
    return k * k / n


def overlap_p_value(observed: int, k: int, n: int) -> float:
    """``P(overlap >= observed)`` for two independent random ``k``-subsets of ``n`` heads (hypergeometric)."""
    total = math.comb(n, k)
    return sum(math.comb(k, i) * math.comb(n - k, k - i) for i in range(observed, k + 1)) / total


def sparsity(mf: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Share (in %) of the summed positive MF carried by the top ``k`` heads, and the uniform reference.

    Heads with negative MF (patching them moves P away from the source's) carry none of the
    effect, so the shares are over ``max(MF, 0)``; ``uniform@k`` is ``100 k / heads``, what equal
    heads would give.
    """
    pos = np.sort(np.clip(np.nan_to_num(np.asarray(mf, dtype=np.float64).ravel()), 0, None))[::-1]
    total = pos.sum()
    out = {}
    for k in ks:
        out[f"top{k}"] = float(100 * pos[:k].sum() / total) if total > 0 else float("nan")
        out[f"uniform{k}"] = 100 * k / pos.size
    return out


def cumulative_share(mf: np.ndarray) -> np.ndarray:
    """Cumulative share (in %) of the summed positive MF over heads sorted by MF, largest first."""
    pos = np.sort(np.clip(np.nan_to_num(np.asarray(mf, dtype=np.float64).ravel()), 0, None))[::-1]
    total = pos.sum()
    return 100 * np.cumsum(pos) / total if total > 0 else np.full(pos.size, np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (average ranks for ties), NaNs excluded."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    rx, ry = pd.Series(x[ok]).rank().to_numpy(), pd.Series(y[ok]).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def seconds(records: Mapping[str, Mapping]) -> float:
    """Total compute time of a set of records (each record timed when it was made)."""
    return float(sum(r.get("seconds", 0.0) for r in records.values()))
