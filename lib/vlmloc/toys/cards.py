"""The toys' model cards: MODEL_CARD.md written from a checkpoint's training.json.

:mod:`vlmloc.toys.train` records each phase's arguments, times and held-out metrics in
``training.json``; this module turns them into the card beside the weights (what the tower was
taught, how grounded its tokens are, the training history).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..synthetic import COLOUR_LINKED

__all__ = ["GROUNDING_TEXT", "grounding", "model_card", "phase_history", "stage1_target", "write_card"]


def write_card(folder: str | Path) -> Path:
    """(Re)write a checkpoint's MODEL_CARD.md from its training.json, e.g. after the card format
    changed: ``python -c "from vlmloc.toys.cards import write_card; write_card('DIR')"``."""
    from transformers import AutoConfig

    folder = Path(folder)
    card = json.loads((folder / "training.json").read_text())
    path = folder / "MODEL_CARD.md"
    path.write_text(model_card(card, AutoConfig.from_pretrained(folder), name=folder.name))
    return path


def _fmt_stage1(log: dict) -> str:
    if not log:
        return "not run in this phase (tower from the earlier phase)"
    text = f"objectness {100 * log['patch_objectness_acc']:.1f}%, class {100 * log['patch_class_acc']:.1f}%"
    if "sub_cell_share_mae" in log:
        what = "sub-cell" if log.get("sub_cells_per_patch", 1) > 1 else "patch"
        text += (
            f", {what} coverage error {log['sub_cell_share_mae']:.3f} "
            f"({log['sub_cell_share_mae_on_edges']:.3f} on partly covered {what}s)"
        )
    return text


def phase_history(init_from: str | None) -> list[dict]:
    """Earlier training phases of a warm-started model (their args and times), oldest first."""
    record = Path(init_from or "") / "training.json"
    if not init_from or not record.exists():
        return []
    old = json.loads(record.read_text())
    phase = {k: old.get(k) for k in ("args", "seconds", "stage1", "stage2", "held_out")}
    return old.get("history", []) + [phase]


def _fmt_training_time(card: dict) -> str:
    """This phase's minutes, then the earlier phases' minutes oldest first, then the total."""
    minutes = [phase["seconds"]["total"] / 60 for phase in card.get("history", [])]
    text = f"{card['seconds']['total'] / 60:.1f} min on {card['torch_threads']} CPU thread(s)"
    if minutes:
        text += (
            " in this phase; earlier phases, oldest first: " + ", ".join(f"{m:.1f}" for m in minutes) + " min"
        )
    return text + f" ({sum(minutes) + card['seconds']['total'] / 60:.0f} min in all)"


GROUNDING_TEXT = {
    "weak": "**Weakly grounded tokens.** The tower's last stage-1 targets were patch-level only "
    "(objectness, class, covered share of the whole patch): a token says what is in its patch, not "
    "where inside it an edge runs, as CLIP-like features are. A box has to come from which tokens "
    "hold the object (containerization).",
    "precise": "**Tokens that know sub-patch edges.** The tower's stage-1 targets included the "
    "covered share of every ~2 px sub-cell of each patch, so an object token also says where inside "
    "its patch the object's edge runs. Kept as a contrast to the weakly grounded default toys.",
}


def stage1_target(phase: dict) -> str | None:
    """The coverage target a phase trained the tower on, read from its stage-1 log: ``"patch"``
    (objectness and class, with or without the whole patch's covered share), ``"sub-cells"``
    (~2 px sub-cells), or None when the phase did not train the tower."""
    log = phase.get("stage1") or {}
    if not log:
        return None
    return "sub-cells" if log.get("sub_cells_per_patch", 1) > 1 else "patch"


def grounding(card: dict) -> str:
    """``weak`` or ``precise``: the coverage target of the newest phase that trained the tower."""
    for phase in [card, *reversed(card.get("history", []))]:
        target = stage1_target(phase)
        if target:
            return "precise" if target == "sub-cells" else "weak"
    return "weak"


def _rope_theta(text_config) -> float:
    params = getattr(text_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(text_config, "rope_theta", 10000.0)))


def model_card(card: dict, config, name: str | None = None) -> str:
    """A short human-readable card from the training record."""
    h = card.get("held_out") or {}
    loc, cls = h.get("localization", {}), h.get("classification", {})
    tc, vc = config.text_config, config.vision_config
    lines = [
        f"# {name or 'toy-' + card['family']}",
        "",
        f"A {config.__class__.__name__.replace('Config', '')} toy VLM trained from scratch on synthetic scenes by "
        "`python -m vlmloc.toys.train` (see the vlmloc README). Not a model of the world: a model of shapes.",
        "",
        GROUNDING_TEXT[grounding(card)],
        "",
        f"- decoder: {tc.model_type}, {tc.num_hidden_layers} layers, {tc.num_attention_heads} heads, "
        f"width {tc.hidden_size}, rotary base {_rope_theta(tc):g}",
        f"- vision tower: {vc.model_type}, {vc.num_hidden_layers} layers, width {vc.hidden_size}",
        f"- parameters: {card['n_parameters']:,}",
        f"- training scenes: seed {card['args']['seed']}, {card['args']['n_scenes']} scenes, "
        f"{_colour_share(card):.0f}% of objects in their class's colour; "
        f"stage 1 {_steps_done(card, 'stage1')} steps, stage 2 {_steps_done(card, 'stage2')} steps",
        f"- stage 1 (patch heads, training scenes): {_fmt_stage1(card.get('stage1') or {})}",
        f"- training time: {_fmt_training_time(card)}",
        "",
        f"Held out ({h and loc.get('n')} queries of {card['args'].get('n_eval', 500)} scenes, seed EVAL_SEED, greedy):",
        "",
        "| classification | Loc | IoU>=0.5 | IoU>=0.7 | IoU>=0.9 |",
        "|---|---|---|---|---|",
        f"| {cls.get('rate', float('nan')):.1f}% | {loc.get('loc', float('nan')):.1f}% | {loc.get('iou@0.5', float('nan')):.1f}% "
        f"| {loc.get('iou@0.7', float('nan')):.1f}% | {loc.get('iou@0.9', float('nan')):.1f}% |",
        "",
    ]
    by_colour = h.get("classification_by_colour") or {}
    if by_colour:
        parts = [
            f"{by_colour[k]['rate']:.1f}% of the {by_colour[k]['n']} {label}"
            for k, label in (
                ("class_colour", "in their class's colour"),
                ("other_colour", "in another colour"),
            )
            if k in by_colour
        ]
        lines += [f"Classification by the object's colour: {'; '.join(parts)}.", ""]
    return "\n".join(lines + _phase_table(card))


def _phase_table(card: dict) -> list[str]:
    """Every training phase, oldest first, with its scenes, steps, time and held-out result."""
    rows = [
        "Training phases, oldest first (each after the first warm-starts from the one before):",
        "",
        "| phase | seed | scenes | class colour | tower | stage 1 steps | stage 2 steps | min | classification | Loc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, ph in enumerate([*card.get("history", []), card], 1):
        a, h = ph["args"], ph.get("held_out") or {}
        cls = f"{h['classification']['rate']:.1f}%" if h else "-"
        loc = f"{h['localization']['loc']:.1f}%" if h else "-"
        rows.append(
            f"| {k} | {a['seed']} | {a['n_scenes']} | {_colour_share(ph):.0f}% | {_tower(ph)} "
            f"| {_steps_done(ph, 'stage1')} | {_steps_done(ph, 'stage2')} "
            f"| {ph['seconds']['total'] / 60:.0f} | {cls} | {loc} |"
        )
    rows.append("")
    for k, ph in enumerate([*card.get("history", []), card], 1):
        if ph["args"].get("rope_theta") is not None:
            rows += [
                f"Phase {k} set the decoder's rotary base to {ph['args']['rope_theta']:g} (`--rope-theta`).",
                "",
            ]
    return rows


def _tower(phase: dict) -> str:
    """What a phase did to the vision tower: started it anew (and with which target), trained it
    on, or kept it frozen."""
    a = phase["args"]
    fresh = a.get("decoder_from") or not a.get("init_from")
    target = stage1_target(phase)
    if target is None:
        return "new, untrained" if fresh else "kept"
    return f"{'new' if fresh else 'trained on'}, {target}"


def _steps_done(phase: dict, stage: str) -> int:
    """Steps a phase ran in ``stage`` ('stage1' or 'stage2'): its log's count, else the requested
    number (a skipped stage has an empty log and 0 requested)."""
    return (phase.get(stage) or {}).get("steps_done", phase["args"][f"{stage}_steps"])


def _colour_share(phase: dict) -> float:
    """Percent of a phase's training objects in their class's colour (phases before the
    ``--colour-linked`` option used the default)."""
    return 100 * phase["args"].get("colour_linked", COLOUR_LINKED)
