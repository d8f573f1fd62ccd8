"""Model families; see ``README.md`` here for how to add one."""

from .base import CLASSIFICATION_Q, LOCALIZATION_Q, TASKS, Family, Sites, Task
from .internvl import INTERNVL, InternVLFamily
from .llava import LLAVA, LlavaFamily

FAMILIES: dict[str, Family] = {LLAVA.name: LLAVA, INTERNVL.name: INTERNVL}

__all__ = [
    "CLASSIFICATION_Q",
    "FAMILIES",
    "INTERNVL",
    "LLAVA",
    "LOCALIZATION_Q",
    "TASKS",
    "Family",
    "InternVLFamily",
    "LlavaFamily",
    "Sites",
    "Task",
]
