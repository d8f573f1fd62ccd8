"""Chapter 4, position decoding: where along the path a visual token's row and column can be read.

The paper's claim: CLIP-like towers lose each patch's place in their last layers, yet linear
probes read a visual token's row and column again from the LLM's hidden states, peaking in its
middle layers (the layers are in :data:`vlmloc.paper.POSITION_PEAKS`); the projector keeps the
four corners decodable, anchors from which the LLM can find where the 1-D sequence breaks into
rows. This module runs :mod:`vlmloc.probes` on a split of images, resumably, and turns the test
accuracies into the chapter's summary; its tables and one-sentence findings are in
:mod:`vlmloc.report.ch04`, its figures in :mod:`vlmloc.plots.position`.

The control (the book's methods page, book/methods.md, chapter 4) is the same probe, trained the
same way on the same images, on a copy of the model whose stage under test is randomly
initialised (Hugging Face's own initialisation for the model's config, a fixed seed) while every
other weight stays trained: the stage's input is the trained model's. Its *selectivity*, the
trained probe's accuracy minus the copy's on the same test images, is what the stage's training
adds to the position a linear probe can read. It can fail: a probe that reads anything the
training did not put there (the label through a side channel, image content that gives the
place away, position the architecture carries whatever the weights) scores the same on both.

    images = probe_images(annotations, image_dir)
    train, test = split_images(images, n_train, n_test, seed)
    results, bank = run_probes(vlm, train, test, params, store, config, batch_size=16)
    control, work = run_control(vlm, train, test, params, store, config, seed=0, batch_size=16)
    summary = position_summary(model_id, results, family, control=control)
    require_control(summary, "llm")   # the chapter's claim: the trained LLM adds position
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..adapter import VLM
from ..families import FAMILIES
from ..paper import MODELS, POSITION_PEAKS
from ..probes import (
    ProbeBank,
    ProbeParams,
    image_batches,
    read_sites,
    site_features,
    split_images,
    tower_grid,
)
from ..sites import HiddenSite, hidden_sites
from ..store import ResultsStore, config_key

__all__ = [
    "CONTROL_MIN",
    "CONTROL_Z",
    "ControlFailed",
    "PAPER_GEOMETRY",
    "STAGES",
    "check_copy",
    "control_sites",
    "corner_interior",
    "image_set_key",
    "mean_row_col",
    "paper_peak",
    "paper_scale_cost",
    "position_summary",
    "probe_images",
    "random_init_copy",
    "require_control",
    "run_control",
    "run_probes",
    "selectivity",
    "split_images",
]

STAGES: tuple[str, ...] = ("tower", "projector", "llm")
CHAPTER = "04_position_decoding"
#: The control passes at a stage when its selectivity exceeds this many image-level standard errors
#: and at least CONTROL_MIN points: with many test images a gain of a point or two is "significant",
#: and a probe that reads the label through a side channel on both models sits near the ceiling on
#: both, where the trained model can still add a point or two (the chapter's leak test shows it).
CONTROL_Z = 2.0
CONTROL_MIN = 5.0


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
    # records before "records" held a shuffled-label control and no per-image counts
    config = _record_config(config, params, train, test, batch_size, records="per-image")
    log = store.condition("probes", config)
    bank = ProbeBank.for_model(vlm, params)
    if not log.pending(bank.sites):
        return {r["sample_id"]: r for r in log.records()}, None
    checkpoint = store.directory / f"probes-{config_key(config)}.pt"
    return _fit_and_record(bank, vlm, train, test, log, checkpoint, batch_size, progress), bank


def _record_config(
    config: Mapping[str, Any],
    params: ProbeParams,
    train: Sequence[str],
    test: Sequence[str],
    batch_size: int,
    **extra: Any,
) -> dict[str, Any]:
    """What keys a probe bank's records: the run's config, the probe settings, the split, and ``extra``."""
    return {**config, **params.config(), "batch_size": batch_size, "n_train": len(train), "n_test": len(test),
            **extra}  # fmt: skip


def _fit_and_record(
    bank: ProbeBank,
    model: Any,
    train: Sequence[str],
    test: Sequence[str],
    log: Any,
    checkpoint: Path,
    batch_size: int,
    progress: bool,
) -> dict[str, dict]:
    """Train ``bank`` on ``train``, test it on ``test``, and append each site not yet in ``log``."""
    bank.fit(model, image_batches(train, batch_size), progress=progress, checkpoint=checkpoint)
    results = bank.evaluate(model, image_batches(test, batch_size), progress=progress)
    done = log.done_ids()
    for site, res in results.items():
        if site not in done:
            log.append({"sample_id": site, **res})
    return {s: {"sample_id": s, **r} for s, r in results.items()}


# --------------------------------------------------------------------------- the control: a random stage


class ControlFailed(RuntimeError):
    """A stage's probes read no more position from the trained model than from its random-init copy."""


