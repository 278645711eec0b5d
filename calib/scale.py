"""Millimetres per pixel across the web, from a target of known size seen by the camera.

Two targets:
- edges: a bar (or gap) of known width; its two edges are found to a fraction of a pixel at the
  50 % level between the plateaus on either side, so symmetric blur does not bias the width;
- stripes: a printed stripe target of known pitch; the pitch in pixels comes from the FFT across
  the line, then the local phase of the stripes (analytic signal) gives x_mm at every pixel. A
  straight-line fit of that is mm_per_px_x; a higher-degree fit is the lens distortion of the line.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from runtime.calibration import LensPolynomial
from runtime.errors import CalibrationError

log = logging.getLogger(__name__)

MIN_PITCH_PX = 2.5
EDGE_SNR = 8.0


@dataclass(frozen=True)
class ScaleResult:
    mm_per_px_x: float
    width_px: int
    method: str
    details: dict[str, Any] = field(default_factory=dict)
    distortion: LensPolynomial | None = None

    def to_document(self) -> dict[str, Any]:
        return {
            "mm_per_px_x": self.mm_per_px_x,
            "width_px": self.width_px,
            "method": self.method,
            "details": self.details,
            "distortion": self.distortion.to_dict() if self.distortion else None,
        }


def line_profile(pixels: np.ndarray) -> np.ndarray:
    """Mean gray level of every column over all lines (a static target seen for many lines)."""
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    return np.asarray(pixels, dtype=np.float64).mean(axis=0)


def _crossing(profile: np.ndarray, k: int, reach: int) -> float:
    """Sub-pixel position (pixel-centre coordinates) where the edge near index k crosses 50 %."""
    n = profile.size
    before = profile[max(0, k - 4 * reach) : max(1, k - reach)]
    after = profile[min(n - 1, k + reach) : min(n, k + 4 * reach)]
    if before.size == 0 or after.size == 0:
        raise CalibrationError(f"the edge at px {k} is too close to the end of the line to measure")
    half = (float(np.median(before)) + float(np.median(after))) / 2
    lo, hi = max(0, k - reach), min(n - 2, k + reach)
    best: float | None = None
    for j in range(lo, hi + 1):
        a, b = profile[j] - half, profile[j + 1] - half
        if a == 0 or a * b < 0:
            position = j + (0.0 if a == 0 else a / (a - b))
            if best is None or abs(position - k) < abs(best - k):
                best = position
    if best is None:
        raise CalibrationError(f"no 50 % crossing near px {k}; is the target edge in focus?")
    return best + 0.5


def find_edges(profile: np.ndarray, smooth_px: float = 1.5) -> tuple[float, float]:
    """The strongest rising and falling edges of the line, left to right, in pixels."""
    smoothed = cv2.GaussianBlur(profile.reshape(1, -1).astype(np.float64), (0, 0), smooth_px).ravel()
    gradient = np.gradient(smoothed)
    noise = 1.4826 * float(np.median(np.abs(gradient - np.median(gradient)))) or 1e-6
    rising, falling = int(np.argmax(gradient)), int(np.argmin(gradient))
    for index in (rising, falling):
        if abs(gradient[index]) < EDGE_SNR * noise:
            raise CalibrationError(
                f"no clear edge in the line (strongest step {abs(gradient[index]):.2f} DN/px vs noise {noise:.2f}); "
                "use a target with sharp, high-contrast edges, or give --edges LEFT,RIGHT"
            )
    reach = max(4, math.ceil(4 * smooth_px))
    left, right = sorted((_crossing(profile, rising, reach), _crossing(profile, falling, reach)))
    return left, right


def scale_from_edges(
    profile: np.ndarray, target_width_mm: float, edges: tuple[float, float] | None = None
) -> ScaleResult:
    if target_width_mm <= 0:
        raise CalibrationError(f"--target-width-mm {target_width_mm} must be positive")
    left, right = edges if edges is not None else find_edges(profile)
    if right - left < 10:
        raise CalibrationError(
            f"edges at {left:.2f} and {right:.2f} px are too close: the target spans < 10 px"
        )
    width_px = right - left
    return ScaleResult(
        mm_per_px_x=target_width_mm / width_px,
        width_px=int(profile.size),
        method="edges",
        details={
            "left_px": left,
            "right_px": right,
            "target_px": width_px,
            "target_width_mm": target_width_mm,
            "edges": "manual" if edges is not None else "auto",
        },
    )


def stripe_pitch_px(profile: np.ndarray) -> float:
    """Dominant period across the line in pixels (FFT peak with parabolic refinement)."""
    n = profile.size
    x = (profile - profile.mean()) * np.hanning(n)
    size = 1 << math.ceil(math.log2(n * 8))
    magnitude = np.abs(np.fft.rfft(x, size))
    freqs = np.fft.rfftfreq(size)
    band = (freqs >= 3.0 / n) & (freqs <= 1.0 / MIN_PITCH_PX)
    if not band.any():
        raise CalibrationError(f"a line of {n} px is too short to measure a stripe pitch")
    index = int(np.flatnonzero(band)[np.argmax(magnitude[band])])
    a, b, c = np.log(magnitude[index - 1 : index + 2] + 1e-12)
    shift = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) != 0 else 0.0
    frequency = (index + shift) / size
    return 1.0 / frequency


def _largest_run(mask: np.ndarray) -> tuple[int, int]:
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    changes = np.flatnonzero(np.diff(padded))
    starts, ends = changes[::2], changes[1::2]
    if starts.size == 0:
        return 0, 0
    best = int(np.argmax(ends - starts))
    return int(starts[best]), int(ends[best])


def scale_from_stripes(profile: np.ndarray, pitch_mm: float, distortion_degree: int = 0) -> ScaleResult:
    """mm_per_px_x (and, with degree >= 2, a lens polynomial) from a stripe target of known pitch."""
    if pitch_mm <= 0:
        raise CalibrationError(f"--pitch-mm {pitch_mm} must be positive")
    if distortion_degree not in (0, 1) and not 2 <= distortion_degree <= 7:
        raise CalibrationError(f"--distortion-degree {distortion_degree}: use 0 (none) or 2..7")
    n = profile.size
    pitch_px = stripe_pitch_px(profile)
    f0 = 1.0 / pitch_px
    spectrum = np.fft.fft(profile - profile.mean())
    freqs = np.fft.fftfreq(n)
    passband = np.where(freqs > 0, np.exp(-0.5 * ((freqs - f0) / (0.25 * f0)) ** 2), 0.0)
    analytic = np.fft.ifft(spectrum * passband * 2)
    amplitude = np.abs(analytic)
    valid = amplitude > 0.5 * np.percentile(amplitude, 95)
    start, end = _largest_run(valid)
    trim = math.ceil(4 * pitch_px)
    start, end = start + trim, end - trim
    if end - start < 20 * pitch_px:
        raise CalibrationError(
            f"the stripe target covers too little of the line ({max(end - start, 0)} usable px, pitch {pitch_px:.2f} px); "
            "it should fill most of the field of view"
        )
    px = np.arange(start, end) + 0.5
    x_mm = np.unwrap(np.angle(analytic[start:end])) / (2 * math.pi) * pitch_mm
    center = scale = n / 2
    degree = max(1, distortion_degree)
    u = (px - center) / scale
    coeffs = np.polynomial.polynomial.polyfit(u, x_mm, degree, w=amplitude[start:end])
    coeffs[0] -= np.polynomial.polynomial.polyval(-center / scale, coeffs)  # x_mm(0) = 0
    lens = LensPolynomial(tuple(float(c) for c in coeffs), float(center), float(scale))
    residual = x_mm - (lens(px) - lens(px[0]) + x_mm[0])
    mm_per_px = float(lens(float(n)) - lens(0.0)) / n
    linear = mm_per_px * np.array([0.0, float(n)])
    coverage = (end - start) / n
    if distortion_degree >= 2 and coverage < 0.8:
        log.warning(
            "stripe target covers %.0f%% of the line: the lens model is extrapolated beyond it",
            coverage * 100,
        )
    return ScaleResult(
        mm_per_px_x=mm_per_px,
        width_px=n,
        method="stripes",
        details={
            "pitch_mm": pitch_mm,
            "pitch_px_fft": float(pitch_px),
            "used_px": [int(start), int(end)],
            "coverage": coverage,
            "fit_degree": degree,
            "residual_rms_mm": float(np.sqrt(np.mean(residual**2))),
            "max_deviation_from_linear_mm": float(
                np.max(np.abs(lens(np.linspace(0, n, 257)) - np.linspace(linear[0], linear[1], 257)))
            ),
        },
        distortion=lens if distortion_degree >= 2 else None,
    )
