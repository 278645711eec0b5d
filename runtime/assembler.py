"""Web assembly: camera frames become overlapping strips of contiguous web lines in roll coordinates.

Line-scan (`advance_lines_per_frame=None`): every frame is a block of new, contiguous lines; frame
`k+1` should start where frame `k` ended (`Frame.line0`).

Area-scan (`advance_lines_per_frame=A`): a frame of H lines shows web lines `[line0, line0 + H)`
and the web moves A lines between frames, so consecutive frames overlap by H - A lines. The
assembler takes the *first* A lines of each frame as the new web (they are the lines the next
frame no longer shows once the web has moved on, and they line up with `line0`); the other
H - A lines are seen again in the next frame. At `flush` (roll end) the last frame's remaining
H - A lines are appended too, so nothing seen is dropped. A frame shorter than A leaves a gap
of A - H lines, handled like any gap.

Strips: the first strip of a roll (or after a gap) holds `strip_lines` new lines and
`overlap_lines = 0`; every later strip repeats the last `overlap_lines` lines of the previous one
followed by `strip_lines` new lines. `Strip.line0` is the roll line of the strip's first row
(overlap included). A strip never joins non-contiguous lines:

- a gap (the next frame starts after the expected line: lost frames, a camera outage, a skipped
  frame) ends the current strip early (a shorter strip is emitted with what was collected), the gap
  is recorded in `gaps` (roll lines `[start, end)`), and the next strip starts at the new line with
  `overlap_lines = 0`; a consumer sees the break as `strip.line0 != previous.line_end` with no overlap;
- lines that arrive again (a frame starting before the expected line) are dropped and counted;
- a frame whose width, channel count or dtype differs from the roll's first frame is skipped,
  counted and logged with expected vs got (its lines then show up as a gap); nothing raises.

Roll coordinates: the first frame pushed after `start_roll(roll_id, line0)` becomes roll line
`line0`; later frames keep their distance from it in source lines, so gaps in the source's
numbering stay gaps in the roll.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from runtime.frame import Frame, Strip

log = logging.getLogger(__name__)

_LOG_FIRST = 5  # skipped frames logged one by one; after that every _LOG_EVERY-th
_LOG_EVERY = 100


@dataclass
class AssemblerStats:
    """Counters for status reports. Lines are camera lines."""

    frames: int = 0
    strips: int = 0
    skipped_frames: int = 0
    gaps: int = 0
    gap_lines: int = 0
    duplicate_lines: int = 0
    lines: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class WebAssembler:
    """Turns contiguous frames into `Strip`s of `overlap_lines + strip_lines` lines (see module doc)."""

    def __init__(
        self,
        *,
        strip_lines: int,
        overlap_lines: int,
        roll_id: str,
        advance_lines_per_frame: int | None = None,
    ) -> None:
        if strip_lines < 1:
            raise ValueError(f"strip_lines must be >= 1, got {strip_lines}")
        if not 0 <= overlap_lines < strip_lines:
            raise ValueError(f"overlap_lines must be in [0, strip_lines={strip_lines}), got {overlap_lines}")
        if advance_lines_per_frame is not None and advance_lines_per_frame < 1:
            raise ValueError(f"advance_lines_per_frame must be >= 1 or None, got {advance_lines_per_frame}")
        self.strip_lines = strip_lines
        self.overlap_lines = overlap_lines
        self.advance_lines_per_frame = advance_lines_per_frame
        self.stats = AssemblerStats()
        self._strip_seq = 0
        self._roll_id = roll_id
        self._roll_start_line = 0
        self._offset: int | None = None  # source line - roll line, fixed by the roll's first frame
        self._expected: int | None = None  # roll line the next frame should start at
        self._layout: tuple[tuple[int, ...], np.dtype] | None = None  # row shape and dtype of the roll
        self._buf: np.ndarray | None = None  # the strip being collected
        self._fill = 0
        self._buf_overlap = 0
        self._buf_line0: int | None = None
        self._buf_ts = 0
        self._tail: tuple[np.ndarray, int, int] | None = None  # (rows, roll line of first row, timestamp)
        self._gaps: list[tuple[int, int]] = []
        self._frame_ends: deque[tuple[int, int]] = deque(maxlen=64)  # (roll line end, ts) per frame
        self._reset_roll()

    # ----------------------------------------------------------------------------- public API
    @property
    def roll_id(self) -> str:
        return self._roll_id

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """Missing roll lines `[start, end)` in the current roll, oldest first."""
        return list(self._gaps)

    @property
    def next_line(self) -> int | None:
        """The roll line the next frame is expected to start at (None before the roll's first frame)."""
        return self._expected

    def push(self, frame: Frame) -> list[Strip]:
        """Add one frame; return the strips it completed (often none, sometimes several)."""
        pixels = frame.pixels
        if not self._accepts(frame):
            return []
        if self._offset is None:
            self._offset = frame.line0 - self._roll_start_line
        roll_line = frame.line0 - self._offset
        advance = self.advance_lines_per_frame or frame.height
        take = min(advance, frame.height)
        self.stats.frames += 1
        out: list[Strip] = []

        if self._expected is not None and roll_line != self._expected:
            if roll_line > self._expected:
                out.extend(self._break_at_gap(self._expected, roll_line, frame.timestamp_ns))
            else:
                repeated = min(self._expected - roll_line, take)
                self.stats.duplicate_lines += repeated
                log.debug(
                    "roll %s: frame seq=%d repeats lines [%d, %d); dropped",
                    self._roll_id,
                    frame.seq,
                    roll_line,
                    roll_line + repeated,
                )
                pixels = pixels[repeated:]
                take -= repeated
                advance -= repeated
                roll_line += repeated
                if take <= 0:
                    return out
        if self._buf_line0 is None:
            self._buf_line0 = roll_line
        self._frame_ends.append((roll_line + take, frame.timestamp_ns))
        out.extend(self._append(pixels[:take], frame.timestamp_ns))
        self._expected = roll_line + take  # < roll_line + advance when a frame is shorter than the advance
        self._remember_tail(pixels, roll_line, advance, frame.timestamp_ns)
        return out

    def flush(self) -> list[Strip]:
        """Emit the partial strip still collecting (at roll end), plus an area-scan frame's unseen tail."""
        out: list[Strip] = []
        tail = self._tail
        if tail is not None and self._expected is not None and tail[1] == self._expected and len(tail[0]):
            self._frame_ends.append((self._expected + len(tail[0]), tail[2]))
            out.extend(self._append(tail[0], tail[2]))
            self._expected += len(tail[0])
        self._tail = None
        if self._buf is not None and self._fill > self._buf_overlap:
            out.append(self._emit(partial=True))
        return out

    def start_roll(self, roll_id: str, line0: int = 0) -> list[Strip]:
        """Flush the current roll and start `roll_id`; the next frame pushed becomes its line `line0`."""
        out = self.flush()
        self._roll_id = roll_id
        self._roll_start_line = line0
        self._reset_roll()
        log.info("roll %s started at line %d", roll_id, line0)
        return out

    # ----------------------------------------------------------------------------- internals
    def _reset_roll(self) -> None:
        self._offset = None
        self._expected = None
        self._layout = None
        self._buf = None
        self._fill = 0
        self._buf_overlap = 0
        self._buf_line0 = None
        self._buf_ts = 0
        self._tail = None
        self._gaps = []
        self._frame_ends.clear()

    def _accepts(self, frame: Frame) -> bool:
        pixels = frame.pixels
        problem = None
        if not isinstance(pixels, np.ndarray) or pixels.ndim not in (2, 3):
            problem = f"pixels must be HxW or HxWx3, got {getattr(pixels, 'shape', type(pixels).__name__)}"
        elif pixels.ndim == 3 and pixels.shape[2] != 3:
            problem = f"colour frames must have 3 channels (BGR), got {pixels.shape[2]}"
        elif pixels.dtype != np.uint8:
            problem = f"pixels must be uint8, got {pixels.dtype}"
        elif pixels.shape[0] == 0 or pixels.shape[1] == 0:
            problem = f"empty frame {pixels.shape}"
        elif self._layout is not None and (pixels.shape[1:], pixels.dtype) != self._layout:
            want_shape, want_dtype = self._layout
            problem = (
                f"frame is {_describe(pixels.shape[1:], pixels.dtype)} but roll {self._roll_id} is "
                f"{_describe(want_shape, want_dtype)} (expected width {want_shape[0]}, got {pixels.shape[1]})"
            )
        if problem is None:
            if self._layout is None:
                self._layout = (tuple(pixels.shape[1:]), pixels.dtype)
            return True
        self.stats.skipped_frames += 1
        n = self.stats.skipped_frames
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            log.warning(
                "frame seq=%d from %s skipped: %s; its lines become a gap (%d frame(s) skipped so far)",
                frame.seq,
                frame.source,
                problem,
                n,
            )
        return False

    def _break_at_gap(self, start: int, end: int, timestamp_ns: int) -> list[Strip]:
        """Lines `[start, end)` are missing: close the current strip and restart without overlap."""
        self._gaps.append((start, end))
        self.stats.gaps += 1
        self.stats.gap_lines += end - start
        log.warning(
            "roll %s: web lines [%d, %d) missing (%d lines); strip boundary forced",
            self._roll_id,
            start,
            end,
            end - start,
        )
        out: list[Strip] = []
        if self._buf is not None and self._fill > self._buf_overlap:
            out.append(self._emit(partial=True))
        self._buf = None
        self._fill = 0
        self._buf_overlap = 0
        self._buf_line0 = None
        self._tail = None
        return out

    def _append(self, rows: np.ndarray, timestamp_ns: int) -> list[Strip]:
        out: list[Strip] = []
        capacity = self.strip_lines + self.overlap_lines
        pos = 0
        while pos < len(rows):
            if self._buf is None:
                self._buf = np.empty((capacity, *rows.shape[1:]), dtype=rows.dtype)
                self._fill = 0
                self._buf_overlap = 0
            limit = self._buf_overlap + self.strip_lines
            n = min(limit - self._fill, len(rows) - pos)
            self._buf[self._fill : self._fill + n] = rows[pos : pos + n]
            self._fill += n
            pos += n
            self.stats.lines += n
            self._buf_ts = timestamp_ns
            if self._fill == limit:
                out.append(self._emit(partial=False))
        return out

    def _emit(self, *, partial: bool) -> Strip:
        """Hand the collected lines over as a Strip and seed the next buffer with the overlap."""
        assert self._buf is not None and self._buf_line0 is not None
        pixels = self._buf[: self._fill]
        if partial or self._fill < len(self._buf):
            pixels = pixels.copy()
        strip = Strip(
            pixels=pixels,
            seq=self._strip_seq,
            line0=self._buf_line0,
            overlap_lines=self._buf_overlap,
            roll_id=self._roll_id,
            timestamp_ns=self._buf_ts,
            line_times=self._line_times(self._buf_line0),
        )
        self._strip_seq += 1
        self.stats.strips += 1
        keep = min(self.overlap_lines, self._fill)
        nxt = np.empty_like(self._buf)
        if keep:
            nxt[:keep] = pixels[self._fill - keep : self._fill]
        self._buf = nxt
        self._fill = keep
        self._buf_overlap = keep
        self._buf_line0 = strip.line_end - keep
        return strip

    def _line_times(self, line0: int) -> tuple[tuple[int, int], ...]:
        """The frame end points from the last one at or before `line0` on (see runtime/line_clock.py)."""
        points = list(self._frame_ends)
        first = 0
        for i, (end, _) in enumerate(points):
            if end <= line0:
                first = i
        return tuple(points[first:])

    def _remember_tail(self, pixels: np.ndarray, roll_line: int, advance: int, timestamp_ns: int) -> None:
        """Area-scan: keep the frame's rows past the advance (seen again by the next frame) for `flush`."""
        if self.advance_lines_per_frame is None or advance >= len(pixels):
            self._tail = None
            return
        self._tail = (pixels[advance:], roll_line + advance, timestamp_ns)


def _describe(shape: tuple[int, ...], dtype: np.dtype) -> str:
    kind = "gray" if len(shape) == 1 else f"{shape[1]}-channel"
    return f"{shape[0]} px wide {kind} {dtype}"
