"""The object-removal control set: originals paired with the same image with the target inpainted away.

Paper: inpaint the target with LaMa and keep the pairs where the model names the class on the
original but no longer on the inpainted image (its counts for LLaVA-1.5-7B are
:data:`vlmloc.paper.CONTROL_SET`). Such pairs show that the model's answer rests on the object's own pixels, not on
context, and they are the source/base pairs of causal mediation analysis later in the book.

Layout under ``<results_dir>/<model>/control_set/``::

    images/<image_id>_<ann_id>.png     one inpainted image per candidate
    pairs.json                          the manifest (see :func:`write_manifest`)

Inpainted images keep the original's size, so both images of a pair have the same token layout.
A kept pair, read back as a :class:`MediationPair`, is one source/base pair of chapter 6::

    pairs = mediation_pairs(results_dir, model_id, n_pairs)
    src_enc, base_enc, answer = pairs[0].encode(vlm, "localization")
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .adapter import VLM
from .data import Sample
from .evaluate import run_condition
from .inpaint import inpaint, inpaint_method
from .store import ResultsStore, model_dirname

__all__ = [
    "CONTROL_SET_CHAPTER",
    "ControlSet",
    "MediationPair",
    "build_control_set",
    "control_dir",
    "control_set_command",
    "load_pairs",
    "mediation_pairs",
    "preview_pairs",
    "write_manifest",
]

#: The chapter that builds the control set (its classification baseline says which objects flip).
CONTROL_SET_CHAPTER = "01_data_and_baselines"

Inpainter = Callable[..., tuple[Any, str]]


@dataclasses.dataclass
class ControlSet:
    """The result of :func:`build_control_set`; ``pairs`` are the manifest's entries (absolute paths)."""

    pairs: list[dict]
    method: str
    manifest: Path
    records: list[dict]  # classification records on the inpainted images

    @property
    def n_candidates(self) -> int:
        """Samples classified correctly on the original: the ones that were inpainted."""
        return len(self.pairs)

    @property
    def kept(self) -> list[dict]:
        return [p for p in self.pairs if p["kept"]]

    @property
    def n_kept(self) -> int:
        return len(self.kept)

    @property
    def n_images(self) -> int:
        """Distinct images among the kept pairs (the paper counts annotations and images)."""
        return len({p["image_id"] for p in self.kept})

    def summary(self) -> dict:
        return {
            "n_candidates": self.n_candidates,
            "n_kept": self.n_kept,
            "n_images": self.n_images,
            "method": self.method,
            "path": str(self.manifest),
        }


