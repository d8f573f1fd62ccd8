"""Supported model ids, in one table.

Each entry says which family a model belongs to, where its weights come from (a hub id, or the
package's own toy checkpoint), its default dtype and its approximate GPU memory. Register a new
checkpoint with :func:`register`; a new family also needs a module in ``vlmloc/families``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TOY_DIR = Path(__file__).parent / "toys" / "checkpoints"


@dataclass(frozen=True)
class ModelSpec:
    """One supported checkpoint."""

    model_id: str
    family: str
    source: str  # hub id or local folder
    default_dtype: str = "float16"  # or "auto" (see vlmloc.plan.choose_dtype)
    weights_gb: float | None = None  # memory of the weights in half precision, GB (python -m vlmloc.plan)
    toy: bool = False
    #: a toy of the same family whose tokens know more: chapter 2 runs its shuffles and padding
    #: beside this model's (the weakly grounded default toys name their precise twins)
    contrast: str | None = None


REGISTRY: dict[str, ModelSpec] = {}


class UnknownModelError(ValueError):
    """Raised for a model id we have no adapter for."""


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.model_id] = spec
    return spec


def model_ids() -> list[str]:
    return sorted(REGISTRY)


def get_spec(model_id: str) -> ModelSpec:
    """The spec of a model id; an unknown id raises an error that lists the supported ids."""
    if not isinstance(model_id, str) or model_id not in REGISTRY:
        raise UnknownModelError(
            f"unknown model_id {model_id!r}; supported ids are: {', '.join(model_ids())} "
            "(register another checkpoint of a supported family with vlmloc.registry.register)"
        )
    return REGISTRY[model_id]


def weights_fingerprint(model_id: str) -> str:
    """A short id of the weights a model id loads, for result configs.

    Hub checkpoints are fixed, so their id is enough. Toy checkpoints are retrained in place, so
    theirs is a hash of the weight files: results of an older toy are then never resumed by
    mistake (a changed fingerprint changes the results store's config key).
    """
    import hashlib

    spec = get_spec(model_id)
    files = sorted(Path(spec.source).glob("*.safetensors")) if spec.toy else []
    if not files:
        return spec.source
    digest = hashlib.sha1()
    for f in files:
        digest.update(f.read_bytes())
    return f"{spec.model_id}@{digest.hexdigest()[:10]}"


for _spec in (
    ModelSpec("llava-hf/llava-1.5-7b-hf", "llava", "llava-hf/llava-1.5-7b-hf", "float16", 14.1),
    ModelSpec("llava-hf/llava-1.5-13b-hf", "llava", "llava-hf/llava-1.5-13b-hf", "float16", 26.7),
    # "auto": bfloat16 where the GPU has it; float16 on a T4, which has none
    ModelSpec("OpenGVLab/InternVL3_5-8B-HF", "internvl", "OpenGVLab/InternVL3_5-8B-HF", "auto", 17.0),
    ModelSpec("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct", "bfloat16", 7.5),
    ModelSpec("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct", "bfloat16", 16.6),
    # the defaults: weakly grounded towers (tokens say what is in their patch, not where inside it)
    ModelSpec(
        "toy-llava",
        "llava",
        str(TOY_DIR / "toy-llava"),
        "float32",
        0.01,
        toy=True,
        contrast="toy-llava-precise",
    ),
    # toy-internvl names no contrast to keep CI's time in check: pass
    # contrast_model_id="toy-internvl-precise" to chapter 2 to run it
    ModelSpec("toy-internvl", "internvl", str(TOY_DIR / "toy-internvl"), "float32", 0.01, toy=True),
    # Qwen2.5-VL's real pipeline (dynamic resolution, window-attention tower, M-RoPE) at toy sizes
    ModelSpec("toy-qwen", "qwen2_5_vl", str(TOY_DIR / "toy-qwen"), "float32", 0.01, toy=True),
    # the contrast: towers trained on ~2 px sub-cell coverage, tokens that know sub-patch edges
    ModelSpec("toy-llava-precise", "llava", str(TOY_DIR / "toy-llava-precise"), "float32", 0.01, toy=True),
    ModelSpec(
        "toy-internvl-precise", "internvl", str(TOY_DIR / "toy-internvl-precise"), "float32", 0.01, toy=True
    ),
):
    register(_spec)
