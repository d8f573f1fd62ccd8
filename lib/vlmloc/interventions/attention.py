"""Attention knockout: some queries may not read some keys, in chosen layers (and heads).

The book's methods page (book/methods.md, chapter 5): block attention from every position after
the image span (the prompt text and every generated token) to the object's tokens in a window of
layers. The block must hold at every generation step: a generated token's query must not see the
blocked keys in the KV cache either, so a knockout is an ``every_step`` intervention and works in
absolute positions (:class:`~vlmloc.interventions.base.StepInfo`). It writes to the per-layer copy
of the mask that the executor hands it (never the mask transformers shares across layers), as
``False`` under sdpa's boolean masks and as the dtype's minimum under eager's additive ones.

    ko = AttentionKnockout(layers=range(4, 8), keys=[obj_positions], query_from=[first_text_pos])
    vlm.generate(enc, interventions=[ko])

The null knockout, :meth:`AttentionKnockout.null`, keeps the layers and keys and moves the first
blocked query past any position a step can reach: it installs and runs its hooks, and the
executor clones and reinstalls every layer's mask exactly as for a real knockout, but no entry is
blocked. It checks the whole path; a knockout with no layers would check nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from ..sites import Site
from .base import Hook, Intervention, StepInfo

__all__ = ["NEVER", "AttentionKnockout", "layer_windows"]

#: A first blocked query no sequence reaches: the null knockout's ``query_from``.
NEVER = 2**62


def _as_positions(keys: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(keys, dtype=np.int64)).reshape(-1)


class AttentionKnockout(Intervention):
    """Row ``b``'s queries at absolute positions ``>= query_from[b]`` cannot attend ``keys[b]``.

    ``layers``: decoder layers where the block holds; ``heads``: the heads it applies to (default
    all). ``keys`` are absolute sequence positions (e.g. ``layout.positions[object_indices]``).

    Every layer gets its mask hook, also when the key sets (or ``heads``) are empty: such a
    knockout blocks nothing but still goes through the executor's mask copy. Only a knockout with
    *no layers* installs nothing (there is no mask to hook), so it is no test of the path; a null
    check uses :meth:`null`.
    """

    every_step = True

    def __init__(
        self,
        layers: Iterable[int],
        keys: Sequence[Any],
        query_from: Sequence[int],
        heads: Iterable[int] | None = None,
    ) -> None:
        self.layers = sorted({int(x) for x in layers})
        self.keys = [_as_positions(k) for k in keys]
        self.query_from = [int(q) for q in query_from]
        self.heads = None if heads is None else sorted({int(h) for h in heads})
        if len(self.keys) != len(self.query_from):
            raise ValueError(f"got keys for {len(self.keys)} rows but query_from for {len(self.query_from)}")

    @classmethod
    def null(
        cls, layers: Iterable[int], keys: Sequence[Any], heads: Iterable[int] | None = None
    ) -> AttentionKnockout:
        """The null knockout: real layers and keys, but queries start at :data:`NEVER`.

        Its hooks install and run at every step (``n_calls > 0``) and write each layer's mask
        back unchanged, so the answers must equal the baseline's; a difference is a fault of the
        path (mask copy, explicit causal mask, per-layer install), not of what was blocked.
        """
        return cls(layers, keys, [NEVER] * len(keys), heads=heads)

    def hooks(self, vlm: Any) -> list[Hook]:
        if not self.layers:
            return []  # nothing to hook: not a null check of the path, see null()
        bad = [x for x in self.layers if not 0 <= x < vlm.n_layers]
        if bad:
            raise ValueError(f"layers {bad} do not exist; the decoder has layers 0-{vlm.n_layers - 1}")
        return [Hook(Site("mask", layer), partial(self._block, vlm.n_heads)) for layer in self.layers]

    def _block(self, n_heads: int, mask: torch.Tensor, step: StepInfo) -> torch.Tensor:
        if mask.shape[0] != len(self.keys):
            raise ValueError(
                f"the knockout was built for {len(self.keys)} rows, the batch has {mask.shape[0]}"
            )
        if self.heads is not None and mask.shape[1] == 1:
            mask = mask.expand(-1, n_heads, -1, -1).clone()
        blocked = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
        queries = step.query_positions(mask.device)
        heads = (
            torch.arange(mask.shape[1]) if self.heads is None else torch.tensor(self.heads, dtype=torch.long)
        )
        for row, (keys, first) in enumerate(zip(self.keys, self.query_from, strict=True)):
            q = (queries >= first).nonzero().squeeze(-1)
            k = keys[keys < step.k_len].to(mask.device)
            if len(q) and len(k) and len(heads):
                mask[row, heads[:, None, None], q[None, :, None], k[None, None, :]] = blocked
        return mask


def layer_windows(n_layers: int, window: int = 4, stride: int = 1) -> list[tuple[int, int]]:
    """``[(first, last), ...]`` of ``window`` consecutive layers sliding by ``stride`` (inclusive bounds)."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got {window} and {stride}")
    window = min(window, n_layers)
    return [(s, s + window - 1) for s in range(0, n_layers - window + 1, stride)]
