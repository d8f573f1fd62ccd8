"""The GPU plan: real shapes from their configs, InternVL's tile count, the memory model against what
the tiny models at the real geometry allocate, dtype "auto", and refusing what cannot fit before
anything loads.

The calibration counts tensor bytes, not seconds: a ``TorchDispatchMode`` adds up the storages every
operation creates while they are alive (CPU tensors have no allocator statistics), so the peak is
that of the model's own tensors. The inputs, made before the count starts, are added.
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from pathlib import Path

import pytest
import torch
import vlmloc
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from vlmloc import gpu_cost, registry
from vlmloc import plan as P
from vlmloc.paper import INTERNVL_8B, LLAVA_7B, MEDIATION_PAIRS, N_HEADS, N_LAYERS
from vlmloc.params import ParameterError, validate_params
from vlmloc.registry import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
#: The memory model must land within this factor of what the tiny models allocate.
FACTOR = 2.0


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("model_id", list(P.REAL_CONFIGS))
def test_real_shapes_agree_with_the_registry_and_the_paper(model_id):
    shape = P.shape_of(model_id)
    spec = registry.get_spec(model_id)
    half_gb = shape.n_params() * 2 / 1e9
    assert half_gb == pytest.approx(spec.weights_gb, rel=0.03), (model_id, half_gb)
    if model_id in N_LAYERS:
        assert (shape.layers, shape.heads) == (N_LAYERS[model_id], N_HEADS[model_id])


def test_real_geometry_counts_internvl_tiles_for_a_coco_image():
    internvl = P.shape_of(INTERNVL_8B)
    assert internvl.views() == 13 and internvl.visual_tokens() == 13 * 256  # 4 x 3 tiles + thumbnail
    assert gpu_cost.REAL_GEOMETRIES[INTERNVL_8B].prefix == 5 + 3328
    assert gpu_cost.REAL_GEOMETRIES[LLAVA_7B].prefix == 5 + 576
    six = internvl.with_tiles(6)
    assert six.views() == 7 and six.n_params() == internvl.n_params()  # 3 x 2 tiles + thumbnail


@pytest.mark.parametrize("max_tiles", [12, 6, 2, 1])
@pytest.mark.parametrize("size", [(640, 480), (300, 900), (1000, 200)])
def test_internvl_tile_count_is_the_processors(tiny_internvl, max_tiles, size):
    ip = tiny_internvl.processor.image_processor
    before = ip.max_patches
    ip.max_patches = max_tiles
    try:
        enc = tiny_internvl.encode([Image.new("RGB", size)], [tiny_internvl.prompt("classification")])
    finally:
        ip.max_patches = before
    shape = P.shape_of(tiny_internvl.model_id, max_tiles)
    assert int((enc["input_ids"] == tiny_internvl.image_token_id).sum()) == shape.visual_tokens(size)
    assert enc["pixel_values"].shape[0] == shape.views(size)


def test_qwen_shapes_count_transformers_own_model():
    """The released configs' layout (text fields at the top level) builds the real models on the
    meta device (no weights): the plan counts their parameters exactly, and a 640x480 image is
    644x476 px, 46 x 34 patches, 23 x 17 = 391 tokens."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    for model_id in (P.QWEN_3B, P.QWEN_7B):
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**P.REAL_CONFIGS[model_id]))
        shape = P.shape_of(model_id)
        assert shape.n_params() == sum(p.numel() for p in model.parameters()), model_id
        assert shape.projector_params() == sum(p.numel() for p in model.model.visual.merger.parameters())
        assert shape.grid() == (34, 46) and shape.patches() == 1564 and shape.visual_tokens() == 391
    assert gpu_cost.REAL_GEOMETRIES[LLAVA_7B].prefix == 5 + 576  # the others' unchanged


@pytest.mark.parametrize("size", [(640, 480), (300, 900), (1000, 200), (2000, 3000)])
def test_qwen_window_attention_is_transformers_partition(size):
    """Query-key pairs of the tower: 4 blocks of full attention, 28 within each window, the windows
    as transformers' own ``get_vision_window_index`` cuts the patch grid (``cu_window_seqlens``)."""
    from transformers.vision_utils import get_vision_window_index

    shape = P.shape_of(P.QWEN_7B)
    rows, cols = shape.grid(size)
    _, cu = get_vision_window_index(torch.tensor([[1, rows, cols]]), shape.merge, shape.window, shape.patch)
    windows = int(((cu[1:] - cu[:-1]).long() ** 2).sum())
    n = rows * cols
    assert shape.tower_attention(size) == 4 * n * n + 28 * windows
    assert windows < n * n / 10  # 8 x 8-patch windows: the 28 blocks cost a fraction of full attention


