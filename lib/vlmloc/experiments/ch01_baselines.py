"""Chapter 1, data and baselines: the unedited model on both tasks, the yardstick of every later chapter.

The baseline is the :class:`~vlmloc.experiments.base.Experiment` runner's ``baseline`` condition;
this module adds what chapter 1 reports about it beyond Loc and Cls: the IoU success rates at
each threshold, the mean IoU and the share of answers without a box. The object-removal control
set is built by :mod:`vlmloc.control_set`; tables and findings are in :mod:`vlmloc.report.ch01`.

    exp = Baselines(vlm, samples, RunParams(config=config, seed=seed), store)
    records = exp.baseline_records()       # {task: records}, resumed from the store
    baseline = baseline_summary(records)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..evaluate import summarize
from ..families import Task
from ..metrics import THRESHOLDS
from .base import Experiment

__all__ = ["Baselines", "baseline_summary", "chapter_summary"]


def baseline_summary(records: Mapping[Task, Sequence[dict]]) -> dict:
    """``{"loc", "loc_se", "iou@0.5", ..., "cls", "cls_se", "n"}`` in percent from both tasks' records."""
    loc = summarize(records["localization"], "localization")
    cls = summarize(records["classification"], "classification")
    out = {"loc": loc["loc"], "loc_se": loc["loc_se"]}
    out.update({f"iou@{t}": loc[f"iou@{t}"] for t in THRESHOLDS})
    out.update(
        {
            "mean_iou": loc["mean_iou"],
            "unparsable": int(loc["unparsable"]),
            "cls": cls["rate"],
            "cls_se": cls["se"],
            "n": int(loc["n"]),
        }
    )
    return out


class Baselines(Experiment):
    """Chapter 1's experiment: the baseline condition on both tasks, resumably."""

    def baseline_records(self, progress: bool = True) -> dict[Task, list[dict]]:
        """``{task: records}`` of the unedited model, run (or read back from the store) once."""
        self.baseline(progress)
        return self.task_records("baseline")

    def summary(self) -> dict:
        """:func:`baseline_summary` of the records (run :meth:`baseline_records` first)."""
        return baseline_summary(self.task_records("baseline"))


def chapter_summary(
    model_id: str,
    config: Mapping,
    n_samples: int,
    baseline: Mapping,
    by_size: Any,
    control_set: Mapping,
) -> dict:
    """The chapter's summary JSON: the run's keys (from its record ``config``), the baseline, by size, the control set.

    ``n_samples`` is the objects evaluated (fewer than asked when the data holds fewer);
    ``by_size`` is :meth:`Baselines.by_size`'s table.
    """
    return dict(
        model_id=model_id, weights=config["model"], dtype=config["dtype"], data=config["data"],
        n_samples=n_samples, seed=config["seed"],
        baseline={k: baseline[k] for k in ("loc", "loc_se", "cls", "cls_se", "iou@0.5", "iou@0.7", "iou@0.9",
                                           "mean_iou", "unparsable", "n")},
        by_size=by_size.reset_index().to_dict(orient="records"),
        control_set=dict(control_set),
    )  # fmt: skip
