"""Chapter 4, position decoding: where along the path a visual token's row and column can be read.

The paper's claim: CLIP-like towers lose each patch's place in their last layers, yet linear
probes read a visual token's row and column again from the LLM's hidden states, peaking in its
middle layers (LLaVA-1.5-7B layer 12 of 32, InternVL-3.5 layer 7 of 36); the projector keeps
the four corners decodable, anchors from which the LLM can find where the 1-D sequence breaks
into rows. This module runs :mod:`vlmloc.probes` on a split of images, resumably, and turns the
test accuracies into the chapter's summary; its tables and one-sentence findings are in
:mod:`vlmloc.report.ch04`, its figures in :mod:`vlmloc.plots.position`.

    images = probe_images(annotations, image_dir)
    train, test = split_images(images, n_train, n_test, seed)
    results = run_probes(vlm, train, test, params, store, config, batch_size=16)
    summary = position_summary(model_id, results, n_train=..., n_test=...)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..adapter import VLM
from ..paper import MODELS, POSITION_PEAKS
from ..probes import ProbeBank, ProbeParams, image_batches, split_images
from ..sites import HiddenSite
from ..store import ResultsStore, config_key

__all__ = [
    "PAPER_GEOMETRY",
    "STAGES",
    "paper_scale_cost",
    "corner_interior",
    "image_set_key",
    "mean_row_col",
    "paper_peak",
    "position_summary",
    "probe_images",
    "run_probes",
    "split_images",
]

STAGES: tuple[str, ...] = ("tower", "projector", "llm")
CHAPTER = "04_position_decoding"


def probe_images(annotations: str | Path, images: str | Path) -> list[str]:
    """Every image a COCO-format file lists that exists in ``images`` (probes need images, not objects)."""
    raw = json.loads(Path(annotations).read_text())
    folder = Path(images)
    paths = sorted({str(folder / r["file_name"]) for r in raw.get("images", [])})
    return [p for p in paths if Path(p).is_file()]


def image_set_key(paths: Sequence[str]) -> str:
    """A short fingerprint of an image list (order included), for the records' configuration."""
    import hashlib

    h = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:12]
    return f"{len(paths)}:{h}"