@pytest.mark.parametrize("size", [P.PLAN_IMAGE, (300, 900), (1000, 200)])
def test_qwen_tokens_and_parameters_are_the_tiny_models(tiny_qwen, size):
    """The tiny Qwen2.5-VL at the real geometry: its saved config and processor settings give a
    shape with its exact parameter count, and the processor's image tokens, grid and pixel values."""
    shape = P.shape_of(tiny_qwen.model_id)
    assert (shape.min_pixels, shape.max_pixels) == (56 * 56, 28 * 28 * 16384)
    assert shape.n_params() == sum(p.numel() for p in tiny_qwen.hf.parameters())
    enc = tiny_qwen.encode([Image.new("RGB", size)], [tiny_qwen.prompt("classification")])
    assert int((enc["input_ids"] == tiny_qwen.image_token_id).sum()) == shape.visual_tokens(size)
    assert enc["image_grid_thw"].tolist() == [[1, *shape.grid(size)]]
    assert enc["pixel_values"].numel() == shape.pixel_values(size)


# --------------------------------------------------------------------------- calibration


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by storages that operations create while the mode is on."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.refs: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = id(st)
                if key not in self.refs:
                    n = st.nbytes()
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    self.refs[key] = weakref.ref(st, lambda _r, key=key, n=n: self._free(key, n))
        return out

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self.refs.pop(key, None)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def _calibrate(vlm, batch: int = 2, new_tokens: int = 6) -> dict[str, tuple[float, float]]:
    """``{what: (measured bytes, planned bytes)}`` of one model at the real geometry (float32, CPU)."""
    from vlmloc.experiments.ch04_position_decoding import hidden_sites
    from vlmloc.probes import activation_bytes, probe_images, read_sites

    shape = P.shape_of(vlm.model_id)
    images = [Image.new("RGB", P.PLAN_IMAGE, (110, 60, 20 + 40 * i)) for i in range(batch)]
    enc = vlm.encode(images, [vlm.prompt("localization", "star")] * batch)
    tokens = enc["input_ids"].shape[1]
    inputs = _nbytes(enc.values())
    out: dict[str, tuple[float, float]] = {}
    out["weights"] = (_nbytes(vlm.hf.parameters()), shape.n_params() * 4)
    score = P.Pass("score", batch, batch, tokens, logits="all")
    with torch.no_grad():
        live = LiveBytes()
        with live:
            result = vlm.hf(**enc, use_cache=True)  # what a scoring forward holds: logits and the cache
        cache = result.past_key_values
        kv = _nbytes(t for layer in cache.layers for t in (layer.keys, layer.values))
        del result, cache
        out["KV cache of a forward"] = (kv, P.row_bytes(shape, score, 4).kv * batch)
        out["working set of a forward"] = (live.peak + inputs, P.row_bytes(shape, score, 4).total * batch)
        live = LiveBytes()
        with live:
            vlm.generate(enc, max_new_tokens=new_tokens)
        gen = P.Pass("generate", batch, batch, tokens, new_tokens=new_tokens)
        out["working set of a generation"] = (live.peak + inputs, P.row_bytes(shape, gen, 4).total * batch)
        sites = [s.name for s in hidden_sites(vlm.n_vision_layers, vlm.n_layers)]
        live = LiveBytes()
        with live:  # chapter 4's read: one forward that keeps every site (its inputs made inside)
            values, _ = read_sites(vlm, images, sites)
        probed = probe_images(vlm, images)  # Qwen2.5-VL's probes see one square; the others the image
        read_tokens = vlm.encode(probed, [vlm.prompt("classification")] * batch)["input_ids"].shape[1]
        read_pass = P.Pass("read", batch, batch, read_tokens, logits="none", kept="all")
        read = P.row_bytes(shape, read_pass, 4, image_size=probed[0].size)
        out["hidden states kept"] = (activation_bytes(values), read.kept * batch)
        out["working set of a read"] = (live.peak, read.total * batch)
    return out


