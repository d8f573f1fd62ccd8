"""Sweeps over every attention head: patch one head per batch row, reuse the image prefix.

Causal mediation (the book's methods page, chapter 6) patches one head at a time from the source run (the real image)
into the base run (the object inpainted away) at the positions after the image span, and scores
the teacher-forced answer each time: ``layers x heads`` forwards per pair and task. Two things
make that affordable, and both are exact:

- **Batch the heads.** Row ``r`` of one forward patches head ``heads[r]``
  (:class:`~vlmloc.interventions.HeadPatch` with one head per row).
- **Reuse the prefix.** A patch after the image span cannot change anything before it (causal
  attention), so the vision tower and the image prefix run once; their KV cache is repeated
  for the rows and only the suffix (prompt text + answer) runs per batch of heads.
- **Skip the layers below.** A patch in layer ``l`` cannot change layers ``0 .. l-1``: the rows
  that patch layer ``l`` take those layers' outputs from the base run and skip them.

``head_patch_scores(..., batch_size=1, reuse_prefix=False)`` is the plain loop, one full forward
per head; the tests check both give the same scores.

``positions="all"`` patches every position, the image's included (the paper does not say where
it patches; chapter 6 compares both settings). Then nothing before the patch is shared, so
each batch of heads is a full forward (``reuse_prefix`` does not apply).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .interventions.base import StepInfo
from .interventions.heads import Head, HeadPatch, HeadRead, all_heads
from .interventions.hidden import HiddenStates
from .interventions.layers import LayerSkip
from .prefix_cache import suffix_inputs
from .scoring import AnswerScores, answer_scores, scored_answer, teacher_forced_inputs

__all__ = ["PATCH_POSITIONS", "PatchScores", "check_positions", "first_after_image", "head_patch_scores"]

#: Where a head patch applies: after the image span (the default), or at every position.
PATCH_POSITIONS: tuple[str, ...] = ("after_image", "all")


def check_positions(positions: str) -> str:
    """``positions`` if it is one of :data:`PATCH_POSITIONS`; a clear error otherwise."""
    if positions not in PATCH_POSITIONS:
        raise ValueError(f"patch positions must be one of {PATCH_POSITIONS}, got {positions!r}")
    return positions


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


def _stack_rows(*encs: Any) -> dict:
    """One-row encodings of the same token layout as one batch (pixel values: every tile, in order);
    one encoding repeated is the loop's batch of heads."""
    return {k: torch.cat([e[k] for e in encs]) if torch.is_tensor(v) else v for k, v in encs[0].items()}


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
    positions: str = "after_image",
) -> PatchScores:
    """Score ``answer`` on source, base, and base with each of ``heads`` patched from source.

    Both encodings are one row with the same token layout (same prompt, same image size). The
    patch covers every position after the image span (the prompt text and the answer), or with
    ``positions="all"`` every position. ``reuse_prefix`` (after the image only) runs the image
    prefix once and, for the heads of layer ``l``, skips layers ``0 .. l-1`` (their outputs are
    the base run's); without it each batch is a full forward.
    """
    check_positions(positions)
    if source_enc["input_ids"].shape != base_enc["input_ids"].shape or not torch.equal(
        source_enc["input_ids"], base_enc["input_ids"]
    ):
        raise ValueError("source and base must have the same tokens (same prompt, same image size)")
    if source_enc["input_ids"].shape[0] != 1:
        raise ValueError("head_patch_scores takes one source/base pair at a time")
    heads = list(heads) if heads is not None else all_heads(vlm.n_layers, vlm.n_heads)
    layers = sorted({la for la, _ in heads})
    ids, mask = scored_answer(vlm.tokenizer, task, answer)
    scored, prompt_len = torch.as_tensor([mask]), base_enc["input_ids"].shape[1]
    pad = vlm.tokenizer.pad_token_id
    if reuse_prefix and positions == "after_image":
        both, targets, _ = teacher_forced_inputs(_stack_rows(source_enc, base_enc), [ids, ids], pad)
        run = _Run(vlm, both, targets[:1], scored, prompt_len)
        source, base, patched = run.layer_grouped(heads, layers, batch_size, task, progress)
        return PatchScores(heads, source, base, patched)
    read = HeadRead(layers)
    source = vlm.score(source_enc, [answer], task, [read])
    inputs, targets, _ = teacher_forced_inputs(base_enc, [ids], pad)
    # Patching every position shares nothing before the patch, but the LLM input is shared: the
    # vision tower then runs once, not once per row.
    every = positions == "all"
    run = _Run(
        vlm, inputs, targets, scored, prompt_len,
        patch_from=0 if every else None, embeds=vlm.input_embeddings(inputs) if every else None,
    )  # fmt: skip
    base = vlm.score(base_enc, [answer], task)
    return PatchScores(heads, source, base, run.full(heads, read.values, batch_size, task, progress))


