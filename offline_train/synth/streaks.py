"""Thin warp and weft streaks: look-alikes of a broken end (missing warp yarn) or broken pick.

Image rows are the machine direction, so a warp streak ("broken_end") is a near-vertical line and a
weft streak ("broken_pick") a near-horizontal one. At the model's resolution a yarn is about one
pixel, so the streak is 1-3 px wide, slightly wavy (the neighbouring yarns wander into the gap),
runs over most or all of the tile, and shows the backing: lighter or darker than the weave, its
strength varying along its length. Often the neighbours crowd in and leave a 1-px halo of the
opposite sign on each side. The texture stays partly visible through the line (transparency).

A sample is kept only when the mean absolute change on the line's core is at least `min_contrast`
gray levels (raised on busy fabric to `relative_contrast` times the tile's spread); otherwise it is
redrawn, and after `max_tries` the synthesizer returns None.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np

from offline_train.synth.base import (
    SynthResult,
    check_class,
    check_tile,
    contrast_needed,
    finish,
    mean_contrast,
)

log = logging.getLogger(__name__)

Direction = Literal["warp", "weft"]
DIRECTION_OF_CLASS: dict[str, Direction] = {"broken_end": "warp", "broken_pick": "weft"}


def _smooth_wave(
    n: int, rng: np.random.Generator, amplitude: float, period_range: tuple[float, float]
) -> np.ndarray:
    """Sum of two random sinusoids, peak amplitude about `amplitude`, over `n` samples."""
    t = np.arange(n, dtype=np.float32)
    out = np.zeros(n, dtype=np.float32)
    for share in (0.65, 0.35):
        period = float(rng.uniform(*period_range))
        out += share * amplitude * np.sin(2.0 * math.pi * t / period + float(rng.uniform(0, 2 * math.pi)))
    return out


class StreakSynthesizer:
    """A thin, slightly wavy line along (`warp`) or across (`weft`) the machine direction."""

    def __init__(
        self,
        class_name: str = "broken_end",
        *,
        direction: Direction | None = None,
        width_px_range: tuple[float, float] = (1.0, 3.0),
        wave_px_max: float = 1.5,
        full_length_probability: float = 0.6,
        min_length_fraction: float = 0.5,
        alpha_range: tuple[float, float] = (0.25, 0.85),
        halo_probability: float = 0.6,
        min_contrast: float = 10.0,
        relative_contrast: float = 0.5,
        max_tries: int = 8,
        name: str | None = None,
    ) -> None:
        self.class_name = check_class(class_name)
        chosen = direction or DIRECTION_OF_CLASS.get(class_name)
        if chosen not in ("warp", "weft"):
            raise ValueError(
                f"class {class_name!r} has no default streak direction: pass direction='warp' or 'weft'"
            )
        self.direction: Direction = chosen
        if not 0.5 <= width_px_range[0] <= width_px_range[1]:
            raise ValueError(f"width_px_range must satisfy 0.5 <= lo <= hi, got {width_px_range}")
        self.width_px_range = width_px_range
        self.wave_px_max = wave_px_max
        self.full_length_probability = full_length_probability
        self.min_length_fraction = min_length_fraction
        self.alpha_range = alpha_range
        self.halo_probability = halo_probability
        self.min_contrast = min_contrast
        self.relative_contrast = relative_contrast
        self.max_tries = max_tries
        self.name = name or f"streak_{class_name}"
        self.classes: tuple[str, ...] = (self.class_name,)

    def __repr__(self) -> str:
        return f"StreakSynthesizer({self.class_name!r}, direction={self.direction!r})"

    def _draw(
        self, frame: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """One streak on `frame` (rows = along the streak): (candidate, mask, core mask), or None."""
        length, across = frame.shape[:2]
        half = float(rng.uniform(*self.width_px_range)) / 2.0
        if across < 2 * half + 8:
            return None
        if rng.random() < self.full_length_probability:
            n, start = length, 0
        else:
            n = max(4, round(length * float(rng.uniform(self.min_length_fraction, 1.0))))
            start = int(rng.integers(0, length - n + 1))
        margin = half + 3.0
        centre = float(rng.uniform(margin, across - 1 - margin))
        t = np.arange(n, dtype=np.float32)
        wave = _smooth_wave(n, rng, float(rng.uniform(0.0, self.wave_px_max)), (length / 3.0, length * 3.0))
        wave += _smooth_wave(n, rng, float(rng.uniform(0.0, 0.4)), (6.0, 30.0))  # yarn-scale wobble
        slope = float(rng.uniform(-1.0, 1.0)) / max(length, 1)
        xc = np.clip(centre + slope * (t - n / 2.0) + wave, margin - 1.0, across - margin)
        lo = max(0, math.floor(float(xc.min()) - half - 2))
        hi = min(across, math.ceil(float(xc.max()) + half + 3))
        cols = np.arange(lo, hi, dtype=np.float32)
        dist = np.abs(cols[None, :] - xc[:, None])
        core = np.clip(half + 0.5 - dist, 0.0, 1.0)
        halo = np.clip(half + 1.5 - dist, 0.0, 1.0) - core

        band = frame[start : start + n, lo:hi].astype(np.float32)
        local = float(band.mean())
        lighter = rng.random() < (0.85 if local < 70 else 0.15 if local > 190 else 0.5)
        level = (
            float(rng.uniform(min(255.0, local + 50.0), 255.0))
            if lighter
            else float(rng.uniform(0.0, max(0.0, local - 50.0)))
        )
        alpha = float(rng.uniform(*self.alpha_range))
        # Strength varies slowly along the line, and from yarn to yarn (the crossing yarns show).
        grain = np.convolve(rng.normal(0.0, 0.15, n + 2), np.full(3, 1.0 / 3.0), mode="valid")[:n]
        strength = np.clip(
            alpha * (1.0 + _smooth_wave(n, rng, 0.25, (20.0, 4.0 * length)) + grain), 0.05, 1.0
        )
        along = strength.astype(np.float32)[:, None]
        weight = core * along
        if band.ndim == 3:
            weight = weight[:, :, None]
        new = band + weight * (level - band)
        use_halo = rng.random() < self.halo_probability
        if use_halo:
            shift = float(rng.uniform(4.0, 20.0)) * (-1.0 if lighter else 1.0)
            h = halo * along
            new += (h[:, :, None] if band.ndim == 3 else h) * shift
        candidate = frame.copy()
        candidate[start : start + n, lo:hi] = np.clip(np.rint(new), 0, 255).astype(np.uint8)
        mask = np.zeros(frame.shape[:2], dtype=bool)
        mask[start : start + n, lo:hi] = (core > 0) | (halo > 0) if use_halo else core > 0
        core_mask = np.zeros(frame.shape[:2], dtype=bool)
        core_mask[start : start + n, lo:hi] = core >= 0.5
        return candidate, mask, core_mask

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> SynthResult | None:
        check_tile(image)
        weft = self.direction == "weft"
        frame = np.ascontiguousarray(image.swapaxes(0, 1)) if weft else image
        need = contrast_needed(image, self.min_contrast, self.relative_contrast)
        for _ in range(self.max_tries):
            drawn = self._draw(frame, rng)
            if drawn is None:
                break
            candidate, mask, core = drawn
            if mean_contrast(frame, candidate, core) < need:
                continue
            if weft:
                candidate, mask = np.ascontiguousarray(candidate.swapaxes(0, 1)), np.ascontiguousarray(mask.T)
            # The core check above is the contrast test; finish() only enforces the pixel contract.
            result = finish(
                image, candidate, mask, class_name=self.class_name, synthesizer=self.name, min_contrast=0.0
            )
            if result is not None:
                return result
        log.debug("%s: no streak above contrast %.1f after %d tries", self.name, need, self.max_tries)
        return None