@pytest.mark.parametrize("family", ["llava", "internvl", "qwen"])
def test_memory_model_matches_what_the_tiny_models_allocate(family, request, capsys):
    vlm = request.getfixturevalue(f"tiny_{family}")
    ratios = {}
    for what, (measured, planned) in _calibrate(vlm).items():
        ratios[what] = planned / measured
    with capsys.disabled():
        print(f"\n{vlm.model_id}: planned / measured bytes, 2 images of 640x480, float32 on the CPU")
        for what, r in ratios.items():
            print(f"  {what:>28}: {r:.2f}")
    # counted exactly: parameters, the cache and the kept states follow from the config
    for what in ("weights", "KV cache of a forward", "hidden states kept"):
        assert ratios[what] == pytest.approx(1.0, rel=0.01), (what, ratios[what])
    for what, r in ratios.items():
        assert 1 / FACTOR <= r <= FACTOR, (what, r)


def test_what_grows_with_internvls_tiles():
    """InternVL's 3,328 visual tokens cost only 1.5x LLaVA's cache (8 KV heads of 32), but eager
    attention's score matrices grow with the square of the sequence."""
    llava, internvl = P.shape_of(LLAVA_7B), P.shape_of(INTERNVL_8B)
    gen = {s.name: P.Pass("g", 1, 1, s.visual_tokens() + 31, new_tokens=24) for s in (llava, internvl)}
    kv_llava = P.row_bytes(llava, gen[llava.name], 2).kv
    kv_internvl = P.row_bytes(internvl, gen[internvl.name], 2).kv
    # 2 (keys, values) x layers x KV heads x head width x 2 bytes per token; 576 or 3,328 + 55 tokens
    assert kv_llava == 2 * 32 * 32 * 128 * 2 * (576 + 55)
    assert kv_internvl == 2 * 36 * 8 * 128 * 2 * (3328 + 55)
    eager = P.row_bytes(internvl, gen[internvl.name], 2, attn="eager").attention
    assert eager > 20 * P.row_bytes(internvl, gen[internvl.name], 2).attention  # every head's score matrix
    fewer = internvl.with_tiles(6)
    assert (
        P.row_bytes(fewer, P.Pass("g", 1, 1, fewer.visual_tokens() + 31, new_tokens=24), 2).kv
        < kv_internvl / 1.8
    )


# --------------------------------------------------------------------------- time


def test_the_exact_cma_row_meets_the_chapters_figure():
    """50 pairs x 2 tasks on LLaVA-1.5-7B, exact sweep with the prefix reused, one H100: at most 10
    minutes by the FLOP count (at the plan's 40% of the dense peak), and the plan's row is chapter 6's
    own cost table."""
    plan = P.plan_model(LLAVA_7B, "h100", chapters=["06_mediation"]).plans[0]
    table = gpu_cost.cost_table(P.H100, n_pairs=MEDIATION_PAIRS)
    row = table.loc[(P.MODELS[LLAVA_7B], "exact, prefix reused")]
    assert plan.paper_seconds == pytest.approx(row["GPU hours"] * 3600, rel=1e-6)
    ten_minutes_of_flops = 10 * 60 * P.H100.efficiency * P.H100.peak_tflops * 1e12
    assert row["TFLOP"] * 1e12 < ten_minutes_of_flops
    assert row["batch"] == N_HEADS[LLAVA_7B]  # one layer's heads per forward


