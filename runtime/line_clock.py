"""When was roll line L acquired? From the frames' arrival times, interpolated between frames.

A frame source stamps each frame with the wall clock (`time.time_ns()`) when the block arrived,
which is when its *last* line was acquired (a line-scan block is delivered once it is full). The
assembler records one point per frame, `(roll line one past the frame's last line, timestamp_ns)`,
and every strip carries the points of the frames it was built from (`Strip.line_times`). Between
two points the lines were acquired at an even rate, so line L's time is interpolated from the two
points around it; before the first known point, the first point's time is used (a later time than
the truth, so a latency measured from it is never overstated).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Iterable

MAX_POINTS = 1024  # frames remembered per roll (a defect closes within a few strips of its last line)


class LineClock:
    """Acquisition times of recent roll lines. Thread-safe: one thread adds, others may ask."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self._points: deque[tuple[int, int]] = deque(maxlen=max_points)
        self._lock = threading.Lock()

    def add(self, points: Iterable[tuple[int, int]]) -> None:
        """`(line_end, timestamp_ns)` points, in any order; a point already known is ignored."""
        with self._lock:
            for line_end, ts in points:
                if self._points and line_end <= self._points[-1][0]:
                    continue  # the same frame seen again through a strip's overlap
                self._points.append((int(line_end), int(ts)))

    def acquired_ns(self, line: int) -> int | None:
        """Wall-clock ns when roll line `line` was acquired; None when no frame at or after it is known."""
        with self._lock:
            points = list(self._points)
        if not points:
            return None
        ends = [p[0] for p in points]
        i = bisect.bisect_left(ends, line + 1)  # first frame whose last line is >= line
        if i >= len(points):
            return None
        end, ts = points[i]
        if i == 0:
            return ts
        prev_end, prev_ts = points[i - 1]
        return prev_ts + (ts - prev_ts) * (line + 1 - prev_end) // max(end - prev_end, 1)  # exact in ints
