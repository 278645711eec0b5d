"""The synthetic loom as a frame source: the demo camera and the ground truth of end-to-end tests.

`read()` returns `block_lines` lines per frame, contiguous along the web (`line0` advances). With
`realtime`, a frame is released when a line-scan camera would have finished acquiring its last
line at the line rate `speed_m_min * 1000 / 60 / mm_per_line` (lines/s), counted from `start()`;
otherwise frames come as fast as they render. With `length_m`, the roll ends there: the last frame
may be shorter, then `read()` returns None for good and `finished` is True.
"""

from __future__ import annotations

import logging
import threading
import time

from runtime.config import SyntheticSourceConfig
from runtime.errors import CameraError
from runtime.frame import Frame
from runtime.sim.fabric import FabricSpec, get_fabric
from runtime.sim.loom import SyntheticLoom, TruthDefect
from runtime.sources.base import SourceState, SourceStatus

log = logging.getLogger(__name__)


class SyntheticSource:
    """A `FrameSource` over a `SyntheticLoom` (see module doc)."""

    def __init__(self, config: SyntheticSourceConfig, fabric: FabricSpec | None = None) -> None:
        self.config = config
        self._fabric = fabric if fabric is not None else get_fabric(config.fabric)
        self._loom: SyntheticLoom | None = None
        self._state: SourceState = "idle"
        self._stop_event = threading.Event()
        self._seq = 0
        self._t0_ns = 0
        self._timeouts = 0
        lines = None if config.length_m is None else round(config.length_m * 1000.0 / config.mm_per_line)
        self._total_lines = lines

    # ---- properties --------------------------------------------------------------------------
    @property
    def fabric(self) -> FabricSpec:
        return self._fabric

    @property
    def line_rate_hz(self) -> float:
        return self.config.speed_m_min * 1000.0 / 60.0 / self.config.mm_per_line

    @property
    def total_lines(self) -> int | None:
        """Lines in the roll (None = endless)."""
        return self._total_lines

    @property
    def lines_emitted(self) -> int:
        return 0 if self._loom is None else self._loom.lines_emitted

    @property
    def truth(self) -> list[TruthDefect]:
        """Every defect that starts on the lines delivered so far (boxes in roll coordinates)."""
        if self._loom is None:
            return []
        return [t for t in self._loom.truth if self._total_lines is None or t.y0_line < self._total_lines]

    @property
    def loom(self) -> SyntheticLoom:
        if self._loom is None:
            raise CameraError("the synthetic source is not started; call start() first")
        return self._loom

    @property
    def live(self) -> bool:
        return self.config.realtime

    @property
    def advance_lines_per_frame(self) -> int | None:
        return None

    @property
    def finished(self) -> bool:
        return self._state == "finished"

    @property
    def name(self) -> str:
        return f"synthetic:{self._fabric.name}"

    # ---- FrameSource -------------------------------------------------------------------------
    def start(self) -> None:
        c = self.config
        if self._loom is None:
            self._loom = SyntheticLoom(
                self._fabric,
                width_px=c.width_px,
                mm_per_px=c.mm_per_px,
                mm_per_line=c.mm_per_line,
                seed=c.seed,
                defects_per_m=c.defects_per_m,
            )
        self._stop_event.clear()
        self._state = "running"
        self._t0_ns = time.monotonic_ns() - int(self._loom.lines_emitted / self.line_rate_hz * 1e9)
        log.info(
            "synthetic loom: fabric %s, %d px at %.3f mm/px, %.3f mm/line, %d lines/frame, %s%s",
            self._fabric.name,
            c.width_px,
            c.mm_per_px,
            c.mm_per_line,
            c.block_lines,
            f"paced at {self.line_rate_hz:.0f} lines/s ({c.speed_m_min} m/min)" if c.realtime else "unpaced",
            f", roll of {c.length_m} m" if c.length_m else ", endless",
        )

    def stop(self) -> None:
        self._stop_event.set()
        if self._state not in ("finished", "idle"):
            self._state = "stopped"

    def read(self, *, timeout_s: float) -> Frame | None:
        if self._state == "finished":
            return None
        if self._state != "running" or self._loom is None:
            if self._state == "stopped":
                return None
            raise CameraError("read() on a synthetic source that was not started; call start() first")
        loom = self._loom
        n = self.config.block_lines
        if self._total_lines is not None:
            n = min(n, self._total_lines - loom.lines_emitted)
            if n <= 0:
                self._state = "finished"
                return None
        if self.config.realtime:
            due_ns = self._t0_ns + int((loom.lines_emitted + n) / self.line_rate_hz * 1e9)
            wait_s = (due_ns - time.monotonic_ns()) / 1e9
            if wait_s > timeout_s:  # pacing, not a timeout: the simulated camera never fails to deliver
                self._stop_event.wait(max(0.0, timeout_s))
                return None
            if wait_s > 0 and self._stop_event.wait(wait_s):
                return None
        block = loom.next_block(n)
        defects = [t.to_dict() for t in loom.defects_between(block.line0, block.line0 + block.n_lines)]
        frame = Frame(
            pixels=block.pixels,
            seq=self._seq,
            timestamp_ns=time.time_ns(),
            line0=block.line0,
            source=self.name,
            meta={
                "fabric": self._fabric.name,
                "mm_per_px": self.config.mm_per_px,
                "mm_per_line": self.config.mm_per_line,
                "defects": defects,
            },
        )
        self._seq += 1
        if self._total_lines is not None and loom.lines_emitted >= self._total_lines:
            self._state = "finished"
        return frame

    def status(self) -> SourceStatus:
        return SourceStatus(
            state=self._state,
            frames=self._seq,
            timeouts=self._timeouts,
            next_line=self.lines_emitted,
            source=self.name,
        )
