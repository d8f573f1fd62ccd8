"""Gradient attributions: which inputs, or which heads, a teacher-forced answer rests on.

Two methods, both first-order and both checked against what they approximate:

- **Integrated Gradients** over the visual tokens at the LLM input (Sundararajan et al., 2017;
  chapter 2): :func:`integrated_gradients`.
- **Attribution patching** of every attention head (Nanda 2023; Syed et al. 2023; chapter 6):
  :func:`attribution_patching`, the first-order estimate of patching each head from a source
  run into a base run, checked against :func:`finite_difference`.

Integrated Gradients. For one image and prompt, let ``x`` be the visual tokens at the LLM input
(after the projector), ``x'`` a baseline (the book's methods page, chapter 2: the mean visual
embedding at every visual position) and ``f`` the log-probability of a teacher-forced answer
(classification: the class name; localization: the ground-truth box in the model's own format).
The attribution of hidden unit ``d`` of token ``i`` is

    a_id = (x_id - x'_id) * mean_{k=1..m} df/dx_id (x' + alpha_k (x - x')),   alpha_k = (k - 1/2) / m

(the midpoint Riemann sum of the path integral). *Completeness*: sum_id a_id ~ f(x) - f(x'),
exactly as m grows; :class:`IGResult` carries both sides so a reader can check it.

The ``m`` interpolation steps run as one batch (or chunks of ``step_batch``) through the
Hugging Face model ``vlm.hf`` with ``inputs_embeds``; only the visual rows are interpolated, the
text rows stay as they are.

Attribution patching reaches the heads through the one door (:meth:`vlmloc.adapter.VLM.forward`)
with two intervention kinds: :class:`~vlmloc.interventions.HeadRead` reads the source run's head
outputs, :class:`~vlmloc.interventions.HeadGradient` holds the base run's in the graph for the
backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .interventions.base import StepInfo
from .interventions.heads import Head, HeadGradient, HeadPatch, HeadRead, all_heads
from .prefix_cache import suffix_inputs
from .scoring import answer_ids, answer_scores, scored_answer, teacher_forced_inputs
from .sweeps import first_after_image

__all__ = [
    "AttributionScores",
    "IGResult",
    "answer_log_prob",
    "attribution_patching",
    "finite_difference",
    "integrated_gradients",
    "teacher_forced_answer",
    "top_k",
]


@dataclass
class IGResult:
    """Attributions of one image's visual tokens (in the order of ``layout.positions``)."""

    per_token: torch.Tensor  # (n_visual,) signed: sum over hidden units of a_id
    per_token_abs: torch.Tensor  # (n_visual,) the methods page's score: sum over hidden units of |a_id|
    f_input: float  # f(x): log-probability of the answer with the real visual tokens
    f_baseline: float  # f(x'): with every visual token replaced by the baseline
    steps: int

    @property
    def completeness_gap(self) -> float:
        """``sum(a) - (f(x) - f(x'))``; shrinks towards 0 as ``steps`` grows."""
        return float(self.per_token.sum()) - (self.f_input - self.f_baseline)


def teacher_forced_answer(vlm, task: str, category: str, box, image_size: tuple[int, int]) -> str:
    """The answer whose log-probability IG explains (the book's methods page, chapter 2)."""
    if task == "classification":
        return category
    return vlm.format_box(box, image_size, category)


def _prepare(vlm, image, prompt: str, answer: str):
    """LLM input rows of prompt + answer, the visual positions and the answer ids."""
    enc = vlm.encode([image], [prompt])
    if enc["input_ids"].shape[0] != 1:
        raise ValueError("IG runs one image at a time")
    prompt_emb = vlm.input_embeddings(enc)[0].detach()  # (S, H): visual tokens merged in
    ans = torch.tensor(answer_ids(vlm.tokenizer, answer), dtype=torch.long, device=vlm.device)
    ans_emb = vlm.hf.get_input_embeddings()(ans).detach()
    emb = torch.cat([prompt_emb, ans_emb.to(prompt_emb.dtype)], 0)
    pos = (enc["input_ids"][0] == vlm.image_token_id).nonzero().squeeze(-1)
    return emb, pos, ans, prompt_emb.shape[0]