def test_the_paper_scale_is_more_work_of_the_same_kind():
    """Counted in rows (forwards of one image and prompt), not in time."""
    shape = P.shape_of(LLAVA_7B)
    for chapter, scale in P.PAPER_SCALE.items():
        if chapter == "03_views":
            continue  # InternVL only
        ours = P.chapter_passes(shape, chapter, {})
        theirs = P.chapter_passes(shape, chapter, scale)
        work = {
            k: sum(p.groups * p.rows * (1 + p.new_tokens) for p in v)
            for k, v in (("ours", ours), ("theirs", theirs))
        }
        if chapter == "06_mediation":  # the paper's exact sweep alone: less than the chapter's extras
            assert {p.label for p in theirs} < {p.label for p in ours}
        else:
            assert work["theirs"] > work["ours"], chapter
    base = P.chapter_passes(shape, "01_data_and_baselines", {})
    paper = P.chapter_passes(shape, "01_data_and_baselines", P.PAPER_SCALE["01_data_and_baselines"])
    assert [p.rows for p in paper] == [P.PAPER_OBJECTS * p.rows // 200 for p in base]
    assert P.PAPER_OBJECTS == 3870  # 2,248 kept pairs / 58.1% Cls, rounded up


# --------------------------------------------------------------------------- dtype


def test_dtype_auto_picks_what_the_device_has():
    assert P.choose_dtype("auto", "cpu") == "float32"
    assert P.choose_dtype("float16", "cpu") == "float32"
    assert P.choose_dtype("auto", "cuda", bf16=True) == "bfloat16"
    assert P.choose_dtype("auto", "cuda:0", bf16=False) == "float16"
    assert P.choose_dtype("float32", "cuda", bf16=False) == "float32"
    with pytest.raises(P.DTypeError, match="Tesla T4 has no bfloat16.*-p dtype float16"):
        P.choose_dtype("bfloat16", "cuda", bf16=False, gpu_name="Tesla T4")
    with pytest.raises(P.DTypeError, match="fp16"):
        P.choose_dtype("fp16", "cuda")


def test_params_accept_auto_and_max_tiles():
    validate_params({"dtype": "auto", "max_tiles": None}, [])
    validate_params({"max_tiles": 6}, [])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ParameterError, match="max_tiles") as info:
            validate_params({"max_tiles": bad}, [])
        assert re.search(r"\.\s+[A-Z]", str(info.value)) is None


