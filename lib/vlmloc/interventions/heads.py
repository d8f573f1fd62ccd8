"""Per-head outputs: read them, overwrite them from another run, or silence them.

A head's output is its slice of ``o_proj``'s input, width ``o_proj.in_features // heads`` (the
book's methods page, book/methods.md, chapter 6). The executor hands head hooks that input viewed
as ``[batch, query, heads, head_dim]``; these kinds edit it in place at absolute positions.

- :class:`HeadRead` saves the heads' outputs of chosen layers (the source run of a patch).
- :class:`HeadGradient` keeps them live in the forward, so the gradient of anything computed
  from its logits can be taken with respect to them (attribution patching).
- :class:`HeadPatch` writes a source run's values into chosen heads, row by row: the usual
  patch (row ``b`` from source row ``b``) and the batched sweep (row ``r`` patches one head
  ``(l, h)`` from source row 0) are the same kind.
- :class:`HeadAblation` zeroes heads (or sets them to a mean) at every generation step.

Each kind has a null version that goes through the same writes: a patch from the run itself, and
:meth:`HeadAblation.null`, whose fill is each head's own current output. With no heads at all a
patch or an ablation installs nothing; that is no check of the path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import torch

from ..sites import Site
from .base import Hook, Intervention, StepInfo

__all__ = ["HeadAblation", "HeadGradient", "HeadPatch", "HeadRead", "all_heads"]

Head = tuple[int, int]


def all_heads(n_layers: int, n_heads: int) -> list[Head]:
    """Every ``(layer, head)``, layer-major."""
    return [(layer, h) for layer in range(n_layers) for h in range(n_heads)]


def _per_row(value: int | Sequence[int], rows: int) -> list[int]:
    return [int(value)] * rows if isinstance(value, int) else [int(v) for v in value]


def _check_heads(vlm: Any, heads: Iterable[Head]) -> None:
    bad = [(la, h) for la, h in heads if not (0 <= la < vlm.n_layers and 0 <= h < vlm.n_heads)]
    if bad:
        raise ValueError(
            f"heads {bad[:5]} do not exist: the decoder has {vlm.n_layers} layers x {vlm.n_heads} heads"
        )


class HeadRead(Intervention):
    """Saves ``o_proj``'s input of ``layers`` (``[batch, seq, heads * head_dim]``, on the CPU) at the prefill."""

    def __init__(self, layers: Iterable[int]) -> None:
        self.layers = sorted({int(x) for x in layers})
        self.values: dict[int, torch.Tensor] = {}

    def hooks(self, vlm: Any) -> list[Hook]:
        return [Hook(Site("heads", layer), partial(self._read, layer), rank=1) for layer in self.layers]

    def _read(self, layer: int, z: torch.Tensor, step: StepInfo) -> None:
        self.values[layer] = z.reshape(*z.shape[:2], -1).detach().to("cpu", copy=True)


class HeadGradient(Intervention):
    """Holds ``o_proj``'s input of ``layers`` in the forward's graph, for :meth:`gradients`.

    A read that keeps autograd's record: its hook hands the heads' view back to the executor,
    which makes it ``o_proj``'s input, so everything after it is computed from the held tensor
    and a gradient reaches it through every later layer. The values are unchanged (a null edit
    by construction); the door turns autograd on for the forward it takes part in.
    """

    needs_grad = True

    def __init__(self, layers: Iterable[int]) -> None:
        self.layers = sorted({int(x) for x in layers})
        self.held: dict[int, torch.Tensor] = {}  # [batch, seq, heads, head_dim], in the graph

    def hooks(self, vlm: Any) -> list[Hook]:
        return [Hook(Site("heads", layer), partial(self._hold, layer), rank=1) for layer in self.layers]

    def _hold(self, layer: int, z: torch.Tensor, step: StepInfo) -> torch.Tensor:
        self.held[layer] = z
        return z

    @property
    def values(self) -> dict[int, torch.Tensor]:
        """The held outputs as ``[batch, seq, heads * head_dim]``, out of the graph (as :class:`HeadRead` has them)."""
        return {la: z.detach().reshape(*z.shape[:2], -1) for la, z in self.held.items()}

    def gradients(self, f: torch.Tensor) -> dict[int, torch.Tensor]:
        """``df/dz`` per layer as ``[batch, seq, heads * head_dim]``: the total derivative of the
        scalar ``f`` (made from this forward's logits) with respect to each held output."""
        grads = torch.autograd.grad(f, [self.held[la] for la in self.layers])
        return {la: g.reshape(*g.shape[:2], -1) for la, g in zip(self.layers, grads, strict=True)}


