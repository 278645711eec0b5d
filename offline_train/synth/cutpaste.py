"""Cut-paste: a defect crop from a `DefectLibrary` pasted onto new fabric with Poisson blending.

The crop is flipped, rotated and scaled at random, placed at a random position, and blended with
OpenCV's `seamlessClone`. Rotation respects the yarns: a broken end or broken pick is only flipped
and tilted a few degrees (turned by 90 degrees it would be the other class); a knot, slub, thin place
or float may also turn by 90 degrees (it follows warp or weft); holes, stains and contamination turn
freely. NORMAL_CLONE keeps the defect's own gradients, MIXED_CLONE whichever of the defect's or the
fabric's gradients is stronger; one is chosen per sample.

`seamlessClone` erodes the mask it is given by 3 px and solves over the mask's bounding rectangle,
so the clone mask passed is the defect mask dilated by 3 + 1 px, the tile is padded so the
rectangle may touch its edge, and everything outside the defect's `MASK_DILATION_PX` dilation (and
its parts' boxes) is copied back from the input, with a half-strength step in the outer ring.

A pasted defect must change its mask by `min_contrast` gray levels on average, or, for a crop whose
own contrast is known (`DefectCrop.contrast`), by `keep_fraction` of that when it is lower: quiet
defects (thin places, slubs) stay in the set as long as blending has not washed them out.
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

from offline_train.synth.base import (
    MASK_DILATION_PX,
    SynthResult,
    check_tile,
    dilate,
    drop_specks,
    finish,
    tight_box,
)
from offline_train.synth.library import DefectCrop, DefectLibrary

log = logging.getLogger(__name__)

# A broken end runs along the machine direction and a broken pick across: turning one by 90 degrees
# would change its class. Yarn-bound defects lie along warp or weft (either is the same class).
DIRECTION_CLASSES = frozenset({"broken_end", "broken_pick"})
YARN_CLASSES = frozenset({"knot", "slub", "thin_place", "float"})
_CLONE_ERODE_PX = 3  # seamlessClone erodes its mask by three 3x3 passes
_PAD_PX = _CLONE_ERODE_PX + MASK_DILATION_PX + 3


def _to_tile_channels(image: np.ndarray, tile: np.ndarray, rgb_tiles: bool) -> np.ndarray:
    """Library crops are gray or BGR (OpenCV files); convert to the tile's channels and order."""
    if image.ndim == 2 and tile.ndim == 2:
        return image
    if tile.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)) if rgb_tiles else image


