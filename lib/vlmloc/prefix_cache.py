"""The reused prefix: run the shared start of a sequence once, then many suffixes on its KV cache.

Causal attention means a position never sees what comes after it, so when every row of a batch
shares its first ``length`` positions (the vision tower and the image span) and an intervention
leaves them alone, their keys and values can be computed once and reused. Three callers do so:
greedy generation after the image (:meth:`vlmloc.adapter.VLM.generate` with ``prefix=``, chapter
5's knockouts), the batched head sweep (:mod:`vlmloc.sweeps`) and attribution patching
(:mod:`vlmloc.attribution`). This module is the one place that knows how such a cache is built,
copied for generation, and repeated over the rows of a suffix forward::

    prefix = vlm.prefix(inputs, start)                 # build_prefix(vlm, inputs, start)
    logits = vlm.forward(suffix_inputs(inputs, prefix, rows=8))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

__all__ = ["PER_TOKEN", "Prefix", "build_prefix", "cache_rows", "suffix_inputs"]

#: Processor outputs with one entry per token (cut with the prompt when a prefix is taken).
PER_TOKEN = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass(frozen=True)
class Prefix:
    """The KV cache of the first ``length`` positions of every row of one encoded batch.

    Exact only for interventions that change nothing before ``length`` (a knockout whose queries
    start after the image span does not).
    """

    length: int
    cache: Any

    def for_generation(self) -> Any:
        """A private copy of the cache: generation appends to the cache it is given."""
        return copy.deepcopy(self.cache)


def build_prefix(vlm: Any, enc: Any, length: int) -> Prefix:
    """The KV cache of the first ``length`` positions of ``enc`` (e.g. up to the end of the image
    span, ``min`` over rows), computed by one forward of the bare model without gradients."""
    if not 0 < length < enc["input_ids"].shape[1]:
        raise ValueError(
            f"a prefix must be shorter than the prompt ({enc['input_ids'].shape[1]}), got {length}"
        )
    cut = {k: (v[:, :length] if k in PER_TOKEN else v) for k, v in enc.items()}
    cut["position_ids"] = vlm.position_ids(enc)[..., :length]  # M-RoPE: the prefix's own deltas
    with torch.no_grad():
        # only the cache is needed: logits of one position, not [B, length, vocab] (16 GB for InternVL)
        return Prefix(length, vlm.hf(**cut, use_cache=True, logits_to_keep=1).past_key_values)


def suffix_inputs(inputs: dict, prefix: Prefix, rows: int, row: int | None = 0) -> dict:
    """Model inputs for the positions after ``prefix``: row ``row`` of ``inputs`` repeated ``rows``
    times on that row of the prefix's cache; ``row=None`` keeps every row of both as they are.

    Positions are the full forward's (``inputs["position_ids"]``, ``[B, S]`` or M-RoPE's
    ``[3, B, S]``) sliced after the prefix, or the sequence index when ``inputs`` has none.
    """
    start = prefix.length
    ids = inputs["input_ids"][:, start:]
    if row is not None:
        ids = ids[row : row + 1].expand(rows, -1)
    rows, total = ids.shape[0], inputs["input_ids"].shape[1]
    pos = inputs.get("position_ids")
    if pos is None:
        pos = torch.arange(start, total, device=ids.device).expand(rows, -1)
    else:
        pos = pos[..., start:]
        pos = pos if row is None else pos[..., row : row + 1, :].expand(*pos.shape[:-2], rows, -1)
    out = {
        "input_ids": ids,
        "attention_mask": torch.ones(rows, total, dtype=torch.long, device=ids.device),
        "position_ids": pos,
        "past_key_values": cache_rows(prefix.cache, rows, row),
    }
    if "mm_token_type_ids" in inputs:  # per-token types travel with their tokens (Qwen2.5-VL)
        types = inputs["mm_token_type_ids"][:, start:]
        out["mm_token_type_ids"] = types if row is None else types[row : row + 1].expand(rows, -1)
    return out


def cache_rows(cache: Any, rows: int, row: int | None) -> Any:
    """Row ``row`` of a prefix cache repeated ``rows`` times (``None``: all rows), without copying it.

    Each layer's keys and values become a view of the prefix: the suffix's forward concatenates
    its new keys onto them (a fresh tensor), so the shared prefix is never written and can serve
    every batch of heads. Why: a deep copy plus ``batch_repeat_interleave`` per batch cost about
    7% of the sweep on the toys. Layer kinds that may write their cache in place get that copy.
    """
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        rep = copy.deepcopy(cache)
        if row is not None:
            rep.batch_select_indices(torch.tensor([row]))
            rep.batch_repeat_interleave(rows)
        return rep
    rep = copy.copy(cache)
    rep.layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        if layer.is_initialized and row is not None:
            new.keys = layer.keys[row : row + 1].expand(rows, *layer.keys.shape[1:])
            new.values = layer.values[row : row + 1].expand(rows, *layer.values.shape[1:])
        rep.layers.append(new)
    return rep
