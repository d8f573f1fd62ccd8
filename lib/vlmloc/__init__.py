"""vlmloc: reproduce *Mechanisms of Object Localization in Vision-Language Models* with nnsight.

Public entry points::

    vlm = vlmloc.load_model("toy-llava")            # any id in vlmloc.model_ids()
    samples = vlmloc.load_coco(annotations, images)  # COCO or the synthetic scenes
"""

import warnings as _warnings

with _warnings.catch_warnings():
    # tqdm.auto warns once, on import, when ipywidgets is missing and falls back to text bars. The
    # chapters switch progress bars off, so the warning would only clutter their first output.
    _warnings.filterwarnings("ignore", message="IProgress not found")
    import tqdm.auto  # noqa: F401

from .adapter import VLM, load_model
from .data import DataError, Sample, check_images, load_coco, resolve_data
from .registry import ModelSpec, UnknownModelError, get_spec, model_ids, register

__all__ = [
    "VLM",
    "DataError",
    "ModelSpec",
    "Sample",
    "UnknownModelError",
    "check_images",
    "get_spec",
    "load_coco",
    "load_model",
    "model_ids",
    "register",
    "resolve_data",
]
__version__ = "0.1.0"
