"""What every defect synthesizer returns, and the checks that keep its box honest.

A synthesizer takes a defect-free tile at the model's resolution (HxW gray or HxWx3 colour, uint8)
and a numpy Generator, and returns a `SynthResult`, or None when it found no convincing sample
within its retries. The contract, enforced for every synthesizer by `finish`:

- `mask` is the defect region (bool HxW, non-empty);
- every pixel that differs from the input lies inside `dilate(part, MASK_DILATION_PX)` AND inside
  the tight box of `part`, for some 8-connected part of `mask` (each part becomes a training box),
  so the boxes drawn from the mask cover every change;
- the output has the input's shape and dtype; the same rng state gives the same result;
- a sample whose change is too faint to be a defect (mean absolute difference inside the mask, in
  gray levels, below the synthesizer's floor: `min_contrast`, raised on busy fabric to
  `relative_contrast` times the tile's gray-level spread, see `contrast_needed`) is dropped, never
  labelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

# Pixels farther than this (chessboard distance) from the returned mask are bit-identical to the input.
MASK_DILATION_PX = 2


def defect_classes() -> tuple[str, ...]:
    """The simulator's defect class names (imported lazily: the simulator is a runtime module)."""
    from runtime.taxonomy import DEFECT_CLASSES

    return tuple(DEFECT_CLASSES)


@dataclass(frozen=True)
class SynthResult:
    """One synthetic defect on a tile."""

    image: np.ndarray  # uint8, same shape/dtype as the input (HxW gray or HxWx3)
    mask: np.ndarray  # bool HxW: the defect region; pixels outside its small dilation are unchanged
    class_name: str  # one of DEFECT_CLASSES
    synthesizer: str  # name for the dataset card


@runtime_checkable
class Synthesizer(Protocol):
    """A defect synthesizer: `(clean tile, rng) -> SynthResult | None`."""

    name: str
    classes: tuple[str, ...]  # the classes it can produce

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> SynthResult | None: ...


def check_tile(image: np.ndarray) -> None:
    """Raise ValueError unless `image` is an HxW or HxWx3 uint8 tile."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"synthesizers take uint8 tiles, got {getattr(image, 'dtype', type(image))}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"synthesizers take HxW gray or HxWx3 colour tiles, got shape {image.shape}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"tile {image.shape[:2]} is too small for a synthetic defect (need >= 8x8 px)")


def check_class(class_name: str) -> str:
    """`class_name` if the simulator knows it, else a ValueError listing the known classes."""
    known = defect_classes()
    if class_name not in known:
        raise ValueError(f"unknown defect class {class_name!r}; known classes: {', '.join(known)}")
    return class_name


def dilate(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Boolean mask grown by `radius_px` (square structuring element: chessboard distance)."""
    if radius_px <= 0:
        return mask.astype(bool, copy=True)
    k = 2 * radius_px + 1
    return cv2.dilate(mask.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), exclusive ends, of the set pixels of `mask`; None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel absolute difference of two images in gray levels (float32 HxW; colour: mean over channels)."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.float32)
    return d if d.ndim == 2 else np.asarray(d.mean(axis=2))


def _pixel_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute difference of two pixel lists (N gray or Nx3 colour), float32 N."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.float32)
    return d if d.ndim == 1 else np.asarray(d.mean(axis=1))


