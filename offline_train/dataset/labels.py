"""Synthetic defect masks -> detection labels: one tight box per connected region.

Fragments closer than `merge_gap_px` belong to one defect (a broken yarn seen through a few
interlacings is one streak, not twenty specks); regions smaller than `min_area_px` are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True, slots=True)
class Box:
    """A labelled box in pixel coordinates, end-exclusive."""

    class_id: int
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    def yolo_line(self, width: int, height: int) -> str:
        cx = (self.x0 + self.x1) / 2 / width
        cy = (self.y0 + self.y1) / 2 / height
        return f"{self.class_id} {cx:.6f} {cy:.6f} {self.w / width:.6f} {self.h / height:.6f}"


def boxes_from_mask(
    mask: np.ndarray, *, merge_gap_px: int = 2, min_area_px: int = 4
) -> list[tuple[int, int, int, int]]:
    """Tight (x0, y0, x1, y1) boxes of the connected regions of a boolean mask."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if not m.any():
        return []
    joined: np.ndarray = m
    if merge_gap_px > 0:
        k = merge_gap_px + 1
        joined = cv2.dilate(m, np.ones((k, k), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    boxes: list[tuple[int, int, int, int]] = []
    for k in range(1, n):
        x, y, w, h = (int(v) for v in stats[k, :4])
        region = (labels[y : y + h, x : x + w] == k) & (m[y : y + h, x : x + w] > 0)
        area = int(region.sum())
        if area < min_area_px:
            continue
        ys, xs = np.nonzero(region)
        boxes.append((x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1))
    return boxes