class HeadPatch(Intervention):
    """Row ``r``'s heads ``patches[r]`` take source row ``source_rows[r]``'s values at positions ``>= from_pos[r]``.

    ``source[layer]`` is a :class:`HeadRead` value of the source run (``[rows, seq, heads * d]``,
    absolute positions). A head patched from its own run is a null edit.
    """

    def __init__(
        self,
        patches: Sequence[Iterable[Head]],
        source: Mapping[int, torch.Tensor],
        from_pos: int | Sequence[int] = 0,
        source_rows: Sequence[int] | None = None,
    ) -> None:
        self.patches = [[(int(la), int(h)) for la, h in row] for row in patches]
        self.source = source
        self.from_pos = _per_row(from_pos, len(self.patches))
        self.source_rows = list(range(len(self.patches))) if source_rows is None else list(source_rows)
        missing = sorted({la for row in self.patches for la, _ in row} - set(source))
        if missing:
            raise ValueError(f"no source values for layers {missing}; read them with HeadRead first")

    def hooks(self, vlm: Any) -> list[Hook]:
        _check_heads(vlm, (x for row in self.patches for x in row))
        layers = sorted({la for row in self.patches for la, _ in row})
        return [Hook(Site("heads", la), partial(self._patch, la)) for la in layers]

    def _patch(self, layer: int, z: torch.Tensor, step: StepInfo) -> None:
        src = self.source[layer]
        src = src.view(*src.shape[:2], z.shape[2], z.shape[3])
        for row, heads in enumerate(self.patches):
            hs = [h for la, h in heads if la == layer]
            start = max(self.from_pos[row], step.q_start)
            if not hs or start >= step.k_len:
                continue
            vals = src[self.source_rows[row], start : step.k_len][:, hs]
            z[row, start - step.q_start :, hs] = vals.to(z.device, z.dtype)


class HeadAblation(Intervention):
    """Heads set to zero (or to ``values[layer, head]``, e.g. a mean) at positions ``>= from_pos``, every step.

    ``identity=True`` is the null ablation (:meth:`null`): each head's slice is overwritten with a
    copy of its own current value, through the same write as the zero or mean fill. With no heads
    at all nothing is installed (there is no layer to hook), so that is no check of the path.
    """

    every_step = True

    def __init__(
        self,
        heads: Iterable[Head],
        values: torch.Tensor | None = None,
        from_pos: int | Sequence[int] = 0,
        identity: bool = False,
    ) -> None:
        if identity and values is not None:
            raise ValueError("an identity ablation writes each head's own value; it takes no values")
        self.heads = sorted({(int(la), int(h)) for la, h in heads})
        self.values = values
        self.from_pos = from_pos
        self.identity = identity

    @classmethod
    def null(cls, heads: Iterable[Head], from_pos: int | Sequence[int] = 0) -> HeadAblation:
        """The null ablation of ``heads``: hooks installed and run at every step, every value kept."""
        return cls(heads, from_pos=from_pos, identity=True)

    def hooks(self, vlm: Any) -> list[Hook]:
        _check_heads(vlm, self.heads)
        layers = sorted({la for la, _ in self.heads})
        return [Hook(Site("heads", la), partial(self._ablate, la)) for la in layers]

    def fill(self, layer: int, heads: list[int], current: torch.Tensor) -> torch.Tensor | float:
        """What heads ``heads`` of ``layer`` are set to, given their ``current`` values ``[pos, heads, d]``."""
        if self.identity:
            return current.clone()
        if self.values is None:
            return 0.0
        return self.values[layer, heads].to(current.device, current.dtype)

    def _ablate(self, layer: int, z: torch.Tensor, step: StepInfo) -> None:
        hs = [h for la, h in self.heads if la == layer]
        for row, first in enumerate(_per_row(self.from_pos, z.shape[0])):
            start = max(first, step.q_start) - step.q_start
            if start < step.q_len:
                z[row, start:, hs] = self.fill(layer, hs, z[row, start:, hs])
