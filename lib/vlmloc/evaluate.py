"""Batched greedy evaluation with per-sample records written incrementally to the results store.

A condition is a named way of running the model (baseline, an ablation, a shuffle) with a config
that keys its records: rerunning resumes where it stopped, and a changed config starts afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from .adapter import VLM, Prefix
from .data import Sample
from .families import Task
from .geometry import ImageLayout
from .interventions import Intervention, TokenEdit, apply_edits
from .metrics import box_area, class_mentioned, iou, localization_summary, rate_summary
from .store import ResultsStore

log = logging.getLogger("vlmloc.evaluate")

#: Builds the edit of one sample from its layout and batch row (None: no edit).
EditFor = Callable[[Sample, ImageLayout], TokenEdit | None]
#: Builds the interventions of one batch from its samples and layouts, in batch-row order
#: (e.g. an :class:`~vlmloc.interventions.AttentionKnockout` whose keys are each row's positions,
#: or the same :class:`~vlmloc.interventions.HeadAblation` for every batch).
InterventionsFor = Callable[[Sequence[Sample], Sequence[ImageLayout]], Sequence[Intervention]]
#: The cached prefix of one encoded batch (see :meth:`VLM.prefix`), or None to run it in full.
PrefixFor = Callable[[Sequence[Sample], Any, Sequence[ImageLayout]], Prefix | None]


def score(vlm: VLM, sample: Sample, task: Task, answer: str) -> dict:
    """One record's scores: classification match, or parsed box, IoU and predicted box area."""
    if task == "classification":
        return {"correct": class_mentioned(answer, sample.category)}
    box = vlm.parse_box(answer, (sample.width, sample.height))
    if box is None:
        log.info("unparsable answer for %s counted as a failure: %r", sample.sample_id, answer)
        return {"box": None, "iou": None, "box_area": None}
    return {
        "box": [round(float(c), 2) for c in box],
        "iou": iou(box, sample.box),
        "box_area": 100 * box_area(box) / (sample.width * sample.height),
    }


def run_condition(
    vlm: VLM,
    samples: Sequence[Sample],
    task: Task,
    store: ResultsStore,
    condition: str,
    config: dict,
    batch_size: int = 8,
    edit_for: EditFor | None = None,
    max_new_tokens: int | None = None,
    progress: bool = True,
    interventions_for: InterventionsFor | None = None,
    prefix_for: PrefixFor | None = None,
) -> list[dict]:
    """Evaluate ``samples`` on ``task`` under a condition; returns all records (resumed ones too).

    ``edit_for`` edits the LLM input per sample; ``interventions_for`` builds any other
    interventions per batch (they reach :meth:`VLM.generate` as ``interventions=``);
    ``prefix_for`` may hand back the batch's cached prefix (:meth:`VLM.prefix`), valid only when
    the interventions change nothing before it.
    """
    # The weights' fingerprint keys the records too: a retrained model never reuses stale ones.
    log_ = store.condition(f"{task}-{condition}", {"task": task, "weights": vlm.fingerprint, **config})
    by_id = {s.sample_id: s for s in samples}
    todo = [by_id[i] for i in log_.pending(list(by_id))]
    bar = tqdm(
        total=len(samples),
        initial=len(samples) - len(todo),
        desc=f"{condition} · {task}",
        disable=not progress,
    )
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        images = [s.load_image() for s in chunk]
        prompts = [vlm.prompt(task, s.category) for s in chunk]
        enc = vlm.encode(images, prompts)
        edit, extra = None, {}
        layouts = vlm.layouts(enc, images) if edit_for or interventions_for or prefix_for else None
        if edit_for is not None:
            edit = apply_edits([edit_for(s, lay) for s, lay in zip(chunk, layouts, strict=True)])
        if interventions_for is not None:
            extra["interventions"] = list(interventions_for(chunk, layouts))
        if prefix_for is not None and (prefix := prefix_for(chunk, enc, layouts)) is not None:
            extra["prefix"] = prefix
        answers = vlm.generate(enc, max_new_tokens=max_new_tokens, edit=edit, **extra)
        for s, p, a in zip(chunk, prompts, answers, strict=True):
            rec = {
                "sample_id": s.sample_id,
                "category": s.category,
                "size": s.size_class,
                "prompt": p,
                "answer": a,
            }
            log_.append({**rec, **score(vlm, s, task, a)})
        bar.update(len(chunk))
    bar.close()
    wanted = set(by_id)
    return [r for r in log_.records() if r["sample_id"] in wanted]


def summarize(records: Sequence[dict], task: Task) -> dict:
    """Aggregates in percent: ``{"rate", "se", "n"}`` for classification, Loc etc. for localization."""
    if task == "classification":
        return rate_summary([bool(r["correct"]) for r in records])
    out = localization_summary([r["iou"] for r in records])
    areas = [r["box_area"] for r in records if r.get("box_area") is not None]
    out["box_area"] = sum(areas) / len(areas) if areas else float("nan")
    out["unparsable"] = sum(r["iou"] is None for r in records)
    return out
