"""Object removal: LaMa only from weights already on disk, OpenCV Telea otherwise; only the hole changes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from vlmloc import inpaint as ip


@pytest.fixture
def no_lama(monkeypatch, tmp_path):
    """No LAMA_MODEL and an empty torch hub cache: the OpenCV fallback must run."""
    monkeypatch.delenv("LAMA_MODEL", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def _scene(w: int = 83, h: int = 61, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A textured image (odd size, so LaMa would pad it) with a filled square object."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[20:35, 30:50] = True
    rgb[mask] = (250, 10, 10)
    return Image.fromarray(rgb), mask


def test_opencv_fallback_changes_only_dilated_mask_pixels(no_lama):
    image, mask = _scene()
    assert ip.inpaint_method() == ip.OPENCV
    out, method = ip.inpaint(image, mask, dilate=3)
    assert method == "opencv-telea"
    assert out.size == image.size and out.mode == "RGB"
    before, after = np.asarray(image), np.asarray(out)
    changed = (before != after).any(-1)
    hole = ip.dilate_mask(mask, 3)
    assert not changed[~hole].any(), "pixels outside the dilated mask must stay as they were"
    assert changed[mask].mean() > 0.9, "the object's pixels should be painted over"
    assert not (after[mask] == (250, 10, 10)).all(-1).any(), "no pixel of the red object may survive"


def test_dilate_grows_by_the_given_number_of_pixels():
    mask = np.zeros((20, 20), bool)
    mask[10, 10] = True
    assert ip.dilate_mask(mask, 0).sum() == 1
    assert ip.dilate_mask(mask, 2).sum() == 25
    with pytest.raises(ValueError, match="dilate"):
        ip.dilate_mask(mask, -1)


def test_empty_mask_returns_an_unchanged_copy(no_lama):
    image, _ = _scene()
    out, method = ip.inpaint(image, np.zeros((image.height, image.width), bool))
    assert method == ip.OPENCV
    assert np.array_equal(np.asarray(out), np.asarray(image))


def test_mask_of_the_wrong_shape_is_a_clear_error(no_lama):
    image, mask = _scene()
    with pytest.raises(ValueError, match="does not match the image"):
        ip.inpaint(image, mask.T)


def test_missing_lama_model_file_falls_back_with_a_warning(monkeypatch, tmp_path):
    """Documented choice: a LAMA_MODEL that names no file means 'no LaMa', never a download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("LAMA_MODEL", str(tmp_path / "nope" / "big-lama.pt"))
    image, mask = _scene()
    with pytest.warns(UserWarning, match="not an existing file"):
        assert ip.inpaint_method() == ip.OPENCV
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out, method = ip.inpaint(image, mask)
    assert method == ip.OPENCV
    assert out.size == image.size


class _FakeLama(torch.nn.Module):
    """Stands in for big-lama.pt: fills the hole with grey and shifts every pixel outside it."""

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return image * (1 - mask) * 0.5 + mask * 0.5


@pytest.fixture
def fake_lama_file(tmp_path):
    pytest.importorskip("simple_lama_inpainting")
    path = tmp_path / "fake-lama.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_FakeLama()), str(path))
    ip._simple_lama.cache_clear()
    yield path
    ip._simple_lama.cache_clear()


def test_lama_from_LAMA_MODEL_is_cropped_and_pasted(monkeypatch, fake_lama_file):
    monkeypatch.setenv("LAMA_MODEL", str(fake_lama_file))
    assert ip.inpaint_method() == ip.LAMA
    image, mask = _scene()  # 83 x 61: LaMa pads it to 88 x 64
    out, method = ip.inpaint(image, mask, dilate=2)
    assert method == "lama"
    assert out.size == image.size
    before, after = np.asarray(image), np.asarray(out)
    hole = ip.dilate_mask(mask, 2)
    assert np.array_equal(after[~hole], before[~hole]), "outside the hole the original is kept"
    assert np.abs(after[hole].astype(int) - 127).max() <= 1, "inside the hole LaMa's output is used"


def test_lama_from_the_torch_hub_cache(monkeypatch, tmp_path, fake_lama_file):
    monkeypatch.delenv("LAMA_MODEL", raising=False)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "big-lama.pt").write_bytes(fake_lama_file.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert ip.lama_weights() == cache / "big-lama.pt"
    _, method = ip.inpaint(*_scene())
    assert method == ip.LAMA
    import os

    assert "LAMA_MODEL" not in os.environ, "inpaint must not leave LAMA_MODEL set behind"


def test_no_download_is_ever_attempted(no_lama, monkeypatch):
    import torch.hub

    def boom(*args, **kwargs):
        raise AssertionError("inpaint tried to download the LaMa weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    _, method = ip.inpaint(*_scene())
    assert method == ip.OPENCV
