"""Strip detections -> physical defects -> graded events (defect, stop, roll).

Owns the merger and the grader of the current roll. Every closed defect becomes one `defect`
event with its full extent in web pixels and in millimetres, its four-point score and a JPEG crop
taken from the strip in which it scored best. Stop decisions become `stop` events, once each.

For the roll report (runtime/report), the roll's events say what it needs: the `roll` start event
carries the daemon's `roll_fields` (model, calibration, acceptance) and the camera width; every
`stop` carries `inspected_m` (where the web was when it fired); the `roll` end event carries the
fabric edges last tracked and `gaps_m`: the stretches of the roll no strip inspected (a camera
outage, or strips the detector was too slow for), found from the strips' line ranges.

Stop latency (runtime/daemon/stop_latency.py): each stop is timed from the acquisition of its
evidence line (the strips' `line_times`, see runtime/line_clock.py) to the return of its PUB send;
a `status` event follows each stop with the roll's `stop_latency` so far and the stop's own
timing (`last_stop`) (and the daemon's `status_context`, the camera state, so that the last-value
cache's `status` is whole whichever kind came last), and the roll's end event carries `stop_latency` with every stop's timing.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from runtime.daemon.inspector import StripResult
from runtime.daemon.stop_latency import StopLatencyLog, stop_timing
from runtime.grade import RollGrader, StopDecision
from runtime.line_clock import LineClock
from runtime.merge import Defect, Merger
from runtime.web_edges import WebEdges

log = logging.getLogger(__name__)

MAX_REPORTED_GAPS = 500  # a roll end event lists at most this many gaps (then counts the rest)


class Publish(Protocol):
    def publish(
        self, kind: str, fields: dict[str, Any], *, roll_id: str, crop_jpeg: bytes | None = None
    ) -> int: ...


@dataclass(frozen=True)
class WebGeometry:
    """Pixels to millimetres. `px_to_mm_x` (a calibrated lens model) wins over `mm_per_px_x`."""

    mm_per_px_x: float
    mm_per_line: float
    width_px: int
    px_to_mm_x: Callable[[float], float] | None = None

    def x_mm(self, px: float) -> float:
        return float(self.px_to_mm_x(px)) if self.px_to_mm_x is not None else px * self.mm_per_px_x

    @property
    def width_mm(self) -> float:
        return self.x_mm(self.width_px) - self.x_mm(0)


@dataclass
class CropOptions:
    enabled: bool = True
    max_px: int = 256
    jpeg_quality: int = 85
    margin_px: int = 16


@dataclass
class _Best:
    score: float
    jpeg: bytes | None


@dataclass
class ReporterStats:
    defects: Counter[str] = field(default_factory=Counter)
    edge_masked: Counter[str] = field(default_factory=Counter)  # boxes dropped by web.edge_mask_mm
    stops: int = 0
    strips: int = 0
    last_line: int = 0


class DefectReporter:
    def __init__(
        self,
        *,
        classes: Sequence[str],
        geometry: WebGeometry,
        merger: Merger,
        grader: RollGrader,
        publisher: Publish,
        roll_id: str,
        model_name: str,
        crops: CropOptions | None = None,
        roll_fields: dict[str, Any] | None = None,
        status_context: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.classes = list(classes)
        self.geometry = geometry
        self.merger = merger
        self.grader = grader
        self.publisher = publisher
        self.roll_id = roll_id
        self.model_name = model_name
        self.crops = crops or CropOptions()
        self.roll_fields = dict(roll_fields or {})
        self.status_context = status_context  # fields every `status` event repeats (the camera's state)
        self._gaps_lines: list[tuple[int, int, str]] = []
        self._gap_count = 0
        self._covered_to: int | None = None  # one past the last roll line an inspected strip held
        self.start_seq = 0  # the spool seq of the roll's start event (0: not published yet, or held)
        self.stats = ReporterStats()
        self._best: dict[int, _Best] = {}
        self._roll_line0: int | None = None
        self.edges = WebEdges(None, None)  # latest tracked fabric edges, camera columns
        self.line_clock = LineClock()
        self.stop_latency = StopLatencyLog()
        self._current: StripResult | None = None  # the strip being reported (times its stops)

    # -- geometry -----------------------------------------------------------------------------
    @property
    def inspected_mm(self) -> float:
        if self._roll_line0 is None:
            return 0.0
        return (self.stats.last_line - self._roll_line0) * self.geometry.mm_per_line

    def defect_fields(self, d: Defect) -> dict[str, Any]:
        g = self.geometry
        w_mm = g.x_mm(d.x1) - g.x_mm(d.x0)
        h_mm = (d.y1 - d.y0) * g.mm_per_line
        name = self.classes[d.class_id]
        out: dict[str, Any] = {
            "defect_id": f"{self.roll_id}-{d.defect_id}",
            "class": name,
            "score": round(d.score, 4),
            "bbox_px": [round(d.x0, 1), round(d.y0, 1), round(d.x1, 1), round(d.y1, 1)],
            "x_mm": round(g.x_mm(d.x0), 2),
            "y_mm": round(d.y0 * g.mm_per_line, 2),
            "w_mm": round(w_mm, 2),
            "h_mm": round(h_mm, 2),
            "hits": d.hits,
            "model": self.model_name,
        }
        if self.edges.left_px is not None:
            # QA measures across from the fabric's own edge, not from the camera's first pixel
            out["x_from_edge_mm"] = round(g.x_mm(d.x0) - g.x_mm(self.edges.left_px), 2)
        return out

    def web_edges_mm(self) -> list[float | None]:
        """[left, right] fabric edge in mm across the camera line (None: the camera does not see past it)."""
        return [
            None if e is None else round(self.geometry.x_mm(e), 1)
            for e in (self.edges.left_px, self.edges.right_px)
        ]

    # -- per strip ----------------------------------------------------------------------------
    def start_roll(self, roll_line0: int = 0, **fields: Any) -> None:
        self._roll_line0 = roll_line0
        self.stats.last_line = roll_line0
        self.start_seq = self.publisher.publish("roll", {"state": "start", **fields}, roll_id=self.roll_id)

    def on_strip(self, result: StripResult) -> list[dict[str, Any]]:
        """Merge a strip's boxes; publish what closed. Returns the defect events' fields."""
        strip = result.strip
        if self._roll_line0 is None:
            g = self.geometry
            width_mm = round(g.x_mm(strip.width) - g.x_mm(0), 2)
            self.start_roll(strip.line0, **{"camera_width_mm": width_mm, **self.roll_fields})
        self._note_coverage(strip.line0, strip.line_end, strip.overlap_lines)
        self.line_clock.add(strip.line_times)
        self._current = result
        self.stats.strips += 1
        self.stats.last_line = max(self.stats.last_line, strip.line_end)
        self.edges = result.edges
        for cid, n in result.edge_masked.items():
            self.stats.edge_masked[self.classes[cid]] += n
        next_line0 = strip.line_end - strip.overlap_lines
        closed = self.merger.update(
            result.xyxy, result.class_id, result.score, strip_seq=strip.seq, next_line0=next_line0
        )
        if self.crops.enabled:
            self._capture_crops(result, closed)
        events = [self._emit(d) for d in closed]
        for d in self.merger.open_defects:
            stop = self.grader.stop_for_open(
                self.classes[d.class_id], d.defect_id, d.length_lines * self.geometry.mm_per_line
            )
            if stop and not d.stop_sent:
                d.stop_sent = True
                self._publish_stop(stop, d)
        points_stop = self.grader.stop_for_points(self.inspected_mm)
        if points_stop:
            self._publish_stop(points_stop, None)
        return events

    def end_roll(self, **fields: Any) -> dict[str, Any]:
        """Emit every open defect, then the roll summary."""
        for d in self.merger.flush():
            self._emit(d)
        summary = {
            "state": "end",
            **self.grader.summary(self.inspected_mm),
            "web_edges_mm": self.web_edges_mm(),
            "gaps_m": [
                [
                    round(a * self.geometry.mm_per_line / 1000.0, 3),
                    round(b * self.geometry.mm_per_line / 1000.0, 3),
                    why,
                ]
                for a, b, why in self._gaps_lines
            ],
            "gaps": self._gap_count,
            "stop_latency": {
                **self.stop_latency.summary(),
                "per_stop": [t.to_dict() for t in self.stop_latency.timings()],
            },
            **fields,
        }
        self.publisher.publish("roll", summary, roll_id=self.roll_id)
        return summary

    # -- internals ----------------------------------------------------------------------------
    def _note_coverage(self, line0: int, line_end: int, overlap_lines: int) -> None:
        """A strip that starts after the last one ended leaves a gap: roll lines nobody inspected.
        With overlap, the assembler's web was contiguous and the missing strips were dropped (the
        detector was behind); without, the camera delivered no lines there."""
        if self._covered_to is not None and line0 > self._covered_to:
            self._gap_count += 1
            if len(self._gaps_lines) < MAX_REPORTED_GAPS:
                why = "dropped_strips" if overlap_lines > 0 else "no_camera_lines"
                self._gaps_lines.append((self._covered_to, line0, why))
        self._covered_to = line_end if self._covered_to is None else max(self._covered_to, line_end)

    def _emit(self, d: Defect) -> dict[str, Any]:
        fields = self.defect_fields(d)
        fields["points"] = self.grader.add(fields["class"], fields["y_mm"], fields["w_mm"], fields["h_mm"])
        best = self._best.pop(d.defect_id, None)
        self.publisher.publish("defect", fields, roll_id=self.roll_id, crop_jpeg=best.jpeg if best else None)
        self.stats.defects[fields["class"]] += 1
        stop = None if d.stop_sent else self.grader.stop_for_closed(fields["class"], d.defect_id)
        if stop:
            d.stop_sent = True
            self._publish_stop(stop, d)
        return fields

    def _publish_stop(self, stop: StopDecision, d: Defect | None) -> None:
        fields: dict[str, Any] = {
            "reason": stop.reason,
            "detail": stop.detail,
            "inspected_m": round(self.inspected_mm / 1000.0, 3),
        }
        if d is not None:
            fields["defect"] = self.defect_fields(d)
            fields["defect_id"] = fields["defect"]["defect_id"]
        self.stats.stops += 1
        log.warning("STOP %s: %s", stop.reason, stop.detail)
        seq = self.publisher.publish("stop", fields, roll_id=self.roll_id)
        self._time_stop(seq, stop.reason, d, time.time_ns())

    def _time_stop(self, seq: int, reason: str, d: Defect | None, sent_ns: int) -> None:
        """Measure the stop just sent and publish the roll's stop latency in a `status` event."""
        result = self._current
        if result is None:
            return
        strip = result.strip
        line = strip.line_end - 1 if d is None else max(0, math.ceil(d.y1) - 1)
        line_ns = self.line_clock.acquired_ns(line)
        timing = None
        if line_ns is not None and strip.timestamp_ns > 0 and result.inspected_ns > 0:
            timing = stop_timing(
                stop_seq=seq,
                reason=reason,
                evidence_line=line,
                line_ns=line_ns,
                strip_ns=strip.timestamp_ns,
                prep_s=result.prep_s,
                infer_s=result.infer_s,
                inspected_ns=result.inspected_ns,
                sent_ns=sent_ns,
            )
        self.stop_latency.add(timing)
        if timing is None:  # no acquisition time (images through `loomsight inspect`): nothing to report
            return
        status: dict[str, Any] = {
            **(self.status_context() if self.status_context is not None else {}),
            "stop_latency": self.stop_latency.summary(),
        }
        status["last_stop"] = timing.to_dict()
        log.info("stop seq %d: %.0f ms from its last camera line to PUB", seq, timing.latency_ms)
        self.publisher.publish("status", status, roll_id=self.roll_id)

    def _capture_crops(self, result: StripResult, closed: Sequence[Defect]) -> None:
        """Keep a JPEG of each defect from the strip where it scored best so far."""
        strip = result.strip
        for d in [*closed, *self.merger.open_defects]:
            if d.last_strip != strip.seq:
                continue
            prev = self._best.get(d.defect_id)
            if prev is not None and prev.score >= d.score:
                continue
            self._best[d.defect_id] = _Best(d.score, self._crop(strip.pixels, strip.line0, d))

    def _crop(self, pixels: np.ndarray, line0: int, d: Defect) -> bytes | None:
        m = self.crops.margin_px
        h, w = pixels.shape[:2]
        x0, x1 = max(0, int(d.x0) - m), min(w, int(np.ceil(d.x1)) + m)
        y0, y1 = max(0, int(d.y0) - line0 - m), min(h, int(np.ceil(d.y1)) - line0 + m)
        if x1 <= x0 or y1 <= y0:
            return None
        crop = pixels[y0:y1, x0:x1]
        scale = self.crops.max_px / max(crop.shape[:2])
        if scale < 1:
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, self.crops.jpeg_quality])
        return buf.tobytes() if ok else None
