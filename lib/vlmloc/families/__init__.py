"""Model families; see ``README.md`` here for how to add one."""

from .base import CLASSIFICATION_Q, LOCALIZATION_Q, TASKS, Family, Sites, Task
from .internvl import INTERNVL, InternVLFamily
from .llava import LLAVA, LlavaFamily
from .qwen2_5_vl import QWEN25VL, Qwen25VLFamily

FAMILIES: dict[str, Family] = {LLAVA.name: LLAVA, INTERNVL.name: INTERNVL, QWEN25VL.name: QWEN25VL}

__all__ = [
    "CLASSIFICATION_Q",
    "FAMILIES",
    "INTERNVL",
    "LLAVA",
    "LOCALIZATION_Q",
    "QWEN25VL",
    "TASKS",
    "Family",
    "InternVLFamily",
    "LlavaFamily",
    "Qwen25VLFamily",
    "Sites",
    "Task",
]
