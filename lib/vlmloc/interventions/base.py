"""Interventions as kinds, and the one executor that applies them inside an nnsight trace.

An :class:`Intervention` says *what* to change as a list of :class:`Hook`\\ s, each bound to a
:class:`~vlmloc.sites.Site` (the LLM input, one layer's attention mask, one layer's head
outputs, a hidden state to read) and says *when*: at the prefill only (``every_step = False``)
or at every generation step. :func:`run_hooks` is the only code that touches the model: it
groups the hooks by site, visits the sites in the order the forward pass reaches them (nnsight
refuses out-of-order access) and hands each hook the value at its site. Because of that, kinds
compose: a token edit, a knockout in layers 4-7 and a head patch in layer 5 run in one forward
without knowing of each other.

Why the executor owns the dangerous parts:

- *Masks.* transformers builds one attention mask and passes the same tensor to every layer
  (``None`` under sdpa without padding). The executor gives mask hooks a fresh copy (built as an
  explicit causal mask when it was ``None``) and installs it for that layer alone; no hook ever
  edits the shared one.
- *Heads.* A head's output is the slice ``[h * d, (h + 1) * d)`` of ``o_proj``'s input with
  ``d = o_proj.in_features // heads`` (not ``hidden_size // heads``: Qwen3 differs). Head hooks
  get that input viewed as ``[batch, query, heads, d]`` and edit it in place (or hand back a
  tensor that replaces it).
- *Gradients.* An intervention with ``needs_grad`` (:class:`~vlmloc.interventions.HeadGradient`)
  makes the door run its forward with autograd on; every other forward runs without.
- *Steps.* :class:`StepInfo` tells a hook which absolute positions its queries and keys have,
  at the prefill and at every decoding step with a KV cache.
- *Accounting.* Each time a hook is handed its value, the executor counts it on the intervention
  (:attr:`Intervention.calls`). A null edit must go through the same hooks as a real one; the
  count is how a check proves that it did, instead of passing because nothing was installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..sites import Site, SiteMap

__all__ = ["Hook", "Intervention", "StepInfo", "causal_mask", "run_hooks"]


@dataclass(frozen=True)
class StepInfo:
    """Where one forward sits in the sequence: ``q_len`` new positions, ``k_len`` keys in all.

    ``index`` 0 is the prefill (and the only step of a single forward); decoding step ``s`` has
    ``q_len = 1`` and ``k_len = prompt + s``. Queries occupy absolute positions
    ``q_start .. k_len - 1``.
    """

    index: int
    q_len: int
    k_len: int

    @property
    def q_start(self) -> int:
        return self.k_len - self.q_len

    def query_positions(self, device: Any = None) -> torch.Tensor:
        return torch.arange(self.q_start, self.k_len, device=device)


#: What a hook receives and may return: ``fn(value, step)``; a returned tensor replaces the value
#: (LLM input, attention mask), ``None`` leaves it (reads; head outputs are edited in place).
HookFn = Callable[[Any, StepInfo], Any]


@dataclass(frozen=True)
class Hook:
    """One function at one :class:`~vlmloc.sites.Site` (``Site("heads", 5)``; a plain
    ``("heads", 5)`` is taken as one). Within a site, hooks run in ``rank`` order (edits 0,
    reads 1), so a read sees the edited value."""

    site: Site
    fn: HookFn
    rank: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", Site.parse(self.site))


class Intervention:
    """Base of every kind. Subclasses set ``every_step`` and implement :meth:`hooks`.

    :attr:`calls` counts, per site, how many times :func:`run_hooks` handed one of this
    intervention's hooks its value (over every forward and generation step it took part in).
    """

    #: False: applies to the prefill (or the single forward) only; True: every generation step.
    every_step: bool = False
    #: True: the forward it takes part in records gradients (a kind that reads them).
    needs_grad: bool = False

    def hooks(self, vlm: Any) -> list[Hook]:
        raise NotImplementedError

    @property
    def calls(self) -> dict[Site, int]:
        """``{site: number of calls}`` of this intervention's hooks, kept by the executor.

        Created on first use, so subclasses need not call ``super().__init__``.
        """
        counts = self.__dict__.get("_calls")
        if counts is None:
            counts = self.__dict__["_calls"] = {}
        return counts

    @property
    def n_calls(self) -> int:
        """All hook calls of this intervention: 0 means it changed nothing because it never ran."""
        return sum(self.calls.values())


def causal_mask(batch: int, step: StepInfo, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """The mask transformers would use for unpadded causal attention, made explicit.

    ``bool`` (True = may attend) for sdpa; for eager, an additive float mask (0 or the dtype's
    minimum), since eager *adds* the mask to the scores.
    """
    allowed = torch.ones(step.q_len, step.k_len, dtype=torch.bool, device=device).tril(step.q_start)
    allowed = allowed[None, None].expand(batch, 1, -1, -1)
    if dtype == torch.bool:
        return allowed.clone()
    out = torch.zeros(batch, 1, step.q_len, step.k_len, dtype=dtype, device=device)
    return out.masked_fill(~allowed, torch.finfo(dtype).min)


def _grouped(hooks: Sequence[Hook]) -> list[tuple[Site, list[Hook]]]:
    groups: dict[Site, list[Hook]] = {}
    for h in hooks:
        groups.setdefault(h.site, []).append(h)
    return [(s, sorted(groups[s], key=lambda h: h.rank)) for s in sorted(groups, key=lambda s: s.order)]


def _mask_dtype(vlm: Any, hidden: torch.Tensor) -> torch.dtype:
    impl = getattr(vlm.hf.config.get_text_config(), "_attn_implementation", None) or "sdpa"
    if impl not in ("sdpa", "eager"):
        raise NotImplementedError(
            f"attention knockout supports sdpa and eager attention, not {impl!r}; "
            "load the model with attn_implementation='sdpa' or 'eager'"
        )
    return torch.bool if impl == "sdpa" else hidden.dtype


def _run_mask(vlm: Any, sm: SiteMap, layer: int, hooks: list[Hook], step: StepInfo) -> None:
    attn = sm.attention(layer)
    args, kwargs = attn.inputs
    mask = kwargs.get("attention_mask")
    if mask is None:
        hidden = kwargs["hidden_states"]
        mask = causal_mask(hidden.shape[0], step, _mask_dtype(vlm, hidden), hidden.device)
    else:
        mask = mask.clone()  # the same tensor serves every layer: never edit it in place
    for h in hooks:
        out = h.fn(mask, step)
        mask = mask if out is None else out
    attn.inputs = (args, {**kwargs, "attention_mask": mask})


def _run_value(module_value: Any, hooks: list[Hook], step: StepInfo) -> Any:
    value = module_value[0] if isinstance(module_value, tuple) else module_value
    for h in hooks:
        out = h.fn(value, step)
        value = value if out is None else out
    return value


def _run_heads(o_proj: Any, hooks: list[Hook], step: StepInfo, n_heads: int, head_dim: int) -> None:
    """Head hooks get ``o_proj``'s input viewed as ``[batch, query, heads, d]`` and edit it in
    place; one that returns a tensor of that shape makes it ``o_proj``'s input (a gradient read
    hands back the view it keeps, so the rest of the forward is computed from that very tensor)."""
    z = o_proj.input
    view = z.view(*z.shape[:-1], n_heads, head_dim)
    replaced = False
    for h in hooks:
        out = h.fn(view, step)
        if out is not None:
            view, replaced = out, True
    if replaced:
        o_proj.input = view.reshape(z.shape)


def run_hooks(vlm: Any, interventions: Sequence[Intervention], step: StepInfo) -> None:
    """Apply every hook of ``interventions`` at ``step``, in forward order. Call inside a trace.

    Every call of a hook is counted on its intervention (:attr:`Intervention.calls`), once its
    site has run: a site the forward never reaches (a generation step after the last) counts none.
    """
    owned = [(iv, h) for iv in interventions for h in iv.hooks(vlm)]
    if not owned:
        return
    owner = {id(h): iv for iv, h in owned}
    sm = SiteMap(vlm.family.sites, vlm.model)
    n_heads, head_dim = vlm.n_heads, vlm.head_dim
    for site, group in _grouped([h for _, h in owned]):
        kind = site.kind
        if kind == "embeds":
            lm = sm.language_model
            args, kwargs = lm.inputs
            emb = _run_value(kwargs["inputs_embeds"], group, step)
            lm.inputs = (args, {**kwargs, "inputs_embeds": emb})
        elif kind == "skip":
            sm.decoder_layer(site.layer).skip(group[-1].fn(None, step))
        elif kind == "mask":
            _run_mask(vlm, sm, site.layer, group, step)
        elif kind == "heads":
            _run_heads(sm.o_proj(site.layer), group, step, n_heads, head_dim)
        elif kind == "tower":
            _run_value(sm.vision_layer(site.layer).output, group, step)
        elif kind == "projector":
            _run_value(sm.projector.output, group, step)
        else:  # layer_out
            _run_value(sm.decoder_layer(site.layer).output, group, step)
        for h in group[-1:] if kind == "skip" else group:  # a skip runs its last hook only
            calls = owner[id(h)].calls
            calls[site] = calls.get(site, 0) + 1
