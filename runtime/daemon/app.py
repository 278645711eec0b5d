"""Assemble the daemon from a validated config and run it until the roll ends or a stop signal.

Start order: publisher (spool, sockets, CURVE), control socket (`publish.control_endpoint`, see
control.py), the explicit end of a roll a crash left open (roll_state.py), model (hash-checked
bundle, warm-up), calibration, frame source; then READY and inspection. A model that fails to load
leaves the daemon live but not ready (health says why, a `status` event goes out) and is retried
every `model.retry_load_s`, so fixing the bundle needs no restart; a stop while waiting for it
is a clean exit. On stop: drain the queues, emit open defects and the roll summary, STOPPING, close.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from runtime.assembler import WebAssembler
from runtime.config import DEFAULT_ACROSS_WEB_GAP_MM, DEFAULT_ALONG_WEB_GAP_MM, LoomsightConfig
from runtime.daemon.inspector import StripInspector, StripResult
from runtime.daemon.pipeline import Pipeline
from runtime.daemon.reporter import CropOptions, DefectReporter, Publish, WebGeometry
from runtime.daemon.roll_state import close_interrupted_roll
from runtime.detect.base import Detector
from runtime.detect.manifest import ModelManifest
from runtime.errors import CalibrationError, ConfigError, LoomsightError
from runtime.grade import RollGrader
from runtime.merge import Merger
from runtime.preprocess import FlatField, Preprocessor
from runtime.sources.base import FrameSource

log = logging.getLogger(__name__)


class StoppedBeforeStart(LoomsightError):
    """A stop was asked for while the daemon was still waiting for its model: a clean exit."""


@dataclass(frozen=True)
class CameraGeometry:
    mm_per_px_x: float
    mm_per_line: float
    flat_field: FlatField | None = None
    source: str = "config"
    px_to_mm_x: Callable[[float], float] | None = None  # a calibrated lens model, when there is one


def camera_geometry(config: LoomsightConfig) -> CameraGeometry:
    """mm per pixel across and per line along: calibration file, else config numbers, else the simulator's."""
    cal = config.calibration
    if cal.path is not None:
        from runtime.calibration import Calibration

        c = Calibration.load(cal.path)
        return CameraGeometry(
            c.mm_per_px_x,
            c.mm_per_line,
            c if c.flat_field is not None else None,
            f"calibration {cal.path}",
            (lambda px: float(c.px_to_mm_x(px))) if c.distortion is not None else None,
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
    return f"{line_id}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')[:-4]}"


def open_publisher(config: LoomsightConfig) -> Any:
    from runtime.events.publisher import EventPublisher

    return EventPublisher(
        line_id=config.line_id, publish=config.publish, spool=config.spool, security=config.security
    )


class Daemon:
    """The inspection daemon for one line. `run()` blocks until the source ends or `stop()`."""

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
        http: Any | None = None,
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
        self.http = http  # runtime.ops.health.HealthServer serving `health`, supervised by the status loop
        self.on_status = on_status
        self.status_interval_s = status_interval_s
        self.pipeline: Pipeline | None = None
        self.summary: dict[str, Any] | None = None
        self.roll_summaries: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._watchdog: Any = None
        self._geometry: CameraGeometry | None = None
        self._last_source_state: str | None = None
        self._model_error: str | None = None
        self.control: Any = None  # runtime.daemon.control.ControlServer when publish.control_endpoint is set
        self.interrupted_roll: dict[str, Any] | None = None  # the roll a crash left open, closed at build()
        self.roll_reports: Any = None  # runtime.report.at_roll_end.RollEndReports when report.dir is set

    # -- control (thread- and signal-safe) ------------------------------------------------------
    def stop(self) -> None:
        """Ask for a clean stop: drain, report, close."""
        self._stop.set()
        if self.pipeline is not None:
            self.pipeline.request_stop()

    def new_roll(self, roll_id: str | None = None) -> str:
        """End the current roll (summary event) and start another at the next frame."""
        roll_id = roll_id or new_roll_id(self.config.line_id)
        if self.pipeline is None:
            self.roll_id = roll_id
        else:
            self.pipeline.request_new_roll(roll_id)
        return roll_id

    # -- helpers --------------------------------------------------------------------------------
    def _notify(self, method: str, *args: Any) -> None:
        if self.notifier is not None:
            getattr(self.notifier, method)(*args)

    def _set_ready(self, ready: bool, reason: str = "") -> None:
        if self.health is not None:
            self.health.set_ready(ready, reason)

    def _load_model(self) -> Detector:
        """Open and warm up the detector; while it fails, stay live (not ready) and retry."""
        from runtime.detect.bundle import open_detector

        cfg = self.config.model
        while True:
            self._notify("extend_timeout", 120.0)
            self._notify("status", f"loading model {cfg.bundle}")
            try:
                detector = open_detector(cfg)
                detector.warmup(cfg.warmup_runs)
                self._model_error = None
                return detector
            except LoomsightError as exc:
                if not cfg.retry_load_s:
                    raise
                reason = f"model failed to load: {exc}"
            log.error("%s; retrying in %.0f s", reason, cfg.retry_load_s)
            self._model_error = reason
            self._set_ready(False, reason)
            self._notify("ready", f"NOT INSPECTING: {reason}")
            self._publisher.publish("status", {"state": "model_error", "error": reason}, roll_id=self.roll_id)
            waited = 0.0
            while waited < cfg.retry_load_s:
                if self._stop.wait(min(1.0, cfg.retry_load_s - waited)):
                    raise StoppedBeforeStart(f"stopped before the model could be loaded ({reason})")
                waited += 1.0
                if self._watchdog is not None:
                    self._watchdog.idle()

    def _grader(self, width_mm: float = 0.0) -> RollGrader:
        g = self.config.grading
        return RollGrader(
            width_mm=width_mm,
            stop_points_per_100_sq_yd=g.stop_points_per_100_sq_yd,
            stop_classes=frozenset(g.stop_classes),
            stop_open_length_mm=g.stop_open_length_mm,
            stop_min_inspected_mm=g.stop_min_inspected_m * 1000.0,
        )

    def _reporter(self, roll_id: str, detector: Detector, geometry: CameraGeometry) -> DefectReporter:
        cfg = self.config
        gap_mm = cfg.merge.gap_mm
        return DefectReporter(
            classes=cfg.model.output_classes(detector.manifest.classes),
            geometry=WebGeometry(geometry.mm_per_px_x, geometry.mm_per_line, 0, geometry.px_to_mm_x),
            merger=Merger(
                min_overlap_ratio=cfg.merge.min_overlap_ratio,
                gap_px=gap_mm / geometry.mm_per_px_x,
                gap_lines=gap_mm / geometry.mm_per_line,
                class_agnostic=cfg.merge.class_agnostic,
                streak_gap_px={
                    k: mm / geometry.mm_per_px_x
                    for k, mm in _class_gaps(cfg.merge.across_web_gap_mm, "across", detector.manifest).items()
                },
                streak_gap_lines={
                    k: mm / geometry.mm_per_line
                    for k, mm in _class_gaps(cfg.merge.along_web_gap_mm, "along", detector.manifest).items()
                },
            ),
            grader=self._grader(),
            publisher=self._publisher,
            roll_id=roll_id,
            model_name=detector.manifest.name,
            crops=CropOptions(cfg.publish.jpeg_crops, cfg.publish.crop_max_px, cfg.publish.jpeg_quality),
            roll_fields=self._roll_fields(detector, geometry),
            status_context=lambda: {"source_state": self._last_source_state},
        )

    def _roll_fields(self, detector: Detector, geometry: CameraGeometry) -> dict[str, Any]:
        """What a roll's start event records for its report: model, calibration, acceptance."""
        g = self.config.grading
        manifest = detector.manifest
        return {
            "model": {
                "name": manifest.name,
                "classes": list(manifest.classes),
                "mm_per_px": manifest.mm_per_px,
            },
            "calibration": {
                "source": geometry.source,
                "mm_per_px_x": geometry.mm_per_px_x,
                "mm_per_line": geometry.mm_per_line,
                "lens_model": geometry.px_to_mm_x is not None,
            },
            "acceptance": {"points_per_100_sq_yd": g.accept_points_per_100_sq_yd},
            "stop_rule": {
                "points_per_100_sq_yd": g.stop_points_per_100_sq_yd,
                "classes": list(g.stop_classes),
                "open_length_mm": g.stop_open_length_mm,
            },
        }

    # -- lifecycle ------------------------------------------------------------------------------
    def build(self) -> Pipeline:
        cfg = self.config
        if self._publisher is None:
            self._publisher = open_publisher(cfg)
        self._publisher.start()
        self._start_control()
        self._add_health_checks()
        spool = getattr(self._publisher, "spool", None)
        if spool is not None and getattr(spool, "path", None) is not None:
            # a roll the previous run started and never ended (kill -9, power cut): close it explicitly
            self.interrupted_roll = close_interrupted_roll(
                self._publisher, spool.path, next_roll_id=self.roll_id
            )
            if cfg.report.dir is not None:
                from runtime.report.at_roll_end import RollEndReports

                self.roll_reports = RollEndReports(cfg.report, spool.path)
        if self.notifier is not None:
            from runtime.ops.watchdog import ProgressWatchdog

            self._watchdog = ProgressWatchdog(self.notifier)
        if self._detector is None:
            self._detector = self._load_model()
        detector = self._detector
        geometry = self._geometry = camera_geometry(cfg)
        if self._source is None:
            from runtime.sources.factory import open_source

            self._source = open_source(cfg.source)
        self._source.start()
        manifest = detector.manifest
        pre = Preprocessor(
            camera_mm_per_px=geometry.mm_per_px_x,
            camera_mm_per_line=geometry.mm_per_line,
            model_mm_per_px=manifest.mm_per_px,
            color=manifest.input.color,
            flat_field=geometry.flat_field,
        )
        strip_lines, overlap_lines = strip_geometry(cfg, manifest, geometry.mm_per_line)
        log.info(
            "strips of %d new lines + %d repeated (web.strip_lines / web.overlap_lines)",
            strip_lines,
            overlap_lines,
        )
        advance, live = self._source.advance_lines_per_frame, self._source.live
        self.pipeline = Pipeline(
            source=self._source,
            assembler=WebAssembler(
                strip_lines=strip_lines,
                overlap_lines=overlap_lines,
                roll_id=self.roll_id,
                advance_lines_per_frame=advance,
            ),
            inspector=StripInspector(
                detector.infer,
                detector.manifest.tile,
                pre,
                batch_size=cfg.model.batch_size,
                edge_mask_px=_edge_mask_px(cfg, detector.manifest, cfg.model.unknown_defects.enabled),
            ),
            reporter=self._reporter(self.roll_id, detector, geometry),
            strip_queue=cfg.queues.strips,
            result_queue=cfg.queues.batches,
            drop_when_full=live,
            on_progress=self._watchdog.progress if self._watchdog is not None else None,
        )
        self.pipeline.on_roll_change = self._on_roll_change
        if self._watchdog is not None:
            self.pipeline.on_idle = self._watchdog.idle
        return self.pipeline

    def _start_control(self) -> None:
        endpoint = self.config.publish.control_endpoint
        if endpoint is None or self.control is not None:
            return
        from runtime.daemon.control import ControlServer

        self.control = ControlServer(self, endpoint=endpoint, security=self.config.security)
        self.control.start()

    def _add_health_checks(self) -> None:
        """Readiness goes false while the replay or control server is not answering."""
        if self.health is None or not hasattr(self.health, "add_check"):
            return
        problems = getattr(self._publisher, "server_problems", None)
        if problems is not None:
            self.health.add_check("publisher", lambda: "; ".join(problems()) or None)
        self.health.add_check("control", lambda: None if self.control is None else self.control.problem())
        if self.http is not None:
            self.health.add_check("http", self.http.problem)

    def _stop_control(self) -> None:
        control, self.control = self.control, None
        if control is not None:
            control.stop(timeout_s=1.0)

    def _on_roll_change(self, roll_id: str) -> None:
        """Runs in the reporting thread, after the old roll's last strip."""
        assert self.pipeline is not None and self._detector is not None and self._geometry is not None
        self.roll_summaries.append(self.pipeline.reporter.end_roll())
        self._report_roll(self.pipeline.reporter)
        log.info("roll %s ended; roll %s starts", self.roll_id, roll_id)
        self.roll_id = roll_id
        self.pipeline.reporter = self._reporter(roll_id, self._detector, self._geometry)

    def _report_roll(self, reporter: DefectReporter) -> None:
        """`report.dir` set: write the roll's report (JSON, CSV, map) in the background."""
        if self.roll_reports is not None:
            self.roll_reports.submit(reporter.roll_id, reporter.start_seq)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"roll_id": self.roll_id, "line_id": self.config.line_id}
        if self.pipeline is not None:
            out.update(self.pipeline.status())
        if self._publisher is not None:
            out["publisher"] = self._publisher.status()
        if self._detector is not None:
            out["providers"] = self._detector.providers
            out["non_finite_outputs"] = self._detector.decode_stats.non_finite_queries
            out["non_finite_tiles"] = self._detector.decode_stats.non_finite_tiles
        out["model"] = {"loaded": self._detector is not None, "error": self._model_error}
        if self.control is not None:
            out["control"] = self.control.status()
        if self.http is not None:
            out["http"] = self.http.status()
        return out

    def run(self, on_result: Callable[[StripResult], None] | None = None) -> dict[str, Any]:
        """Build (if needed), run to the end of the source or a stop; return the last roll's summary."""
        try:
            pipeline = self.pipeline or self.build()
        except BaseException as exc:
            self._stop_control()
            if self._publisher is not None:
                self._publisher.close(timeout_s=1.0)
            if self._source is not None:
                self._source.stop()
            if isinstance(exc, StoppedBeforeStart):  # SIGTERM while waiting for a model: a clean stop
                log.info("%s", exc)
                self.summary = {"state": "not_started", "reason": str(exc)}
                return self.summary
            raise

        def on_strip(result: StripResult) -> None:
            reporter = pipeline.reporter
            if reporter.geometry.width_px != result.strip.width:  # first strip of a roll
                g = reporter.geometry
                reporter.geometry = WebGeometry(
                    g.mm_per_px_x, g.mm_per_line, result.strip.width, g.px_to_mm_x
                )
                reporter.grader.width_mm = reporter.geometry.width_mm
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
            pipeline.run_reporting(on_strip)
        finally:
            self._stop.set()
            self._notify("stopping", "draining and closing the roll")
            self._set_ready(False, "stopping")
            status = self.status()
            self.summary = pipeline.reporter.end_roll(
                strips_dropped=status.get("strips_dropped", 0),
                lines_dropped=status.get("lines_dropped", 0),
                source=status.get("source", {}),
            )
            self.roll_summaries.append(self.summary)
            self._report_roll(pipeline.reporter)
            if self.roll_reports is not None:
                self.roll_reports.close()
            ticker.join(timeout=2)
            self._stop_control()
            if self._source is not None:
                self._source.stop()
            self._publisher.close(timeout_s=min(2.0, self.config.publish.linger_ms / 1000.0 + 0.5))
        return self.summary

    def _status_loop(self) -> None:
        while not self._stop.wait(self.status_interval_s):
            try:
                control = self.control
                if control is not None:
                    control.ensure_running()
                if self.http is not None:
                    self.http.ensure_running()
                self._status_tick()
            except Exception:  # reporting status must never take inspection down
                log.exception("status update failed; continuing")

    def _status_tick(self) -> None:
        status = self.status()
        keys = ("tiles_per_s", "frames_per_s", "queues", "strips_dropped", "inspected_m", "stop_latency")
        self._publisher.set_heartbeat_fields({k: status.get(k) for k in keys})
        state = status.get("source", {}).get("state")
        if state != self._last_source_state and self._last_source_state is not None:
            fields = {
                "source_state": state,
                "source": status.get("source"),
                "stop_latency": status.get("stop_latency"),
            }
            self._publisher.publish("status", fields, roll_id=self.roll_id)  # the LVC's status carries both
        self._last_source_state = state
        if self.health is not None:
            self.health.update(status)
        if self.on_status is not None:
            self.on_status(status)
        self._notify(
            "status", f"{status.get('inspected_m', 0):.1f} m, {status.get('tiles_per_s', 0):.0f} tiles/s"
        )


