"""What chapter 6's three ways to every head's MF cost: FLOPs, batch and GPU hours, before a run.

The exact sweep (one full forward per head), the exact sweep with the image prefix reused, and
attribution patching: their passes are :func:`vlmloc.plan.sweep_passes`', their time the plan's
roofline (:func:`vlmloc.plan.pass_seconds`), their batch the largest the GPU's memory holds by
:func:`vlmloc.plan.row_bytes`. :func:`cost_table` puts the real models side by side on one GPU;
:func:`toy_cost_table` sets the toy's FLOPs beside the seconds a run measured. Chapter 6's report
re-exports them under the chapter's names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .paper import INTERNVL_8B, LLAVA_7B, MEDIATION_PAIRS
from .plan import (
    GPU,
    H100,
    METHODS,
    REAL_CONFIGS,
    TASKS,
    Geometry,
    ModelShape,
    largest_fitting,
    pass_flops,
    pass_seconds,
    row_bytes,
    shape_from_config,
    shape_of,
    sweep_passes,
    tower_flops,
)

__all__ = [
    "GPU",
    "H100",
    "METHODS",
    "REAL_GEOMETRIES",
    "Geometry",
    "cost_table",
    "geometry_of",
    "method_costs",
    "toy_cost_table",
]

#: LLaVA-1.5-7B and InternVL-3.5-8B in half precision (chapter 6's cost table): from
#: :data:`REAL_CONFIGS`, InternVL with the 12 tiles + thumbnail of a 640x480 image (3,328 tokens).
REAL_GEOMETRIES: dict[str, Geometry] = {
    m: shape_from_config(m, REAL_CONFIGS[m]).geometry(2) for m in (LLAVA_7B, INTERNVL_8B)
}


def geometry_of(vlm: Any, prefix: int, suffix: Mapping[str, int], views: int = 1) -> Geometry:
    """A loaded model's geometry (from its config) with token counts measured on its inputs."""
    tc, vc = vlm.config.text_config, vlm.config.vision_config
    n_params = sum(p.numel() for p in vlm.hf.parameters())
    side = vlm.family.tower_side(vlm.config, vlm.processor)  # patches per side of one view
    tokens = side * side + (1 if hasattr(vc, "image_size") else 0)  # CLIP and InternViT add a class token
    return Geometry(
        vlm.model_id, layers=vlm.n_layers, heads=vlm.n_heads,
        kv_heads=int(getattr(tc, "num_key_value_heads", None) or vlm.n_heads), hidden=int(tc.hidden_size),
        head_dim=vlm.head_dim, ffn=int(tc.intermediate_size), vocab=int(tc.vocab_size), prefix=prefix,
        suffix=dict(suffix),
        vision_flops=tower_flops(int(vc.num_hidden_layers), tokens, int(vc.hidden_size), int(vc.intermediate_size), views),
        weight_bytes=n_params * next(vlm.hf.parameters()).element_size(),
        dtype_bytes=next(vlm.hf.parameters()).element_size(),
    )  # fmt: skip


def _sweep_batch(g: Geometry, method: str, task: str, gpu: GPU | None, shape: ModelShape | None) -> int:
    """The largest batch of a sweep's head rows the GPU holds (every head at once without a GPU)."""
    if method == "attribution patching":
        return 1
    if gpu is None:
        return g.n_heads_total
    free = gpu.usable_bytes - g.weight_bytes
    if shape is None:  # a bare geometry: each row holds its KV cache and its activations
        total = g.prefix + g.suffix[task]
        per_row = g.kv_bytes(total) + g.act_bytes(total if method == "exact sweep" else g.suffix[task])
        return max(1, min(g.n_heads_total, int(free // per_row)))

    def fits(b: int) -> bool:
        passes = sweep_passes(g, method, 1, task, b)
        return max(row_bytes(shape, p, g.dtype_bytes).total * p.batch for p in passes) <= free

    return max(1, largest_fitting(fits, g.n_heads_total))


def method_costs(
    g: Geometry,
    gpu: GPU | None,
    n_pairs: int = MEDIATION_PAIRS,
    tasks: Sequence[str] = TASKS,
    shape: ModelShape | None = None,
) -> list[dict]:
    """FLOPs, batch and (with a ``gpu``) estimated time of the three methods for ``n_pairs`` pairs x ``tasks``.

    The passes are :func:`sweep_passes`'; the batch is the largest the GPU's memory holds by
    :func:`row_bytes` (with the model's ``shape``), every head at once without a GPU.
    """
    out = []
    for method in METHODS:
        flops, forwards, seconds, batch = 0.0, 0, 0.0, 1
        for task in tasks:
            passes = sweep_passes(g, method, n_pairs, task, _sweep_batch(g, method, task, gpu, shape))
            batch = max(p.batch for p in passes)
            flops += sum(p.groups * p.rows * pass_flops(g, p) for p in passes)
            forwards += sum(p.calls for p in passes)
            if gpu is not None:
                seconds += sum(pass_seconds(g, p, gpu) for p in passes)
        entry = {
            "model": g.name,
            "method": method,
            "TFLOP": flops / 1e12,
            "batch": batch,
            "forwards": forwards,
        }
        if gpu is not None:
            entry["GPU hours"] = seconds / 3600
        out.append(entry)
    return out


def cost_table(gpu: GPU = H100, n_pairs: int = MEDIATION_PAIRS) -> Any:
    """Estimated cost of each method for ``n_pairs`` pairs x 2 tasks on the real models, one ``gpu``."""
    import pandas as pd

    rows = [r for m, g in REAL_GEOMETRIES.items() for r in method_costs(g, gpu, n_pairs, shape=shape_of(m))]
    return pd.DataFrame(rows).set_index(["model", "method"])


def toy_cost_table(toy: Geometry, measured: Mapping[str, float], n_pairs: int, batch: int) -> Any:
    """The toy's FLOPs per method beside the seconds this run measured (CPU), and the rate they imply."""
    import pandas as pd

    rows = []
    for r in method_costs(toy, None, n_pairs):
        sec = measured.get(r["method"])
        # as run here: the plain sweep was timed one head per forward, the prefix-reusing one batches a layer
        r["batch"] = min(batch, toy.heads) if "prefix" in r["method"] else 1
        r["measured s"] = sec
        r["GFLOP/s"] = r["TFLOP"] * 1e3 / sec if sec else float("nan")
        rows.append(r)
    return pd.DataFrame(rows).set_index(["model", "method"])
