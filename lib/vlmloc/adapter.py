"""Load a supported VLM wrapped in nnsight, with everything the chapters need to know about it.

    vlm = vlmloc.load_model("toy-llava")                 # or "llava-hf/llava-1.5-7b-hf", device="cuda"
    enc = vlm.encode([image], [vlm.prompt("localization", "star")])
    layout = vlm.layouts(enc, [image])[0]                # visual token positions and view grids
    texts = vlm.generate(enc)                            # greedy answers, decoded

Every intervention reaches the model through one door: :meth:`VLM.generate`, :meth:`VLM.logits`,
:meth:`VLM.score` and :meth:`VLM.hidden_states` take ``interventions=[...]`` (kinds in
:mod:`vlmloc.interventions`: token edits, attention knockout, head patches and ablations, reads),
each applied at the prefill only or at every generation step. ``vlm.model`` is the
``nnsight.TransformersModel`` they run in; ``vlm.sites`` its modules, from the family's table.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .families import FAMILIES, Family, Task
from .geometry import ImageLayout, View
from .interventions.base import Intervention, StepInfo, run_hooks
from .interventions.hidden import HiddenStates
from .interventions.tokens import InputEdit
from .metrics import Box
from .prefix_cache import PER_TOKEN, Prefix, build_prefix
from .processor_check import check_geometry, llava_image_processor
from .registry import ModelSpec, get_spec, weights_fingerprint
from .scoring import AnswerScores, answer_scores, scored_answer, teacher_forced_inputs
from .sites import SiteMap

log = logging.getLogger("vlmloc")

#: Answer tags that must survive decoding (InternVL marks them special).
_KEEP_TAGS = ("<ref>", "</ref>", "<box>", "</box>")

EmbedEdit = Callable[[torch.Tensor], torch.Tensor]


class VLM:
    """A loaded model: the nnsight wrapper, its processor and its family's knowledge."""

    def __init__(self, spec: ModelSpec, hf_model: Any, processor: Any, device: str):
        import nnsight

        self.spec = spec
        self._fingerprint: str | None = None
        self.family: Family = FAMILIES[spec.family]
        self.hf = hf_model
        self.processor = processor
        self.device = device
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # batched generation
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.model = nnsight.TransformersModel(hf_model, task="image-text-to-text", processor=processor)

    # --- facts ---------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def fingerprint(self) -> str:
        """Identifies the weights (see :func:`vlmloc.registry.weights_fingerprint`), computed once."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.spec.model_id)
        return self._fingerprint

    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def image_token_id(self) -> int:
        return self.family.image_token_id(self.config)

    @property
    def n_layers(self) -> int:
        return int(self.config.text_config.num_hidden_layers)

    @property
    def n_heads(self) -> int:
        return int(self.config.text_config.num_attention_heads)

    @property
    def head_dim(self) -> int:
        """Per-head width of the o_proj input (not hidden_size // heads: Qwen3 differs)."""
        return SiteMap(self.family.sites, self.hf).o_proj(0).in_features // self.n_heads

    @property
    def n_vision_layers(self) -> int:
        return len(SiteMap(self.family.sites, self.hf).vision_layers)

    @property
    def sites(self) -> SiteMap:
        """The family's modules on the nnsight envoy (use inside traces)."""
        return SiteMap(self.family.sites, self.model)

    @property
    def language_model(self):
        """The nnsight envoy of the decoder."""
        return self.sites.language_model

    @property
    def layers(self):
        """The nnsight envoys of the decoder layers."""
        return self.sites.decoder_layers

    # --- prompts and answers -------------------------------------------------------------------
    def prompt(self, task: Task, category: str = "") -> str:
        return self.family.chat_prompt(self.processor, self.family.question(task, category))

    def views(self, image_size: tuple[int, int]) -> list[View]:
        return self.family.views(self.config, self.processor, image_size)

    def parse_box(self, text: str, image_size: tuple[int, int]) -> Box | None:
        return self.family.parse_box(text, self.views(image_size), image_size)

    def format_box(self, box: Box, image_size: tuple[int, int], category: str) -> str:
        return self.family.format_box(box, self.views(image_size), image_size, category)

    # --- inputs --------------------------------------------------------------------------------
    def encode(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> Any:
        """Processor outputs for a batch (left padded), on the model's device and dtype."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        enc = self.processor(
            images=[im.convert("RGB") for im in images], text=list(prompts), padding=True, return_tensors="pt"
        )
        enc = enc.to(self.device)
        enc["pixel_values"] = enc["pixel_values"].to(self.dtype)
        return enc

    def layouts(self, enc: Any, images: Sequence[Image.Image]) -> list[ImageLayout]:
        """Per batch row: the visual token positions and the views they form."""
        out = []
        for row, im in enumerate(images):
            pos = (enc["input_ids"][row] == self.image_token_id).nonzero().squeeze(-1).cpu()
            out.append(ImageLayout(pos, self.views(im.size), im.size))
        return out

    def decode(self, ids: torch.Tensor) -> str:
        """Decode generated ids, dropping special tokens but keeping ``<ref>``/``<box>`` tags."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        for t in self.tokenizer.all_special_tokens:
            if t not in _KEEP_TAGS:
                text = text.replace(t, "")
        return text.strip()

    # --- running: the one door for interventions --------------------------------------------
    def position_ids(self, inputs: Any) -> torch.Tensor:
        """Position ids of a full forward of ``inputs`` (see :meth:`Family.position_ids`): ``[B, S]``,
        or ``[3, B, S]`` under M-RoPE (Qwen2.5-VL), where a position is not a sequence index."""
        return self.family.position_ids(self.hf, inputs)

    def input_embeddings(self, enc: Any) -> torch.Tensor:
        """The LLM input (token embeddings with the projected visual tokens merged in)."""
        with torch.no_grad(), self.model.trace(enc) as tracer:
            emb = self.language_model.inputs[1]["inputs_embeds"].save()
            tracer.stop()  # nothing after the LLM input is needed
        return emb

    @staticmethod
    def _kinds(edit: EmbedEdit | None, interventions: Sequence[Intervention]) -> list[Intervention]:
        return ([InputEdit(edit)] if edit is not None else []) + list(interventions)

    def prefix(self, enc: Any, length: int) -> Prefix:
        """The KV cache of the first ``length`` positions of ``enc`` (e.g. up to the end of the
        image span, ``min`` over rows), for :meth:`generate`'s ``prefix`` (see
        :func:`vlmloc.prefix_cache.build_prefix`)."""
        return build_prefix(self, enc, length)

    def generate(
        self,
        enc: Any,
        max_new_tokens: int | None = None,
        edit: EmbedEdit | None = None,
        interventions: Sequence[Intervention] = (),
        step_logits: list | None = None,
        prefix: Prefix | None = None,
    ) -> list[str]:
        """Greedy answers under ``interventions`` (``edit``: a shortcut for one :class:`InputEdit`).

        Each intervention applies at the prefill, and at every later step if it says so
        (``every_step``: a knockout must also hide the blocked keys from every generated token's
        query). Pass a list as ``step_logits`` to get each step's next-token logits ``[B, V]``.
        ``prefix`` (:meth:`prefix` of the same ``enc``) starts from its KV cache, so the prefill
        runs only the positions after it; the interventions must leave those positions alone.
        ``max_new_tokens`` defaults to the family's ``answer_tokens``.
        """
        max_new_tokens = max_new_tokens or self.family.answer_tokens
        kinds = self._kinds(edit, interventions)
        prompt_len = int(enc["input_ids"].shape[1])
        lm_head = self.sites.lm_head
        done = 0
        if prefix is None:
            args, kwargs = (enc,), {}
        else:
            if any(isinstance(k, InputEdit) for k in kinds):
                raise ValueError("an edit of the LLM input changes the prefix; generate without prefix=")
            done = prefix.length
            args = ()
            kwargs = {k: enc[k] for k in PER_TOKEN if k in enc}
            kwargs["past_key_values"] = prefix.for_generation()  # generate appends to it
            # the whole prompt's positions (generate slices off the cached part and extends them);
            # under M-RoPE they carry the image's offset (rope_deltas), which the suffix cannot know
            kwargs["position_ids"] = self.position_ids(enc)
        with (
            warnings.catch_warnings(),
            torch.no_grad(),
            self.model.generate(*args, **kwargs, max_new_tokens=max_new_tokens, do_sample=False) as tracer,
        ):
            # the open loop ends when generation stops; nnsight warns that a step was not reached
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            tokens = nnsight_save([])
            logits = nnsight_save([])
            for step in tracer.iter[:]:
                active = kinds if step == 0 else [k for k in kinds if k.every_step]
                q_len = prompt_len - done if step == 0 else 1
                run_hooks(self, active, StepInfo(step, q_len, prompt_len + step))
                last = lm_head.output[:, -1]
                tokens.append(last.argmax(-1))
                if step_logits is not None:
                    logits.append(last.float().cpu())
        if step_logits is not None:
            step_logits.extend(logits)
        ids = torch.stack(list(tokens), 1).cpu()
        return [self.decode(self._until_eos(row)) for row in ids]

    def _until_eos(self, ids: torch.Tensor) -> torch.Tensor:
        eos = self.hf.generation_config.eos_token_id
        eos = {eos} if isinstance(eos, int) else set(eos or [])
        for i, t in enumerate(ids.tolist()):
            if t in eos:
                return ids[:i]
        return ids

    def forward(
        self,
        inputs: Any,
        interventions: Sequence[Intervention] = (),
        logits_at: Any = None,
        step: StepInfo | None = None,
    ) -> torch.Tensor | None:
        """One traced forward of ``inputs`` (model kwargs) under ``interventions``.

        Returns the logits at positions ``logits_at`` (an index or slice of the sequence axis;
        all when ``None``), or nothing when ``logits_at is False`` (reads only). ``step``
        places the forward in a longer sequence (a suffix after a cached prefix); by default
        it is one prefill over the whole input. Autograd records the forward only when an
        intervention reads gradients (``needs_grad``, e.g. :class:`~vlmloc.interventions.HeadGradient`).
        """
        q_len = int((inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]).shape[1])
        step = step or StepInfo(0, q_len, q_len)
        if "past_key_values" not in inputs and "inputs_embeds" not in inputs:  # full: the family's positions
            inputs = {**inputs, "position_ids": self.position_ids(inputs)}
        inputs = _whole_under_mrope(inputs, q_len)
        grad = any(iv.needs_grad for iv in interventions)
        with torch.set_grad_enabled(grad), self.model.trace(**dict(inputs)) as tracer:
            run_hooks(self, list(interventions), step)
            if logits_at is False:
                tracer.stop()
            out = self.sites.lm_head.output
            out = (out if logits_at is None else out[:, logits_at]).save()
        return None if logits_at is False else out

    def logits(self, enc: Any, edit: EmbedEdit | None = None, interventions: Sequence[Intervention] = ()):
        """Next-token logits ``[B, S, V]`` of a single forward under ``interventions``."""
        return self.forward(enc, self._kinds(edit, interventions))

    def score(
        self,
        enc: Any,
        answers: Sequence[str],
        tasks: Task | Sequence[Task],
        interventions: Sequence[Intervention] = (),
    ) -> AnswerScores:
        """Teacher-forced log-probability and perplexity of ``answers`` after the prompts of ``enc``.

        ``tasks`` (one, or one per row) decides which answer tokens count
        (:func:`vlmloc.scoring.scored_answer`): the whole class name, or a box's coordinates.
        """
        tasks = [tasks] * len(answers) if isinstance(tasks, str) else list(tasks)
        if not len(answers) == len(tasks) == enc["input_ids"].shape[0]:
            raise ValueError(
                f"{enc['input_ids'].shape[0]} prompts, {len(answers)} answers, {len(tasks)} tasks"
            )
        parts = [scored_answer(self.tokenizer, t, a) for t, a in zip(tasks, answers, strict=True)]
        inputs, targets, valid = teacher_forced_inputs(
            enc, [p[0] for p in parts], self.tokenizer.pad_token_id
        )
        scored = torch.zeros_like(valid)
        for row, (_, m) in enumerate(parts):
            scored[row, : len(m)] = torch.as_tensor(m)
        s = enc["input_ids"].shape[1]
        logits = self.forward(inputs, interventions, logits_at=slice(s - 1, s - 1 + targets.shape[1]))
        return answer_scores(logits, targets, scored)

    def hidden_states(
        self,
        enc: Any,
        sites: Sequence[str],
        positions: Sequence[Any] | None = None,
        interventions: Sequence[Intervention] = (),
    ) -> dict[str, Any]:
        """Hidden states at ``sites`` for one batch, on the CPU (see :class:`HiddenStates`)."""
        read = HiddenStates(sites, positions)
        self.forward(enc, [*interventions, read], logits_at=False)
        return read.values


def nnsight_save(value: Any) -> Any:
    """``nnsight.save``: values created in a trace leave it only when saved."""
    import nnsight

    return nnsight.save(value)


def gpu_facts(device: str) -> tuple[str, bool]:
    """The name of the GPU ``device`` names and whether it has bfloat16.

    Compute capability 8.0 (Ampere) or newer: ``torch.cuda.is_bf16_supported()`` says True on a
    T4 too, where bfloat16 is emulated, slowly.
    """
    if not device.startswith("cuda"):
        return device, False
    index = torch.device(device).index or 0
    return torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index) >= (8, 0)


