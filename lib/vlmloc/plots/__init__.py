"""Figures of the book, out of the notebooks' way: each chapter shows one call per figure."""

from .common import *  # noqa: F403
from .containers import *  # noqa: F403
from .head_ablation import *  # noqa: F403
from .knockout import *  # noqa: F403
from .mediation import *  # noqa: F403
from .position import *  # noqa: F403
from .views import *  # noqa: F403