def control_dir(results_dir: str | Path, model_id: str) -> Path:
    """``<results_dir>/<model>/control_set``."""
    return Path(results_dir) / model_dirname(model_id) / "control_set"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(path: str | Path, pairs: Sequence[Mapping], info: Mapping) -> Path:
    """Write the COCO-like manifest: ``{"info", "categories", "pairs"}``.

    Each pair holds ``sample_id``, ``image_id``, ``ann_id``, ``category``, ``category_id``,
    ``box`` (x0, y0, x1, y1 in original pixels), ``width``, ``height``, ``original`` (path of the
    original image), ``inpainted`` (path relative to the manifest's folder) and ``kept``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cats = sorted({(p["category_id"], p["category"]) for p in pairs})
    rows = []
    for p in pairs:
        row = dict(p)
        inp = Path(row["inpainted"])
        if inp.is_absolute():
            try:
                inp = inp.relative_to(path.parent.resolve())
            except ValueError:
                pass
        row["inpainted"] = inp.as_posix()
        row["original"] = str(row["original"])
        rows.append(row)
    doc = {
        "info": dict(info),
        "categories": [{"id": i, "name": n} for i, n in cats],
        "pairs": rows,
    }
    _atomic_write(path, json.dumps(doc, indent=1) + "\n")
    return path


def load_pairs(manifest: str | Path, kept_only: bool = True) -> list[dict]:
    """The pairs of a manifest with absolute image paths; by default only the kept ones."""
    manifest = Path(manifest)
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no control-set manifest at {manifest}; run chapter {CONTROL_SET_CHAPTER} for this model first"
        ) from None
    out = []
    for p in doc["pairs"]:
        if kept_only and not p["kept"]:
            continue
        q = dict(p)
        q["inpainted"] = str((manifest.parent / p["inpainted"]).resolve())
        out.append(q)
    return out


def _pair(sample: Sample, inpainted: Path, kept: bool) -> dict:
    return {
        "sample_id": sample.sample_id,
        "image_id": sample.image_id,
        "ann_id": sample.ann_id,
        "category": sample.category,
        "category_id": sample.category_id,
        "box": [round(float(c), 2) for c in sample.box],
        "width": sample.width,
        "height": sample.height,
        "original": str(Path(sample.image_path).resolve()),
        "inpainted": str(inpainted),
        "kept": kept,
    }


def build_control_set(
    vlm: VLM,
    samples: Sequence[Sample],
    original_records: Sequence[Mapping],
    store: ResultsStore,
    results_dir: str | Path,
    config: Mapping,
    batch_size: int = 8,
    dilate: int = 3,
    inpainter: Inpainter = inpaint,
    progress: bool = False,
) -> ControlSet:
    """Inpaint every sample classified correctly on the original, classify again, keep the flips.

    ``original_records`` are the classification records of ``samples`` on the original images
    (from :func:`vlmloc.evaluate.run_condition`). Inpainted images are written once and reused on
    a rerun made with the same method; their classification goes to the store's condition
    ``classification-inpainted`` (resumable like every condition). Returns the pairs of all
    candidates with their ``kept`` flag and writes the manifest ``pairs.json``.
    """
    correct = {r["sample_id"] for r in original_records if r.get("correct")}
    candidates = [s for s in samples if s.sample_id in correct]
    out_dir = control_dir(results_dir, vlm.model_id)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "pairs.json"
    method = inpaint_method() if inpainter is inpaint else getattr(inpainter, "method", "custom")
    previous = {}
    if manifest.is_file():
        old = json.loads(manifest.read_text(encoding="utf-8"))
        if old.get("info", {}).get("method") == method and old["info"].get("dilate") == dilate:
            previous = {p["sample_id"]: p for p in old.get("pairs", [])}

    inpainted: list[Sample] = []
    methods = set()
    for s in candidates:
        path = img_dir / f"{s.image_id}_{s.ann_id}.png"
        if not (s.sample_id in previous and path.is_file()):
            image, used = inpainter(s.load_image(), s.mask(), dilate=dilate)
            image.save(path)
            methods.add(used)
        inpainted.append(dataclasses.replace(s, image_path=path))
    if methods:
        method = methods.pop() if len(methods) == 1 else "+".join(sorted(methods))

    records = run_condition(
        vlm,
        inpainted,
        "classification",
        store,
        "inpainted",
        {**config, "inpaint": method, "dilate": dilate},
        batch_size=batch_size,
        progress=progress,
    )
    still_named = {r["sample_id"] for r in records if r.get("correct")}
    pairs = [
        _pair(s, img_dir / f"{s.image_id}_{s.ann_id}.png", kept=s.sample_id not in still_named)
        for s in candidates
    ]
    info = {
        "description": "object-removal control set: original vs target inpainted (vlmloc chapter 1)",
        "model_id": vlm.model_id,
        "method": method,
        "dilate": dilate,
        "rule": "kept = class named on the original and not on the inpainted image",
    }
    write_manifest(manifest, pairs, info)
    abs_pairs = [{**p, "inpainted": str(Path(p["inpainted"]).resolve())} for p in pairs]
    return ControlSet(abs_pairs, method, manifest, records)


def preview_pairs(samples: Sequence[Sample], n: int = 4, dilate: int = 3) -> list[dict]:
    """Inpaint the first ``n`` samples in memory (nothing is written), for figures.

    Used to show what inpainting does when a model has no candidates, e.g. an untrained toy that
    classifies nothing correctly. The entries have the keys :func:`vlmloc.plots.plot_inpaint_pairs` reads.
    """
    out = []
    for s in list(samples)[:n]:
        image = s.load_image()
        filled, method = inpaint(image, s.mask(), dilate=dilate)
        out.append(
            {"original": image, "inpainted": filled, "category": s.category, "box": s.box, "method": method}
        )
    return out


# --------------------------------------------------------------------------- pairs for mediation


@dataclasses.dataclass(frozen=True)
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
    return f"python -m vlmloc.chapters run --chapters {CONTROL_SET_CHAPTER} --models {model_id}"


def mediation_pairs(results_dir: str | Path, model_id: str, n_pairs: int) -> list[MediationPair]:
    """The first ``n_pairs`` kept pairs of chapter 1's control set (its seeded order)."""
    manifest = control_dir(results_dir, model_id) / "pairs.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"no object-removal control set for {model_id} at {manifest}; build it with "
            f"`{control_set_command(model_id)}` (same results_dir), or pass -p build_control_set True"
        )
    return [MediationPair.from_manifest(p) for p in load_pairs(manifest)[:n_pairs]]
