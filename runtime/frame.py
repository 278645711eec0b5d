"""Typed records that travel between pipeline stages: camera frames and assembled web strips."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One block of lines (line-scan) or one image (area-scan) from a frame source.

    `pixels` is owned by the frame (never a view into a driver buffer): HxW uint8 gray or HxWx3
    uint8 BGR. `line0` is the index of the frame's first line since the roll started.
    """

    pixels: np.ndarray
    seq: int
    timestamp_ns: int
    line0: int
    source: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


@dataclass(frozen=True, slots=True)
class Strip:
    """A run of contiguous web lines handed to preprocessing and tiling.

    Lines `[line0, line0 + height)` of the roll, at camera resolution. The first `overlap_lines`
    lines repeat the end of the previous strip so that a defect on a boundary is seen whole.
    `timestamp_ns` is the arrival time of the last frame that went into it; `line_times` holds one
    `(roll line one past the frame's last line, frame timestamp_ns)` point per frame it was built
    from, the one before it included (see runtime/line_clock.py).
    """

    pixels: np.ndarray
    seq: int
    line0: int
    overlap_lines: int
    roll_id: str
    timestamp_ns: int
    line_times: tuple[tuple[int, int], ...] = ()

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def line_end(self) -> int:
        """One past the last line of the roll this strip holds."""
        return self.line0 + self.height
