"""Bring a web strip to what the detector expects: flat-field, colour, and the model's mm/px.

Training resamples its webs with `resample_to_model` too, so the detector sees the same pixels
in both halves. `ModelView` maps model pixels back to web coordinates exactly (it uses the
scale that the integer output size really gives, not the nominal one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np

from runtime.frame import Strip


class FlatField(Protocol):
    def apply_flat_field(self, pixels: np.ndarray) -> np.ndarray: ...


def model_size(width_px: int, height_lines: int, scale_x: float, scale_y: float) -> tuple[int, int]:
    """Output (width, height) of a resample by nominal scales (at least 1 x 1)."""
    return max(1, round(width_px * scale_x)), max(1, round(height_lines * scale_y))


def resample_to_model(
    pixels: np.ndarray, scale_x: float, scale_y: float, *, nearest: bool = False
) -> np.ndarray:
    """Resize by (scale_x, scale_y). Area averaging when shrinking keeps thin yarn defects visible."""
    h, w = pixels.shape[:2]
    size = model_size(w, h, scale_x, scale_y)
    if size == (w, h):
        return pixels
    if nearest:
        interp = cv2.INTER_NEAREST
    elif scale_x < 1.0 and scale_y < 1.0:
        interp = cv2.INTER_AREA
    else:
        interp = cv2.INTER_LINEAR
    return cv2.resize(pixels, size, interpolation=interp)


def resample_mask(mask: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """A boolean mask resampled like the pixels; a model pixel is set if any web pixel under it is."""
    small = resample_to_model(mask.astype(np.uint8) * 255, scale_x, scale_y)
    return np.asarray(small > 0)


def to_gray(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)


@dataclass(frozen=True, slots=True)
class ModelView:
    """A strip at model resolution, and the exact map back to web pixels / lines."""

    pixels: np.ndarray
    line0: int
    scale_x: float  # model px per camera px
    scale_y: float  # model px per camera line

    def to_web(self, xyxy: np.ndarray) -> np.ndarray:
        """Model-pixel boxes -> web boxes (x in camera columns, y in roll lines since roll start)."""
        out = xyxy.astype(np.float64, copy=True)
        out[:, [0, 2]] /= self.scale_x
        out[:, [1, 3]] = out[:, [1, 3]] / self.scale_y + self.line0
        return out


class Preprocessor:
    """Flat-field (optional) -> colour as the model wants -> resample to the model's mm/px."""

    def __init__(
        self,
        *,
        camera_mm_per_px: float,
        camera_mm_per_line: float,
        model_mm_per_px: float,
        color: Literal["gray", "rgb"] = "gray",
        flat_field: FlatField | None = None,
    ) -> None:
        if camera_mm_per_px <= 0 or camera_mm_per_line <= 0 or model_mm_per_px <= 0:
            raise ValueError(
                f"resolutions must be > 0: camera {camera_mm_per_px} mm/px, {camera_mm_per_line} mm/line, "
                f"model {model_mm_per_px} mm/px"
            )
        self.scale_x = camera_mm_per_px / model_mm_per_px
        self.scale_y = camera_mm_per_line / model_mm_per_px
        self.color = color
        self.flat_field = flat_field

    def __call__(self, strip: Strip) -> ModelView:
        pixels = strip.pixels
        if self.flat_field is not None:
            pixels = self.flat_field.apply_flat_field(pixels)
        if self.color == "gray":
            pixels = to_gray(pixels)
        elif pixels.ndim == 2:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
        else:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
        h, w = pixels.shape[:2]
        small = resample_to_model(pixels, self.scale_x, self.scale_y)
        return ModelView(
            pixels=small,
            line0=strip.line0,
            scale_x=small.shape[1] / w,
            scale_y=small.shape[0] / h,
        )
