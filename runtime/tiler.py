"""Cut an image into square, overlapping tiles and map tile boxes back exactly.

Training cuts its tiles with this same class, so the detector sees the web the same way in both
halves. The last tile of a row or column is shifted inward to end at the image edge rather than
padded; only an image smaller than one tile is padded (bottom/right, mirrored: repeating the edge
line would draw a fake streak along the web, which is exactly what a broken end looks like).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class TileWindow:
    """A tile's top-left corner in the image it was cut from; the tile is `size` x `size` pixels."""

    x0: int
    y0: int
    size: int

    @property
    def x1(self) -> int:
        return self.x0 + self.size

    @property
    def y1(self) -> int:
        return self.y0 + self.size


def axis_starts(length: int, tile_px: int, overlap_px: int) -> list[int]:
    """Tile start offsets along one axis: stride `tile_px - overlap_px`, the last one shifted inward."""
    if length <= tile_px:
        return [0]
    stride = tile_px - overlap_px
    starts = list(range(0, length - tile_px + 1, stride))
    if starts[-1] + tile_px < length:
        starts.append(length - tile_px)
    return starts


class Tiler:
    """Square tiles of `tile_px` with `overlap_px` shared between neighbours."""

    def __init__(self, tile_px: int, overlap_px: int) -> None:
        if tile_px < 8:
            raise ValueError(f"tile_px must be >= 8, got {tile_px}")
        if not 0 <= overlap_px < tile_px:
            raise ValueError(f"overlap_px must be in [0, tile_px={tile_px}), got {overlap_px}")
        self.tile_px = tile_px
        self.overlap_px = overlap_px

    def layout(self, width: int, height: int) -> list[TileWindow]:
        """Every tile window covering a `width` x `height` image, row by row."""
        xs = axis_starts(width, self.tile_px, self.overlap_px)
        ys = axis_starts(height, self.tile_px, self.overlap_px)
        return [TileWindow(x, y, self.tile_px) for y in ys for x in xs]

    def cut(self, image: np.ndarray, windows: Sequence[TileWindow]) -> np.ndarray:
        """Stack the tiles of `windows` into one (N, tile, tile[, C]) uint8 array (a copy)."""
        h, w = image.shape[:2]
        if h < self.tile_px or w < self.tile_px:
            pad = ((0, max(0, self.tile_px - h)), (0, max(0, self.tile_px - w))) + ((0, 0),) * (
                image.ndim - 2
            )
            image = np.pad(image, pad, mode="symmetric")
        out = np.empty((len(windows), self.tile_px, self.tile_px, *image.shape[2:]), dtype=image.dtype)
        for i, win in enumerate(windows):
            out[i] = image[win.y0 : win.y1, win.x0 : win.x1]
        return out

    @staticmethod
    def to_image(xyxy: np.ndarray, window: TileWindow) -> np.ndarray:
        """Boxes in tile pixels -> boxes in image pixels (exact: a pure offset)."""
        offset = np.array([window.x0, window.y0, window.x0, window.y0], dtype=np.float32)
        return xyxy.astype(np.float32, copy=False) + offset

    @staticmethod
    def batches(windows: Sequence[TileWindow], batch_size: int) -> Iterator[Sequence[TileWindow]]:
        for i in range(0, len(windows), batch_size):
            yield windows[i : i + batch_size]
