"""The one protocol every frame source speaks, and the status record it reports.

A source is created unstarted, `start()` opens the device (raising `CameraError` for problems an
operator must fix: a missing producer, a wrong serial, a bad node value), `read(timeout_s=...)`
returns the next `Frame` or None, and `stop()` releases everything (idempotent, callable from any
thread). Faults that happen while running (camera lost, bad frames) never raise out of `read`; they
are counted in `status()` and the source recovers by itself where it can. The one exception is
input that cannot be continued at all (a replayed image of the wrong width): `read` raises
`CameraError` naming it.

Line coordinates: `Frame.line0` counts web lines since the source started, at camera resolution,
and keeps advancing across outages (the lines lost are recorded in `SourceStatus.gaps_lines`), so a
downstream stage never mistakes two separate pieces of web for contiguous ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from runtime.frame import Frame

SourceState = Literal["idle", "running", "lost", "reconnecting", "stopped", "finished"]


@dataclass(frozen=True)
class SourceStatus:
    """A snapshot of a source's health, safe to read from any thread and to serialise as JSON.

    - `state`: idle (not started), running, lost (camera gone, waiting to retry), reconnecting
      (an attempt is under way), stopped, finished (a finite source has nothing more).
    - `frames`: frames delivered; `incomplete`: incomplete buffers discarded; `timeouts`: reads
      that ended without a frame while the device was connected; `bad_frames`: frames dropped
      because their size or pixel format was wrong.
    - `frame_id_gaps`: frames the device numbered but never delivered (sum of the jumps in the
      device's frame ids).
    - `reconnects`: successful re-openings after an outage; `retries`: failed attempts in the
      current outage (0 when none); `outages`: how many times the camera was declared lost.
    - `lost_since_ns`: wall-clock ns of the last good frame before the current outage (None when
      healthy); `last_error`: the latest problem, in words.
    - `gaps_lines`: half-open web line ranges `[start, end)` lost (outages, dropped frames), in
      the source's line coordinates, most recent last (a source may keep only the latest few
      hundred); `lost_lines`: all lines lost since start; `next_line`: where the next frame starts.
    """

    state: SourceState
    frames: int = 0
    incomplete: int = 0
    timeouts: int = 0
    bad_frames: int = 0
    frame_id_gaps: int = 0
    reconnects: int = 0
    retries: int = 0
    outages: int = 0
    lost_since_ns: int | None = None
    last_error: str | None = None
    gaps_lines: list[tuple[int, int]] = field(default_factory=list)
    lost_lines: int = 0
    next_line: int = 0
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain ints/strings, gaps as [start, end] lists."""
        data = asdict(self)
        data["gaps_lines"] = [[int(a), int(b)] for a, b in self.gaps_lines]
        return data


@runtime_checkable
class FrameSource(Protocol):
    """Anything that yields `Frame`s: a GenICam camera, the synthetic loom, a replayed web.

    Besides its methods a source says two things the daemon needs (so the daemon never asks the
    config what kind of source it runs): `live`, True when frames come at the line's own pace and
    do not wait for the inspector (the pipeline then drops and counts a strip rather than fall
    behind the web), and `advance_lines_per_frame`, how far each frame moves along the web when
    frames overlap (None: frames are contiguous).
    """

    @property
    def live(self) -> bool:
        """True for a camera or a paced simulation: strips are dropped (and counted) when full."""

    @property
    def advance_lines_per_frame(self) -> int | None:
        """Lines the web moves per frame when frames overlap (area-scan); None: contiguous frames."""

    def start(self) -> None:
        """Open the device and begin acquisition; raises CameraError for problems to fix."""

    def stop(self) -> None:
        """Stop and release everything; idempotent, safe from another thread."""

    def read(self, *, timeout_s: float) -> Frame | None:
        """The next frame, or None when none came within `timeout_s` (or the source is finished)."""

    @property
    def finished(self) -> bool:
        """True once a finite source (replay without loop, synthetic with a length) has nothing more."""

    def status(self) -> SourceStatus:
        """A snapshot of counters and state."""
