"""Perlin-noise blob defects (after DRAEM and MemSeg): stains and foreign-matter contamination.

A 2-D Perlin noise field (gradient noise on a lattice of 2^k cells per axis, k drawn per axis, the
field rotated by a random angle) thresholded at 0.5 gives irregular blobs. Inside them the tile is
blended with an anomaly source, `out = (1 - w) * tile + w * source`, where `w` is the transparency
delta in [0.15, 1] (ramped up over a thin rim when the edges are soft).

Which class a blob gets is the `class_name` constructor parameter, and the default anomaly source
follows it:

- ``"stain"``  (source ``"brightness"``): the tile itself darker or lighter (gain, gamma, a colour
  tint on colour tiles), so the weave stays visible through the blob, like oil, dirt or a water mark;
- ``"contamination"`` and any other class (source ``"texture"``): a foreign texture: a picture from
  `texture_bank` (another fabric), else the tile's own structure shuffled in a grid of square cells
  (permuted and rotated by multiples of 90 degrees) or zoomed so its yarns look coarser, always with
  a gamma / gain / colour jitter.

Each connected blob becomes its own training box, so blobs smaller than `min_area_px` or fainter
than the contrast floor (`min_contrast` gray levels of mean absolute difference, raised on busy
fabric to `relative_contrast` times the tile's spread) are removed before the sample is kept,
and at most `max_blobs` of the rest (chosen at random) are kept: a tile holds a few defects, not a
rash of them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from offline_train.synth.base import (
    SynthResult,
    apply_lut,
    blend,
    check_class,
    check_tile,
    contrast_needed,
    drop_faint_components,
    finish,
    gamma_gain_lut,
)

log = logging.getLogger(__name__)

PerlinSource = Literal["brightness", "texture"]


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(
    shape: tuple[int, int],
    res: tuple[int, int],
    rng: np.random.Generator,
    *,
    angle_deg: float = 0.0,
) -> np.ndarray:
    """2-D Perlin gradient noise, float32 `shape`, scaled by sqrt(2) to values within about [-1, 1]
    (as DRAEM does, so that its threshold of 0.5 keeps the same meaning).

    `res` = (rows, cols) lattice cells across the image before rotation; the field is rotated by
    `angle_deg` about the image centre and its lattice origin is shifted at random. Evaluated on a
    grid of at least 4 samples per cell and upsampled bilinearly (the noise is smooth at that scale).
    """
    h, w = shape
    cell_y, cell_x = h / max(1, res[0]), w / max(1, res[1])
    step = max(1, int(min(cell_y, cell_x) // 4))
    hc, wc = -(-h // step) + 1, -(-w // step) + 1
    yy = (np.arange(hc, dtype=np.float64) * step - h / 2.0)[:, None]
    xx = (np.arange(wc, dtype=np.float64) * step - w / 2.0)[None, :]
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    u = (ca * yy - sa * xx) / cell_y  # rows of the lattice
    v = (sa * yy + ca * xx) / cell_x  # columns of the lattice
    u -= u.min() - rng.random()
    v -= v.min() - rng.random()
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = (u - iu).astype(np.float32), (v - iv).astype(np.float32)
    ncols = int(iv.max()) + 2
    theta = rng.uniform(0.0, 2.0 * math.pi, size=(int(iu.max()) + 2) * ncols).astype(np.float32)
    gu, gv = np.cos(theta), np.sin(theta)
    base = (iu.astype(np.intp) * ncols + iv.astype(np.intp)).ravel()
    fu1, fv1 = fu.ravel(), fv.ravel()

    def corner(du: int, dv: int) -> np.ndarray:
        k = base + (du * ncols + dv)
        return np.asarray(gu[k] * (fu1 - du) + gv[k] * (fv1 - dv))

    n00, n01, n10, n11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    tu, tv = _fade(fu1), _fade(fv1)
    top = n00 + tv * (n01 - n00)
    bottom = n10 + tv * (n11 - n10)
    noise = (math.sqrt(2.0) * (top + tu * (bottom - top))).reshape(hc, wc)
    if step == 1:
        return noise[:h, :w]
    big = cv2.resize(noise, ((wc - 1) * step + 1, (hc - 1) * step + 1), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(big[:h, :w])


def perlin_field(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    log2_res_range: tuple[int, int] = (1, 4),
    max_log2_aspect: int = 1,
    octaves: int = 1,
) -> np.ndarray:
    """Perlin noise with 2^k cells per axis (k drawn per axis in `log2_res_range`, inclusive, the two
    differing by at most `max_log2_aspect`), a random rotation in [-90, 90) degrees, and `octaves`
    fractal octaves (each twice as fine, half as strong)."""
    lo, hi = log2_res_range
    ky = int(rng.integers(lo, hi + 1))
    kx = int(rng.integers(max(lo, ky - max_log2_aspect), min(hi, ky + max_log2_aspect) + 1))
    ry, rx = 2**ky, 2**kx
    angle = float(rng.uniform(-90.0, 90.0))
    field = perlin_noise(shape, (ry, rx), rng, angle_deg=angle)
    amp = 1.0
    for _ in range(1, octaves):
        ry, rx, amp = ry * 2, rx * 2, amp * 0.5
        field += amp * perlin_noise(shape, (ry, rx), rng, angle_deg=angle)
    return field


def grid_shuffle(image: np.ndarray, cell_px: int, rng: np.random.Generator) -> np.ndarray:
    """`image` cut into `cell_px` squares, permuted, each rotated by a random multiple of 90 degrees."""
    h, w = image.shape[:2]
    ny, nx = -(-h // cell_px), -(-w // cell_px)
    pad = ((0, ny * cell_px - h), (0, nx * cell_px - w)) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(image, pad, mode="reflect") if any(p[1] for p in pad) else image
    rest = padded.shape[2:]
    cells = (
        padded.reshape(ny, cell_px, nx, cell_px, *rest)
        .swapaxes(1, 2)
        .reshape(ny * nx, cell_px, cell_px, *rest)
    )
    cells = cells[rng.permutation(ny * nx)]
    turns = rng.integers(0, 4, size=ny * nx)
    for k in (1, 2, 3):
        sel = turns == k
        if sel.any():
            cells[sel] = np.rot90(cells[sel], k, axes=(1, 2))
    out = (
        cells.reshape(ny, nx, cell_px, cell_px, *rest)
        .swapaxes(1, 2)
        .reshape(ny * cell_px, nx * cell_px, *rest)
    )
    return np.ascontiguousarray(out[:h, :w])


def zoomed(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """A random window of `image` blown up by `factor` (coarser yarns: a different fabric), maybe flipped."""
    h, w = image.shape[:2]
    ch, cw = max(2, round(h / factor)), max(2, round(w / factor))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = cv2.resize(image[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _match_channels(texture: np.ndarray, like: np.ndarray) -> np.ndarray:
    if texture.ndim == like.ndim:
        return texture
    if like.ndim == 2:
        return np.asarray(cv2.cvtColor(texture, cv2.COLOR_BGR2GRAY))
    return np.asarray(cv2.cvtColor(texture, cv2.COLOR_GRAY2BGR))


def bank_crop(texture: np.ndarray, like: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A `like`-sized random window of a bank texture (tiled when smaller), channels matched to `like`."""
    texture = _match_channels(texture, like)
    h, w = like.shape[:2]
    th, tw = texture.shape[:2]
    if th < h or tw < w:
        reps = (-(-h // th), -(-w // tw)) + (1,) * (texture.ndim - 2)
        texture = np.tile(texture, reps)
        th, tw = texture.shape[:2]
    y0, x0 = int(rng.integers(0, th - h + 1)), int(rng.integers(0, tw - w + 1))
    return np.ascontiguousarray(texture[y0 : y0 + h, x0 : x0 + w])


def jitter(image: np.ndarray, rng: np.random.Generator, *, gain: float | None = None) -> np.ndarray:
    """Gamma in [0.5, 2] (log-uniform), gain (drawn in [0.7, 1.3] unless given), bias in [-25, 25]
    gray levels; colour tiles also get an independent +-15 % gain per channel (a tint)."""
    gamma = float(np.exp(rng.uniform(math.log(0.5), math.log(2.0))))
    g = float(rng.uniform(0.7, 1.3)) if gain is None else gain
    bias = float(rng.uniform(-25.0, 25.0))
    n = 1 if image.ndim == 2 else image.shape[2]
    tints = [1.0] if n == 1 else list(rng.uniform(0.85, 1.15, size=n))
    return apply_lut(image, [gamma_gain_lut(gamma, g * t, bias) for t in tints])


class PerlinSynthesizer:
    """Perlin-noise blobs blended with an anomaly source; see the module docstring."""

    def __init__(
        self,
        class_name: str = "stain",
        *,
        source: PerlinSource | None = None,
        texture_bank: Sequence[np.ndarray] = (),
        bank_probability: float = 0.5,
        delta_range: tuple[float, float] = (0.15, 1.0),
        log2_res_range: tuple[int, int] | None = None,
        octaves: int | None = None,
        min_contrast: float = 8.0,
        relative_contrast: float = 0.5,
        min_area_px: int | None = None,
        max_blobs: int = 3,
        max_area_fraction: float = 0.35,
        max_tries: int = 8,
        name: str | None = None,
    ) -> None:
        self.class_name = check_class(class_name)
        self.source: PerlinSource = source or ("brightness" if class_name == "stain" else "texture")
        if self.source not in ("brightness", "texture"):
            raise ValueError(f"source must be 'brightness' or 'texture', got {self.source!r}")
        if not 0.0 < delta_range[0] <= delta_range[1] <= 1.0:
            raise ValueError(f"delta_range must satisfy 0 < lo <= hi <= 1, got {delta_range}")
        self.texture_bank = [np.asarray(t) for t in texture_bank]
        for t in self.texture_bank:
            check_tile(t)
        self.bank_probability = bank_probability
        self.delta_range = delta_range
        # Lattice cells per tile side: 2^k. Stains are larger (fewer cells) than foreign matter.
        self.log2_res_range = log2_res_range or ((1, 3) if self.source == "brightness" else (2, 4))
        self.octaves = octaves if octaves is not None else (2 if self.source == "brightness" else 1)
        self.min_contrast = min_contrast
        self.relative_contrast = relative_contrast
        # Smallest blob kept, px: a stain of a few mm; foreign matter may be smaller.
        self.min_area_px = (
            min_area_px if min_area_px is not None else (80 if self.source == "brightness" else 24)
        )
        self.max_blobs = max_blobs
        self.max_area_fraction = max_area_fraction
        self.max_tries = max_tries
        self.name = name or f"perlin_{class_name}"
        self.classes: tuple[str, ...] = (self.class_name,)

    def __repr__(self) -> str:
        return (
            f"PerlinSynthesizer({self.class_name!r}, source={self.source!r}, bank={len(self.texture_bank)})"
        )

    # -- pieces -------------------------------------------------------------------------------

    def blob_field(
        self, shape: tuple[int, int], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(noise field, mask = field > 0.5 without specks), redrawn until the mask is non-empty and
        covers at most `max_area_fraction` of the tile; None after `max_tries` draws."""
        limit = self.max_area_fraction * shape[0] * shape[1]
        for _ in range(self.max_tries):
            field = perlin_field(shape, rng, log2_res_range=self.log2_res_range, octaves=self.octaves)
            mask = field > 0.5
            n = int(np.count_nonzero(mask))
            if self.min_area_px <= n <= limit:
                return field, mask
        return None

    def anomaly_source(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.source == "brightness":
            darker = rng.random() < 0.7
            gain = float(rng.uniform(0.4, 0.8) if darker else rng.uniform(1.2, 1.6))
            gamma = float(rng.uniform(0.8, 1.25))
            n = 1 if image.ndim == 2 else image.shape[2]
            tints = [1.0] if n == 1 else list(rng.uniform(0.8, 1.2, size=n))
            return apply_lut(image, [gamma_gain_lut(gamma, gain * t, 0.0) for t in tints])
        h, w = image.shape[:2]
        if self.texture_bank and rng.random() < self.bank_probability:
            texture = bank_crop(self.texture_bank[int(rng.integers(len(self.texture_bank)))], image, rng)
        elif rng.random() < 0.5:
            sizes = [c for c in (8, 16, 32, 64) if 2 * c <= min(h, w)] or [max(1, min(h, w) // 2)]
            texture = grid_shuffle(image, sizes[int(rng.integers(len(sizes)))], rng)
        else:
            texture = zoomed(image, float(rng.uniform(1.5, 3.5)), rng)
        return jitter(texture, rng)

    # -- the synthesizer ----------------------------------------------------------------------

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> SynthResult | None:
        check_tile(image)
        shape = (int(image.shape[0]), int(image.shape[1]))
        need = contrast_needed(image, self.min_contrast, self.relative_contrast)
        for _ in range(self.max_tries):
            drawn = self.blob_field(shape, rng)
            if drawn is None:
                continue
            field, mask = drawn
            delta = float(rng.uniform(*self.delta_range))
            soft = float(rng.uniform(0.01, 0.12)) if self.source == "brightness" else 0.01
            weight = np.clip((field - 0.5) / soft, 0.0, 1.0) * delta * mask
            candidate = blend(image, self.anomaly_source(image, rng), weight)
            kept = drop_faint_components(
                image,
                candidate,
                mask,
                min_contrast=need,
                min_area_px=self.min_area_px,
                max_components=self.max_blobs,
                rng=rng,
            )
            if not kept.any():
                continue
            if not np.array_equal(kept, mask):
                candidate = np.where(kept if image.ndim == 2 else kept[:, :, None], candidate, image)
            result = finish(
                image,
                candidate,
                kept,
                class_name=self.class_name,
                synthesizer=self.name,
                min_contrast=need,
            )
            if result is not None:
                return result
        log.debug("%s: no sample above contrast %.1f after %d tries", self.name, need, self.max_tries)
        return None
