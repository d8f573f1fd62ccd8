"""Remove an object from an image: LaMa where its weights are on disk, OpenCV's Telea method otherwise.

The object-removal control set (chapter 1) and causal mediation (later chapters) need, for each
target, the same image with the target painted over. The paper uses LaMa
(``simple-lama-inpainting``). Its weights are a 200 MB TorchScript file that this module never
downloads: LaMa runs only when the file is already there, either

* named by the environment variable ``LAMA_MODEL`` (an existing file), or
* cached by an earlier ``SimpleLama()`` at ``$TORCH_HOME/hub/checkpoints/big-lama.pt``
  (``torch.hub.get_dir()``; ``~/.cache/torch/hub`` by default).

Otherwise, for example offline or in CI, :func:`inpaint` falls back to ``cv2.inpaint`` with
``cv2.INPAINT_TELEA``. That fills the hole by propagating the surrounding colours: it leaves a
smooth blur rather than a plausible background, which is good enough to remove the object's
evidence but weaker than LaMa. The method that ran is returned with every image, so chapters can
say which one produced their numbers.

``LAMA_MODEL`` pointing at a file that does not exist is treated as "no LaMa weights": the
fallback runs and a ``UserWarning`` names the missing path (``SimpleLama`` itself would raise
``FileNotFoundError``; a chapter should not die on a typo in an optional setting).

Both methods change only the pixels of the dilated mask: LaMa's output is cropped back from its
padding to a multiple of 8 and pasted into the original outside the mask, so the inpainted image
has exactly the size, and hence the token layout, of the original.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["LAMA", "OPENCV", "dilate_mask", "inpaint", "inpaint_method", "lama_weights"]

LAMA = "lama"
OPENCV = "opencv-telea"
#: Radius (pixels) of the neighbourhood Telea's method reads around each hole pixel.
TELEA_RADIUS = 5


def lama_weights() -> Path | None:
    """The LaMa TorchScript file that would be used without downloading, or None.

    ``LAMA_MODEL`` wins when set (None, with a warning, if that file does not exist); otherwise
    the file ``SimpleLama`` caches at ``torch.hub.get_dir()/checkpoints/big-lama.pt``.
    """
    env = os.environ.get("LAMA_MODEL")
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            return path
        warnings.warn(
            f"LAMA_MODEL={env!r} is not an existing file; falling back to OpenCV inpainting "
            "(unset LAMA_MODEL or point it at big-lama.pt to use LaMa).",
            UserWarning,
            stacklevel=3,
        )
        return None
    import torch.hub

    cached = Path(torch.hub.get_dir()) / "checkpoints" / "big-lama.pt"
    return cached if cached.is_file() else None


def _lama_available() -> bool:
    try:
        import simple_lama_inpainting  # noqa: F401
    except ImportError:
        return False
    return True


def inpaint_method() -> str:
    """Which method :func:`inpaint` will use now: ``"lama"`` or ``"opencv-telea"``."""
    return LAMA if _lama_available() and lama_weights() is not None else OPENCV


def dilate_mask(mask: np.ndarray, dilate: int = 3) -> np.ndarray:
    """Grow a boolean ``(H, W)`` mask by ``dilate`` pixels (a square neighbourhood); 0 keeps it."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"the mask must be 2-D (height, width), got shape {mask.shape}")
    if not isinstance(dilate, int | np.integer) or dilate < 0:
        raise ValueError(f"dilate must be a non-negative number of pixels, got {dilate!r}")
    m = mask.astype(bool)
    if dilate == 0 or not m.any():
        return m
    import cv2

    kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
    return cv2.dilate(m.astype(np.uint8), kernel).astype(bool)


@lru_cache(maxsize=2)
def _simple_lama(path: str):
    """A ``SimpleLama`` loaded from ``path`` (never from its download URL)."""
    from simple_lama_inpainting import SimpleLama

    old = os.environ.get("LAMA_MODEL")
    os.environ["LAMA_MODEL"] = path  # SimpleLama reads the file named here and downloads nothing
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
            return SimpleLama()
    finally:
        if old is None:
            del os.environ["LAMA_MODEL"]
        else:
            os.environ["LAMA_MODEL"] = old


def _opencv(rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.inpaint(rgb, hole.astype(np.uint8) * 255, TELEA_RADIUS, cv2.INPAINT_TELEA)


def inpaint(image: Image.Image, mask: np.ndarray, dilate: int = 3) -> tuple[Image.Image, str]:
    """Paint over the ``mask`` pixels of ``image``; returns the new image and the method used.

    ``mask`` is a boolean (or 0/non-zero) array of shape ``(height, width)``; it is grown by
    ``dilate`` pixels first so that anti-aliased object edges go too. Only pixels of the dilated
    mask change; the result is RGB and has the size of ``image``.
    """
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    if np.asarray(mask).shape != (h, w):
        raise ValueError(
            f"mask shape {np.asarray(mask).shape} does not match the image (height, width) = {(h, w)}"
        )
    hole = dilate_mask(mask, dilate)
    if not hole.any():
        return Image.fromarray(rgb.copy()), inpaint_method()
    weights = lama_weights() if _lama_available() else None
    if weights is not None:
        out = _simple_lama(str(weights))(Image.fromarray(rgb), Image.fromarray(hole.astype(np.uint8) * 255))
        filled = np.asarray(out.convert("RGB"))[:h, :w]  # LaMa pads to a multiple of 8
        method = LAMA
    else:
        filled = _opencv(rgb, hole)
        method = OPENCV
    result = np.where(hole[..., None], filled, rgb).astype(np.uint8)
    return Image.fromarray(result), method