class _Loaded(Exception):
    """Raised by the stand-in ``from_pretrained``: the load would have started here."""


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA machine without one: a named GPU of a compute capability; ``from_pretrained`` records
    its arguments and stops (nothing loads)."""
    from transformers import InternVLForConditionalGeneration, LlavaForConditionalGeneration

    calls: list[dict] = []

    def gpu(name: str = "Tesla T4", capability: tuple[int, int] = (7, 5), count: int = 1) -> list[dict]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        return calls

    def record(cls, source, **kwargs):
        calls.append({"source": source, **kwargs})
        raise _Loaded(source)

    for cls in (LlavaForConditionalGeneration, InternVLForConditionalGeneration):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(record))
    return gpu


def test_real_models_load_straight_to_the_gpu_in_the_dtype_it_has(fake_gpu):
    calls = fake_gpu("Tesla T4", (7, 5))
    with pytest.raises(_Loaded):
        vlmloc.load_model(LLAVA_7B, device="cuda", dtype="auto")
    assert calls[-1]["dtype"] is torch.float16 and calls[-1]["device_map"] == {"": "cuda"}
    with pytest.raises(_Loaded):
        vlmloc.load_model(INTERNVL_8B, device="cuda")  # its default is "auto": float16 on a T4
    assert calls[-1]["dtype"] is torch.float16
    n = len(calls)
    with pytest.raises(P.DTypeError, match="Tesla T4 has no bfloat16"):
        vlmloc.load_model(INTERNVL_8B, device="cuda", dtype="bfloat16")
    assert len(calls) == n  # refused before loading
    fake_gpu("NVIDIA A100-SXM4-80GB", (8, 0), count=2)
    with pytest.raises(_Loaded):
        vlmloc.load_model(INTERNVL_8B, device="cuda:1")
    assert calls[-1]["dtype"] is torch.bfloat16 and calls[-1]["device_map"] == {"": "cuda:1"}
    with pytest.raises(_Loaded):
        vlmloc.load_model(LLAVA_7B, device="cuda")  # two GPUs: spread
    assert calls[-1]["device_map"] == "auto"


def test_max_tiles_is_internvls_only():
    with pytest.raises(ValueError, match="InternVL"):
        vlmloc.load_model("toy-llava", device="cpu", max_tiles=4)
    with pytest.raises(ValueError, match="max_tiles"):
        vlmloc.load_model("toy-internvl", device="cpu", max_tiles=0)


# --------------------------------------------------------------------------- refusing early


def _one_sentence(text: str) -> None:
    assert text.endswith(".") and re.search(r"\.\s+[A-Z]", text) is None, text


def test_a_toy_on_a_forced_tiny_budget_stops_before_loading(fake_gpu, monkeypatch, capsys):
    calls = fake_gpu()  # records any load; the toy stays on the CPU
    monkeypatch.setenv(P.MEMORY_ENV, "0.01")
    with pytest.raises(P.PlanError) as info:
        vlmloc.load_model("toy-llava", device="cpu", chapter="01_data_and_baselines", batch_size=16)
    assert calls == []
    message = str(info.value)
    _one_sentence(message)
    assert "toy-llava" in message and "batch 16" in message and "what fits" in message
    printed = capsys.readouterr().out
    assert "forced 0.01 GiB budget" in printed and "01_data_and_baselines" in printed


def test_a_budget_between_two_batches_names_the_larger(monkeypatch):
    shape = P.shape_of("toy-llava")
    free = {
        b: P.plan_chapter(shape, "05_attention_knockout", P.H100, "float32", b, timed=False).need
        for b in (4, 5)
    }
    budget = P.RESERVE_GIB + (free[4] + free[5]) / 2 / P.GIB
    with pytest.raises(P.PlanError, match=r"-p batch_size 4\b") as info:
        P.check_fits("toy-llava", "05_attention_knockout", device="cpu", batch_size=64, memory_gb=budget)
    _one_sentence(str(info.value))
    plan = P.check_fits("toy-llava", "05_attention_knockout", device="cpu", batch_size=4, memory_gb=budget)
    assert plan.fits and plan.plans[0].largest_batch == 4


def test_on_the_cpu_without_a_budget_the_plan_is_quiet(capsys, monkeypatch):
    monkeypatch.delenv(P.MEMORY_ENV, raising=False)
    table = P.check_fits("toy-internvl", "03_views", device="cpu", batch_size=16)
    assert table.fits and capsys.readouterr().out == ""


def test_refusals_name_what_would_fit(fake_gpu, monkeypatch):
    fake_gpu("Tesla T4", (7, 5))
    monkeypatch.setattr(P, "_detected_gpu", lambda device: P.GPUS["t4"])
    with pytest.raises(P.PlanError) as info:  # 25 GiB of weights on a T4: only a bigger GPU
        P.check_fits(P.LLAVA_13B, "01_data_and_baselines", device="cuda", dtype="auto", batch_size=16)
    _one_sentence(str(info.value))
    assert "A100 40GB" in str(info.value) and "batch_size" not in str(info.value)
    colab = dataclasses.replace(P.GPUS["t4"], name="Tesla T4")
    monkeypatch.setattr(P, "_detected_gpu", lambda device: colab)
    with pytest.raises(P.PlanError, match=r"-p batch_size 2\b") as info:  # 7B in float16: batch 2 fits
        P.check_fits(LLAVA_7B, "01_data_and_baselines", device="cuda", batch_size=16)
    assert f"`PlanError: {info.value}`" in (ROOT / "README.md").read_text()  # the README's example
    monkeypatch.setattr(P, "_detected_gpu", lambda device: P.GPUS["l4"])
    with pytest.raises(P.PlanError, match=r"max_tiles=\d+ \(fewer InternVL tiles\)"):
        P.check_fits(INTERNVL_8B, "01_data_and_baselines", device="cuda", batch_size=16)
    monkeypatch.setattr(P, "_detected_gpu", lambda device: P.GPUS["a100-40"])
    with pytest.raises(P.PlanError, match=r"-p batch_size \d+, or -p dtype bfloat16"):
        P.check_fits(LLAVA_7B, "01_data_and_baselines", device="cuda", dtype="float32", batch_size=32)
    monkeypatch.setattr(P, "_detected_gpu", lambda device: P.GPUS["t4"])
    with pytest.raises(P.PlanError, match="-p control False"):  # the control: a second model
        P.check_fits(LLAVA_7B, "04_position_decoding", device="cuda", batch_size=1, n_train=8, n_test=8)


def test_the_gpu_is_recognised_by_name(monkeypatch):
    from types import SimpleNamespace

    cards = [SimpleNamespace(name="Tesla T4", total_memory=15_835_660_288)] * 2
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: cards[i])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    one = P._detected_gpu("cuda:0")
    assert (one.name, one.peak_tflops, one.bf16) == ("Tesla T4", P.GPUS["t4"].peak_tflops, False)
    assert one.memory_gb == pytest.approx(14.75, abs=0.01) and one.host_ram_gb > 0
    both = P._detected_gpu("cuda")  # load_model spreads a model over both
    assert both.name == "2 x Tesla T4" and both.memory_gb == pytest.approx(2 * one.memory_gb)


def test_a_model_without_a_plan_is_let_through(monkeypatch, capsys):
    monkeypatch.setitem(
        registry.REGISTRY, "nobody/unknown-vl", ModelSpec("nobody/unknown-vl", "llava", "nobody/unknown-vl")
    )
    assert P.check_fits("nobody/unknown-vl", "01_data_and_baselines", device="cpu", memory_gb=1) is None
    assert "no plan for nobody/unknown-vl" in capsys.readouterr().out
    assert P.check_fits("toy-llava", "summary", device="cpu", memory_gb=0.01) is None  # no model loads there
    assert "no plan for chapter 'summary'" in capsys.readouterr().out


# --------------------------------------------------------------------------- tables and the notebooks


def test_the_plan_command_prints_every_chapter_of_the_family(capsys):
    assert P.main([INTERNVL_8B, "--gpu", "h100", "--max-tiles", "6"]) == 0
    out = capsys.readouterr().out
    assert "6 tiles + thumbnail = 1,792 visual tokens" in out
    for name in P.CHAPTER_DEFAULTS:
        assert name in out
    assert P.main([LLAVA_7B, "--gpu", "t4"]) == 0
    out = capsys.readouterr().out
    assert "03_views" not in out and "float16" in out  # InternVL's views only; the T4 has no bfloat16
    assert P.main([LLAVA_7B, "--gpu", "t4", "--dtype", "bfloat16"]) == 2


def test_qwen_is_planned_for_every_chapter_but_internvls_views(fake_gpu, monkeypatch, capsys):
    assert P.main([P.QWEN_3B, "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert "Qwen2.5-VL-3B on H100" in out and "resized to 644x476 = 391 visual tokens" in out
    assert "03_views" not in out
    assert all(c in out for c in P.CHAPTER_DEFAULTS if c != "03_views")
    fake_gpu("Tesla T4", (7, 5))
    monkeypatch.setattr(P, "_detected_gpu", lambda device: P.GPUS["t4"])
    table = P.check_fits(P.QWEN_3B, "01_data_and_baselines", device="cuda", dtype="auto", batch_size=16)
    assert table.fits and table.dtype == "float16"
    with pytest.raises(P.PlanError) as info:  # 15.4 GiB of weights in float16 on a T4
        P.check_fits(P.QWEN_7B, "01_data_and_baselines", device="cuda", dtype="auto", batch_size=16)
    _one_sentence(str(info.value))
    assert "Qwen2.5-VL-7B in float16" in str(info.value) and "such as an L4" in str(info.value)


@pytest.mark.parametrize("page", ["README.md", "book/setup.md"])
def test_the_plan_tables_in_the_docs_are_generated(page):
    assert P.readme_block(ROOT / page) == P.readme_tables(), (
        f"{page}'s plan tables are stale; run: python -m vlmloc.plan --readme --write README.md book/setup.md"
    )


def test_write_readme_block_replaces_only_the_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{P.README_BEGIN}\nold\n{P.README_END}\nrest\n")
    assert P.write_readme_block(page) is True
    assert P.write_readme_block(page) is False
    text = page.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{P.README_END}\nrest\n")
    assert P.readme_block(page) == P.readme_tables()


@pytest.mark.notebooks
def test_a_chapter_stops_in_its_model_cell_on_a_forced_budget(tmp_path, monkeypatch):
    """Chapter 1 on toy-llava with a 0.01 GiB budget: the model cell raises PlanError, nothing loads."""
    import papermill as pm

    monkeypatch.setenv(P.MEMORY_ENV, "0.01")
    with pytest.raises(pm.PapermillExecutionError) as info:
        pm.execute_notebook(
            str(ROOT / "notebooks" / "01_data_and_baselines.ipynb"), str(tmp_path / "out.ipynb"),
            parameters={"results_dir": str(tmp_path / "results"), "n_samples": 8, "progress": False},
            cwd=str(ROOT), kernel_name="python3", progress_bar=False,
        )  # fmt: skip
    assert info.value.ename == "PlanError" and "what fits" in info.value.evalue
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.jsonl"))
