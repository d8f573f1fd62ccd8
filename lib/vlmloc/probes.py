"""Linear position probes at every site, trained from hidden states streamed one batch at a time.

The question (chapter 4; the book's methods page, book/methods.md, chapter 4): can a linear map
read a visual token's row and column from its hidden state, and how does that change along the
path vision tower -> projector -> LLM? For every site (each tower layer, the projector output, the
LLM input, each LLM layer's output) one linear layer holds a row head and a column head. The
chapter's control is the same bank on a copy of the model with one stage randomly initialised
(:mod:`vlmloc.experiments.ch04_position_decoding`); test counts are kept per image so that the
two can be compared image by image.

Why streaming: on LLaVA-1.5-7B one LLM layer's visual tokens over 50k images are ~240 GB, so
activations are never gathered into a data set. One forward per batch of images reads every site
(:class:`DeviceHiddenStates`, one nnsight trace), each site's probe takes its mini-batch steps on
those values on the model's device, and the values are dropped. An epoch is one pass over the
training images, the forward re-run. ``cache_mb`` optionally keeps the training batches' values
in memory when they fit that budget (a toy's hundreds of images: tens of MB), so later epochs skip
the forward; both paths give the same probes. The bank counts the forwards it runs (``forwards``
batches, ``images_forwarded`` images) and the batches it reads from the cache instead
(``cache_hits``): what caching saves.

Labels: LLM and projector tokens carry the row and column of their cell in their view's token
grid (:class:`vlmloc.geometry.View`). Tower tokens carry their cell in the tower's own patch grid,
after the CLS token is dropped: for LLaVA that is the token grid; for InternVL it is twice as
fine (pixel shuffle merges 2x2 patches into one token). For InternVL all views (tiles and the
thumbnail, one shared grid) train one probe per site; test accuracy is also split by view kind.

    bank = ProbeBank.for_model(vlm, ProbeParams(epochs=10, seed=0))
    bank.fit(vlm, image_batches(train_paths, 16))    # batches of image paths
    result = bank.evaluate(vlm, image_batches(test_paths, 16))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .adapter import VLM
from .geometry import ImageLayout
from .interventions.hidden import HiddenStates
from .sites import Site, hidden_sites

__all__ = [
    "DeviceHiddenStates",
    "ProbeBank",
    "ProbeParams",
    "SiteLabels",
    "activation_bytes",
    "image_batches",
    "in_token_order",
    "probe_images",
    "site_labels",
    "tower_grid",
]

log = logging.getLogger("vlmloc.probes")


# --------------------------------------------------------------------------- reading the sites


class DeviceHiddenStates(HiddenStates):
    """:class:`~vlmloc.interventions.HiddenStates` that keeps values on the model's device, in its dtype.

    The probes train where the model runs, so a GPU run never copies a batch's activations to the
    host and back. Tower and projector values come whole, LLM values cut per row to ``positions``.
    """

    def _read(self, site: Site, x: torch.Tensor, step: Any) -> None:
        x = x.detach()
        if site.stage == "llm" and self.positions is not None:
            self.values[site.name] = [x[row, p.to(x.device)] for row, p in enumerate(self.positions)]
        else:
            self.values[site.name] = x


def read_sites(
    vlm: VLM, images: Sequence[Image.Image], sites: Sequence[str]
) -> tuple[dict, list[ImageLayout]]:
    """One forward of ``images`` (with a fixed prompt) reading every site; values stay on the device.

    The prompt is the classification question; it follows the image, so under causal attention it
    cannot change any visual token's hidden state.
    """
    from .scoring import position_ids

    images = probe_images(vlm, images)
    enc = vlm.encode(list(images), [vlm.prompt("classification")] * len(images))
    layouts = vlm.layouts(enc, images)
    read = DeviceHiddenStates(sites, [lay.positions for lay in layouts])
    vlm.forward({**enc, "position_ids": position_ids(enc["attention_mask"])}, [read], logits_at=False)
    return in_token_order(vlm, enc, read.values), layouts


def probe_images(vlm: VLM, images: Sequence[Image.Image]) -> list[Image.Image]:
    """The images as the probes see them: as they are, or for a family whose processor gives each
    image its own token grid (Qwen2.5-VL) resized to one square, since a probe's row and column
    heads need one grid."""
    side = vlm.family.probe_image_side(vlm.processor)
    return [im.resize((side, side)) for im in images] if side else list(images)


def in_token_order(vlm: VLM, enc: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Site values read at their modules, with tower and projector values as ``[views, tokens,
    width]`` row-major per view (:meth:`vlmloc.families.Family.in_token_order`)."""
    return {
        name: vlm.family.in_token_order(vlm.config, enc, name.partition(".")[0], v)
        for name, v in values.items()
    }


