"""Sweeps over every attention head: patch one head per batch row, reuse the image prefix.

Causal mediation (METHODS.md) patches one head at a time from the source run (the real image)
into the base run (the object inpainted away) at the positions after the image span, and scores
the teacher-forced answer each time: ``layers x heads`` forwards per pair and task. Two things
make that affordable, and both are exact:

- **Batch the heads.** Row ``r`` of one forward patches head ``heads[r]``
  (:class:`~vlmloc.interventions.HeadPatch` with one head per row).
- **Reuse the prefix.** A patch after the image span cannot change anything before it (causal
  attention), so the vision tower and the image prefix run once; their KV cache is repeated
  for the rows and only the suffix (prompt text + answer) runs per batch of heads.

``head_patch_scores(..., batch_size=1, reuse_prefix=False)`` is the plain loop, one full forward
per head; the tests check both give the same scores.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .interventions.base import StepInfo
from .interventions.heads import Head, HeadPatch, HeadRead, all_heads
from .scoring import AnswerScores, answer_scores, scored_answer, teacher_forced_inputs

__all__ = ["PatchScores", "first_after_image", "head_patch_scores"]


@dataclass
class PatchScores:
    """One source/base pair: the answer's scores on each run and with each head patched."""

    heads: list[Head]
    source: AnswerScores  # 1 row
    base: AnswerScores  # 1 row
    patched: AnswerScores  # one row per head

    def perplexity_map(self, n_layers: int, n_heads: int) -> torch.Tensor:
        """Patched perplexity as ``[layers, heads]`` (NaN where a head was not swept)."""
        out = torch.full((n_layers, n_heads), float("nan"))
        for (layer, h), p in zip(self.heads, self.patched.perplexity.tolist(), strict=True):
            out[layer, h] = p
        return out


def first_after_image(vlm: Any, input_ids: torch.Tensor) -> int:
    """The first position after the image span of a one-row batch."""
    pos = (input_ids[0] == vlm.image_token_id).nonzero()
    if len(pos) == 0:
        raise ValueError("the prompt has no image tokens")
    return int(pos.max()) + 1


def _prefix_cache(vlm: Any, inputs: dict, prefix: int) -> Any:
    cut = {
        k: (v[:, :prefix] if k in ("input_ids", "attention_mask", "position_ids") else v)
        for k, v in inputs.items()
    }
    with torch.no_grad():
        return vlm.hf(**cut, use_cache=True).past_key_values


def _suffix_inputs(inputs: dict, prefix: int, rows: int, cache: Any) -> dict:
    ids = inputs["input_ids"][:, prefix:].expand(rows, -1)
    total = inputs["input_ids"].shape[1]
    rep = copy.deepcopy(cache)
    rep.batch_repeat_interleave(rows)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(rows, total, dtype=torch.long, device=ids.device),
        "position_ids": torch.arange(prefix, total, device=ids.device).expand(rows, -1),
        "past_key_values": rep,
    }


def _repeat_rows(inputs: dict, rows: int) -> dict:
    """A one-row input repeated ``rows`` times (pixel values hold one entry per tile: repeat them all)."""
    out = {}
    for k, v in inputs.items():
        if not torch.is_tensor(v):
            out[k] = v
        elif k == "pixel_values":
            out[k] = v.repeat(rows, *[1] * (v.dim() - 1))
        else:
            out[k] = v.expand(rows, *v.shape[1:])
    return out


def head_patch_scores(
    vlm: Any,
    source_enc: Any,
    base_enc: Any,
    answer: str,
    task: str,
    heads: Sequence[Head] | None = None,
    batch_size: int = 64,
    reuse_prefix: bool = True,
    progress: bool = False,
) -> PatchScores:
    """Score ``answer`` on source, base, and base with each of ``heads`` patched from source.

    Both encodings are one row with the same token layout (same prompt, same image size). The
    patch covers every position after the image span (the prompt text and the answer).
    """
    if source_enc["input_ids"].shape != base_enc["input_ids"].shape or not torch.equal(
        source_enc["input_ids"], base_enc["input_ids"]
    ):
        raise ValueError("source and base must have the same tokens (same prompt, same image size)")
    if source_enc["input_ids"].shape[0] != 1:
        raise ValueError("head_patch_scores takes one source/base pair at a time")
    heads = list(heads) if heads is not None else all_heads(vlm.n_layers, vlm.n_heads)
    read = HeadRead(sorted({la for la, _ in heads}))
    source = vlm.score(source_enc, [answer], task, [read])
    base = vlm.score(base_enc, [answer], task)
    ids, mask = scored_answer(vlm.tokenizer, task, answer)
    inputs, targets, _ = teacher_forced_inputs(base_enc, [ids], vlm.tokenizer.pad_token_id)
    scored = torch.as_tensor([mask])
    s, total = base_enc["input_ids"].shape[1], inputs["input_ids"].shape[1]
    start = first_after_image(vlm, base_enc["input_ids"])
    prefix = start if reuse_prefix else 0
    cache = _prefix_cache(vlm, inputs, prefix) if reuse_prefix else None
    answer_at = slice(s - 1 - prefix, s - 1 - prefix + targets.shape[1])
    parts = []
    for i in tqdm(
        range(0, len(heads), batch_size), desc=f"heads · {task}", disable=not progress, leave=False
    ):
        chunk = heads[i : i + batch_size]
        rows = len(chunk)
        if reuse_prefix:
            run_inputs = _suffix_inputs(inputs, prefix, rows, cache)
        else:
            run_inputs = _repeat_rows(inputs, rows)
        patch = HeadPatch([[h] for h in chunk], read.values, from_pos=start, source_rows=[0] * rows)
        step = StepInfo(0, total - prefix, total)
        logits = vlm.forward(run_inputs, [patch], logits_at=answer_at, step=step)
        parts.append(answer_scores(logits, targets.expand(rows, -1), scored.expand(rows, -1)))
    patched = AnswerScores(
        *(torch.cat([getattr(p, f) for p in parts]) for f in ("logprob", "n_tokens", "token_logprobs"))
    )
    return PatchScores(heads, source, base, patched)