def _stage_modules(vlm: VLM, stage: str) -> tuple[str, ...]:
    """The modules (dotted paths) that make up ``stage``: what the stage's control re-initialises."""
    s = vlm.family.sites
    if stage == "tower":
        return (s.vision_tower,)
    if stage == "projector":
        return (s.projector,)
    if stage == "llm":
        return (s.language_model, s.lm_head)  # the head too: tied to the input embeddings in some models
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def random_init_copy(vlm: VLM, stage: str, seed: int) -> VLM:
    """A copy of ``vlm`` with ``stage`` randomly initialised and every other weight the trained one.

    The random weights are Hugging Face's own initialisation for the model's config (same widths,
    same layers), drawn on the CPU after ``torch.manual_seed(seed)``, so the copy is the same on
    every machine. What a random stage carries depends on that initialisation: CLIP draws its
    position embeddings at random, InternViT starts them at zero.
    """
    reinit = _stage_modules(vlm, stage)
    torch.manual_seed(seed)
    hf = vlm.family.hf_class._from_config(copy.deepcopy(vlm.config), dtype=vlm.dtype)
    trained = {k: v for k, v in vlm.hf.state_dict().items() if not _under(k, reinit)}
    missing, unexpected = hf.load_state_dict(trained, strict=False)
    left = [k for k in missing if not _under(k, reinit)]
    if left or unexpected:
        raise RuntimeError(
            f"the {stage} copy of {vlm.model_id} does not match its weights: {left or unexpected}"
        )
    return VLM(vlm.spec, hf.eval().to(vlm.device), vlm.processor, vlm.device)


def _feeding_site(vlm: VLM, stage: str) -> str | None:
    """A site upstream of ``stage`` that its copy must leave unchanged (none for the tower: pixels)."""
    return {"tower": None, "projector": f"tower.{vlm.n_vision_layers - 1}", "llm": "llm.input"}[stage]


def check_copy(vlm: VLM, twin: VLM, stage: str, images: Sequence[Image.Image]) -> dict[str, float | None]:
    """Largest |difference| between ``vlm`` and its copy at the stage's input and at its first site.

    The copy is right when its input is the trained model's (0 up to float rounding; ``None`` for
    the tower, whose input is pixels) and its first site differs.
    """
    first, before = control_sites(vlm, stage)[0], _feeding_site(vlm, stage)
    names = [first] + ([before] if before else [])
    (a, lay), (b, _) = read_sites(vlm, images, names), read_sites(twin, images, names)
    side = tower_grid(vlm)

    def gap(n: str) -> float:
        return float((site_features(n, a[n], lay, side) - site_features(n, b[n], lay, side)).abs().max())

    return {"input": gap(before) if before else None, "stage": gap(first)}


def control_sites(vlm: VLM, stage: str) -> list[str]:
    """The sites the control of ``stage`` probes: the stage's own (the LLM input is the projector's output)."""
    names = [s.name for s in hidden_sites(vlm.n_vision_layers, vlm.n_layers)]
    return [n for n in names if _site_key(n)[0] == stage and n != "llm.input"]


