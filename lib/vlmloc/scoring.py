"""Teacher-forced answer scores: the log-probability and perplexity of a given answer.

This is the P of causal mediation (the book's methods page, chapter 6): the perplexity of the ground-truth answer,
teacher forced after the prompt. Classification scores the class name; localization scores the
box in the model's own format, *coordinate tokens only* (the brackets, commas and ``<ref>``
tags are formatting the model gets right whatever it sees). The answer's tokens follow the
prompt directly, as the toys were trained and as :mod:`vlmloc.attribution` scores them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "AnswerScores",
    "answer_ids",
    "answer_scores",
    "position_ids",
    "scored_answer",
    "teacher_forced_inputs",
]

_COORDINATE = re.compile(r"^[\s▁Ġ]*[0-9][0-9.]*$")


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """The answer's token ids as they follow the prompt (no special tokens added)."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(
            f"the answer {answer!r} tokenizes to nothing; a score needs at least one answer token"
        )
    return list(ids)


def scored_answer(tokenizer: Any, task: str, answer: str) -> tuple[list[int], list[bool]]:
    """Answer ids and which of them count: all for classification, coordinates for localization."""
    ids = answer_ids(tokenizer, answer)
    if task == "classification":
        return ids, [True] * len(ids)
    if task != "localization":
        raise ValueError(f"unknown task {task!r}; use classification or localization")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    mask = [
        bool(_COORDINATE.match(t or "")) and inside
        for t, inside in zip(tokens, _in_box(tokenizer, answer, ids), strict=True)
    ]
    if not any(mask):
        raise ValueError(f"the answer {answer!r} has no coordinate token; is it a box in the model's format?")
    return ids, mask


def _in_box(tokenizer: Any, answer: str, ids: list[int]) -> list[bool]:
    """Per answer token, whether it lies inside the answer's first ``[a, b, c, d]``: a tokenizer that
    cuts digits one by one (Qwen2's) makes the ``2`` of ``"bbox_2d"`` a digit token, not a coordinate.
    All ``True`` when the answer has no such box or the tokenizer gives no character offsets."""
    from .answers import first_box_span

    span = first_box_span(answer)
    if span is None or not getattr(tokenizer, "is_fast", False):
        return [True] * len(ids)
    enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) != list(ids):
        return [True] * len(ids)
    return [span[0] <= a and b <= span[1] for a, b in enc["offset_mapping"]]


@dataclass
class AnswerScores:
    """Per batch row: summed log-probability of the scored answer tokens and their count."""

    logprob: torch.Tensor  # [B]
    n_tokens: torch.Tensor  # [B]
    token_logprobs: torch.Tensor  # [B, A]; 0 where a token is not scored or is padding

    @property
    def mean_logprob(self) -> torch.Tensor:
        return self.logprob / self.n_tokens.clamp(min=1)

    @property
    def perplexity(self) -> torch.Tensor:
        """``exp(-mean log p)`` over the scored tokens: the P of the book's methods page."""
        return torch.exp(-self.mean_logprob)

    def __len__(self) -> int:
        return len(self.logprob)


def teacher_forced_inputs(
    enc: Any, answers: Sequence[Sequence[int]], pad_id: int
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Model inputs of prompt + answer for a left-padded prompt batch, the targets and their positions.

    Answers are right-padded after the (left-padded) prompts, so row ``b``'s answer token ``j``
    sits at ``S + j`` for every row and is predicted at ``S + j - 1``. Position ids follow the
    attention mask (as ``generate`` computes them), so a padded row scores what it scores alone.
    Returns ``(inputs, targets [B, A], valid [B, A])``.
    """
    ids, am = enc["input_ids"], enc["attention_mask"]
    b, s = ids.shape
    width = max(len(a) for a in answers)
    targets = torch.full((b, width), pad_id, dtype=ids.dtype, device=ids.device)
    valid = torch.zeros(b, width, dtype=torch.bool, device=ids.device)
    for row, a in enumerate(answers):
        targets[row, : len(a)] = torch.as_tensor(list(a), dtype=ids.dtype)
        valid[row, : len(a)] = True
    mask = torch.cat([am, valid.to(am.dtype)], 1)
    inputs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    for k in ("mm_token_type_ids", "token_type_ids"):  # per-token types: the answer is text (0)
        if k in inputs:
            inputs[k] = torch.cat([inputs[k], inputs[k].new_zeros(b, width)], 1)
    inputs.update(
        input_ids=torch.cat([ids, targets], 1), attention_mask=mask, position_ids=position_ids(mask)
    )
    return inputs, targets, valid


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (left padding gets 1), as ``generate`` makes them."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def answer_scores(logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor) -> AnswerScores:
    """Scores from the logits that predict each answer token (``[B, A, V]``, aligned with ``targets``)."""
    lp = torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    lp = torch.where(scored, lp, torch.zeros_like(lp))
    return AnswerScores(lp.sum(-1), scored.sum(-1), lp)