def tower_grid(vlm: VLM) -> int:
    """Side of the vision tower's patch grid (tokens per side of one view, before any merging)."""
    return vlm.family.tower_side(vlm.config, vlm.processor)


# --------------------------------------------------------------------------- labels


@dataclass
class SiteLabels:
    """Per token of one site in one batch: its row, column, view kind and image (index in the batch)."""

    rows: int
    cols: int
    row: torch.Tensor
    col: torch.Tensor
    kind: torch.Tensor  # 0 = global view (LLaVA's image, InternVL's thumbnail or single tile), 1 = local tile
    image: torch.Tensor  # which image of the batch the token belongs to (test counts are kept per image)


def site_labels(stage: str, layouts: Sequence[ImageLayout], tower_side: int) -> SiteLabels:
    """Labels of one site's tokens, in the order :func:`site_features` flattens them."""
    rows_l, cols_l, kinds, images = [], [], [], []
    grid = None
    for j, lay in enumerate(layouts):
        for v in lay.views:
            r, c = (tower_side, tower_side) if stage == "tower" else (v.rows, v.cols)
            if grid is None:
                grid = (r, c)
            elif grid != (r, c):
                raise ValueError(
                    f"views of one batch have different grids {grid} and {(r, c)}; probes need one"
                )
            k = np.arange(r * c)
            rows_l.append(k // c)
            cols_l.append(k % c)
            kinds.append(np.full(r * c, 0 if v.kind == "global" else 1))
            images.append(np.full(r * c, j))
    cat = lambda xs: torch.from_numpy(np.concatenate(xs)).long()  # noqa: E731
    return SiteLabels(grid[0], grid[1], cat(rows_l), cat(cols_l), cat(kinds), cat(images))


def site_features(name: str, value: Any, layouts: Sequence[ImageLayout], tower_side: int) -> torch.Tensor:
    """One site's values as ``[tokens, width]`` in label order (views in order, cells row-major).

    Tower: ``[views, prefix + side^2, width]``, the prefix (CLS) dropped. Projector:
    ``[views, tokens per view, width]``. LLM: one ``[visual tokens, width]`` tensor per image.
    """
    n_views = sum(len(lay.views) for lay in layouts)
    if isinstance(value, list):
        return torch.cat(value, 0)
    if value.shape[0] != n_views:
        raise ValueError(f"site {name}: {value.shape[0]} rows but the batch has {n_views} views")
    if name.startswith("tower."):
        n = tower_side * tower_side
        if value.shape[1] < n:
            raise ValueError(
                f"site {name}: {value.shape[1]} tokens, fewer than the {tower_side}^2 patch grid"
            )
        value = value[:, value.shape[1] - n :]
    return value.reshape(-1, value.shape[-1])


def activation_bytes(values: dict) -> int:
    """Bytes one batch's site values hold (what streaming keeps in memory at once)."""
    total = 0
    for v in values.values():
        for t in v if isinstance(v, list) else [v]:
            total += t.numel() * t.element_size()
    return total


# --------------------------------------------------------------------------- the probes


@dataclass
class ProbeParams:
    """Training of the probes. ``epochs``: passes over the training images (paper: 10).

    ``token_batch`` tokens per optimizer step (each streamed image batch gives several steps),
    Adam with ``lr``. ``cache_mb``: 0 streams every epoch (the default); a positive budget keeps
    the training batches' values in memory (on the model's device) when they fit it (else
    streams, with a warning). ``group_sites``: at most this many same-shaped sites share one
    batched matmul, so a step holds at most that many sites' values in float32.
    """

    epochs: int = 10
    lr: float = 1e-2
    token_batch: int = 1024
    seed: int = 0
    cache_mb: float = 0.0
    group_sites: int = 8  # sites stacked into one batched matmul (bounds the float32 copy per step)

    def config(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "cache_mb"}


class _GroupProbe(nn.Module):
    """Independent linear probes for ``n`` sites of one shape, applied as one batched matmul.

    Each site has a row head and a column head: one ``[width, rows + cols]`` map on standardized
    inputs. Sites share nothing but the matmul: the loss is a sum over sites,
    so each site's weights get exactly the gradient they would get alone (and Adam is per weight).
    """

    def __init__(self, n: int, width: int, rows: int, cols: int) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols
        bound = 1.0 / width**0.5  # nn.Linear's default initialization
        out = rows + cols
        self.weight = nn.Parameter(torch.empty(n, width, out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out).uniform_(-bound, bound))
        self.register_buffer("mean", torch.zeros(n, 1, width))
        self.register_buffer("std", torch.ones(n, 1, width))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    def standardize_from(self, x: torch.Tensor) -> None:
        """Fix the input standardization from the first training batch (an affine map: still linear)."""
        std = x.std(1, keepdim=True)
        self.mean.copy_(x.mean(1, keepdim=True))
        self.std.copy_(std.clamp_min(1e-6 * max(1.0, float(std.max()))))
        self.ready.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``x``: ``[sites, tokens, width]`` -> row and column logits."""
        z = torch.baddbmm(self.bias, (x - self.mean) / self.std, self.weight)
        return z[..., : self.rows], z[..., self.rows :]


def _generator(seed: int, *parts: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([int(seed), *map(int, parts)]).generate_state(1)[0]))
    return g


def image_batches(paths: Sequence[str | Path], batch_size: int) -> list[list[str]]:
    """Fixed batches of image paths (in the given order); epochs shuffle the batch order, not their content."""
    paths = [str(p) for p in paths]
    return [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]


def _load(paths: Sequence[str]) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in paths]


class _Counts:
    """Test counts of one site: per grid cell (tokens, row/col/cell correct), per view kind, per image.

    The per-image counts (in test order) let the chapter compare two probes on the same images
    with an image-level standard error (tokens of one image are not independent).
    """

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        z = lambda: np.zeros((rows, cols), np.int64)  # noqa: E731
        self.n, self.row_ok, self.col_ok, self.cell_ok = z(), z(), z(), z()
        self.kind = np.zeros((2, 4), np.int64)  # per kind: tokens, row, col, cell correct
        self.per_image: list[np.ndarray] = []  # per batch: [images, 4] tokens, row, col, cell correct

    def add(self, lab: SiteLabels, pr: torch.Tensor, pc: torch.Tensor) -> None:
        ok_r, ok_c = (pr == lab.row).numpy(), (pc == lab.col).numpy()
        ok = ok_r & ok_c
        idx = (lab.row * self.cols + lab.col).numpy()
        size = self.rows * self.cols
        for arr, w in ((self.n, None), (self.row_ok, ok_r), (self.col_ok, ok_c), (self.cell_ok, ok)):
            arr += np.bincount(idx, weights=w, minlength=size).reshape(self.rows, self.cols).astype(np.int64)
        image = lab.image.numpy()
        m = int(image.max()) + 1
        self.per_image.append(
            np.stack([np.bincount(image, weights=w, minlength=m) for w in (None, ok_r, ok_c, ok)], 1)
        )
        kind = lab.kind.numpy()
        for k in (0, 1):
            m = kind == k
            self.kind[k] += np.array([m.sum(), ok_r[m].sum(), ok_c[m].sum(), ok[m].sum()])

    def result(self) -> dict:
        n = int(self.n.sum())
        pct = lambda a: round(100.0 * float(a) / max(1, n), 3)  # noqa: E731
        grid = lambda a: np.round(100.0 * a / np.maximum(self.n, 1), 2).tolist()  # noqa: E731
        kinds = {}
        for k, name in ((0, "global"), (1, "local")):
            m = int(self.kind[k, 0])
            if m:
                kinds[name] = {
                    "n_tokens": m,
                    **{
                        f"{h}_acc": round(100.0 * float(self.kind[k, j + 1]) / m, 3)
                        for j, h in enumerate(("row", "col", "cell"))
                    },
                }
        per_image = (
            np.concatenate(self.per_image).astype(np.int64) if self.per_image else np.zeros((0, 4), int)
        )
        return {
            "grid": [self.rows, self.cols],
            "n_tokens": n,
            "row_acc": pct(self.row_ok.sum()),
            "col_acc": pct(self.col_ok.sum()),
            "cell_acc": pct(self.cell_ok.sum()),
            "by_kind": kinds,
            "per_image": {
                k: per_image[:, j].tolist() for j, k in enumerate(("n", "row_ok", "col_ok", "cell_ok"))
            },
            "cells": {
                "row_acc": grid(self.row_ok),
                "col_acc": grid(self.col_ok),
                "cell_acc": grid(self.cell_ok),
            },
        }


class ProbeBank:
    """A probe per site, all trained from the same streamed forwards.

    Sites of one shape (the tower layers; the projector, LLM input and LLM layers) form a group
    whose probes run as one batched matmul with one optimizer; they stay independent probes.
    """

    def __init__(self, sites: Sequence[str], widths: dict[str, int], grids: dict[str, tuple[int, int]],
                 params: ProbeParams, tower_side: int, device: str = "cpu") -> None:  # fmt: skip
        self.sites = [s.name for s in sorted(map(Site.parse, sites), key=lambda s: s.order)]
        self.params = params
        self.tower_side = tower_side
        self.device = device
        self.grids = {s: tuple(grids[s]) for s in self.sites}
        keys: dict[tuple, list[str]] = {}
        for s in self.sites:
            keys.setdefault((s.startswith("tower."), widths[s], *grids[s]), []).append(s)
        n = max(1, params.group_sites)
        self.groups = [g[i : i + n] for g in keys.values() for i in range(0, len(g), n)]
        torch.manual_seed(params.seed)  # the heads' initial weights
        self.probes = [_GroupProbe(len(g), widths[g[0]], *grids[g[0]]).to(device) for g in self.groups]
        self.opts = [torch.optim.Adam(p.parameters(), lr=params.lr) for p in self.probes]
        self.epochs_done = 0
        self.last_batch_bytes = 0
        self.max_batch_bytes = 0  # the most one batch's site values held (what streaming needs)
        self.seconds = {"forward": 0.0, "probe steps": 0.0}
        self.forwards = 0  # batches of images run through the model (training and test)
        self.images_forwarded = 0  # the images in them
        self.cache_hits = 0  # training batches read from the cache instead (each one a forward saved)

    @classmethod
    def for_model(cls, vlm: VLM, params: ProbeParams, sample: Sequence[Image.Image] | None = None,
                  sites: Sequence[str] | None = None) -> ProbeBank:  # fmt: skip
        """A bank for every site of ``vlm`` (or ``sites``); widths and grids read from one tiny forward."""
        names = sites or [s.name for s in hidden_sites(vlm.n_vision_layers, vlm.n_layers)]
        side = tower_grid(vlm)
        image = sample[0] if sample else Image.new("RGB", (64, 64), (127, 127, 127))
        values, layouts = read_sites(vlm, [image], names)
        widths, grids = {}, {}
        for name in names:
            x = site_features(name, values[name], layouts, side)
            lab = site_labels(name.partition(".")[0], layouts, side)
            if x.shape[0] != len(lab.row):
                raise ValueError(f"site {name}: {x.shape[0]} tokens but {len(lab.row)} labels")
            widths[name], grids[name] = int(x.shape[-1]), (lab.rows, lab.cols)
        return cls(names, widths, grids, params, side, device=str(vlm.device))

    # -- data of one batch

    def _batch(self, vlm: VLM, paths: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict[str, SiteLabels]]:
        t0 = time.perf_counter()
        values, layouts = read_sites(vlm, _load(paths), self.sites)
        self.forwards += 1
        self.images_forwarded += len(paths)
        self.last_batch_bytes = activation_bytes(values)
        self.max_batch_bytes = max(self.max_batch_bytes, self.last_batch_bytes)
        feats, labels = {}, {}
        for name in self.sites:
            feats[name] = site_features(name, values[name], layouts, self.tower_side)
            labels[name] = site_labels(name.partition(".")[0], layouts, self.tower_side)
        self.seconds["forward"] += time.perf_counter() - t0
        return feats, labels

    # -- training

    def _stack(self, group: list[str], feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([feats[s].to(self.device, torch.float32) for s in group])

    def _steps(self, g: int, x: torch.Tensor, lab: SiteLabels, epoch: int, batch: int) -> torch.Tensor:
        """Mini-batch steps of group ``g`` on one batch ``x`` ``[sites, tokens, width]``; mean loss per site."""
        probe, opt = self.probes[g], self.opts[g]
        if not bool(probe.ready):
            probe.standardize_from(x)
        n_sites, n = x.shape[:2]
        order = torch.randperm(n, generator=_generator(self.params.seed, epoch, batch, g))
        ys = [t.to(self.device) for t in (lab.row, lab.col)]
        total = torch.zeros(n_sites)
        for chunk in order.split(self.params.token_batch):
            chunk = chunk.to(self.device)
            out = probe(x[:, chunk])
            per_site = sum(
                nn.functional.cross_entropy(o.flatten(0, 1), y[chunk].repeat(n_sites), reduction="none")
                .view(n_sites, -1)
                .mean(1)
                for o, y in zip(out, ys, strict=True)
            )
            opt.zero_grad(set_to_none=True)
            per_site.sum().backward()
            opt.step()
            total += per_site.detach().cpu() * len(chunk)
        return total / max(1, n)

    def fit(self, vlm: VLM, batches: Sequence[Sequence[str]], progress: bool = False,
            checkpoint: str | Path | None = None, on_epoch: Callable[[int, dict], None] | None = None) -> list[dict]:  # fmt: skip
        """Train every site's probe for ``params.epochs`` passes over ``batches`` (lists of image paths).

        Each epoch visits the batches in a seeded order and re-runs the forward (or reads the
        memory-bounded cache). With ``checkpoint`` the bank is saved after every epoch and a rerun
        continues after the last saved epoch. Returns the mean training loss per epoch and site.
        """
        from tqdm.auto import tqdm

        if checkpoint is not None and Path(checkpoint).exists():
            self.load(checkpoint)
        cache: dict[int, tuple] | None = None
        decided = self.params.cache_mb <= 0  # whether to cache is decided on the first batch read
        history = []
        with torch.enable_grad():
            for epoch in range(self.epochs_done, self.params.epochs):
                order = torch.randperm(len(batches), generator=_generator(self.params.seed, epoch)).tolist()
                losses = {s: 0.0 for s in self.sites}
                it = tqdm(
                    order, desc=f"epoch {epoch + 1}/{self.params.epochs}", disable=not progress, leave=False
                )
                for b in it:
                    if cache is not None and b in cache:
                        feats, labels = cache[b]
                        self.cache_hits += 1
                    else:
                        feats, labels = self._batch(vlm, batches[b])
                        if not decided:
                            decided, need = True, self.last_batch_bytes * len(batches) / 2**20
                            if need <= self.params.cache_mb:
                                cache = {}
                            else:
                                log.warning("training activations (~%.0f MB) exceed cache_mb = %g; streaming",
                                            need, self.params.cache_mb)  # fmt: skip
                        if cache is not None:
                            cache[b] = (feats, labels)
                    t0 = time.perf_counter()
                    for g, group in enumerate(self.groups):
                        loss = self._steps(g, self._stack(group, feats), labels[group[0]], epoch, b)
                        for name, v in zip(group, loss.tolist(), strict=True):
                            losses[name] += v / len(batches)
                    self.seconds["probe steps"] += time.perf_counter() - t0
                self.epochs_done = epoch + 1
                history.append(losses)
                if checkpoint is not None:
                    self.save(checkpoint)
                if on_epoch is not None:
                    on_epoch(epoch, losses)
        return history

    # -- testing

    @torch.no_grad()
    def evaluate(self, vlm: VLM, batches: Sequence[Sequence[str]], progress: bool = False) -> dict[str, dict]:
        """Test accuracy per site: row, column, exact cell, per view kind, per grid cell and per image."""
        from tqdm.auto import tqdm

        counts = {s: _Counts(*self.grids[s]) for s in self.sites}
        for paths in tqdm(batches, desc="test", disable=not progress, leave=False):
            feats, labels = self._batch(vlm, paths)
            for g, group in enumerate(self.groups):
                preds = [o.argmax(-1).cpu() for o in self.probes[g](self._stack(group, feats))]
                for i, name in enumerate(group):
                    counts[name].add(labels[name], *(p[i] for p in preds))
        return {s: counts[s].result() for s in self.sites}

    # -- checkpoints

    def state(self) -> dict:
        return {
            "sites": self.sites,
            "params": self.params.config(),
            "epochs_done": self.epochs_done,
            "groups": self.groups,
            "probes": [p.state_dict() for p in self.probes],
            "opts": [o.state_dict() for o in self.opts],
        }

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)

    def load(self, path: str | Path) -> None:
        st = torch.load(path, map_location=self.device, weights_only=True)
        if st["groups"] != self.groups or st["params"] != self.params.config():
            raise ValueError(
                f"checkpoint {path} was made with other sites or parameters; delete it to retrain"
            )
        for p, o, ps, os_ in zip(self.probes, self.opts, st["probes"], st["opts"], strict=True):
            p.load_state_dict(ps)
            o.load_state_dict(os_)
        self.epochs_done = int(st["epochs_done"])


def split_images(
    paths: Iterable[str | Path], n_train: int, n_test: int, seed: int
) -> tuple[list[str], list[str]]:
    """A seeded split by image: ``n_train`` training and ``n_test`` test images, disjoint."""
    paths = sorted({str(p) for p in paths})
    if n_train + n_test > len(paths):
        raise ValueError(f"{n_train} + {n_test} images asked for but only {len(paths)} are available")
    order = np.random.default_rng([int(seed), 4]).permutation(len(paths))
    chosen = [paths[i] for i in order[: n_train + n_test]]
    return chosen[:n_train], chosen[n_train:]