def run_probes(
    vlm: VLM,
    train: Sequence[str],
    test: Sequence[str],
    params: ProbeParams,
    store: ResultsStore,
    config: Mapping[str, Any],
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[dict[str, dict], ProbeBank | None]:
    """Train every site's probe on ``train`` and test it on ``test``; resumable.

    The bank is checkpointed after each epoch next to the records, and each site's test result is
    one record of the ``probes`` condition, so a rerun skips finished work: with every site
    recorded it returns the records without running the model (and ``None`` as the bank).
    """
    config = {
        **config,
        **params.config(),
        "batch_size": batch_size,
        "n_train": len(train),
        "n_test": len(test),
    }
    log = store.condition("probes", config)
    bank = ProbeBank.for_model(vlm, params)
    if not log.pending(bank.sites):
        return {r["sample_id"]: r for r in log.records()}, None
    checkpoint = store.directory / f"probes-{config_key(config)}.pt"
    bank.fit(vlm, image_batches(train, batch_size), progress=progress, checkpoint=checkpoint)
    results = bank.evaluate(vlm, image_batches(test, batch_size), progress=progress)
    done = log.done_ids()
    for site, res in results.items():
        if site not in done:
            log.append({"sample_id": site, **res})
    return {s: {"sample_id": s, **r} for s, r in results.items()}, bank


# --------------------------------------------------------------------------- cost at the paper's scale

#: The paper's models as their released configs describe them, for the cost table (no model is
#: loaded for it): vision layers, tower tokens per view (CLS included) and width; decoder layers,
#: visual tokens per view and width; parameters; views of a typical 4:3 photo (InternVL: 12 tiles
#: and the thumbnail at ``max_patches = 12``).
PAPER_GEOMETRY: dict[str, dict[str, float]] = {
    "llava-hf/llava-1.5-7b-hf": dict(vision_layers=24, tower_tokens=577, vision_width=1024, layers=32,
                                     view_tokens=576, width=4096, params=7.06e9, views=1, text_tokens=40),
    "OpenGVLab/InternVL3_5-8B-HF": dict(vision_layers=24, tower_tokens=1025, vision_width=1024, layers=36,
                                        view_tokens=256, width=4096, params=8.5e9, views=13, text_tokens=40),
}  # fmt: skip


def paper_scale_cost(
    model_id: str, n_train: int = 50_000, n_test: int = 10_000, epochs: int = 10, batch_size: int = 16,
    bytes_per_value: int = 2, flops_per_s: float = 150e12,
) -> dict[str, float]:  # fmt: skip
    """What streaming probes cost on a paper model: activations per batch, per layer over the data, time.

    Time counts the forwards only (``epochs * n_train + n_test`` images, ``2 * params`` FLOPs per
    token at ``flops_per_s`` sustained); the probes' own steps add a few percent.
    """
    g = PAPER_GEOMETRY[model_id]
    views = g["views"]
    tower = g["vision_layers"] * views * g["tower_tokens"] * g["vision_width"]
    llm = (g["layers"] + 2) * views * g["view_tokens"] * g["width"]  # projector, LLM input, layers
    per_image = (tower + llm) * bytes_per_value
    layer_all = views * g["view_tokens"] * g["width"] * bytes_per_value * n_train
    tokens = views * g["view_tokens"] + g["text_tokens"]
    forwards = epochs * n_train + n_test
    seconds = forwards * 2 * g["params"] * tokens / flops_per_s
    return {
        "batch_gb": per_image * batch_size / 1e9,
        "one_llm_layer_all_train_gb": layer_all / 1e9,
        "all_sites_all_train_tb": per_image * n_train / 1e12,
        "forwards": forwards,
        "hours": seconds / 3600,
    }


# --------------------------------------------------------------------------- summary


def _site_key(name: str) -> tuple[str, int]:
    s = HiddenSite.parse(name)
    return s.stage, s.layer


def mean_row_col(r: Mapping) -> float:
    """The mean of a site's row and column accuracy: the one number the path is read by."""
    return (r["row_acc"] + r["col_acc"]) / 2


def corner_interior(cells: Sequence[Sequence[float]]) -> dict[str, float]:
    """Mean accuracy of the four corner cells, the other border cells and the interior of a grid."""
    a = np.asarray(cells, float)
    border = np.zeros(a.shape, bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    corners = np.zeros(a.shape, bool)
    corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    mean = lambda m: round(float(a[m].mean()), 2) if m.any() else None  # noqa: E731
    return {"corners": mean(corners), "edges": mean(border & ~corners), "interior": mean(~border)}


def paper_peak(model_id: str, family: str | None = None) -> dict | None:
    """The paper's peak LLM layer for ``model_id``, or for the paper model of the same family."""
    if model_id in POSITION_PEAKS:
        return {"model": MODELS[model_id], **POSITION_PEAKS[model_id]}
    for mid, peak in POSITION_PEAKS.items():
        if family and family in mid.lower():
            return {"model": MODELS[mid], **peak}
    return None


def position_summary(model_id: str, results: Mapping[str, Mapping], family: str, **extra: Any) -> dict:
    """The chapter's JSON: sites in path order, chance, peaks per stage, corners against the interior.

    Accuracies are in percent. ``layer`` is the site's index within its stage: tower and LLM
    layers count from 0 (``llm.i`` is the output of decoder layer ``i``, so ``i + 1`` layers
    have run), the projector is 0 and the LLM input -1.
    """
    names = sorted(results, key=lambda n: HiddenSite.parse(n).order)
    sites = []
    for n in names:
        r = results[n]
        stage, layer = _site_key(n)
        sites.append(
            {
                "site": n,
                "stage": stage,
                "layer": layer,
                "row_acc": r["row_acc"],
                "col_acc": r["col_acc"],
                "cell_acc": r["cell_acc"],
                "grid": r["grid"],
                "control": r["control"],
                "by_kind": r.get("by_kind", {}),
                "n_tokens": r["n_tokens"],
            }
        )
    token_grid = results["projector"]["grid"]
    tower_grid = next((s["grid"] for s in sites if s["stage"] == "tower"), token_grid)
    pct = lambda n: round(100.0 / n, 3)  # noqa: E731
    chance = {
        "row": pct(token_grid[0]),
        "col": pct(token_grid[1]),
        "cell": pct(token_grid[0] * token_grid[1]),
    }
    tower_chance = {
        "row": pct(tower_grid[0]),
        "col": pct(tower_grid[1]),
        "cell": pct(tower_grid[0] * tower_grid[1]),
    }
    peaks = {}
    for stage in STAGES:
        cand = [s for s in sites if s["stage"] == stage and not (stage == "llm" and s["layer"] < 0)]
        best = max(cand, key=mean_row_col)
        peaks[stage] = {"site": best["site"], "layer": best["layer"], "row_acc": best["row_acc"],
                        "col_acc": best["col_acc"], "cell_acc": best["cell_acc"]}  # fmt: skip
    n_llm = sum(s["stage"] == "llm" and s["layer"] >= 0 for s in sites)
    peaks["llm"]["depth"] = round((peaks["llm"]["layer"] + 1) / n_llm, 3)
    regions = {}
    for label, site in (("projector", "projector"), ("best_llm", peaks["llm"]["site"])):
        cells = results[site]["cells"]
        regions[label] = {
            "site": site,
            **{k: corner_interior(cells[k]) for k in ("cell_acc", "row_acc", "col_acc")},
        }
    paper = paper_peak(model_id, family)
    return {
        "model_id": model_id,
        "sites": sites,
        "chance": chance,
        "tower_chance": tower_chance,
        "token_grid": token_grid,
        "tower_grid": tower_grid,
        "peaks": peaks,
        "corners": regions,
        "paper_peak": paper,
        **extra,
    }
