"""Shared fixtures: tiny random models at the REAL image geometry, and a small synthetic COCO set.

The tiny models are built by :func:`vlmloc.testing.save_tiny` with LLaVA-1.5's and InternVL-3.5's
real image pipelines (336 px / 14 px patches / 576 tokens; 448 px tiles / 14 px patches / 256
tokens per tile after pixel shuffle, up to 12 tiles + thumbnail) and tiny widths, saved to a
temporary folder and loaded back through :func:`vlmloc.load_model` exactly like a real checkpoint.
All fixtures are session-scoped and lazy: a test that asks for none of them pays nothing.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may reach the Hugging Face Hub
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

TINY_LLAVA = "tiny-llava-test"
TINY_INTERNVL = "tiny-internvl-test"
TINY_QWEN = "tiny-qwen-test"


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """A tiny random LLaVA-1.5 look-alike (336 px, patch 14, pad to square), float32 on the CPU."""
    import vlmloc
    from vlmloc.testing import save_tiny

    save_tiny("llava", tmp_path_factory.mktemp("tiny-llava"), model_id=TINY_LLAVA)
    return vlmloc.load_model(TINY_LLAVA, device="cpu")


@pytest.fixture(scope="session")
def tiny_internvl(tmp_path_factory):
    """A tiny random InternVL-3.5 look-alike (448 px tiles, patch 14, 256 tokens/tile), float32 on the CPU."""
    import vlmloc
    from vlmloc.testing import save_tiny

    save_tiny("internvl", tmp_path_factory.mktemp("tiny-internvl"), model_id=TINY_INTERNVL)
    return vlmloc.load_model(TINY_INTERNVL, device="cpu")


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    """A tiny random Qwen2.5-VL look-alike (14 px patches merged 2 x 2, the release's min/max pixels,
    112 px attention windows), float32 on the CPU."""
    import vlmloc
    from vlmloc.testing import save_tiny

    save_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny-qwen"), model_id=TINY_QWEN)
    return vlmloc.load_model(TINY_QWEN, device="cpu")


@pytest.fixture(scope="session", params=["llava", "internvl"])
def tiny_vlm(request):
    """Both tiny models, one after the other."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="module")
def toy_llava():
    """The shipped toy-llava, loaded once per test module (CPU)."""
    import vlmloc

    return vlmloc.load_model("toy-llava", device="cpu")


@pytest.fixture(scope="module")
def toy_internvl():
    """The shipped toy-internvl, loaded once per test module (CPU)."""
    import vlmloc

    return vlmloc.load_model("toy-internvl", device="cpu")


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory):
    """``(annotations.json, images/)`` of 12 synthetic scenes (seed 5), written once per session."""
    from vlmloc.synthetic import write_dataset

    root = tmp_path_factory.mktemp("synthetic")
    ann = write_dataset(root, n=12, seed=5)
    return ann, root / "images"
