"""What every chapter notebook does before its story starts, in one call.

A chapter's first cells used to repeat the same 30 lines: collect the parameters into a dict,
validate them, check the chapter's own ones, silence the libraries' progress bars and print which
versions ran. :func:`start` does all of it from the chapter's schema in
:mod:`vlmloc.chapter_registry`::

    params = preamble.start("01_data_and_baselines", globals())  # a bad parameter stops here

and :func:`record_config` builds the key a chapter's records are stored under once the model is
loaded (the same dict, key for key, as the notebooks built by hand: records resume on it). The
Colab install cell stays in each notebook, visible: it must run before ``vlmloc`` can be imported.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

from .chapter_registry import get
from .experiments.base import record_config  # the notebooks' record config, one call away
from .params import check_schema
from .registry import model_ids

__all__ = ["check", "record_config", "stamp", "start"]


def check(chapter: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The chapter's parameters, read from ``namespace`` (the notebook's globals) and checked.

    Raises :class:`vlmloc.params.ParameterError` with one sentence naming the first bad value.
    """
    return check_schema(get(chapter).params, namespace, model_ids())


def stamp(device: str) -> str:
    """When, on which device and with which versions this notebook ran (two lines)."""
    import platform
    from datetime import UTC, datetime

    import nnsight
    import torch
    import transformers

    from . import __version__
    from .plan import resolve_device

    where = resolve_device(device)
    gpu = f" ({torch.cuda.get_device_name()})" if where.startswith("cuda") else ""
    return (
        f"executed {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {where}{gpu}, {torch.get_num_threads()} CPU threads\n"
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"nnsight {nnsight.__version__}, vlmloc {__version__}"
    )


def _quiet(loggers: tuple[str, ...]) -> None:
    """No download bars, no widget warning, and no per-answer log lines the chapter counts anyway."""
    import transformers

    warnings.filterwarnings("ignore", message="IProgress not found")  # plain-text progress bars are fine
    transformers.utils.logging.disable_progress_bar()
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)


def start(chapter: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Check the chapter's parameters, quiet the libraries and print the versions stamp.

    Returns the parameters by name. Nothing is loaded or written: a bad value stops here, in the
    cell right after the parameters, before any data or model is touched.
    """
    params = check(chapter, namespace)
    _quiet(get(chapter).quiet)
    print(stamp(params.get("device", "cpu")))
    return params