def mean_contrast(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference inside `mask`, in gray levels (0 for an empty mask)."""
    if not mask.any():
        return 0.0
    return float(_pixel_abs_diff(before[mask], after[mask]).mean())


def texture_std(image: np.ndarray) -> float:
    """Standard deviation of the tile's gray levels (colour: of the channel mean): how busy the fabric is."""
    gray = image if image.ndim == 2 else image.mean(axis=2)
    return float(gray.std())


def contrast_needed(image: np.ndarray, min_contrast: float, relative_contrast: float) -> float:
    """The contrast floor on `image`: `min_contrast` gray levels, raised to `relative_contrast` times
    the fabric's own spread on busy fabric, where a change of a few gray levels hides in the weave."""
    return max(min_contrast, relative_contrast * texture_std(image))


def drop_faint_components(
    before: np.ndarray,
    after: np.ndarray,
    mask: np.ndarray,
    *,
    min_contrast: float,
    min_area_px: int,
    max_components: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """`mask` without its connected parts (8-connected) that are smaller than `min_area_px` or fainter
    than `min_contrast` (mean absolute difference, gray levels): each part becomes its own box. With
    `max_components`, a random subset of that many of the remaining parts is kept (needs `rng`)."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=bool)
    inside = labels[mask]
    diff = _pixel_abs_diff(before[mask], after[mask])
    area = np.bincount(inside, minlength=n)
    total = np.bincount(inside, weights=diff, minlength=n)
    keep = (area >= max(1, min_area_px)) & (total >= min_contrast * area)
    keep[0] = False
    if max_components is not None and int(keep.sum()) > max_components:
        if rng is None:
            raise ValueError("drop_faint_components: max_components needs an rng")
        chosen = rng.choice(np.flatnonzero(keep), size=max_components, replace=False)
        keep[:] = False
        keep[chosen] = True
    return np.asarray(keep[labels])


def drop_specks(mask: np.ndarray, min_area_px: int, *, join_px: int = 1) -> np.ndarray:
    """`mask` without the parts (pixels within `join_px` of each other count as one part) whose
    area is below `min_area_px`: too small to become a box, so they must not be drawn either."""
    joined = dilate(mask, join_px) if join_px > 0 else mask
    n, labels = cv2.connectedComponents(joined.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=bool)
    area = np.bincount(labels[mask], minlength=n)
    keep = area >= max(1, min_area_px)
    keep[0] = False
    return np.asarray(keep[labels] & mask)


def allowed_region(mask: np.ndarray, radius_px: int = MASK_DILATION_PX) -> np.ndarray:
    """Where a synthesizer may change pixels: each connected part of `mask` dilated by `radius_px`,
    clipped to that part's tight box, so every change lies inside the box of the part it belongs to."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    allowed = np.zeros(mask.shape, dtype=bool)
    for k in range(1, n):
        x, y, w, h = (int(v) for v in stats[k, :4])
        part = labels[y : y + h, x : x + w] == k
        allowed[y : y + h, x : x + w] |= dilate(part, radius_px)
    return allowed


def finish(
    image: np.ndarray,
    candidate: np.ndarray,
    mask: np.ndarray,
    *,
    class_name: str,
    synthesizer: str,
    min_contrast: float,
) -> SynthResult | None:
    """Enforce the contract on a candidate output and wrap it, or None when it is not a defect.

    Changes outside `allowed_region(mask)` (each part's dilation clipped to its box) are undone
    (copied back from `image`); the sample is dropped when the mask is empty or the mean absolute
    difference inside it is below `min_contrast` gray levels.
    """
    if candidate.shape != image.shape or candidate.dtype != image.dtype:
        raise AssertionError(
            f"synthesizer {synthesizer} changed shape/dtype: {candidate.shape} {candidate.dtype}"
        )
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    allowed = allowed_region(mask)
    out = image.copy()
    out[allowed] = candidate[allowed]
    if mean_contrast(image, out, mask) < min_contrast:
        return None
    return SynthResult(image=out, mask=mask, class_name=class_name, synthesizer=synthesizer)


def gamma_gain_lut(gamma: float, gain: float, bias: float) -> np.ndarray:
    """A 256-entry uint8 lookup table: 255 * (x/255)**gamma * gain + bias, clipped."""
    x = np.arange(256, dtype=np.float32) / 255.0
    y = 255.0 * np.power(x, gamma) * gain + bias
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def apply_lut(image: np.ndarray, luts: list[np.ndarray]) -> np.ndarray:
    """`image` through one LUT (gray) or one LUT per channel (colour; the list is cycled)."""
    if image.ndim == 2:
        return np.asarray(cv2.LUT(image, luts[0]))
    chans = [
        cv2.LUT(np.ascontiguousarray(image[:, :, c]), luts[c % len(luts)]) for c in range(image.shape[2])
    ]
    return np.dstack(chans)


def blend(image: np.ndarray, source: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """uint8 (1 - w) * image + w * source with a float HxW weight in [0, 1]."""
    w = weight.astype(np.float32)
    if image.ndim == 3:
        w = w[:, :, None]
    a = image.astype(np.float32)
    out = a + w * (source.astype(np.float32) - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