class _Run:
    """One base run being patched: its inputs and answer targets."""

    def __init__(
        self,
        vlm: Any,
        inputs: dict,
        targets: torch.Tensor,
        scored: torch.Tensor,
        prompt_len: int,
        patch_from: int | None = None,
        embeds: torch.Tensor | None = None,
    ):
        self.vlm, self.inputs, self.targets, self.scored = vlm, inputs, targets, scored
        self.inputs["position_ids"] = vlm.position_ids(inputs)  # the suffix forwards slice them
        self.prompt_len = prompt_len
        self.start = first_after_image(vlm, inputs["input_ids"])
        self.patch_from = self.start if patch_from is None else patch_from
        self.embeds = embeds  # the LLM input, when every row starts from it
        self.total = inputs["input_ids"].shape[1]

    def _scores(self, logits: torch.Tensor) -> AnswerScores:
        rows = logits.shape[0]
        return answer_scores(logits, self.targets.expand(rows, -1), self.scored.expand(rows, -1))

    def _answer_at(self, offset: int) -> slice:
        s = self.prompt_len - 1 - offset
        return slice(s, s + self.targets.shape[1])

    def _patch(self, chunk: Sequence[Head], source: dict) -> HeadPatch:
        return HeadPatch([[h] for h in chunk], source, from_pos=self.patch_from, source_rows=[0] * len(chunk))

    def full(
        self, heads: Sequence[Head], source: dict, batch_size: int, task: str, progress: bool
    ) -> AnswerScores:
        """Each batch of heads as one full forward (the reference loop at ``batch_size=1``)."""
        parts = []
        for i in tqdm(
            range(0, len(heads), batch_size), desc=f"heads · {task}", disable=not progress, leave=False
        ):
            chunk = heads[i : i + batch_size]
            logits = self.vlm.forward(
                self._rows(len(chunk)), [self._patch(chunk, source)], self._answer_at(0)
            )
            parts.append(self._scores(logits))
        return _cat(parts)

    def _rows(self, n: int) -> dict:
        """The base run as ``n`` rows: its inputs, or its LLM input when :attr:`embeds` is set."""
        if self.embeds is None:
            return _stack_rows(*[self.inputs] * n)
        pos = self.vlm.position_ids(self.inputs)  # [1, S], or [3, 1, S] under M-RoPE
        return {
            "inputs_embeds": self.embeds.expand(n, -1, -1),
            "attention_mask": self.inputs["attention_mask"].expand(n, -1),
            "position_ids": pos.expand(*pos.shape[:-2], n, pos.shape[-1]),
        }

    def layer_grouped(
        self, heads: Sequence[Head], layers: Sequence[int], batch_size: int, task: str, progress: bool
    ):
        """Source and base (rows 0 and 1 of ``inputs``) share one prefix forward and one suffix
        forward, which give both scores, the source's head outputs and the base's layer outputs;
        then per layer ``l`` its heads, one per row, on the base's prefix with layers before
        ``l`` skipped. Returns the source, base and patched scores."""
        vlm, start = self.vlm, self.start
        prefix = vlm.prefix(self.inputs, start)
        step = StepInfo(0, self.total - start, self.total)
        read = HeadRead(layers)
        outputs = HiddenStates([f"llm.{la}" for la in range(vlm.n_layers)])
        logits = vlm.forward(
            suffix_inputs(self.inputs, prefix, 2, row=None),
            [read, outputs],
            self._answer_at(start),
            step,
        )
        source = {la: _absolute(v[:1], start) for la, v in read.values.items()}
        known = {la: outputs.values[f"llm.{la}"][1:].to(vlm.device, vlm.dtype) for la in range(vlm.n_layers)}
        order = sorted(range(len(heads)), key=lambda i: heads[i])
        parts, done = [], []
        for layer in tqdm(layers, desc=f"heads · {task}", disable=not progress, leave=False):
            mine = [i for i in order if heads[i][0] == layer]
            for j in range(0, len(mine), batch_size):
                idx = mine[j : j + batch_size]
                chunk = [heads[i] for i in idx]
                skip = LayerSkip({la: known[la] for la in range(layer)}, len(chunk))
                inputs = suffix_inputs(self.inputs, prefix, len(chunk), row=1)
                logits_p = vlm.forward(
                    inputs, [skip, self._patch(chunk, source)], self._answer_at(start), step
                )
                parts.append(self._scores(logits_p))
                done.extend(idx)
        patched = _cat(parts)
        back = torch.as_tensor(done).argsort()  # rows back in the order of ``heads``
        patched = AnswerScores(*(getattr(patched, f)[back] for f in _FIELDS))
        return self._scores(logits[:1]), self._scores(logits[1:]), patched


def _absolute(values: torch.Tensor, start: int) -> torch.Tensor:
    """Head outputs read on a suffix from ``start``, placed at their absolute positions (the
    prefix's, which no patch uses, as zeros) as :class:`HeadPatch` indexes them."""
    pad = values.new_zeros(values.shape[0], start, *values.shape[2:])
    return torch.cat([pad, values], 1)


_FIELDS = ("logprob", "n_tokens", "token_logprobs")


def _cat(parts: Sequence[AnswerScores]) -> AnswerScores:
    return AnswerScores(*(torch.cat([getattr(p, f) for p in parts]) for f in _FIELDS))
