"""Assemble the daemon from a validated config and run it until the roll ends or a stop signal.

Start order (each failure is a clear error before anything runs): publisher (spool, sockets,
CURVE), model (hash-checked bundle, warm-up), calibration, frame source. Then READY, inspection,
and on stop: drain the queues, emit open defects and the roll summary, STOPPING, close.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from runtime.assembler import WebAssembler
from runtime.config import LoomsightConfig
from runtime.daemon.inspector import StripInspector, StripResult
from runtime.daemon.pipeline import Pipeline
from runtime.daemon.reporter import CropOptions, DefectReporter, Publish, WebGeometry
from runtime.detect.base import Detector
from runtime.errors import CalibrationError
from runtime.grade import RollGrader
from runtime.merge import Merger
from runtime.preprocess import FlatField, Preprocessor
from runtime.sources.base import FrameSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraGeometry:
    mm_per_px_x: float
    mm_per_line: float
    flat_field: FlatField | None = None
    source: str = "config"


def camera_geometry(config: LoomsightConfig) -> CameraGeometry:
    """mm per pixel across and per line along: calibration file, else config numbers, else the simulator's."""
    cal = config.calibration
    if cal.path is not None:
        from runtime.calibration import Calibration

        c = Calibration.load(cal.path)
        return CameraGeometry(
            c.mm_per_px_x, c.mm_per_line, c if c.flat_field is not None else None, f"calibration {cal.path}"
        )
    if cal.mm_per_px_x is not None and cal.mm_per_line is not None:
        return CameraGeometry(cal.mm_per_px_x, cal.mm_per_line, None, "config [calibration]")
    if config.source.kind == "synthetic":
        syn = config.source.synthetic
        return CameraGeometry(syn.mm_per_px, syn.mm_per_line, None, "synthetic loom")
    raise CalibrationError(
        "no calibration: set [calibration] path to a file from `loomsight calib`, or both "
        "calibration.mm_per_px_x and calibration.mm_per_line"
    )


def new_roll_id(line_id: str) -> str:
    return f"{line_id}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"


def open_publisher(config: LoomsightConfig) -> Any:
    from runtime.events.publisher import EventPublisher

    return EventPublisher(
        line_id=config.line_id, publish=config.publish, spool=config.spool, security=config.security
    )