def _log_prob(vlm, emb: torch.Tensor, ans: torch.Tensor, n_prompt: int) -> torch.Tensor:
    """Per batch row, the summed log-probability of the answer tokens (teacher forced)."""
    b, s, _ = emb.shape
    n = len(ans)
    out = vlm.hf(
        inputs_embeds=emb,
        attention_mask=torch.ones(b, s, dtype=torch.long, device=emb.device),
        logits_to_keep=n + 1,
        use_cache=False,
    )
    # positions n_prompt - 1 ... n_prompt + n - 2 predict the answer tokens
    logits = out.logits[:, :n].float()
    lp = torch.log_softmax(logits, -1)
    return lp.gather(-1, ans.view(1, n, 1).expand(b, n, 1)).squeeze(-1).sum(-1)


def answer_log_prob(vlm, image, prompt: str, answer: str, visual: torch.Tensor | None = None) -> float:
    """log p(answer | image, prompt) with the visual tokens at the LLM input, or ``visual`` in their place."""
    emb, pos, ans, n_prompt = _prepare(vlm, image, prompt, answer)
    if visual is not None:
        emb = emb.clone()
        emb[pos] = visual.to(emb.device, emb.dtype).expand(len(pos), -1)
    with torch.no_grad():
        return float(_log_prob(vlm, emb[None], ans, n_prompt)[0])


def integrated_gradients(
    vlm,
    image,
    prompt: str,
    answer: str,
    baseline: torch.Tensor,
    steps: int = 50,
    step_batch: int | None = None,
) -> IGResult:
    """IG attributions of the visual tokens to ``log p(answer | image, prompt)``.

    ``baseline`` is one vector (the mean visual embedding, put at every visual position) or a
    ``(n_visual, H)`` tensor. ``steps`` interpolation points (the book's methods page, chapter 2: 50) are evaluated in
    chunks of ``step_batch`` (default: all at once).
    """
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    emb, pos, ans, n_prompt = _prepare(vlm, image, prompt, answer)
    dtype = emb.dtype
    x = emb[pos].float()  # (n_vis, H)
    base = baseline.to(emb.device).float()
    base = base.reshape(1, -1).expand_as(x) if base.dim() == 1 else base
    if base.shape != x.shape:
        raise ValueError(f"baseline has shape {tuple(base.shape)}, the visual tokens {tuple(x.shape)}")
    diff = x - base
    alphas = (torch.arange(steps, dtype=torch.float32, device=emb.device) + 0.5) / steps
    chunk = step_batch or steps
    grad_sum = torch.zeros_like(x)
    for i in range(0, steps, chunk):
        a = alphas[i : i + chunk]
        path = (base[None] + a.view(-1, 1, 1) * diff[None]).to(dtype).requires_grad_(True)
        rows = emb[None].expand(len(a), -1, -1).clone()
        rows[:, pos] = path
        with torch.enable_grad():
            f = _log_prob(vlm, rows, ans, n_prompt)
            (g,) = torch.autograd.grad(f.sum(), path)
        grad_sum += g.float().sum(0)
    attr = diff * grad_sum / steps  # (n_vis, H)
    with torch.no_grad():
        ends = emb[None].expand(2, -1, -1).clone()
        ends[1, pos] = base.to(dtype)
        f_in, f_base = _log_prob(vlm, ends, ans, n_prompt).tolist()
    return IGResult(
        per_token=attr.sum(-1).cpu(),
        per_token_abs=attr.abs().sum(-1).cpu(),
        f_input=f_in,
        f_baseline=f_base,
        steps=steps,
    )


