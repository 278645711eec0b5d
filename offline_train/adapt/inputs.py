"""The user's clean images of a new fabric: read, checked, and split by image for validation.

Inputs are files or folders of images as a user has them: line-scan strips of any width, tall web
images, or a folder the daemon's replay source reads (its images in name order). Gray or colour,
8 or 16 bit. Nothing here resamples: the dataset builder does, with the runtime's own code.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offline_train.dataset.webs import LabelledWeb
from runtime.errors import ConfigError
from runtime.inspect.images import image_files, read_image

log = logging.getLogger(__name__)

MAX_RESAMPLING = 4.0  # images farther than this from the model's mm/px (either way) are refused
SKIPPED_NAMES = ("gallery",)  # `loomsight sim` writes gallery*.png beside its web strips: not the web


@dataclass(frozen=True)
class CleanImage:
    path: Path
    pixels: np.ndarray
    sha256: str

    @property
    def lines(self) -> int:
        return int(self.pixels.shape[0])

    def area_m2(self, mm_per_px: float, mm_per_line: float) -> float:
        return self.pixels.shape[1] * mm_per_px * self.pixels.shape[0] * mm_per_line / 1e6


def read_clean_images(paths: Sequence[Path]) -> list[CleanImage]:
    """Every image the paths stand for (folders: their images, in name order), hashed."""
    files = [f for f in image_files([Path(p) for p in paths]) if not f.stem.startswith(SKIPPED_NAMES)]
    if not files:
        raise ConfigError(f"no clean images in {', '.join(map(str, paths))}")
    out = []
    for f in files:
        pixels = read_image(f)  # ConfigError naming the file when it cannot be read
        out.append(CleanImage(f, pixels, hashlib.sha256(f.read_bytes()).hexdigest()))
    widths = {img.pixels.shape[1] for img in out}
    log.info("%d clean image(s), widths %s px", len(out), sorted(widths))
    return out


def check_scale(mm_per_px: float, mm_per_line: float, model_mm_per_px: float) -> None:
    """A ConfigError when the images must be resampled more than `MAX_RESAMPLING` to reach the model."""
    for name, value in (("--mm-per-px", mm_per_px), ("--mm-per-line", mm_per_line)):
        if value <= 0:
            raise ConfigError(f"{name} {value} must be positive (the images' size of one pixel in mm)")
        ratio = model_mm_per_px / value
        if not 1 / MAX_RESAMPLING <= ratio <= MAX_RESAMPLING:
            raise ConfigError(
                f"{name} {value}: the bundle's model sees {model_mm_per_px} mm/px, so these images would be "
                f"resampled {max(ratio, 1 / ratio):.1f}x (more than {MAX_RESAMPLING:g}x). Check the scale, or "
                "adapt a bundle trained near this resolution"
            )


@dataclass(frozen=True)
class Split:
    train: list[LabelledWeb]
    val: list[LabelledWeb]
    train_area_m2: float
    val_area_m2: float
    how: str  # "by image" or "along each image" (one image given)


def split_by_image(
    images: Sequence[CleanImage],
    *,
    mm_per_px: float,
    mm_per_line: float,
    val_share: float = 0.25,
    min_val_m2: float = 0.05,
    min_val_lines: int = 2048,
) -> Split:
    """Hold back about `val_share` of the images (the last ones in name order, by image: no tile of a
    held-back image is trained on). A single image is cut along its length instead (its last `val_share`).
    Too little held-back fabric to measure a false-alarm rate is a ConfigError saying what to add."""
    if not 0 < val_share < 1:
        raise ConfigError(f"val_share {val_share} must be between 0 and 1")

    def web(img: CleanImage, pixels: np.ndarray, split: str, suffix: str = "") -> LabelledWeb:
        return LabelledWeb(
            name=f"{img.path.stem}{suffix}", pixels=pixels, mm_per_px=mm_per_px,
            mm_per_line=mm_per_line, fabric="new_fabric", split=split,
        )  # fmt: skip

    if len(images) >= 2:
        # The last images in name order: for line-scan strips of one web, a contiguous stretch the
        # false-alarm check can run as one roll (long streak-like false alarms build up over metres).
        n_val = min(len(images) - 1, max(1, round(len(images) * val_share)))
        train = [web(img, img.pixels, "train") for img in images[: len(images) - n_val]]
        val = [web(img, img.pixels, "val") for img in images[len(images) - n_val :]]
        how = "by image"
    else:
        img = images[0]
        cut = round(img.lines * (1 - val_share))
        if img.lines - cut < min_val_lines:
            raise ConfigError(
                f"{img.path}: one image of {img.lines} lines leaves {img.lines - cut} lines for validation "
                f"(need {min_val_lines}); give more clean images, or a longer one"
            )
        train = [web(img, img.pixels[:cut], "train", "_head")]
        val = [web(img, img.pixels[cut:], "val", "_tail")]
        how = "along the image (one image given)"
    area = [w.pixels.shape[1] * mm_per_px * w.pixels.shape[0] * mm_per_line / 1e6 for w in (*train, *val)]
    train_m2, val_m2 = sum(area[: len(train)]), sum(area[len(train) :])
    if val_m2 < min_val_m2:
        raise ConfigError(
            f"the held-back clean images cover {val_m2:.3f} m^2 (need {min_val_m2} m^2 to measure false alarms "
            f"per m^2); give more clean fabric (about {min_val_m2 / val_share:.1f} m^2 in all)"
        )
    return Split(train, val, train_m2, val_m2, how)
