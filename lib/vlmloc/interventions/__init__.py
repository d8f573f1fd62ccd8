"""Interventions on a VLM, as kinds applied through one door (``VLM.generate / logits / score``).

- :mod:`.tokens`: edits of the visual tokens at the LLM input (replace, copy, permute, pad) and
  the token sets they use (chapters 1-3);
- :mod:`.attention`: attention knockout over layer windows, held at every generation step;
- :mod:`.heads`: per-head read, gradient, patch (also batched sweeps) and ablation;
- :mod:`.hidden`: hidden states of every site, streamed to the CPU;
- :mod:`.base`: the hook executor that applies any mix of them in forward order.
"""

from .attention import AttentionKnockout, layer_windows
from .base import Hook, Intervention, StepInfo, run_hooks
from .heads import HeadAblation, HeadGradient, HeadPatch, HeadRead, all_heads
from .hidden import HiddenStates
from .tokens import (
    InputEdit,
    TokenEdit,
    apply_edits,
    cached_mean_visual_embedding,
    copy_from,
    grown_indices,
    mean_visual_embedding,
    pad_with_object_copies,
    pad_within_views,
    permute,
    random_indices,
    register_indices,
    replace_with,
    shuffle_within_views,
)

__all__ = [
    "AttentionKnockout",
    "HeadAblation",
    "HeadGradient",
    "HeadPatch",
    "HeadRead",
    "HiddenStates",
    "Hook",
    "InputEdit",
    "Intervention",
    "StepInfo",
    "TokenEdit",
    "all_heads",
    "apply_edits",
    "cached_mean_visual_embedding",
    "copy_from",
    "grown_indices",
    "layer_windows",
    "mean_visual_embedding",
    "pad_with_object_copies",
    "pad_within_views",
    "permute",
    "random_indices",
    "register_indices",
    "replace_with",
    "run_hooks",
    "shuffle_within_views",
]
