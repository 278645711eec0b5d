"""Contact sheets of labelled tiles: what a person looks at before trusting a dataset."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from offline_train.dataset.labels import Box

_PALETTE = [
    (0, 0, 255), (0, 160, 255), (0, 220, 0), (255, 128, 0), (255, 0, 255),
    (0, 255, 255), (128, 0, 255), (255, 255, 0), (0, 128, 128), (128, 128, 255),
]  # fmt: skip


def draw_boxes(tile: np.ndarray, boxes: Sequence[Box], classes: Sequence[str], scale: int = 1) -> np.ndarray:
    img = tile if tile.ndim == 3 else cv2.cvtColor(tile, cv2.COLOR_GRAY2BGR)
    if scale != 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    else:
        img = img.copy()
    for b in boxes:
        color = _PALETTE[b.class_id % len(_PALETTE)]
        cv2.rectangle(img, (b.x0 * scale, b.y0 * scale), (b.x1 * scale - 1, b.y1 * scale - 1), color, 1)
        cv2.putText(
            img, classes[b.class_id], (b.x0 * scale + 2, max(10, b.y0 * scale - 3)),
            cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, 1, cv2.LINE_AA,
        )  # fmt: skip
    return img


def contact_sheet(
    items: Sequence[tuple[np.ndarray, Sequence[Box], str]],
    classes: Sequence[str],
    *,
    columns: int = 8,
    cell_px: int = 256,
) -> np.ndarray:
    """A grid of tiles with their boxes drawn and a caption under each."""
    caption_px = 16
    rows = max(1, -(-len(items) // columns))
    sheet = np.full((rows * (cell_px + caption_px), columns * cell_px, 3), 40, np.uint8)
    for i, (tile, boxes, caption) in enumerate(items):
        r, c = divmod(i, columns)
        img = draw_boxes(tile, boxes, classes)
        img = cv2.resize(img, (cell_px, cell_px), interpolation=cv2.INTER_AREA)
        y, x = r * (cell_px + caption_px), c * cell_px
        sheet[y : y + cell_px, x : x + cell_px] = img
        cv2.putText(
            sheet, caption[:40], (x + 3, y + cell_px + 12),
            cv2.FONT_HERSHEY_SIMPLEX, 0.38, (230, 230, 230), 1, cv2.LINE_AA,
        )  # fmt: skip
    return sheet
