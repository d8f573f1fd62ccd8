"""Hidden states along the whole path: vision-tower layers, projector, LLM input, LLM layers.

Probes over thousands of images must never hold every activation at once (LLaVA-1.5-7B at 50k
images: ~240 GB per layer), so a :class:`HiddenStates` read returns one batch's values on the
CPU, already cut to the positions asked for, and the caller streams batch after batch. All sites
are read in one forward, in forward order (:func:`vlmloc.sites.hidden_sites`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import torch

from ..sites import Site
from .base import Hook, Intervention, StepInfo

__all__ = ["HiddenStates"]


class HiddenStates(Intervention):
    """Reads hidden states at ``sites`` (names like ``"tower.0"``, ``"projector"``, ``"llm.input"``, ``"llm.5"``).

    Tower and projector values come whole (their batch axis is the images, or InternVL's tiles);
    LLM values are cut per row to ``positions[row]`` (all positions when ``None``). ``values``
    maps each site name to a CPU tensor, or for LLM sites with ``positions`` to a list of
    ``[n_row, hidden]`` tensors.
    """

    def __init__(self, sites: Iterable[str | Site], positions: Sequence[Any] | None = None) -> None:
        self.sites = sorted(map(Site.parse, sites), key=lambda s: s.order)
        self.positions = None if positions is None else [torch.as_tensor(p).long() for p in positions]
        self.values: dict[str, Any] = {}

    def hooks(self, vlm: Any) -> list[Hook]:
        return [Hook(s, partial(self._read, s), rank=1) for s in self.sites]

    def _read(self, site: Site, x: torch.Tensor, step: StepInfo) -> None:
        x = x.detach()
        if site.stage == "llm" and self.positions is not None:
            self.values[site.name] = [
                x[row, p.to(x.device)].float().cpu() for row, p in enumerate(self.positions)
            ]
        else:
            self.values[site.name] = x.float().cpu()
