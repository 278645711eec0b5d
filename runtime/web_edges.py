"""Where the fabric is in each strip: its left and right edge, tracked along the roll.

A line-scan camera sees past the web: beyond each edge lies the backlight or the roller, which is
flat (only sensor noise) and at one level, while woven fabric is textured, and where it is not (a
dense selvedge) it is at another level than the background. So a column's standard deviation and
mean along the strip separate the two: an edge is where a run of fabric columns begins. This
needs no knowledge of the fabric's colour or of the background's brightness (bright backlight and
dark roller alike).

`WebEdgeTracker` smooths the per-strip measurement (median of the last few strips: the web
wanders slowly, a strip with a hole or a stain at the edge must not move it) and says "not seen"
for a side where the camera does not see past the fabric.

Used by the inspector for the optional edge mask (`web.edge_mask_mm`: classes whose detections
inside the selvedge zone are dropped and counted) and by the reporter for `x_from_edge_mm`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WebEdges:
    """Fabric edges in the columns of the image they were measured on (None: not seen)."""

    left_px: float | None
    right_px: float | None

    def scaled(self, factor: float) -> WebEdges:
        """The same edges in columns `factor` times as fine."""
        return WebEdges(
            None if self.left_px is None else self.left_px * factor,
            None if self.right_px is None else self.right_px * factor,
        )


def find_web_edges(
    pixels: np.ndarray,
    *,
    texture_ratio: float = 0.3,
    min_run_px: int = 8,
    min_fabric_std: float = 1.5,
    max_rows: int = 256,
) -> WebEdges:
    """Edges of the fabric in one strip (rows = lines along the web, columns = across).

    A column is fabric when its standard deviation along the strip is at least `texture_ratio`
    times the median of the central half of the web (and twice the background's noise), or when
    its mean has moved from the outermost column's (the background's) at least half way toward the
    fabric's (a smooth, dense selvedge); an edge is the first column (from each side) of a run of `min_run_px` fabric
    columns. A side whose first column is already fabric is "not seen" (None). A web too flat to
    tell (central std < `min_fabric_std` grey levels) has no edges.
    """
    if pixels.ndim == 3:
        pixels = pixels.mean(axis=2)
    h, w = pixels.shape[:2]
    if h < 4 or w < 4 * min_run_px:
        return WebEdges(None, None)
    step = max(1, h // max_rows)
    sample = pixels[::step].astype(np.float32)
    col_std, col_mean = sample.std(axis=0), sample.mean(axis=0)
    centre = slice(w // 4, w - w // 4)
    fabric_level = float(np.median(col_std[centre]))
    if fabric_level < min_fabric_std:
        return WebEdges(None, None)
    textured = col_std >= texture_ratio * fabric_level
    fabric_mean = float(np.median(col_mean[centre]))

    def first_fabric(std_side: np.ndarray, mean_side: np.ndarray, textured_side: np.ndarray) -> int | None:
        """Index of the first fabric column from index 0; None if column 0 is fabric already."""
        if textured_side[0]:
            return None
        # the background is flat down to its sensor noise (2x its outermost columns' std is texture);
        # a smooth selvedge, as flat as the background, has moved at least half way from the
        # background's level toward the fabric's (lighting streaks on the background move either way)
        noise = float(np.median(std_side[:3]))
        background = float(mean_side[0])
        toward_fabric = (mean_side - background) * np.sign(fabric_mean - background)
        level_step = max(8.0, 0.5 * abs(fabric_mean - background))
        fabric = (textured_side & (std_side >= 2.0 * noise)) | (toward_fabric > level_step)
        run = np.convolve(fabric.astype(np.int32), np.ones(min_run_px, np.int32), mode="valid")
        starts = np.flatnonzero(run == min_run_px)
        if len(starts) == 0:
            return None
        return int(starts[0])

    left = first_fabric(col_std, col_mean, textured)
    right = first_fabric(col_std[::-1], col_mean[::-1], textured[::-1])
    return WebEdges(None if left is None else float(left), None if right is None else float(w - right))


class WebEdgeTracker:
    """Median of the last `window` measurements per side; a side unseen in most of them is unseen."""

    def __init__(self, window: int = 5) -> None:
        if window < 1:
            raise ValueError(f"window = {window} must be >= 1")
        self._left: deque[float | None] = deque(maxlen=window)
        self._right: deque[float | None] = deque(maxlen=window)

    def update(self, measured: WebEdges) -> WebEdges:
        """Add one strip's measurement; the smoothed edges."""
        self._left.append(measured.left_px)
        self._right.append(measured.right_px)
        return WebEdges(_median_seen(self._left), _median_seen(self._right))


def _median_seen(values: deque[float | None]) -> float | None:
    seen = [v for v in values if v is not None]
    if 2 * len(seen) <= len(values):
        return None
    return float(np.median(seen))
