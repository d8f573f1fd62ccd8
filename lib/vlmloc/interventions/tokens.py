"""Interventions on the visual tokens at the LLM input (after the projector), applied with nnsight.

An intervention is described per image as a :class:`TokenEdit` (which sequence positions get which
vectors, or copies of which other positions), built from token *sets* (object, random, grown
object, register, ...). :func:`apply_edits` turns a batch of them into the function that
:meth:`vlmloc.adapter.VLM.generate` applies to ``language_model.inputs["inputs_embeds"]`` inside
the nnsight trace. A null edit (a token replaced by itself, the identity permutation) goes through
the same hook and write and must leave the logits unchanged; the tests check both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..geometry import ImageLayout, grow_cells
from ..sites import Site
from .base import Hook, Intervention


@dataclass
class TokenEdit:
    """Writes to one batch row: ``emb[positions] = values`` or ``emb[positions] = emb_before[sources]``."""

    positions: torch.Tensor
    values: torch.Tensor | None = None
    sources: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.values is None) == (self.sources is None):
            raise ValueError("a TokenEdit takes either values or sources")


class InputEdit(Intervention):
    """An edit of the LLM input embeddings (``fn(inputs_embeds) -> edited``), at the prefill only.

    The kind behind chapters 1-3: the visual tokens enter once, at the prefill; later steps feed
    only the generated tokens. Build ``fn`` with :func:`apply_edits` from per-row
    :class:`TokenEdit` s.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn

    def hooks(self, vlm) -> list[Hook]:
        return [Hook(Site("embeds"), lambda emb, step: self.fn(emb))]


def apply_edits(edits: list[TokenEdit | None]):
    """The function mapping a batch of LLM input embeddings to the edited batch (row b gets ``edits[b]``)."""

    def edit(emb: torch.Tensor) -> torch.Tensor:
        before = emb
        out = emb.clone()
        for row, e in enumerate(edits):
            if e is None or len(e.positions) == 0:
                continue
            pos = e.positions.to(emb.device)
            if e.values is not None:
                out[row, pos] = e.values.to(emb.device, emb.dtype)
            else:
                out[row, pos] = before[row, e.sources.to(emb.device)]
        return out

    return edit


# --- token sets (indices into layout.positions) ------------------------------------------------


def random_indices(
    layout: ImageLayout, k: int, rng: np.random.Generator, kind: str | None = None
) -> np.ndarray:
    """``k`` visual tokens drawn uniformly (within views of ``kind`` if given): the control set."""
    pool = np.concatenate([layout.token_indices(v) for v in layout.views_of_kind(kind)])
    return np.sort(rng.choice(pool, size=min(k, len(pool)), replace=False))


def grown_indices(layout: ImageLayout, mask: np.ndarray, rings: int, kind: str | None = None) -> np.ndarray:
    """Object tokens grown by ``rings`` rings of the 8-neighbourhood in every view."""
    cells = layout.object_cells(mask)
    out = [layout.indices_of_cells(v, grow_cells(cells[v.name], rings)) for v in layout.views_of_kind(kind)]
    return np.concatenate(out) if out else np.zeros(0, int)


def register_indices(visual: torch.Tensor, n_std: float = 2.0) -> np.ndarray:
    """High-norm outliers among an image's visual tokens: norm > mean + ``n_std`` std (the book's
    methods page, book/methods.md, chapter 2)."""
    norms = visual.float().norm(dim=-1)
    return torch.nonzero(norms > norms.mean() + n_std * norms.std()).squeeze(-1).cpu().numpy()


# --- edits -------------------------------------------------------------------------------------


def replace_with(layout: ImageLayout, indices: np.ndarray, vector: torch.Tensor) -> TokenEdit:
    """Replace the chosen visual tokens by one vector (e.g. the mean visual embedding)."""
    idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    pos = layout.positions[idx]
    return TokenEdit(pos, values=vector.reshape(1, -1).expand(len(pos), -1))


def copy_from(layout: ImageLayout, targets: np.ndarray, sources: np.ndarray) -> TokenEdit:
    """Write the (unedited) embeddings of visual tokens ``sources`` into visual tokens ``targets``."""
    t = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    s = torch.as_tensor(np.asarray(sources, dtype=np.int64))
    return TokenEdit(layout.positions[t], sources=layout.positions[s])


def permute(layout: ImageLayout, indices: np.ndarray, rng: np.random.Generator) -> TokenEdit:
    """Shuffle the chosen visual tokens among their own positions (a random permutation)."""
    indices = np.asarray(indices, dtype=np.int64)
    return copy_from(layout, indices, indices[rng.permutation(len(indices))])


def pad_with_object_copies(
    layout: ImageLayout, mask: np.ndarray, rings: int, rng: np.random.Generator
) -> tuple[TokenEdit, np.ndarray]:
    """Grow the object by ``rings`` and fill the new ring with random copies of the object's own tokens.

    Returns the edit and the grown index set (object plus padding).
    """
    obj = layout.object_indices(mask)
    grown = grown_indices(layout, mask, rings)
    ring = np.setdiff1d(grown, obj)
    if len(obj) == 0 or len(ring) == 0:
        return copy_from(layout, np.zeros(0, int), np.zeros(0, int)), grown
    return copy_from(layout, ring, rng.choice(obj, size=len(ring), replace=True)), grown


