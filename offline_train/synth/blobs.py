"""Small blobs: knots, neps and fuzz balls, the defects a few pixels across at the model's
resolution (3-20 px at 0.1 mm/px, 1-5 px at 0.4).

A blob is an ellipse of `size_px_range` (random axes and angle, edge roughened by noise), lighter
(a nep of fibres, a knot's bulk catching light) or darker (a knot's shadow, a fuzz ball of dirty
fibre) than the weave, with a soft rim that stays inside the mask's allowed dilation. Most tiles
get one blob; some get a small cluster (neps come in groups). A sample is kept only when the mean
absolute change inside each blob is at least `min_contrast` gray levels (raised on busy fabric to
`relative_contrast` times the tile's spread).
"""

from __future__ import annotations

import cv2
import numpy as np

from offline_train.synth.base import (
    SynthResult,
    check_class,
    check_tile,
    contrast_needed,
    drop_faint_components,
    finish,
)


class BlobSynthesizer:
    """Bright or dark lumps a few pixels across, class `class_name` (default knot)."""

    def __init__(
        self,
        class_name: str = "knot",
        *,
        size_px_range: tuple[float, float] = (2.0, 6.0),
        cluster_probability: float = 0.25,
        strength_range: tuple[float, float] = (0.35, 0.8),
        min_contrast: float = 12.0,
        relative_contrast: float = 0.6,
        max_tries: int = 8,
        name: str | None = None,
    ) -> None:
        self.class_name = check_class(class_name)
        if not 1.0 <= size_px_range[0] <= size_px_range[1]:
            raise ValueError(f"size_px_range must satisfy 1 <= lo <= hi, got {size_px_range}")
        self.size_px_range = size_px_range
        self.cluster_probability = cluster_probability
        self.strength_range = strength_range
        self.min_contrast = min_contrast
        self.relative_contrast = relative_contrast
        self.max_tries = max_tries
        self.name = name or f"blob_{class_name}"
        self.classes: tuple[str, ...] = (self.class_name,)

    def __repr__(self) -> str:
        return f"BlobSynthesizer({self.class_name!r}, size_px_range={self.size_px_range})"

    def _draw_mask(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        h, w = shape
        mask = np.zeros((h, w), np.uint8)
        n = int(rng.integers(2, 5)) if rng.random() < self.cluster_probability else 1
        cx, cy = rng.uniform(8, w - 8), rng.uniform(8, h - 8)
        for _ in range(n):
            ax = float(rng.uniform(*self.size_px_range)) / 2
            ay = ax * float(rng.uniform(0.6, 1.0))
            x = int(np.clip(cx + rng.normal(0, 6) * (n > 1), 4, w - 5))
            y = int(np.clip(cy + rng.normal(0, 6) * (n > 1), 4, h - 5))
            cv2.ellipse(
                mask,
                (x, y),
                (max(1, round(ax)), max(1, round(ay))),
                float(rng.uniform(0, 180)),
                0,
                360,
                1,
                -1,
            )
        return mask.astype(bool)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> SynthResult | None:
        check_tile(image)
        floor = contrast_needed(image, self.min_contrast, self.relative_contrast)
        for _ in range(self.max_tries):
            mask = self._draw_mask(image.shape[:2], rng)
            target = 235.0 if rng.random() < 0.5 else 25.0
            strength = float(rng.uniform(*self.strength_range))
            # a soft rim: full strength on the mask, fading over one pixel outside it
            weight = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0.8)
            weight = np.maximum(weight, mask.astype(np.float32)) * strength
            w = weight[:, :, None] if image.ndim == 3 else weight
            out = np.clip(image.astype(np.float32) + w * (target - image.astype(np.float32)), 0, 255)
            candidate = np.rint(out).astype(np.uint8)
            kept = drop_faint_components(image, candidate, mask, min_contrast=floor, min_area_px=1)
            if not kept.any():
                continue
            result = finish(image, candidate, kept, class_name=self.class_name, synthesizer=self.name,
                            min_contrast=floor)  # fmt: skip
            if result is not None:
                return result
        return None