def run_control(
    vlm: VLM,
    train: Sequence[str],
    test: Sequence[str],
    params: ProbeParams,
    store: ResultsStore,
    config: Mapping[str, Any],
    seed: int,
    stages: Sequence[str] = STAGES,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """The probes of each stage trained and tested on its random-init copy; resumable like :func:`run_probes`.

    One copy per stage, built, probed and dropped in turn (one extra model in memory at a time).
    Only the stage's sites are read, so the copy's forward stops after that stage. Before a copy
    is probed, :func:`check_copy` on two test images must find its input unchanged and its stage
    changed (else ``RuntimeError``). Returns the records per site and, per stage run now, the
    work it took (forwards, images forwarded, cache hits) and the copy's check.
    """
    config = _record_config(config, params, train, test, batch_size, control="random-init", control_seed=seed)
    log = store.condition("random_init", config)
    records = {r["sample_id"]: r for r in log.records()}
    work: dict[str, dict] = {}
    for stage in stages:
        sites = control_sites(vlm, stage)
        if not log.pending(sites):
            continue
        twin = random_init_copy(vlm, stage, seed)
        check = check_copy(vlm, twin, stage, [Image.open(p).convert("RGB") for p in test[:2]])
        if (check["input"] or 0.0) > 1e-5 or check["stage"] < 1e-4:
            raise RuntimeError(
                f"the random-init {stage} copy is wrong: {check} (input must match, stage differ)"
            )
        bank = ProbeBank.for_model(twin, params, sites=sites)
        checkpoint = store.directory / f"random-init-{stage}-{config_key(config)}.pt"
        records |= _fit_and_record(bank, twin, train, test, log, checkpoint, batch_size, progress)
        work[stage] = {"forwards": bank.forwards, "images_forwarded": bank.images_forwarded,
                       "cache_hits": bank.cache_hits, "check": check,
                       "seconds": {k: round(v, 1) for k, v in bank.seconds.items()}}  # fmt: skip
        del twin, bank
    return records, work


def selectivity(real: Mapping, control: Mapping) -> dict[str, float]:
    """Row/column accuracy (mean of the two) of ``real`` minus ``control``, with an image-level standard error.

    Both were tested on the same images in the same order, so the difference is paired by image:
    the standard error is the ratio estimator's, clustered by image (an image's tokens are not
    independent draws). In percentage points.
    """
    a, b = real["per_image"], control["per_image"]
    if a["n"] != b["n"]:
        raise ValueError("the probe and its control were not tested on the same tokens")
    n = 2.0 * np.asarray(a["n"], float)  # a row and a column prediction per token
    d = np.add(a["row_ok"], a["col_ok"]) - np.add(b["row_ok"], b["col_ok"])
    sel = float(d.sum() / n.sum())
    m = len(n)
    se = math.sqrt(m / (m - 1) * float(((d - sel * n) ** 2).sum())) / float(n.sum()) if m > 1 else math.nan
    return {
        "acc": round(mean_row_col(real), 3),
        "random_init_acc": round(mean_row_col(control), 3),
        "selectivity": round(100.0 * sel, 3),
        "se": round(100.0 * se, 3),
    }


def _control_summary(sites: list[dict], peaks: Mapping, results: Mapping, control: Mapping) -> dict:
    """Per site and per stage (at the stage's peak site) the selectivity, and whether the stage passes."""
    per_site = {s["site"]: selectivity(results[s["site"]], control[s["site"]]) for s in sites
                if s["site"] in control}  # fmt: skip
    stages = {}
    for stage in STAGES:
        site = peaks[stage]["site"]
        if site in per_site:
            c = per_site[site]
            ok = c["selectivity"] > CONTROL_Z * c["se"] and c["selectivity"] >= CONTROL_MIN
            stages[stage] = {"site": site, **c, "ok": bool(ok)}
    return {
        "method": "random-init",
        "what": "the same probe on a copy of the model with the stage randomly initialised, its input trained",
        "metric": "mean of row and column accuracy, %",
        "z": CONTROL_Z,
        "min_points": CONTROL_MIN,
        "sites": per_site,
        "stages": stages,
    }


def require_control(summary: Mapping, stage: str = "llm") -> dict:
    """Raise :class:`ControlFailed` unless ``stage``'s probes beat its random-init copy; return the stage's entry.

    The chapter's claim is that the *trained* LLM rebuilds positions; a probe that reads the
    label, the image content or the architecture's own position signal scores as well on the copy.
    """
    control = summary.get("control") or {}
    entry = control.get("stages", {}).get(stage)
    if entry is None:
        raise ControlFailed(f"no random-init control was run for the {stage} stage; run it with control=True")
    if not entry["ok"]:
        raise ControlFailed(
            f"{summary['model_id']}: at {entry['site']} the probes read {entry['acc']:.1f}% from the trained model "
            f"and {entry['random_init_acc']:.1f}% from a copy whose {stage} is randomly initialised "
            f"(selectivity {entry['selectivity']:+.1f} ± {entry['se']:.1f} points, needed > {CONTROL_Z:g} SE "
            f"and >= {CONTROL_MIN:g} points): "
            f"what the probes read there is not what the {stage}'s training put there"
        )
    return entry


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


def corner_interior(cells: Sequence[Sequence[float]], n_per_cell: float | None = None) -> dict:
    """Mean accuracy of the four corner cells, the other border cells (edges) and the interior of a grid.

    Edges are the fair comparison for the corners: a border row or column is easier for any
    row/column classifier (one neighbour fewer to confuse it with). With ``n_per_cell`` (test
    tokens per cell: every view holds each cell once) each group also gets a binomial standard
    error, ``se``, which ignores that tokens of one image are related.
    """
    a = np.asarray(cells, float)
    border = np.zeros(a.shape, bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    corners = np.zeros(a.shape, bool)
    corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    groups = {"corners": corners, "edges": border & ~corners, "interior": ~border}
    mean = lambda m: round(float(a[m].mean()), 2) if m.any() else None  # noqa: E731
    out: dict[str, Any] = {k: mean(m) for k, m in groups.items()}
    if n_per_cell:
        out["se"] = {k: (round(100 * math.sqrt(out[k] / 100 * (1 - out[k] / 100) / (m.sum() * n_per_cell)), 2)
                         if out[k] is not None else None) for k, m in groups.items()}  # fmt: skip
    return out


def paper_peak(model_id: str, family: str | None = None) -> dict | None:
    """The paper's peak LLM layer for ``model_id``, or for the paper model of the same family."""
    mid = model_id if model_id in POSITION_PEAKS else family and FAMILIES[family].paper_model
    return {"model": MODELS[mid], **POSITION_PEAKS[mid]} if mid in POSITION_PEAKS else None


def position_summary(
    model_id: str, results: Mapping[str, Mapping], family: str, control: Mapping[str, Mapping] | None = None,
    **extra: Any,
) -> dict:  # fmt: skip
    """The chapter's JSON: sites in path order, chance, peaks per stage, corners against edges and interior.

    Accuracies are in percent. ``layer`` is the site's index within its stage: tower and LLM
    layers count from 0 (``llm.i`` is the output of decoder layer ``i``, so ``i + 1`` layers
    have run), the projector is 0 and the LLM input -1. With ``control`` (the random-init
    records of :func:`run_control`) each probed site gets its copy's accuracies and selectivity,
    and ``control`` / ``control_ok`` say per stage whether the peak beats its copy.
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
        per_cell = results[site]["n_tokens"] / (len(cells["cell_acc"]) * len(cells["cell_acc"][0]))
        regions[label] = {
            "site": site,
            **{k: corner_interior(cells[k], per_cell) for k in ("cell_acc", "row_acc", "col_acc")},
        }
    paper = paper_peak(model_id, family)
    if control:
        for s in sites:
            if s["site"] in control:
                c = control[s["site"]]
                s["random_init"] = {k: c[k] for k in ("row_acc", "col_acc", "cell_acc")}
        extra["control"] = _control_summary(sites, peaks, results, control)
        extra["control_ok"] = {k: v["ok"] for k, v in extra["control"]["stages"].items()}
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
        "control": None,
        "control_ok": None,
        **extra,
    }


def run_record(
    train: Sequence[str],
    test: Sequence[str],
    params: ProbeParams,
    config: Mapping[str, Any],
    *,
    batch_size: int,
    batch_mb: float,
    control_work: Mapping[str, Any],
    control_cache_mb: float,
) -> dict:
    """The run's settings for the chapter's JSON: the split's sizes, the probes' training, the
    largest streamed batch (MB), the weights, dtype and data of ``config``, and the control's work."""
    return {
        "n_train": len(train),
        "n_test": len(test),
        "epochs": params.epochs,
        "batch_size": batch_size,
        "lr": params.lr,
        "token_batch": params.token_batch,
        "streamed": params.cache_mb == 0,
        "batch_activation_mb": round(batch_mb, 2),
        "weights": config["model"],
        "dtype": config["dtype"],
        "data": config["data"],
        "seed": params.seed,
        "control_work": control_work,
        "control_cache_mb": control_cache_mb,
    }