def transform_crop(
    crop: DefectCrop, rng: np.random.Generator, scale_range: tuple[float, float], max_tilt_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """(image, bool mask) of `crop` flipped, rotated and scaled at random; see the module docstring."""
    image, mask = crop.image, crop.mask.astype(np.uint8)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    if crop.class_name in YARN_CLASSES and rng.random() < 0.5:
        image, mask = np.rot90(image), np.rot90(mask)
    if crop.class_name in DIRECTION_CLASSES or crop.class_name in YARN_CLASSES:
        angle = float(rng.uniform(-max_tilt_deg, max_tilt_deg))
    else:
        angle = float(rng.uniform(0.0, 360.0))
    scale = float(np.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1]))))
    h, w = mask.shape
    rad = math.radians(angle)
    c, s = abs(math.cos(rad)) * scale, abs(math.sin(rad)) * scale
    nw, nh = max(1, math.ceil(w * c + h * s)), max(1, math.ceil(w * s + h * c))
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
    m[0, 2] += nw / 2.0 - w / 2.0
    m[1, 2] += nh / 2.0 - h / 2.0
    image = cv2.warpAffine(
        np.ascontiguousarray(image), m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    soft = cv2.warpAffine(np.ascontiguousarray(mask, dtype=np.float32), m, (nw, nh), flags=cv2.INTER_LINEAR)
    out_mask = soft > (0.5 if scale >= 1.0 else 0.25)  # a shrunk one-yarn line must not vanish
    return np.asarray(image), np.asarray(out_mask)


class CutPasteSynthesizer:
    """Library defects pasted with Poisson blending; see the module docstring."""

    def __init__(
        self,
        library: DefectLibrary,
        *,
        scale_range: tuple[float, float] = (0.75, 1.33),
        max_tilt_deg: float = 3.0,
        mixed_clone_probability: float = 0.5,
        min_contrast: float = 8.0,
        keep_fraction: float = 0.5,
        contrast_floor: float = 2.0,
        min_area_px: int = 4,
        rgb_tiles: bool = True,
        max_tries: int = 6,
        name: str = "cutpaste",
    ) -> None:
        if len(library) == 0:
            raise ValueError("CutPasteSynthesizer needs a non-empty DefectLibrary")
        if not 0.0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        self.library = library
        self.scale_range = scale_range
        self.max_tilt_deg = max_tilt_deg
        self.mixed_clone_probability = mixed_clone_probability
        self.min_contrast = min_contrast
        self.keep_fraction = keep_fraction
        self.contrast_floor = contrast_floor
        self.min_area_px = min_area_px
        self.rgb_tiles = rgb_tiles
        self.max_tries = max_tries
        self.name = name
        self.classes: tuple[str, ...] = library.classes
        self._by_class = {c: library.of_class(c) for c in self.classes}

    def __repr__(self) -> str:
        return f"CutPasteSynthesizer({self.library!r})"

    def required_contrast(self, crop: DefectCrop) -> float:
        """The least mean absolute change (gray levels) inside the pasted mask for `crop` to count:
        `min_contrast`, or for a crop whose own contrast is known, `keep_fraction` of it when that
        is lower (a quiet defect stays quiet) but never below `contrast_floor`."""
        if crop.contrast is None:
            return self.min_contrast
        return max(self.contrast_floor, min(self.min_contrast, self.keep_fraction * crop.contrast))

    def pick(self, rng: np.random.Generator) -> DefectCrop:
        """A crop: a class uniformly among those present, then a crop of it uniformly."""
        crops = self._by_class[self.classes[int(rng.integers(len(self.classes)))]]
        return crops[int(rng.integers(len(crops)))]

    def _place(
        self, tile: np.ndarray, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(source canvas, defect mask), both tile-sized, with the crop at a random position."""
        th, tw = tile.shape[:2]
        box = tight_box(mask)
        if box is None:
            return None
        bx0, by0, bx1, by1 = box
        # A defect larger than the tile: keep a random tile-sized window of it.
        if bx1 - bx0 > tw:
            bx0 = int(rng.integers(bx0, bx1 - tw + 1))
            bx1 = bx0 + tw
        if by1 - by0 > th:
            by0 = int(rng.integers(by0, by1 - th + 1))
            by1 = by0 + th
        # Top-left of the defect box in the tile.
        ox, oy = int(rng.integers(0, tw - (bx1 - bx0) + 1)), int(rng.integers(0, th - (by1 - by0) + 1))
        dx, dy = ox - bx0, oy - by0  # crop -> tile offset
        h, w = mask.shape
        # The part of the crop that lands on the tile (the margin around the defect may not).
        cx0, cy0 = max(0, -dx), max(0, -dy)
        cx1, cy1 = min(w, tw - dx), min(h, th - dy)
        source = tile.copy()
        source[cy0 + dy : cy1 + dy, cx0 + dx : cx1 + dx] = image[cy0:cy1, cx0:cx1]
        placed = np.zeros((th, tw), dtype=bool)
        placed[by0 + dy : by1 + dy, bx0 + dx : bx1 + dx] = mask[by0:by1, bx0:bx1]
        return source, placed

    def _clone(self, tile: np.ndarray, source: np.ndarray, mask: np.ndarray, flags: int) -> np.ndarray:
        """Poisson-blend `source` into `tile` over `mask` (both tile-sized, same geometry)."""
        p = _PAD_PX
        gray = tile.ndim == 2
        dst = cv2.copyMakeBorder(tile, p, p, p, p, cv2.BORDER_REFLECT_101)
        src = cv2.copyMakeBorder(source, p, p, p, p, cv2.BORDER_REFLECT_101)
        if gray:
            dst, src = cv2.cvtColor(dst, cv2.COLOR_GRAY2BGR), cv2.cvtColor(src, cv2.COLOR_GRAY2BGR)
        clone = np.zeros(dst.shape[:2], dtype=np.uint8)
        clone[p:-p, p:-p] = dilate(mask, _CLONE_ERODE_PX + 1)
        clone *= 255
        box = tight_box(clone > 0)
        assert box is not None
        x0, y0, x1, y1 = box
        w, h = x1 - x0, y1 - y0
        out = cv2.seamlessClone(src, dst, clone, (x0 + w // 2, y0 + h // 2), flags)
        out = out[p:-p, p:-p]
        return np.ascontiguousarray(out[:, :, 0] if gray else out)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> SynthResult | None:
        check_tile(image)
        for _ in range(self.max_tries):
            crop = self.pick(rng)
            crop_img, crop_mask = transform_crop(crop, rng, self.scale_range, self.max_tilt_deg)
            placed = self._place(image, _to_tile_channels(crop_img, image, self.rgb_tiles), crop_mask, rng)
            if placed is None:
                continue
            source, mask = placed
            mask = drop_specks(mask, self.min_area_px)  # parts too small to become a box are not pasted
            if not mask.any():
                continue
            mixed = rng.random() < self.mixed_clone_probability
            cloned = self._clone(image, source, mask, cv2.MIXED_CLONE if mixed else cv2.NORMAL_CLONE)
            # Full strength on the defect and 1 px around it, half strength in the outer ring.
            inner = dilate(mask, max(0, MASK_DILATION_PX - 1))
            ring = dilate(mask, MASK_DILATION_PX) & ~inner
            a, b = image.astype(np.int16), cloned.astype(np.int16)
            half = (a + b + 1) // 2
            if image.ndim == 3:
                inner3, ring3 = inner[:, :, None], ring[:, :, None]
            else:
                inner3, ring3 = inner, ring
            candidate = np.where(inner3, b, np.where(ring3, half, a)).astype(np.uint8)
            result = finish(
                image,
                candidate,
                mask,
                class_name=crop.class_name,
                synthesizer=self.name,
                min_contrast=self.required_contrast(crop),
            )
            if result is not None:
                return result
        log.debug("%s: no pasted defect above its contrast floor after %d tries", self.name, self.max_tries)
        return None
