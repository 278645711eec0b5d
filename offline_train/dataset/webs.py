"""Where training webs come from: the synthetic loom (with exact defect masks) or a folder of clean images."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class LabelledWeb:
    """A web at camera resolution; `labels` holds a defect id per pixel (0 = clean) when known."""

    name: str
    pixels: np.ndarray
    mm_per_px: float
    mm_per_line: float
    fabric: str
    labels: np.ndarray | None = None
    classes: dict[int, str] = field(default_factory=dict)  # defect id -> class name
    split: str | None = None  # "train" or "val" when the caller decides; None: the builder's val_every

    def class_mask(self, class_name: str) -> np.ndarray | None:
        """Boolean mask of every defect of `class_name`, or None when there is none."""
        if self.labels is None:
            return None
        ids = [i for i, c in self.classes.items() if c == class_name]
        if not ids:
            return None
        return np.isin(self.labels, ids)


def simulator_webs(
    count: int,
    *,
    length_m: float,
    width_px: int,
    mm_per_px: float,
    mm_per_line: float,
    seed: int,
    defects_per_m: float,
    color_fraction: float = 0.25,
    catalog_fraction: float = 0.5,
    defect_classes: Sequence[str] | None = None,
    class_weights: dict[str, float] | None = None,
) -> Iterator[LabelledWeb]:
    """`count` webs from the synthetic loom: catalog fabrics and random variations, with masks."""
    from runtime.sim.fabric import FABRICS, random_fabric
    from runtime.sim.loom import render_web
    from runtime.taxonomy import DEFECT_CLASSES

    rng = np.random.default_rng(seed)
    names = sorted(FABRICS)
    for i in range(count):
        if rng.random() < catalog_fraction:
            fabric = FABRICS[names[int(rng.integers(len(names)))]]
        else:
            fabric = random_fabric(rng, color=bool(rng.random() < color_fraction))
        web_seed = int(rng.integers(2**31))
        pixels, labels, truth = render_web(
            fabric,
            length_m=length_m,
            width_px=width_px,
            mm_per_px=mm_per_px,
            mm_per_line=mm_per_line,
            seed=web_seed,
            defects_per_m=defects_per_m,
            with_masks=True,
            **({"defect_classes": tuple(defect_classes)} if defect_classes else {}),
            **({"class_weights": class_weights} if class_weights else {}),
        )
        unknown = {t.class_name for t in truth} - set(DEFECT_CLASSES)
        if unknown:
            raise ConfigError(f"simulator produced classes {sorted(unknown)} unknown to DEFECT_CLASSES")
        yield LabelledWeb(
            name=f"sim{i:04d}_{fabric.name}_s{web_seed}",
            pixels=pixels,
            mm_per_px=mm_per_px,
            mm_per_line=mm_per_line,
            fabric=fabric.name,
            labels=labels,
            classes={t.defect_id: t.class_name for t in truth},
        )


def folder_webs(folder: Path, *, mm_per_px: float, mm_per_line: float) -> Iterator[LabelledWeb]:
    """Every image in `folder` as a clean web (defect-free fabric of a new product)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"clean-web folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for path in files:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ConfigError(f"cannot read image {path}; is it a valid image file?")
        if img.dtype != np.uint8:
            img = cv2.convertScaleAbs(img, alpha=255.0 / max(1, int(img.max())))
        if img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        yield LabelledWeb(
            name=path.stem, pixels=img, mm_per_px=mm_per_px, mm_per_line=mm_per_line, fabric=path.stem
        )
