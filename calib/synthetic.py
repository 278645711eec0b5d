"""Synthetic line-scan captures with known truth, to check the calibration steps without a camera.

A `SyntheticCamera` has a per-column dark offset (with hot columns), a per-column response
(vignetting toward the ends of the line, pixel-to-pixel non-uniformity, dead columns) and read
noise. `capture(reflectance)` returns what it would deliver looking at a scene of that
reflectance (0..1 per column, or per line and column), as uint8.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True, eq=False)
class SyntheticCamera:
    dark_dn: np.ndarray  # (W,) or (W, C)
    response_dn: np.ndarray  # DN for reflectance 1.0, same shape
    dead_columns: tuple[int, ...]
    hot_columns: tuple[int, ...]
    noise_dn: float
    seed: int

    @property
    def width_px(self) -> int:
        return int(self.dark_dn.shape[0])

    def capture(self, reflectance: np.ndarray, lines: int, seed_offset: int = 0) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 1000 + seed_offset)
        scene = np.asarray(reflectance, dtype=np.float64)
        if scene.ndim == 1:
            scene = np.broadcast_to(scene, (lines, scene.size))
        if self.dark_dn.ndim == 2:
            scene = scene[..., None]
        raw = self.dark_dn + self.response_dn * scene
        raw = raw + rng.normal(0.0, self.noise_dn, raw.shape)
        return np.clip(np.rint(raw), 0, 255).astype(np.uint8)


def make_camera(
    width_px: int = 2048,
    *,
    channels: int = 1,
    white_dn: float = 220.0,
    vignetting: float = 0.45,
    prnu: float = 0.02,
    dark_dn: float = 6.0,
    dead_columns: tuple[int, ...] = (),
    hot_columns: tuple[int, ...] = (),
    hot_excess_dn: float = 40.0,
    noise_dn: float = 1.5,
    seed: int = 0,
) -> SyntheticCamera:
    """Response falls off as 1 - vignetting * u**2 toward the ends (u = -1..1 across the line)."""
    rng = np.random.default_rng(seed)
    shape = (width_px,) if channels == 1 else (width_px, channels)
    u = np.linspace(-1.0, 1.0, width_px)
    falloff = 1.0 - vignetting * u**2
    if channels > 1:
        falloff = falloff[:, None] * np.linspace(0.9, 1.0, channels)[None, :]
    response = white_dn * falloff * (1.0 + prnu * rng.standard_normal(shape))
    dark = dark_dn + rng.uniform(-1.5, 1.5, shape)
    for column in dead_columns:
        response[column] *= 0.05
    for column in hot_columns:
        dark[column] += hot_excess_dn
    return SyntheticCamera(dark, response, tuple(dead_columns), tuple(hot_columns), noise_dn, seed)


def _supersampled(
    width_px: int, value_at: Callable[[np.ndarray], np.ndarray], blur_px: float, factor: int = 8
) -> np.ndarray:
    """Area-average of value_at(x) over each pixel [i, i+1), then optical blur."""
    x = (np.arange(width_px * factor) + 0.5) / factor
    profile = value_at(x).reshape(width_px, factor).mean(axis=1)
    if blur_px > 0:
        profile = cv2.GaussianBlur(
            profile.reshape(1, -1), (0, 0), blur_px, borderType=cv2.BORDER_REFLECT
        ).ravel()
    return profile


def stripe_target(
    width_px: int,
    pitch_mm: float,
    x_mm_of_px: Callable[[np.ndarray], np.ndarray],
    *,
    low: float = 0.15,
    high: float = 0.85,
    blur_px: float = 1.2,
) -> np.ndarray:
    """Reflectance across the line of a printed square-wave stripe target seen through the lens model."""
    return _supersampled(
        width_px, lambda x: np.where(np.sin(2 * np.pi * x_mm_of_px(x) / pitch_mm) > 0, high, low), blur_px
    )


def bar_target(
    width_px: int,
    left_px: float,
    right_px: float,
    *,
    inside: float = 0.8,
    outside: float = 0.1,
    blur_px: float = 1.5,
) -> np.ndarray:
    """Reflectance across the line of a bright bar from left_px to right_px on a dark background."""
    return _supersampled(
        width_px, lambda x: np.where((x > left_px) & (x < right_px), inside, outside), blur_px
    )
