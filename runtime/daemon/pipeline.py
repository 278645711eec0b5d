"""The daemon's data path in three threads joined by bounded queues.

    acquire (source -> assembler) --strips--> detect (inspector) --results--> report (merger,
    grader, publisher; runs in the caller's thread)

A live camera cannot wait: when the detect queue is full its strip is dropped and counted (with
the lines it held), never buffered without bound. A finite source (replay, or the synthetic loom
running faster than real time) blocks instead, which is back-pressure. Stopping drains: the
acquire thread stops reading, flushes the assembler's partial strip, and every queued strip is
still inspected and reported before the roll is closed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.assembler import WebAssembler
from runtime.daemon.inspector import PreparedStrip, StripInspector, StripResult
from runtime.daemon.reporter import DefectReporter
from runtime.errors import LoomsightError, SourceInputError
from runtime.frame import Strip
from runtime.sources.base import FrameSource

log = logging.getLogger(__name__)

_END = object()  # end-of-stream marker passed along the queues


@dataclass(frozen=True)
class RollChange:
    """Passed along the queues after the last strip of a roll: what follows belongs to `roll_id`."""

    roll_id: str


class Rate:
    """An exponentially smoothed events-per-second counter."""

    def __init__(self, halflife_s: float = 5.0) -> None:
        self.halflife_s = halflife_s
        self.value = 0.0
        self._t: float | None = None

    def add(self, count: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._t is None:
            self._t = now
            return
        dt = max(now - self._t, 1e-6)
        alpha = 1.0 - 0.5 ** (dt / self.halflife_s)
        self.value += alpha * (count / dt - self.value)
        self._t = now


@dataclass
class PipelineStats:
    frames: int = 0
    strips: int = 0
    strips_inspected: int = 0
    strips_dropped: int = 0
    lines_dropped: int = 0
    tiles: int = 0
    strip_errors: int = 0
    source_errors: int = 0
    infer_s: float = 0.0
    prep_s: float = 0.0
    started_monotonic: float = field(default_factory=time.monotonic)
    tile_rate: Rate = field(default_factory=Rate)
    frame_rate: Rate = field(default_factory=Rate)
    line_rate: Rate = field(default_factory=Rate)  # new web lines per second from the camera

    def to_dict(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started_monotonic, 1e-9)
        return {
            "frames": self.frames,
            "strips": self.strips,
            "strips_inspected": self.strips_inspected,
            "strips_dropped": self.strips_dropped,
            "lines_dropped": self.lines_dropped,
            "tiles": self.tiles,
            "strip_errors": self.strip_errors,
            "source_errors": self.source_errors,
            "tiles_per_s": round(self.tile_rate.value, 2),
            "tiles_per_s_mean": round(self.tiles / elapsed, 2),
            "frames_per_s": round(self.frame_rate.value, 2),
            "infer_ms_per_tile": round(1e3 * self.infer_s / self.tiles, 3) if self.tiles else None,
            "uptime_s": round(elapsed, 1),
        }


class Pipeline:
    def __init__(
        self,
        *,
        source: FrameSource,
        assembler: WebAssembler,
        inspector: StripInspector,
        reporter: DefectReporter,
        strip_queue: int = 4,
        result_queue: int = 4,
        drop_when_full: bool = True,
        on_progress: Callable[[], None] | None = None,
        read_timeout_s: float = 0.2,
        max_source_failures: int = 20,
    ) -> None:
        self.source = source
        self.assembler = assembler
        self.inspector = inspector
        self.reporter = reporter
        self.strips: queue.Queue[Any] = queue.Queue(maxsize=strip_queue)
        self.results: queue.Queue[Any] = queue.Queue(maxsize=result_queue)
        self.drop_when_full = drop_when_full
        self.on_progress = on_progress
        self.read_timeout_s = read_timeout_s
        self.max_source_failures = max_source_failures
        self.stats = PipelineStats()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._roll_requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.on_roll_change: Callable[[str], None] | None = None
        self.on_idle: Callable[[], None] | None = None
        self.queue_peaks = {"strips": 0, "results": 0}  # deepest each queue has been (after a put)

    # -- control ------------------------------------------------------------------------------
    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._guard(self._acquire), name="loomsight-acquire", daemon=True),
            threading.Thread(target=self._guard(self._detect), name="loomsight-detect", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def request_stop(self) -> None:
        self.stop_event.set()

    def request_new_roll(self, roll_id: str) -> None:
        """End the current roll at the next frame boundary and start `roll_id` (thread-safe)."""
        self._roll_requests.put(roll_id)

    def queue_depths(self) -> dict[str, int]:
        return {"strips": self.strips.qsize(), "results": self.results.qsize()}

    def status(self) -> dict[str, Any]:
        return {
            **self.stats.to_dict(),
            "queues": self.queue_depths(),
            "queue_peaks": dict(self.queue_peaks),
            "source": self.source.status().to_dict(),
            "assembler": self.assembler.stats.to_dict(),
            "open_defects": len(self.reporter.merger.open_defects),
            "inspected_m": round(self.reporter.inspected_mm / 1000.0, 3),
            # the web's speed past the camera: new lines per second (smoothed) times mm per line
            "line_speed_m_min": round(
                self.stats.line_rate.value * self.reporter.geometry.mm_per_line * 0.06, 2
            ),
            "defects_by_class": dict(self.reporter.stats.defects),
            "edge_masked": dict(self.reporter.stats.edge_masked),
            "web_edges_mm": self.reporter.web_edges_mm(),
            "stop_latency": self.reporter.stop_latency.summary(),
        }

    def run_reporting(self, on_result: Callable[[StripResult], None] | None = None) -> None:
        """Report results until the end marker arrives (runs in the caller's thread)."""
        while True:
            item = self.results.get()
            if item is _END:
                break
            if isinstance(item, RollChange):
                if self.on_roll_change is not None:
                    self.on_roll_change(item.roll_id)
                continue
            result: StripResult = item
            try:
                self.reporter.on_strip(result)
            except Exception:
                self.stats.strip_errors += 1
                log.exception("reporting strip %d failed; continuing", result.strip.seq)
            if self.on_progress is not None:
                self.on_progress()
            if on_result is not None:
                on_result(result)
        for t in self._threads:
            t.join(timeout=10)
        if self.error is not None:
            raise self.error

    # -- threads ------------------------------------------------------------------------------
    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # a dead stage must stop the daemon, not hang it
                if isinstance(exc, LoomsightError):  # an expected failure: its message says it all
                    log.error("%s stopped: %s", threading.current_thread().name, exc)
                else:
                    log.exception("%s failed", threading.current_thread().name)
                self.error = exc
                self.stop_event.set()
                self._put_end_marker()

        return run

    def _put_end_marker(self) -> None:
        for q in (self.strips, self.results):
            with contextlib.suppress(queue.Full):
                q.put_nowait(_END)

    def _prepared(self, strip: Strip) -> Strip | PreparedStrip:
        """Resample and tile here, in the acquisition thread, so it overlaps inference. A strip
        that cannot be prepared goes on as it is: the detect thread meets the same error and
        counts it (the daemon's one place for strip errors)."""
        try:
            return self.inspector.prepare(strip)
        except Exception:
            return strip

    def _put(self, strip: Strip) -> None:
        """A strip that is never dropped (roll ends, the last one)."""
        self.strips.put(self._prepared(strip))

    def _offer(self, strip: Strip) -> None:
        self.stats.strips += 1
        if not self.drop_when_full:
            self.strips.put(self._prepared(strip))
            self._note_depth("strips", self.strips)
            return
        try:
            if self.strips.full():  # do not prepare what will be dropped
                raise queue.Full
            self.strips.put_nowait(self._prepared(strip))
            self._note_depth("strips", self.strips)
        except queue.Full:
            self.stats.strips_dropped += 1
            self.stats.lines_dropped += strip.height - strip.overlap_lines
            log.warning(
                "detector is behind: dropped strip %d (lines %d-%d); %d strips dropped so far",
                strip.seq, strip.line0, strip.line_end, self.stats.strips_dropped,
            )  # fmt: skip

    def _note_depth(self, name: str, q: queue.Queue[Any]) -> None:
        self.queue_peaks[name] = max(self.queue_peaks[name], q.qsize())

    def _acquire(self) -> None:
        failures = 0
        try:
            while not self.stop_event.is_set():
                try:
                    frame = self.source.read(timeout_s=self.read_timeout_s)
                except SourceInputError as exc:  # a bad replay file: retrying cannot clear it
                    self.stats.source_errors += 1
                    log.error("frame source input error, not retried: %s", exc)
                    raise
                except Exception as exc:
                    # a source reports faults in status and recovers by itself; one that keeps
                    # raising cannot continue, and the daemon stops so that systemd restarts it
                    failures += 1
                    self.stats.source_errors += 1
                    log.error("frame source read failed (%d in a row): %s", failures, exc)
                    if failures >= self.max_source_failures:
                        raise
                    self.stop_event.wait(min(0.05 * failures, 1.0))
                    continue
                failures = 0
                self._change_roll_if_asked()
                if frame is None:
                    if self.source.finished:
                        break
                    if self.on_idle is not None and self.strips.empty() and self.results.empty():
                        self.on_idle()
                    continue
                self.stats.frames += 1
                self.stats.frame_rate.add(1)
                lines = self.assembler.stats.lines
                strips = self.assembler.push(frame)
                self.stats.line_rate.add(self.assembler.stats.lines - lines)
                for strip in strips:
                    self._offer(strip)
            for strip in self.assembler.flush():
                self._put(strip)  # the last strip is never dropped
        finally:
            self.strips.put(_END)

    def _change_roll_if_asked(self) -> None:
        try:
            roll_id = self._roll_requests.get_nowait()
        except queue.Empty:
            return
        for strip in self.assembler.start_roll(roll_id, line0=0):
            self._put(strip)  # the end of a roll is never dropped
        self.strips.put(RollChange(roll_id))

    def _detect(self) -> None:
        try:
            while True:
                item = self.strips.get()
                if item is _END:
                    break
                if isinstance(item, RollChange):
                    self.results.put(item)
                    continue
                strip: Strip = item.strip if isinstance(item, PreparedStrip) else item
                try:
                    result = self.inspector.inspect(item)
                except Exception:
                    self.stats.strip_errors += 1
                    log.exception("inspecting strip %d failed; continuing", strip.seq)
                    continue
                self.stats.strips_inspected += 1
                self.stats.tiles += result.tiles
                self.stats.infer_s += result.infer_s
                self.stats.prep_s += result.prep_s
                self.stats.tile_rate.add(result.tiles)
                self.results.put(result)
                self._note_depth("results", self.results)
        finally:
            self.results.put(_END)
