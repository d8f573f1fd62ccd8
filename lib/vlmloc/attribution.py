"""Integrated Gradients over the visual tokens at the LLM input (Sundararajan et al., 2017).

For one image and prompt, let ``x`` be the visual tokens at the LLM input (after the projector),
``x'`` a baseline (the book's methods page, chapter 2: the mean visual embedding at every visual position) and ``f`` the
log-probability of a teacher-forced answer (classification: the class name; localization: the
ground-truth box in the model's own format). The attribution of hidden unit ``d`` of token ``i`` is

    a_id = (x_id - x'_id) * mean_{k=1..m} df/dx_id (x' + alpha_k (x - x')),   alpha_k = (k - 1/2) / m

(the midpoint Riemann sum of the path integral). *Completeness*: sum_id a_id ~ f(x) - f(x'),
exactly as m grows; :class:`IGResult` carries both sides so a reader can check it.

The ``m`` interpolation steps run as one batch (or chunks of ``step_batch``) through the
Hugging Face model ``vlm.hf`` with ``inputs_embeds``; only the visual rows are interpolated, the
text rows stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .scoring import answer_ids

__all__ = ["IGResult", "answer_log_prob", "integrated_gradients", "teacher_forced_answer", "top_k"]


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
