"""Skipping decoder layers whose output is known: the exact shortcut of per-head sweeps.

A patch in layer ``l`` cannot change layers ``0 .. l-1``, so a sweep can take their outputs
from one unpatched run and skip them (nnsight's ``Envoy.skip``) in every row that patches
layer ``l``. Skipped layers do not run at all; nothing downstream reads their KV cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..sites import Site
from .base import Hook, Intervention, StepInfo

__all__ = ["LayerSkip"]


class LayerSkip(Intervention):
    """Decoder layers ``outputs.keys()`` are not run; their outputs are ``outputs[layer]`` (broadcast over rows)."""

    def __init__(self, outputs: Mapping[int, torch.Tensor], rows: int) -> None:
        self.outputs = dict(outputs)
        self.rows = rows

    def hooks(self, vlm: Any) -> list[Hook]:
        return [Hook(Site("skip", layer), self._value(layer)) for layer in sorted(self.outputs)]

    def _value(self, layer: int):
        def fn(_: Any, step: StepInfo) -> torch.Tensor:
            out = self.outputs[layer]
            return out.expand(self.rows, *out.shape[1:])

        return fn