class Daemon:
    """The inspection daemon for one line. `run()` blocks until the roll ends or `stop()`."""

    def __init__(
        self,
        config: LoomsightConfig,
        *,
        source: FrameSource | None = None,
        detector: Detector | None = None,
        publisher: Any | None = None,
        roll_id: str | None = None,
        notifier: Any | None = None,
        health: Any | None = None,
        on_status: Callable[[dict[str, Any]], None] | None = None,
        status_interval_s: float = 1.0,
    ) -> None:
        self.config = config
        self._source = source
        self._detector = detector
        self._publisher: Any = publisher
        self.roll_id = roll_id or new_roll_id(config.line_id)
        self.notifier = notifier
        self.health = health
        self.on_status = on_status
        self.status_interval_s = status_interval_s
        self.pipeline: Pipeline | None = None
        self.summary: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._watchdog: Any = None

    # -- lifecycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask for a clean stop (signal-safe): drain, report, close."""
        self._stop.set()
        if self.pipeline is not None:
            self.pipeline.request_stop()

    def _notify(self, method: str, *args: Any) -> None:
        if self.notifier is not None:
            getattr(self.notifier, method)(*args)

    def _set_ready(self, ready: bool, reason: str = "") -> None:
        if self.health is not None:
            self.health.set_ready(ready, reason)

    def build(self) -> Pipeline:
        cfg = self.config
        if self._publisher is None:
            self._publisher = open_publisher(cfg)
        self._publisher.start()
        self._notify("status", "loading model")
        if self._detector is None:
            from runtime.detect.bundle import open_detector

            self._notify("extend_timeout", 120.0)
            try:
                self._detector = open_detector(cfg.model)
            except Exception as exc:
                self._set_ready(False, f"model failed to load: {exc}")
                raise
            self._detector.warmup(cfg.model.warmup_runs)
        detector = self._detector
        manifest = detector.manifest
        geometry = camera_geometry(cfg)
        if self._source is None:
            from runtime.sources.factory import open_source

            self._source = open_source(cfg.source)
        source = self._source
        source.start()
        pre = Preprocessor(
            camera_mm_per_px=geometry.mm_per_px_x,
            camera_mm_per_line=geometry.mm_per_line,
            model_mm_per_px=manifest.mm_per_px,
            color=manifest.input.color,
            flat_field=geometry.flat_field,
        )
        inspector = StripInspector(detector, pre, batch_size=cfg.model.batch_size)
        gap_mm = cfg.merge.gap_mm
        merger = Merger(
            min_overlap_ratio=cfg.merge.min_overlap_ratio,
            gap_px=gap_mm / geometry.mm_per_px_x,
            gap_lines=gap_mm / geometry.mm_per_line,
            class_agnostic=cfg.merge.class_agnostic,
        )
        advance = cfg.source.genicam.advance_lines_per_frame if cfg.source.kind == "genicam" else None
        assembler = WebAssembler(
            strip_lines=cfg.web.strip_lines,
            overlap_lines=cfg.web.overlap_lines,
            roll_id=self.roll_id,
            advance_lines_per_frame=advance,
        )
        reporter = DefectReporter(
            classes=manifest.classes,
            geometry=WebGeometry(geometry.mm_per_px_x, geometry.mm_per_line, width_px=0),
            merger=merger,
            grader=self._grader(),
            publisher=self._publisher,
            roll_id=self.roll_id,
            model_name=manifest.name,
            crops=CropOptions(cfg.publish.jpeg_crops, cfg.publish.crop_max_px, cfg.publish.jpeg_quality),
        )
        watchdog = None
        if self.notifier is not None:
            from runtime.ops.watchdog import ProgressWatchdog

            watchdog = ProgressWatchdog(self.notifier)
        self._watchdog = watchdog
        live = cfg.source.kind == "genicam" or (
            cfg.source.kind == "synthetic" and cfg.source.synthetic.realtime
        )
        self.pipeline = Pipeline(
            source=source,
            assembler=assembler,
            inspector=inspector,
            reporter=reporter,
            strip_queue=cfg.queues.strips,
            result_queue=cfg.queues.batches,
            drop_when_full=live,
            on_progress=watchdog.progress if watchdog is not None else None,
        )
        return self.pipeline

    def _grader(self) -> RollGrader:
        """A grader for a new roll; its width is set from the first strip."""
        g = self.config.grading
        return RollGrader(
            width_mm=0.0,
            stop_points_per_100_sq_yd=g.stop_points_per_100_sq_yd,
            stop_classes=frozenset(g.stop_classes),
            stop_open_length_mm=g.stop_open_length_mm,
            stop_min_inspected_mm=g.stop_min_inspected_m * 1000.0,
        )

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"roll_id": self.roll_id, "line_id": self.config.line_id}
        if self.pipeline is not None:
            out.update(self.pipeline.status())
        if self._publisher is not None:
            out["publisher"] = self._publisher.status()
        if self._detector is not None:
            out["providers"] = self._detector.providers
            out["non_finite_outputs"] = self._detector.decode_stats.non_finite_queries
        return out

    def run(self, on_result: Callable[[StripResult], None] | None = None) -> dict[str, Any]:
        """Build (if needed), run to the end of the roll or a stop, and return the roll summary."""
        pipeline = self.pipeline or self.build()
        reporter = pipeline.reporter
        first = {"done": False}

        def on_first(result: StripResult) -> None:
            if not first["done"]:
                first["done"] = True
                reporter.geometry = WebGeometry(
                    reporter.geometry.mm_per_px_x, reporter.geometry.mm_per_line, result.strip.width
                )
                reporter.grader.width_mm = result.strip.width * reporter.geometry.mm_per_px_x
            if on_result is not None:
                on_result(result)

        pipeline.start()
        if self._stop.is_set():
            pipeline.request_stop()
        self._set_ready(True)
        self._notify("ready", f"inspecting roll {self.roll_id}")
        ticker = threading.Thread(target=self._status_loop, name="loomsight-status", daemon=True)
        ticker.start()
        try:
            pipeline.run_reporting(on_first)
        finally:
            self._stop.set()
            self._notify("stopping", "draining and closing the roll")
            self._set_ready(False, "stopping")
            status = self.status()
            self.summary = reporter.end_roll(
                strips_dropped=status.get("strips_dropped", 0),
                lines_dropped=status.get("lines_dropped", 0),
                source=status.get("source", {}),
            )
            ticker.join(timeout=2)
            if self._source is not None:
                self._source.stop()
            self._publisher.close(timeout_s=min(2.0, self.config.publish.linger_ms / 1000.0 + 0.5))
        return self.summary

    def _status_loop(self) -> None:
        last_state = None
        while not self._stop.wait(self.status_interval_s):
            status = self.status()
            self._publisher.set_heartbeat_fields(
                {
                    k: status.get(k)
                    for k in ("tiles_per_s", "frames_per_s", "queues", "strips_dropped", "inspected_m")
                }
            )
            state = status.get("source", {}).get("state")
            if state != last_state and last_state is not None:
                self._publisher.publish(
                    "status", {"source_state": state, "source": status.get("source")}, roll_id=self.roll_id
                )
            last_state = state
            if self.health is not None:
                self.health.update(status)
            if self.on_status is not None:
                self.on_status(status)
            self._notify(
                "status", f"{status.get('inspected_m', 0):.1f} m, {status.get('tiles_per_s', 0):.0f} tiles/s"
            )


__all__ = ["CameraGeometry", "Daemon", "Publish", "camera_geometry", "new_roll_id"]
