"""COCO-format data: the same loader for COCO val2017 and for our synthetic scenes.

data filter of the book's methods page: non-crowd annotations whose category occurs exactly once in the image (so the
query names one object), area at least 1% of the image. Size classes follow COCO: small < 32^2 px,
large > 96^2 px.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .metrics import Box

SMALL_MAX_AREA = 32**2
LARGE_MIN_AREA = 96**2


class DataError(ValueError):
    """A missing or malformed data file; the message names the path and what is wrong."""


@dataclass
class Sample:
    """One query: an object of an image, with its mask and box in original-image pixels."""

    image_id: int
    ann_id: int
    file_name: str
    image_path: Path
    category: str
    category_id: int
    box: Box  # (x0, y0, x1, y1)
    area: float
    width: int
    height: int
    _coco: object = None

    @property
    def sample_id(self) -> str:
        return f"{self.image_id}:{self.ann_id}"

    @property
    def size_class(self) -> str:
        if self.area < SMALL_MAX_AREA:
            return "small"
        return "large" if self.area > LARGE_MIN_AREA else "medium"

    def load_image(self) -> Image.Image:
        try:
            return Image.open(self.image_path).convert("RGB")
        except FileNotFoundError:
            raise DataError(f"image {self.image_path} listed in the annotations does not exist") from None

    def mask(self) -> np.ndarray:
        """Boolean ``(height, width)`` object mask decoded from the COCO segmentation."""
        return self._coco.annToMask(self._coco.anns[self.ann_id]).astype(bool)


def load_coco(
    annotations: str | Path,
    images: str | Path,
    min_area_frac: float = 0.01,
    limit: int | None = None,
    seed: int = 0,
) -> list[Sample]:
    """Samples of a COCO instances file after the book's data filter (methods page), shuffled with ``seed``, at most ``limit``."""
    from pycocotools.coco import COCO

    ann_path, img_dir = Path(annotations), Path(images)
    if not ann_path.is_file():
        raise DataError(
            f"annotations file {ann_path} does not exist; pass a COCO instances JSON "
            "(e.g. -p annotations /data/coco/annotations/instances_val2017.json) or leave it None for the synthetic set"
        )
    if not img_dir.is_dir():
        raise DataError(
            f"image folder {img_dir} does not exist; pass the folder of the images (e.g. /data/coco/val2017)"
        )
    try:
        raw = json.loads(ann_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotations file {ann_path} is not valid JSON ({e})") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in raw]
    if missing:
        raise DataError(
            f"annotations file {ann_path} is not a COCO instances file: it lacks {', '.join(missing)}"
        )
    try:
        coco = COCO()
        coco.dataset = raw
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        samples = _filtered(raw, coco, img_dir, min_area_frac)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(
            f"annotations file {ann_path} is not a COCO instances file: an entry is malformed "
            f"({type(e).__name__}: {e}); each image needs id, file_name, width, height and each annotation "
            "id, image_id, category_id, bbox, area"
        ) from None
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(samples))
    samples = [samples[i] for i in order]
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise DataError(
            f"no annotation of {ann_path} passes the filter (single instance of its class, area >= 1%)"
        )
    return samples


def _filtered(raw: dict, coco, img_dir: Path, min_area_frac: float) -> list[Sample]:
    """The book's data filter (methods page) over a parsed instances file, in image-id order."""
    cats = {c["id"]: c["name"] for c in raw["categories"]}
    samples: list[Sample] = []
    for img in sorted(raw["images"], key=lambda r: r["id"]):
        anns = coco.imgToAnns.get(img["id"], [])
        per_cat: dict[int, int] = {}
        for a in anns:
            per_cat[a["category_id"]] = per_cat.get(a["category_id"], 0) + 1
        for a in anns:
            if a.get("iscrowd", 0) or per_cat[a["category_id"]] != 1:
                continue
            if a["area"] < min_area_frac * img["width"] * img["height"]:
                continue
            x, y, w, h = a["bbox"]
            samples.append(
                Sample(
                    image_id=img["id"],
                    ann_id=a["id"],
                    file_name=img["file_name"],
                    image_path=img_dir / img["file_name"],
                    category=cats[a["category_id"]],
                    category_id=a["category_id"],
                    box=(float(x), float(y), float(x + w), float(y + h)),
                    area=float(a["area"]),
                    width=int(img["width"]),
                    height=int(img["height"]),
                    _coco=coco,
                )
            )
    return samples


def check_images(samples: Iterable[Sample], show: int = 3) -> int:
    """Open every image of ``samples`` once; a missing, unreadable or wrongly sized one is a DataError.

    Chapters call this in their validation cell, before the model loads, so a wrong images folder
    stops the notebook at once instead of mid-evaluation. Returns the number of images checked.
    """
    problems: list[str] = []
    seen: dict[Path, None] = {}
    for s in samples:
        if s.image_path in seen:
            continue
        seen[s.image_path] = None
        try:
            with Image.open(s.image_path) as im:
                im.load()
                size = im.size
        except FileNotFoundError:
            problems.append(f"{s.image_path} (missing)")
            continue
        except (OSError, SyntaxError) as e:
            problems.append(f"{s.image_path} (not a readable image: {type(e).__name__})")
            continue
        if size != (s.width, s.height):
            problems.append(
                f"{s.image_path} (is {size[0]}x{size[1]}, the annotations say {s.width}x{s.height})"
            )
    if problems:
        more = f" and {len(problems) - show} more" if len(problems) > show else ""
        raise DataError(
            f"{len(problems)} of the {len(seen)} images chosen cannot be used: {'; '.join(problems[:show])}{more}; "
            "pass the images folder that holds the annotations' file_name entries"
        )
    return len(seen)


def resolve_data(annotations: str | None, images: str | None, n_embedded: int = 500) -> tuple[Path, Path]:
    """The data paths of a chapter: the given COCO files, or the embedded synthetic set when both are None."""
    from .synthetic import embedded_dataset

    if annotations is None and images is None:
        return embedded_dataset(n_embedded)
    if annotations is None or images is None:
        raise DataError(
            "pass both annotations and images (a COCO instances file and its image folder), or neither"
        )
    return Path(annotations), Path(images)