__all__ = ["CameraGeometry", "Daemon", "Publish", "StoppedBeforeStart", "camera_geometry", "new_roll_id"]


def _class_gaps(gaps_mm: dict[str, float], direction: str, manifest: ModelManifest) -> dict[int, float]:
    """Class name -> gap (config) as class id -> gap for this model. A default streak class the
    model does not have is skipped; a class the user named that the model lacks is an error."""
    defaults = DEFAULT_ALONG_WEB_GAP_MM if direction == "along" else DEFAULT_ACROSS_WEB_GAP_MM
    out: dict[int, float] = {}
    for name, mm in gaps_mm.items():
        if name in manifest.classes:
            out[manifest.classes.index(name)] = mm
        elif name not in defaults:
            raise ConfigError(
                f"merge.{direction}_web_gap_mm names class {name!r}, which model {manifest.name!r} does "
                f"not have; its classes are {', '.join(manifest.classes)}"
            )
    return out


def _edge_mask_px(cfg: LoomsightConfig, manifest: ModelManifest, open_set: bool = False) -> np.ndarray | None:
    """web.edge_mask_mm (or, when the config leaves it unset, the bundle's own) as model pixels per
    class id; None when nothing is masked. A configured class the model lacks is an error."""
    mask_mm = cfg.web.edge_mask_mm if cfg.web.edge_mask_mm is not None else manifest.edge_mask_mm
    unknown = [name for name in mask_mm if name not in manifest.classes]
    if unknown:
        raise ConfigError(
            f"web.edge_mask_mm names class {unknown[0]!r}, which model {manifest.name!r} does not have; "
            f"its classes are {', '.join(manifest.classes)}"
        )
    if not any(mm > 0 for mm in mask_mm.values()):
        return None
    origin = "web.edge_mask_mm" if cfg.web.edge_mask_mm is not None else f"model {manifest.name}"
    log.info("edge mask (%s): %s", origin, ", ".join(f"{c} {mm:g} mm" for c, mm in mask_mm.items()))
    out = np.zeros(len(manifest.classes) + int(open_set), np.float64)  # "unknown" is never masked
    for name, mm in mask_mm.items():
        out[manifest.classes.index(name)] = mm / manifest.mm_per_px
    return out


