"""Chapter 6's tables, findings and cost model: what the mediation maps say, beside the paper.

The numbers come from :mod:`vlmloc.experiments.ch06_mediation`; the paper's from :mod:`vlmloc.paper`.

The findings are one sentence each, with the model named and the paper's number beside ours.
The cost model counts the FLOPs and the memory of the three ways to get every head's MF on the
real models (exact sweep, exact sweep with the prefix reused, attribution patching), so the
chapter can say what a run costs on one GPU before anyone starts it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..experiments.ch06_mediation import (
    CHAPTER,
    MFResult,
    chance_overlap,
    overlap,
    overlap_p_value,
    sparsity,
    top_heads,
)
from ..paper import (
    INTERNVL_8B,
    LLAVA_7B,
    MEDIATION_LAYERS,
    MEDIATION_PAIRS,
    MEDIATION_TOP10_OVERLAP,
    MODELS,
    N_HEADS,
    N_LAYERS,
)
from ..registry import get_spec
from .common import chapter_runs

__all__ = [
    "GPU",
    "H100",
    "REAL_GEOMETRIES",
    "Geometry",
    "cost_table",
    "finding_attribution",
    "finding_controls",
    "finding_map",
    "finding_overlap",
    "finding_sparsity",
    "geometry_of",
    "method_costs",
    "paper_band",
    "paper_layers",
    "paper_model",
    "results_table",
    "top_table",
    "toy_cost_table",
]


# --------------------------------------------------------------------------- the paper's layers


def paper_model(family: str) -> str | None:
    """The paper model of a model family whose mediation layers the paper reports, if any."""
    return next((m for m in MEDIATION_LAYERS if get_spec(m).family == family), None)


def paper_layers(family: str) -> tuple[str, tuple[int, int], int] | None:
    """``(paper model name, (first, last) layer, the paper model's layers)`` for a model family."""
    model_id = paper_model(family)
    if model_id is None:
        return None
    return MODELS[model_id], MEDIATION_LAYERS[model_id], N_LAYERS[model_id]


def paper_band(family: str, n_layers: int) -> list[int]:
    """This model's layers whose share of the depth overlaps the paper's band for the family.

    Layer ``l`` of ``L`` spans depth ``[l / L, (l + 1) / L)``; the paper's layers ``a..b`` of
    ``L'`` span ``[a / L', (b + 1) / L')``. On the paper's own model this gives its layers back.
    """
    ref = paper_layers(family)
    if ref is None:
        return []
    _, (a, b), total = ref
    lo, hi = a / total, (b + 1) / total
    return [la for la in range(n_layers) if la / n_layers < hi and (la + 1) / n_layers > lo]


# --------------------------------------------------------------------------- tables


def top_table(results: Mapping[str, MFResult], k: int = 10) -> pd.DataFrame:
    """The top-``k`` heads of each task with their MF ± standard error over pairs."""
    rows = []
    for task, res in results.items():
        se = res.se
        for rank, (la, h) in enumerate(top_heads(res.mean, k), start=1):
            rows.append(
                {"task": task, "rank": rank, "head": f"L{la}.H{h}", "MF": res.mean[la, h], "± se": se[la, h]}
            )
    table = pd.DataFrame(rows)
    return (
        table.pivot(index="rank", columns="task", values=["head", "MF", "± se"])
        .swaplevel(axis=1)
        .sort_index(axis=1, level=0, sort_remaining=False)
    )


# --------------------------------------------------------------------------- findings


def _heads(heads: Sequence[Sequence[int]]) -> str:
    return ", ".join(f"L{la}.H{h}" for la, h in heads)


def finding_map(model_id: str, family: str, task: str, res: MFResult, k: int = 10) -> str:
    """Where the task's top heads sit, against the paper's layers scaled to this model's depth."""
    n_layers, n_heads = res.mean.shape
    if not res.used:
        return f"No {task} pair of {model_id} had a usable denominator, so there is no MF map."
    top = top_heads(res.mean, k)
    best = top[0]
    band = paper_band(family, n_layers)
    ref = paper_layers(family)
    in_band = sum(la in band for la, _ in top)
    layers = sorted({la for la, _ in top})
    text = (
        f"For {task} on {model_id} ({len(res.used)} pairs) the largest mean MF is "
        f"{res.mean[best[0], best[1]]:.2f} ± {res.se[best[0], best[1]]:.2f} at L{best[0]}.H{best[1]}; "
        f"the top-{k} heads sit in layers {', '.join(map(str, layers))}" + (";" if ref and band else "")
    )
    if ref and band:
        name, (a, b), total = ref
        share = 100 * len(band) / n_layers
        text += (
            f" {in_band} of them in layers {band[0]}-{band[-1]} (the paper's band scaled to this depth, "
            f"{share:.0f}% of the heads); paper: {name}, layers {a}-{b} of {total}."
        )
    else:
        text += "."
    return text


def finding_overlap(
    model_id: str, family: str, tops: Mapping[str, Sequence[Sequence[int]]], n_heads_total: int
) -> str:
    """How many heads the two tasks' top-k lists share, against chance and the paper's 1-2."""
    a, b = tops["classification"], tops["localization"]
    k = len(a)
    shared = overlap(a, b)
    p = overlap_p_value(len(shared), k, n_heads_total)
    lo, hi = MEDIATION_TOP10_OVERLAP
    ref = paper_model(family)
    paper = f"paper: {lo}-{hi} shared"
    if ref is not None:
        total = N_LAYERS[ref] * N_HEADS[ref]
        paper += f" of {MODELS[ref]}'s {total:,} heads, where chance gives {chance_overlap(k, total):.1f}"
    return (
        f"The top-{k} heads of classification and localization on {model_id} share {len(shared)}"
        + (f" ({_heads(shared)})" if shared else "")
        + f", where two random sets of {k} of its {n_heads_total} heads share {chance_overlap(k, n_heads_total):.1f} "
        f"on average (P(overlap >= {len(shared)}) = {p:.2f}); {paper}."
    )


def finding_sparsity(model_id: str, results: Mapping[str, MFResult]) -> str:
    """The share of the summed positive MF carried by the top 1, 5 and 10 heads of each task."""
    parts = []
    uniform = None
    for task, res in results.items():
        s = sparsity(res.mean)
        uniform = s
        parts.append(f"{s['top1']:.0f}%, {s['top5']:.0f}% and {s['top10']:.0f}% for {task}")
    assert uniform is not None
    return (
        f"On {model_id} the top 1, 5 and 10 heads carry {' and '.join(parts)} of the summed positive MF, "
        f"against {uniform['uniform1']:.1f}%, {uniform['uniform5']:.1f}% and {uniform['uniform10']:.1f}% "
        "if every head carried the same; paper: a few heads carry almost all of the causal effect."
    )


def finding_controls(
    model_id: str,
    null: Mapping[str, Mapping],
    floor: Mapping[str, MFResult],
    results: Mapping[str, MFResult],
    k: int = 10,
) -> str:
    """Base into base is a null edit; the mismatched source gives the noise floor the top heads must clear."""
    exact = all(n["loop_exact"] for n in null.values())
    worst = max(n["batched_max_abs_mf"] for n in null.values())
    parts = []
    for task, res in results.items():
        f = floor.get(task)
        if f is None or not f.used:
            continue
        top = top_heads(res.mean, k)
        ours = np.mean([res.mean[la, h] for la, h in top])
        theirs = np.mean([f.mean[la, h] for la, h in top])
        parts.append(
            f"{task}: the top-{k} heads average MF {ours:.2f} with the real source and {theirs:.2f} with a "
            f"mismatched one ({len(f.used)} pairs; largest mismatched MF of any head {np.nanmax(f.mean):.2f})"
        )
    return (
        f"Patching {model_id}'s base run into itself gives MF = 0 "
        + ("exactly with one forward per head" if exact else "only to rounding with one forward per head")
        + f" (largest |MF| {worst:.1e} in the batched sweep); "
        + ("; ".join(parts) if parts else "no mismatched pair was found")
        + ". The paper reports no such control."
    )


def finding_attribution(model_id: str, stats: Mapping[str, Mapping], seconds: Mapping[str, float]) -> str:
    """How well the first-order screen ranks the heads, and what it costs."""
    parts = [
        f"Spearman {s['spearman']:.2f} and {s['top10_overlap']}/10 shared top heads for {task}"
        for task, s in stats.items()
    ]
    ratio = seconds["exact"] / seconds["attribution"] if seconds["attribution"] > 0 else float("nan")
    return (
        f"Attribution patching ranks {model_id}'s heads like the exact sweep with {' and '.join(parts)}, "
        f"in {seconds['attribution']:.0f} s against {seconds['exact']:.0f} s ({ratio:.1f}x faster here; the "
        "ratio grows with the number of heads); the paper uses the exact sweep only."
    )


# --------------------------------------------------------------------------- cost model


@dataclass(frozen=True)
class Geometry:
    """What a sweep's cost depends on: the decoder's shape, the tokens and the vision tower's FLOPs.

    ``prefix`` counts the tokens up to the last image token (where patches start), ``suffix`` the
    tokens after it per task (the rest of the prompt plus the teacher-forced answer).
    """

    name: str
    layers: int
    heads: int
    kv_heads: int
    hidden: int
    head_dim: int
    ffn: int
    vocab: int
    prefix: int
    suffix: Mapping[str, int]
    vision_flops: float  # vision tower + projector, one image (all its views)
    weight_bytes: float
    dtype_bytes: int = 2

    @property
    def layer_params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return attn + 3 * self.hidden * self.ffn

    @property
    def n_heads_total(self) -> int:
        return self.layers * self.heads

    def decoder_flops(self, tokens: int, past: int, layers: int | None = None, logits: bool = True) -> float:
        """Forward FLOPs of ``tokens`` new tokens after ``past`` cached ones through ``layers`` layers."""
        layers = self.layers if layers is None else layers
        keys = tokens * past + tokens * (tokens + 1) / 2  # causal: token t attends to past + t + 1 keys
        per_layer = 2 * self.layer_params * tokens + 4 * self.heads * self.head_dim * keys
        return layers * per_layer + (2 * self.hidden * self.vocab * tokens if logits else 0.0)

    def kv_bytes(self, tokens: int) -> float:
        return 2 * self.layers * tokens * self.kv_heads * self.head_dim * self.dtype_bytes

    def act_bytes(self, tokens: int) -> float:
        """Peak working memory of one row's forward without gradients (logits, MLP, residual)."""
        return tokens * (self.vocab + 2 * self.ffn + 6 * self.hidden) * self.dtype_bytes


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float
    peak_tflops: float  # dense half precision
    bandwidth_tbs: float
    efficiency: float = 0.4  # share of the peak a well-batched forward sustains
    overhead_s: float = 0.05  # fixed cost of one traced forward (Python, nnsight, kernel launches)

    def seconds(self, flops: float, bytes_moved: float, forwards: int = 0) -> float:
        """Roofline (compute-bound or memory-bound, whichever is slower) plus a fixed cost per forward."""
        compute = flops / (self.efficiency * self.peak_tflops * 1e12)
        return max(compute, bytes_moved / (self.bandwidth_tbs * 1e12)) + forwards * self.overhead_s


H100 = GPU("H100 80GB", 80, 989, 3.35)


def _tower_flops(layers: int, tokens: int, hidden: int, ffn: int, views: int) -> float:
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * tokens * tokens * hidden
    return views * layers * per_layer


#: LLaVA-1.5-7B and InternVL-3.5-8B from their published configs. Token counts: LLaVA's 576
#: visual tokens after ~5 chat tokens; InternVL's 12 tiles + thumbnail of a 640x480 COCO image
#: (3,328 tokens) after ~5. Suffixes: the rest of the prompt plus the answer, counted for a short
#: class name (localization: ~26 prompt + ~24 box tokens for LLaVA, ~28 + ~28 for InternVL).
REAL_GEOMETRIES: dict[str, Geometry] = {
    LLAVA_7B: Geometry(
        MODELS[LLAVA_7B], layers=N_LAYERS[LLAVA_7B], heads=N_HEADS[LLAVA_7B], kv_heads=32, hidden=4096, head_dim=128, ffn=11008, vocab=32064,
        prefix=581, suffix={"classification": 15, "localization": 50},
        vision_flops=_tower_flops(24, 577, 1024, 4096, 1) + 2 * 576 * (1024 * 4096 + 4096 * 4096),
        weight_bytes=7.06e9 * 2,
    ),
    INTERNVL_8B: Geometry(
        MODELS[INTERNVL_8B], layers=N_LAYERS[INTERNVL_8B], heads=N_HEADS[INTERNVL_8B], kv_heads=8, hidden=4096, head_dim=128, ffn=12288, vocab=151936,
        prefix=3333, suffix={"classification": 17, "localization": 56},
        vision_flops=_tower_flops(24, 1025, 1024, 4096, 13) + 2 * 3328 * (4096 * 4096 * 2),
        weight_bytes=8.5e9 * 2,
    ),
}  # fmt: skip


def geometry_of(vlm: Any, prefix: int, suffix: Mapping[str, int], views: int = 1) -> Geometry:
    """A loaded model's geometry (from its config) with token counts measured on its inputs."""
    tc, vc = vlm.config.text_config, vlm.config.vision_config
    n_params = sum(p.numel() for p in vlm.hf.parameters())
    side = int(vc.image_size[0] if isinstance(vc.image_size, list | tuple) else vc.image_size)
    patch = int(vc.patch_size[0] if isinstance(vc.patch_size, list | tuple) else vc.patch_size)
    tokens = (side // patch) ** 2 + 1
    return Geometry(
        vlm.model_id, layers=vlm.n_layers, heads=vlm.n_heads,
        kv_heads=int(getattr(tc, "num_key_value_heads", None) or vlm.n_heads), hidden=int(tc.hidden_size),
        head_dim=vlm.head_dim, ffn=int(tc.intermediate_size), vocab=int(tc.vocab_size), prefix=prefix,
        suffix=dict(suffix),
        vision_flops=_tower_flops(int(vc.num_hidden_layers), tokens, int(vc.hidden_size), int(vc.intermediate_size), views),
        weight_bytes=n_params * next(vlm.hf.parameters()).element_size(),
        dtype_bytes=next(vlm.hf.parameters()).element_size(),
    )  # fmt: skip


METHODS = ("exact sweep", "exact, prefix reused", "attribution patching")


def method_costs(
    g: Geometry,
    gpu: GPU | None,
    n_pairs: int = MEDIATION_PAIRS,
    tasks: Sequence[str] = ("classification", "localization"),
) -> list[dict]:
    """FLOPs, batch and (with a ``gpu``) estimated time of the three methods for ``n_pairs`` pairs x ``tasks``.

    - *exact sweep*: one full forward per head (vision tower included), rows batched as memory allows;
    - *exact, prefix reused*: the image prefix once, then per layer ``l`` its heads as rows of a
      suffix-only forward through layers ``l..L-1`` (:func:`vlmloc.sweeps.head_patch_scores`; its
      batches never mix layers, so at most ``heads`` rows; the prefix cache is shared, but counted per
      row: each layer's concatenation of prefix and suffix keys materializes it per row);
    - *attribution patching*: the base prefix, then the base suffix forward and backward (~3
      suffix forwards), batch 1.

    Every method also runs the source forward once per pair and task (the values patched in).
    """
    free = (gpu.memory_gb * 1e9 * 0.9 - g.weight_bytes) if gpu else 1e30  # no GPU: memory does not bind
    acc = {m: {"flops": 0.0, "bytes": 0.0, "batch": 1, "forwards": 0} for m in METHODS}
    for task in tasks:
        s = g.suffix[task]
        total = g.prefix + s
        full = g.vision_flops + g.decoder_flops(total, 0)
        prefix = g.vision_flops + g.decoder_flops(g.prefix, 0, logits=False)
        # exact: one full forward per head
        b = max(1, min(g.n_heads_total, int(free // (g.kv_bytes(total) + g.act_bytes(total)))))
        n_fwd = math.ceil(g.n_heads_total / b)
        e = acc["exact sweep"]
        e["flops"] += n_pairs * full * (g.n_heads_total + 1)
        e["bytes"] += n_pairs * (n_fwd + 1) * (g.weight_bytes + b * g.kv_bytes(total))
        e["forwards"] += n_pairs * (n_fwd + 1)
        e["batch"] = b
        # prefix reused, the layers below the patched one skipped
        b = max(1, min(g.heads, int(free // (g.kv_bytes(total) + g.act_bytes(s)))))
        rows = sum(g.decoder_flops(s, g.prefix, g.layers - la) for la in range(g.layers))
        e = acc["exact, prefix reused"]
        e["flops"] += n_pairs * (full + prefix + g.decoder_flops(s, g.prefix) + g.heads * rows)
        # per batch: the weights of the layers it runs (half on average) and the prefix cache copied per row
        e["bytes"] += (
            n_pairs * g.layers * math.ceil(g.heads / b) * (g.weight_bytes / 2 + 3 * b * g.kv_bytes(g.prefix))
        )
        e["forwards"] += n_pairs * (g.layers * math.ceil(g.heads / b) + 3)
        e["batch"] = b
        # attribution patching
        e = acc["attribution patching"]
        e["flops"] += n_pairs * (full + prefix + 3 * g.decoder_flops(s, g.prefix))
        e["bytes"] += n_pairs * 5 * (g.weight_bytes + g.kv_bytes(total))
        e["forwards"] += n_pairs * 3
    out = []
    for method, e in acc.items():
        row = {
            "model": g.name,
            "method": method,
            "TFLOP": e["flops"] / 1e12,
            "batch": e["batch"],
            "forwards": e["forwards"],
        }
        if gpu is not None:
            row["GPU hours"] = gpu.seconds(e["flops"], e["bytes"], e["forwards"]) / 3600
        out.append(row)
    return out


def cost_table(gpu: GPU = H100, n_pairs: int = MEDIATION_PAIRS) -> pd.DataFrame:
    """Estimated cost of each method for ``n_pairs`` pairs x 2 tasks on the real models, one ``gpu``."""
    rows = [r for g in REAL_GEOMETRIES.values() for r in method_costs(g, gpu, n_pairs)]
    return pd.DataFrame(rows).set_index(["model", "method"])


def toy_cost_table(toy: Geometry, measured: Mapping[str, float], n_pairs: int, batch: int) -> pd.DataFrame:
    """The toy's FLOPs per method beside the seconds this run measured (CPU), and the rate they imply."""
    rows = []
    for r in method_costs(toy, None, n_pairs):
        sec = measured.get(r["method"])
        # as run here: the plain sweep was timed one head per forward, the prefix-reusing one batches a layer
        r["batch"] = min(batch, toy.heads) if "prefix" in r["method"] else 1
        r["measured s"] = sec
        r["GFLOP/s"] = r["TFLOP"] * 1e3 / sec if sec else float("nan")
        rows.append(r)
    return pd.DataFrame(rows).set_index(["model", "method"])


# --------------------------------------------------------------------------- the results page


def results_table(collected: Mapping[str, Mapping[str, dict]]) -> pd.DataFrame:
    """For the results page: one row per model that ran chapter 6, the paper's models beside them.

    ``collected`` is :func:`vlmloc.report.summary.collect_summaries`'s ``{model: {chapter: summary}}``.
    """
    rows = []
    for model, s in chapter_runs(collected, CHAPTER):
        band = s.get("paper_band") or []
        row = {"model": model, "source": "this book", "heads": s["n_layers"] * s["n_heads"]}
        for task, short in (("classification", "cls"), ("localization", "loc")):
            top = s["top10"][task]
            row[f"top-10 layers ({short})"] = ", ".join(str(la) for la in sorted({la for la, _ in top}))
            row[f"in band ({short})"] = sum(la in band for la, _ in top)
            row[f"top-10 share % ({short})"] = round(s["sparsity"][task]["top10"], 1)
            row[f"attribution rho ({short})"] = round(s["attribution"][task]["spearman"], 2)
            row[f"pairs ({short})"] = s["n_pairs"][task]["used"]
        row["top-10 overlap"] = s["overlap"]
        row["chance"] = round(s["overlap_chance"], 2)
        row["paper band"] = f"{band[0]}-{band[-1]}" if band else ""
        rows.append(row)
    lo, hi = MEDIATION_TOP10_OVERLAP
    for model_id, (first, last) in MEDIATION_LAYERS.items():
        n = N_LAYERS[model_id] * N_HEADS[model_id]
        rows.append({"model": MODELS[model_id], "source": "paper", "heads": n, "top-10 overlap": f"{lo}-{hi}",
                     "chance": round(chance_overlap(10, n), 2), "paper band": f"{first}-{last}"})  # fmt: skip
    return pd.DataFrame(rows).set_index(["model", "source"])
