"""The GenICam frame source: a supervised camera that recovers from outages on its own.

`GenicamSource` opens a `CameraDevice` (by default `HarvesterDevice`, harvesters on a `.cti`)
and turns its grabs into `Frame`s with honest web coordinates:

- `line0` advances by the frame's height (line-scan) or by `advance_lines_per_frame` (area-scan)
  per frame the camera *acquired*: frames the device numbered but never delivered (frame-id jumps,
  e.g. buffer starvation under a slow consumer) and unusable frames (wrong size or pixel format)
  advance it too, and their lines are recorded as gaps.
- No-progress watchdog: harvesters' fetch timeout restarts on every incomplete buffer, so the
  source keeps its own clock. When no complete frame arrived for `no_progress_timeout_s` (counted
  from the last frame or from the moment the device was (re)opened, whichever is later) while
  reading, or when the device raises (unplugged, acquirer destroyed), the camera is declared
  lost: status shows `lost` and since when, the device is torn down and re-opened with capped
  exponential backoff (`reconnect_initial_s`, doubling, at most `reconnect_max_s`). `read` never
  blocks longer than its timeout meanwhile (beyond one open attempt already under way). A slow
  consumer does not trip the watchdog: the camera's buffers hold frames, so a fetch after a long
  pause succeeds at once (frames the producer dropped meanwhile show up as frame-id gaps).
- Outage gap: when frames resume, the lines that passed the camera meanwhile are estimated as
  `elapsed_s * line_rate - advance`, where `elapsed_s` runs from the last frame before the outage
  to the first after it, and `line_rate` (lines/s) is measured over the last frames before the
  outage (lines delivered / time), or, before any measurement, taken from the configured nodes
  (`AcquisitionLineRate`, or `AcquisitionFrameRate` x lines per frame). `line0` jumps by that
  amount and `[old, new)` goes into `gaps_lines`, so the roll continues with the hole visible.
  The estimate assumes the web kept moving at the same speed; a loom that stopped during the
  outage makes it too large (the hole is then over-reported, never hidden).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from runtime.config import GenicamSourceConfig
from runtime.errors import CameraError
from runtime.frame import Frame
from runtime.sources.base import SourceState, SourceStatus
from runtime.sources.genicam_device import CameraDevice, Grab, HarvesterDevice, resolve_cti_path

log = logging.getLogger(__name__)

OpenDevice = Callable[[GenicamSourceConfig], CameraDevice]

_SLICE_S = 0.1  # longest single grab, so that stop() and the watchdog are never kept waiting
_RATE_WINDOW = 64  # frames used to measure the line rate
_MAX_GAPS = 256  # most recent gap ranges kept in status (the total is always kept)


class GenicamSource:
    """A `FrameSource` over one GenICam camera (see module doc)."""

    def __init__(self, config: GenicamSourceConfig, *, open_device: OpenDevice | None = None) -> None:
        if config.reconnect_max_s < config.reconnect_initial_s:
            raise CameraError(
                f"source.genicam.reconnect_max_s ({config.reconnect_max_s}) must be >= "
                f"reconnect_initial_s ({config.reconnect_initial_s})"
            )
        if open_device is None:
            resolve_cti_path(config)  # a missing producer is a config error: say so before start()
            open_device = HarvesterDevice.open
        self.config = config
        self._open_device = open_device
        self._io_lock = threading.RLock()  # device calls (read, reconnect, stop)
        self._lock = threading.Lock()  # counters and state (status() from other threads)
        self._stop_event = threading.Event()
        self._device: CameraDevice | None = None
        self._name = "genicam"
        self._state: SourceState = "idle"
        self._seq = 0
        self._next_line = 0
        self._frames = 0
        self._timeouts = 0
        self._bad_frames = 0
        self._frame_id_gaps = 0
        self._incomplete_closed = 0
        self._reconnects = 0
        self._retries = 0
        self._outages = 0
        self._lost_since_ns: int | None = None
        self._last_error: str | None = None
        self._gaps: collections.deque[tuple[int, int]] = collections.deque(maxlen=_MAX_GAPS)
        self._lost_lines = 0
        self._expected_frame_id: int | None = None
        self._last_frame_mono: float | None = None
        self._last_frame_wall_ns: int | None = None
        self._progress_ref = 0.0
        self._rate_window: collections.deque[tuple[float, int]] = collections.deque(maxlen=_RATE_WINDOW)
        self._line_rate_hz: float | None = None
        self._backoff_s = config.reconnect_initial_s
        self._next_attempt = 0.0

    # ----------------------------------------------------------------------------- protocol
    @property
    def live(self) -> bool:
        return True

    @property
    def advance_lines_per_frame(self) -> int | None:
        return self.config.advance_lines_per_frame

    @property
    def finished(self) -> bool:
        return False  # a camera never runs out

    @property
    def device(self) -> CameraDevice | None:
        """The open device, None while lost (tests reach through it to simulate an unplug)."""
        return self._device

    @property
    def line_rate_hz(self) -> float | None:
        """The measured (or configured) web line rate used to size outage gaps."""
        return self._line_rate_hz or self._configured_line_rate()

    def start(self) -> None:
        """Open the camera; CameraError for anything an operator must fix (no retry here)."""
        with self._io_lock:
            if self._state == "running":
                return
            self._stop_event.clear()
            device = self._open_device(self.config)
            with self._lock:  # a deliberate stop/start is not an outage
                self._lost_since_ns = None
                self._retries = 0
                self._backoff_s = self.config.reconnect_initial_s
            self._attach(device)

    def stop(self) -> None:
        self._stop_event.set()
        with self._io_lock:
            self._detach()
            with self._lock:
                if self._state != "idle":
                    self._state = "stopped"

    def status(self) -> SourceStatus:
        with self._lock:
            device = self._device
            incomplete = self._incomplete_closed + (device.incomplete if device is not None else 0)
            return SourceStatus(
                state=self._state,
                frames=self._frames,
                incomplete=incomplete,
                timeouts=self._timeouts,
                bad_frames=self._bad_frames,
                frame_id_gaps=self._frame_id_gaps,
                reconnects=self._reconnects,
                retries=self._retries,
                outages=self._outages,
                lost_since_ns=self._lost_since_ns,
                last_error=self._last_error,
                gaps_lines=list(self._gaps),
                lost_lines=self._lost_lines,
                next_line=self._next_line,
                source=self._name,
            )

    def read(self, *, timeout_s: float) -> Frame | None:
        """The next frame within `timeout_s`, or None (no frame yet, camera lost, or stopped)."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        bad_before = self._bad_frames
        while not self._stop_event.is_set():
            now = time.monotonic()
            if self._state in ("lost", "reconnecting"):
                if now >= self._next_attempt:
                    self._try_reconnect()
                    continue
                wait_s = min(deadline, self._next_attempt) - now
                if wait_s <= 0:
                    return None
                self._stop_event.wait(wait_s)
                continue
            if self._state != "running":
                if self._state == "idle":
                    raise CameraError("GenICam source read before start(); call start() first")
                return None
            remaining = deadline - now
            frame = self._grab_once(min(max(remaining, 0.001), _SLICE_S))
            if frame is not None:
                return frame
            if self._state != "running":
                continue
            now = time.monotonic()
            if now - self._progress_ref >= self.config.no_progress_timeout_s:
                self._declare_lost(
                    f"no complete frame for {now - self._progress_ref:.1f} s "
                    f"(no_progress_timeout_s = {self.config.no_progress_timeout_s})"
                )
                continue
            if now >= deadline:
                if (
                    self._bad_frames == bad_before
                ):  # nothing at all arrived (unusable frames are counted apart)
                    with self._lock:
                        self._timeouts += 1
                return None
        return None

    # ----------------------------------------------------------------------------- grabbing
    def _grab_once(self, timeout_s: float) -> Frame | None:
        with self._io_lock:
            device = self._device
            if device is None or self._stop_event.is_set():
                return None
            try:
                grab = device.grab(timeout_s)
            except Exception as exc:
                self._declare_lost(f"camera error: {type(exc).__name__}: {exc}")
                return None
        if grab is None:
            return None
        return self._accept(grab)

    def _advance_for(self, grab: Grab) -> int:
        return self.config.advance_lines_per_frame or max(grab.height, 1)

    def _accept(self, grab: Grab) -> Frame | None:
        """Account for one complete buffer; a Frame when its pixels are usable."""
        now = time.monotonic()
        wall_ns = time.time_ns()
        advance = self._advance_for(grab)
        with self._lock:
            resumed = self._lost_since_ns is not None
            if resumed:
                self._close_outage(now, advance)
            self._count_frame_id(grab, advance)
            line0 = self._next_line
            self._next_line += advance
            self._last_frame_mono = now
            self._last_frame_wall_ns = wall_ns
            self._progress_ref = now
            if grab.pixels is None:
                self._bad_frames += 1
                self._last_error = f"unusable frame (id {grab.frame_id}): {grab.error}"
                self._add_gap(line0, line0 + advance)
                bad_count = self._bad_frames
            else:
                self._frames += 1
                self._rate_window.append((now, line0))
                self._update_rate()
        if grab.pixels is None:
            if bad_count <= 5 or bad_count % 100 == 0:
                log.warning("camera %s: frame dropped (%d so far): %s", self._name, bad_count, grab.error)
            return None
        frame = Frame(
            pixels=grab.pixels,
            seq=self._seq,
            timestamp_ns=wall_ns,
            line0=line0,
            source=self._name,
            meta={
                "frame_id": grab.frame_id,
                "pixel_format": grab.pixel_format,
                "device_timestamp": grab.device_timestamp,
            },
        )
        self._seq += 1
        return frame

    def _count_frame_id(self, grab: Grab, advance: int) -> None:
        fid = grab.frame_id
        if fid is None:
            return
        expected = self._expected_frame_id
        if expected is not None and fid > expected:
            missing = fid - expected
            self._frame_id_gaps += missing
            start = self._next_line
            self._next_line += missing * advance
            self._add_gap(start, self._next_line)
            log.warning(
                "camera %s: %d frame(s) lost (frame id %d, expected %d); web lines [%d, %d) missing",
                self._name,
                missing,
                fid,
                expected,
                start,
                self._next_line,
            )
        elif expected is not None and fid < expected:
            log.info("camera %s: frame ids restarted (%d after %d)", self._name, fid, expected - 1)
        self._expected_frame_id = fid + 1

    def _update_rate(self) -> None:
        if len(self._rate_window) < 2:
            return
        (t_first, line_first), (t_last, line_last) = self._rate_window[0], self._rate_window[-1]
        if t_last - t_first > 0:
            self._line_rate_hz = (line_last - line_first) / (t_last - t_first)

    def _configured_line_rate(self) -> float | None:
        nodes = self.config.nodes
        line_rate = nodes.get("AcquisitionLineRate")
        if isinstance(line_rate, (int, float)) and not isinstance(line_rate, bool) and line_rate > 0:
            return float(line_rate)
        frame_rate = nodes.get("AcquisitionFrameRate")
        lines = self.config.advance_lines_per_frame or nodes.get("Height")
        if (
            isinstance(frame_rate, (int, float))
            and isinstance(lines, int)
            and not isinstance(frame_rate, bool)
            and frame_rate > 0
        ):
            return float(frame_rate) * lines
        return None

    def _add_gap(self, start: int, end: int) -> None:
        if end <= start:
            return
        self._lost_lines += end - start
        if self._gaps and self._gaps[-1][1] == start:
            self._gaps[-1] = (self._gaps[-1][0], end)
        else:
            self._gaps.append((start, end))

    # ----------------------------------------------------------------------------- outages
    def _attach(self, device: CameraDevice) -> None:
        with self._lock:
            self._device = device
            self._name = f"genicam:{device.label}"
            self._state = "running"
            self._progress_ref = time.monotonic()
            self._expected_frame_id = None
            self._rate_window.clear()

    def _detach(self) -> None:
        """Close the device (never raises) and keep its incomplete-buffer count."""
        with self._io_lock:
            device = self._device
            if device is None:
                return
            with self._lock:
                self._incomplete_closed += device.incomplete
                self._device = None
            try:
                device.close()
            except Exception as exc:  # close() should not raise; a broken one must not stop recovery
                log.warning("camera %s: closing failed: %s: %s", self._name, type(exc).__name__, exc)

    def _declare_lost(self, reason: str) -> None:
        with self._io_lock:
            if self._stop_event.is_set():
                return
            with self._lock:
                first = self._lost_since_ns is None
                if first:
                    self._outages += 1
                    self._lost_since_ns = self._last_frame_wall_ns or time.time_ns()
                    self._backoff_s = self.config.reconnect_initial_s
                else:
                    self._retries += 1  # a re-opened camera that still sent nothing
                self._last_error = reason
                self._state = "lost"
                self._next_attempt = time.monotonic() + self._backoff_s
                wait_s = self._backoff_s
                self._backoff_s = min(self._backoff_s * 2, self.config.reconnect_max_s)
            log.error("camera %s lost: %s; reconnecting in %.2f s", self._name, reason, wait_s)
            self._detach()

    def _try_reconnect(self) -> None:
        with self._io_lock:
            if self._stop_event.is_set():
                return
            with self._lock:
                self._state = "reconnecting"
            try:
                device = self._open_device(self.config)
            except Exception as exc:
                with self._lock:
                    self._retries += 1
                    self._last_error = f"reconnect attempt {self._retries} failed: {exc}"
                    self._state = "lost"
                    self._next_attempt = time.monotonic() + self._backoff_s
                    wait_s = self._backoff_s
                    self._backoff_s = min(self._backoff_s * 2, self.config.reconnect_max_s)
                log.warning("camera %s: %s; next attempt in %.2f s", self._name, self._last_error, wait_s)
                return
            self._attach(device)
            log.info("camera %s re-opened; waiting for frames", self._name)

    def _close_outage(self, now: float, advance: int) -> None:
        """First frame after an outage: record the lines that passed meanwhile (lock held)."""
        rate = self._line_rate_hz or self._configured_line_rate()
        start = self._next_line
        lost = 0
        if self._last_frame_mono is not None and rate:
            lost = max(0, round((now - self._last_frame_mono) * rate) - advance)
        elif self._last_frame_mono is not None:
            log.warning(
                "camera %s: outage length in lines unknown (no line rate yet); no gap recorded", self._name
            )
        self._next_line += lost
        self._add_gap(start, self._next_line)
        outage_s = (time.time_ns() - (self._lost_since_ns or time.time_ns())) / 1e9
        log.warning(
            "camera %s back after %.2f s (%d retries); web lines [%d, %d) lost (estimated at %.0f lines/s)",
            self._name,
            outage_s,
            self._retries,
            start,
            self._next_line,
            rate or 0.0,
        )
        self._reconnects += 1
        self._retries = 0
        self._lost_since_ns = None
        self._backoff_s = self.config.reconnect_initial_s