# --- the mean visual embedding -----------------------------------------------------------------


def mean_visual_embedding(vlm, images, batch_size: int = 8, cache: str | Path | None = None) -> torch.Tensor:
    """Mean of all visual tokens at the LLM input over reference images; cached to ``cache`` if given.

    The book's methods page (book/methods.md, chapter 2): computed once per model over a reference
    set, it keeps the statistics of a visual token while erasing its content.
    """
    if cache is not None and Path(cache).exists():
        return torch.load(cache, map_location="cpu")
    total, count = None, 0
    prompt = vlm.prompt("classification")
    for i in tqdm(range(0, len(images), batch_size), desc="mean visual embedding", leave=False):
        chunk = images[i : i + batch_size]
        enc = vlm.encode(chunk, [prompt] * len(chunk))
        emb = vlm.input_embeddings(enc).float().cpu()
        sel = emb[enc["input_ids"].cpu() == vlm.image_token_id]
        total = sel.sum(0) if total is None else total + sel.sum(0)
        count += len(sel)
    mean = total / count
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save(mean, cache)
    return mean


# --- per-view edits (containerization, chapter 2) ----------------------------------------------


def shuffle_within_views(layout: ImageLayout, indices: np.ndarray, rng: np.random.Generator) -> TokenEdit:
    """Permute the chosen visual tokens among their own positions, separately within each view.

    A token never leaves its view: for InternVL a tile's tokens stay in that tile and the
    thumbnail's in the thumbnail (LLaVA has one view, so this is :func:`permute`). Global shuffle
    passes all tokens, intra-object shuffle the object's. ``rng`` needs only ``permutation(n)``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    targets, sources = [], []
    for v in layout.views:
        own = indices[(indices >= v.offset) & (indices < v.offset + v.n_tokens)]
        if len(own) == 0:
            continue
        targets.append(own)
        sources.append(own[np.asarray(rng.permutation(len(own)), dtype=np.int64)])
    if not targets:
        return copy_from(layout, np.zeros(0, np.int64), np.zeros(0, np.int64))
    return copy_from(layout, np.concatenate(targets), np.concatenate(sources))


def pad_within_views(
    layout: ImageLayout, mask: np.ndarray, rings: int, rng: np.random.Generator
) -> tuple[TokenEdit, np.ndarray]:
    """Like :func:`pad_with_object_copies`, but each view's ring gets copies of *that view's* object tokens.

    For LLaVA (one view) the two are the same set and distribution. For InternVL a tile's ring is
    filled from the object tokens of the same tile, the thumbnail's from the thumbnail: a copy
    then keeps the scale of the view it lands in. Returns the edit and the grown index set.
    """
    obj = layout.object_indices(mask)
    grown = grown_indices(layout, mask, rings)
    targets, sources = [], []
    for v in layout.views:
        lo, hi = v.offset, v.offset + v.n_tokens
        own_obj = obj[(obj >= lo) & (obj < hi)]
        ring = np.setdiff1d(grown[(grown >= lo) & (grown < hi)], own_obj)
        if len(own_obj) == 0 or len(ring) == 0:
            continue
        targets.append(ring)
        sources.append(rng.choice(own_obj, size=len(ring), replace=True))
    if not targets:
        return copy_from(layout, np.zeros(0, np.int64), np.zeros(0, np.int64)), grown
    return copy_from(layout, np.concatenate(targets), np.concatenate(sources)), grown


def cached_mean_visual_embedding(
    vlm, reference: list, results_dir: str | Path, batch_size: int = 8, progress: bool = True
) -> torch.Tensor:
    """:func:`mean_visual_embedding` over ``reference`` samples' images, cached per model.

    The cache is ``<results_dir>/<model>/mean_visual_embedding.pt`` with a JSON sidecar naming the
    weights and the reference images; when either differs (a retrained toy, another data set)
    the mean is recomputed instead of silently reused.
    """
    import contextlib
    import io
    import json

    from ..registry import weights_fingerprint
    from ..store import model_dirname

    path = Path(results_dir) / model_dirname(vlm.model_id) / "mean_visual_embedding.pt"
    image_ids = sorted({str(s.image_path) for s in reference})
    meta = {"weights": weights_fingerprint(vlm.model_id), "n_images": len(image_ids), "images": image_ids}
    side = path.with_suffix(".json")
    if path.exists() and not (side.exists() and json.loads(side.read_text()) == meta):
        path.unlink()
    first = {}
    for s in reference:
        first.setdefault(str(s.image_path), s)
    images = [first[i].load_image() for i in image_ids] if not path.exists() else []
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    with quiet:  # mean_visual_embedding always shows a progress bar
        mean = mean_visual_embedding(vlm, images, batch_size=batch_size, cache=path)
    side.parent.mkdir(parents=True, exist_ok=True)
    side.write_text(json.dumps(meta, indent=1))
    return mean