def strip_geometry(cfg: LoomsightConfig, manifest: ModelManifest, mm_per_line: float) -> tuple[int, int]:
    """(new lines per strip, overlap lines) for the assembler, from the config.

    `web.strip_lines = "fit"` fits the strips to the model's tiling: the tiler covers a strip with rows of tiles `stride =
    size - overlap` apart and shifts the last row inward, so a strip of `k * stride + overlap`
    model rows (the overlap being the lines repeated from the previous strip) costs exactly k tile
    rows. A strip one row taller costs a whole extra, mostly redundant, row. New lines are kept a
    model pixel short of k strides, so that resampling's rounding never adds that row.
    """
    scale = mm_per_line / manifest.mm_per_px  # model rows per camera line
    stride_px = manifest.tile.size_px - manifest.tile.overlap_px
    if cfg.web.strip_lines == "fit":
        rows = max(1, round(1500 * scale / stride_px))
        strip = max(16, math.floor((rows * stride_px - 1) / scale))
    else:
        strip = cfg.web.strip_lines
    overlap = cfg.web.overlap_lines
    if overlap is None:
        overlap = min(math.ceil(manifest.tile.overlap_px / scale), strip - 1)
    if overlap >= strip:
        raise ConfigError(
            f"web.overlap_lines ({overlap}) must be smaller than web.strip_lines ({strip}); "
            "leave web.overlap_lines unset to use the model's tile overlap"
        )
    return strip, overlap