def top_k(scores: torch.Tensor, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, sorted by index (ties broken by position, deterministic)."""
    k = max(0, min(int(k), len(scores)))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores.detach().cpu().numpy(), kind="stable")
    return np.sort(order[:k]).astype(np.int64)


# --------------------------------------------------------------------------- attribution patching


@dataclass
class AttributionScores:
    """One pair: P on source and base, and each head's first-order change of the mean log-probability."""

    heads: list[Head]
    p_src: float
    p_base: float
    dlogp: torch.Tensor  # [heads]: grad(mean log p) . (z_src - z_base), summed over positions and head dims

    @property
    def p_patched_estimate(self) -> torch.Tensor:
        """``P_base * exp(-dlogp)``: the first-order change of log P, mapped through the exponential."""
        return self.p_base * torch.exp(-self.dlogp)


def attribution_patching(
    vlm: Any, source_enc: Any, base_enc: Any, answer: str, task: str
) -> AttributionScores:
    """First-order estimate of patching every head from source into base (attribution patching).

    With ``z_l`` the input of layer ``l``'s ``o_proj`` (head ``h`` is its slice ``[h d, (h+1) d)``,
    the site of :class:`~vlmloc.interventions.HeadPatch`) and ``f`` the mean log-probability of
    the scored answer tokens (``f = -log P``), the estimate for head ``(l, h)`` is

        dlogp[l, h] = sum_{t >= first after image, i in head h} df/dz_l[t, i] * (z_src - z_base)_l[t, i]

    from one forward and one backward of the base run (its image prefix runs once without
    gradients: nothing before the patched positions can change) plus the source forward that
    reads ``z_src``. The gradient is the total derivative (through every later layer), taken in
    the unpatched base run.
    """
    if not torch.equal(source_enc["input_ids"], base_enc["input_ids"]):
        raise ValueError("source and base must have the same tokens (same prompt, same image size)")
    if source_enc["input_ids"].shape[0] != 1:
        raise ValueError("attribution_patching takes one source/base pair at a time")
    layers = list(range(vlm.n_layers))
    read = HeadRead(layers)
    p_src = float(vlm.score(source_enc, [answer], task, [read]).perplexity[0])
    ids, mask = scored_answer(vlm.tokenizer, task, answer)
    inputs, targets, _ = teacher_forced_inputs(base_enc, [ids], vlm.tokenizer.pad_token_id)
    start = first_after_image(vlm, inputs["input_ids"])
    inputs["position_ids"] = vlm.position_ids(inputs)  # the family's positions (3-D under M-RoPE)
    held = HeadGradient(layers)
    f = _base_suffix_logprob(vlm, inputs, start, base_enc["input_ids"].shape[1], targets, mask, held)
    grads, z_base = held.gradients(f), held.values
    n_heads, d = vlm.n_heads, vlm.head_dim
    out = []
    for la in layers:
        g = grads[la]
        z_src = read.values[la][:, start:].to(z_base[la].device, z_base[la].dtype)
        prod = (g.float() * (z_src - z_base[la]).float()).reshape(*g.shape[:2], n_heads, d)
        out.append(prod.sum((0, 1, 3)))
    return AttributionScores(
        all_heads(vlm.n_layers, n_heads), p_src, float(torch.exp(-f.detach())), torch.cat(out).cpu()
    )


def _base_suffix_logprob(
    vlm: Any,
    inputs: dict,
    start: int,
    prompt_len: int,
    targets: torch.Tensor,
    mask: list,
    held: HeadGradient,
) -> torch.Tensor:
    """The base run's mean log-probability of the answer, with autograd on after the image prefix:
    the prefix runs once from its cache, the suffix under ``held``, which keeps the heads in the graph."""
    prefix = vlm.prefix(inputs, start)
    total = inputs["input_ids"].shape[1]
    s = prompt_len - 1 - start
    logits = vlm.forward(
        suffix_inputs(inputs, prefix, 1),
        [held],
        slice(s, s + targets.shape[1]),
        StepInfo(0, total - start, total),
    )
    with torch.enable_grad():
        return answer_scores(logits, targets, torch.as_tensor([mask])).mean_logprob[0]


def finite_difference(
    vlm: Any, source_enc: Any, base_enc: Any, answer: str, task: str, head: Head, eps: float = 1e-2
) -> float:
    """Central difference of the mean log-probability along ``z_base -> z_src`` for one head.

    Patches ``head`` with ``z_base + t (z_src - z_base)`` at ``t = +-eps`` (positions after the
    image, through :class:`~vlmloc.interventions.HeadPatch`) and returns
    ``(f(+eps) - f(-eps)) / (2 eps)``: what :func:`attribution_patching` estimates for that head.
    """
    layer = int(head[0])
    src, base = HeadRead([layer]), HeadRead([layer])
    vlm.score(source_enc, [answer], task, [src])
    vlm.score(base_enc, [answer], task, [base])
    start = first_after_image(vlm, base_enc["input_ids"])
    f = []
    for t in (eps, -eps):
        mix = {layer: base.values[layer] + t * (src.values[layer] - base.values[layer])}
        patch = HeadPatch([[(layer, int(head[1]))]], mix, from_pos=start)
        f.append(float(vlm.score(base_enc, [answer], task, [patch]).mean_logprob[0]))
    return (f[0] - f[1]) / (2 * eps)