def resolve_dtype(requested: str | None, device: str) -> str:
    """The dtype a model loads in on ``device`` (see :func:`vlmloc.plan.choose_dtype`): ``"auto"``
    is bfloat16 where the GPU has it, float16 on an older GPU, float32 on the CPU; bfloat16 asked
    for on a GPU without it is a :class:`~vlmloc.plan.DTypeError`."""
    from .plan import choose_dtype

    name = requested or "auto"
    if device == "mps":  # Apple GPUs: half precision works, bfloat16 only on recent systems
        return "float16" if name == "auto" else choose_dtype(name, "cpu") if name == "float32" else name
    if device == "cpu" and name not in ("float32", "auto"):
        choose_dtype(name, device)  # an unknown name is still an error
        log.warning("half precision on a CPU is slow and inexact; using float32")
    gpu, bf16 = gpu_facts(device)
    return choose_dtype(name, device, bf16, gpu)


def load_model(
    model_id: str,
    device: str = "auto",
    dtype: str | None = None,
    attn_implementation: str | None = None,
    llava_preprocess: str = "pad",
    max_tiles: int | None = None,
    chapter: str | None = None,
    batch_size: int | None = None,
    chapter_params: Mapping[str, Any] | None = None,
) -> VLM:
    """Load a supported model wrapped in nnsight.

    ``dtype`` defaults to the model's (fp16 for LLaVA, ``"auto"`` for InternVL, fp32 for toys):
    ``"auto"`` is bfloat16 where the GPU has it, float16 on an older GPU (a T4), float32 on the CPU,
    where half precision is always replaced by float32. ``attn_implementation="eager"`` only where
    attention weights are read. ``llava_preprocess``: ``"pad"`` (LLaVA-1.5's own; the book's
    methods page, book/methods.md, "Models and views") or ``"crop"``. ``max_tiles``: InternVL's
    tiling limit (12 by default; fewer tiles, fewer visual tokens, less memory).

    On a GPU the weights go straight to it, shard by shard, without a second copy in host RAM.
    With ``chapter`` (its ``batch_size``, and ``chapter_params`` such as ``n_samples`` or chapter 4's
    ``control``) the chapter's plan is checked first (:func:`vlmloc.plan.check_fits`): on a GPU, or
    under a forced ``VLMLOC_MEMORY_GB`` budget, it prints the plan, and a chapter that cannot fit
    stops here, before anything loads, with one sentence saying what would fit.
    """
    from transformers import AutoProcessor

    spec = get_spec(model_id)
    from .plan import resolve_device

    dev = resolve_device(device)
    name = resolve_dtype(dtype or spec.default_dtype, dev)
    if max_tiles is not None and (
        spec.family != "internvl" or isinstance(max_tiles, bool) or int(max_tiles) < 1
    ):
        raise ValueError(
            f"max_tiles is InternVL's tile limit, a positive integer; got {max_tiles!r} for {model_id}"
        )
    if chapter is not None:
        from .plan import check_fits

        check_fits(model_id, chapter, device=dev, dtype=name, batch_size=batch_size, max_tiles=max_tiles,
                   attn_implementation=attn_implementation, **dict(chapter_params or {}))  # fmt: skip
    if spec.toy and not (Path(spec.source) / "config.json").exists():
        raise FileNotFoundError(
            f"the toy checkpoint {spec.source} is missing; reinstall vlmloc or retrain it with "
            f"python -m vlmloc.toys.train --family {spec.family} --out {spec.source}"
        )
    if llava_preprocess not in ("pad", "crop"):
        raise ValueError(f"llava_preprocess must be 'pad' or 'crop', got {llava_preprocess!r}")
    family = FAMILIES[spec.family]
    kwargs: dict[str, Any] = {"dtype": getattr(torch, name)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dev.startswith("cuda") and not spec.toy:
        # Straight to the GPU, shard by shard (needs accelerate): without a device map the weights
        # are materialised in host RAM first, 14 GB for LLaVA-1.5-7B, more than free Colab has.
        # "auto" spreads a 13B model over several GPUs when more than one is visible.
        several = dev == "cuda" and torch.cuda.device_count() > 1
        kwargs["device_map"] = "auto" if several else {"": dev}
    if spec.toy:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf = family.hf_class.from_pretrained(spec.source, **kwargs).eval()
    if "device_map" not in kwargs:
        hf = hf.to(dev)
    processor = AutoProcessor.from_pretrained(spec.source)
    if spec.family == "llava":  # pad or crop for real, whatever image processor the checkpoint names
        processor.image_processor = llava_image_processor(processor.image_processor, llava_preprocess)
    if max_tiles is not None:
        processor.image_processor.max_patches = int(max_tiles)
    vlm = VLM(spec, hf, processor, dev)
    vlm.geometry_check = check_geometry(vlm)  # processor calls only; GeometryError if the views are wrong
    return vlm


def _whole_under_mrope(inputs: Any, q_len: int) -> Any:
    """nnsight splits an encoding of text fields only (ids or embeddings, mask, positions) into
    rows along the first axis; M-RoPE positions (``[3, B, S]``) have their rows on the second. A
    full forward's ``cache_position`` (its sequence indices, what the model would use anyway) is
    a field nnsight passes through, so the call goes to the model whole."""
    pos = inputs.get("position_ids")
    if pos is None or pos.dim() != 3 or "past_key_values" in inputs or "cache_position" in inputs:
        return inputs
    return {**inputs, "cache_position": torch.arange(q_len, device=pos.device)}
