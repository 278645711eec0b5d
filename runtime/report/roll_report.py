"""One roll's report as plain data: header, defects, totals, four-point score, pass/fail, stops, gaps.

Points come from the grader itself (runtime/grade.py): every defect of the roll is added to a fresh
`RollGrader` of the roll's width, so the report scores exactly as the daemon did (the per-defect
points, the 4-points-per-yard cap, points per 100 sq yd). The daemon's own total from the roll's
end event is kept beside it (`daemon_points`) as a cross-check.

Where the numbers come from (all from the spool):
- length inspected: the end event's `inspected_m`; for a roll a crash left open, its explicit end's
  `inspected_m_at_least`; with no end at all, the far end of the furthest defect (`length_is_lower_bound`);
- width: the end event's `width_mm` (the camera's width, which the grader uses), else the start
  event's `camera_width_mm`; fabric edges from the end event's `web_edges_mm`;
- acceptance: `--accept-points-per-100-sq-yd`, else the start event's (the daemon's
  `grading.accept_points_per_100_sq_yd`), else 40 (the usual first-quality limit);
- stop latency: the end event's `stop_latency` (runtime/daemon/stop_latency.py): each stop's row
  gets its `latency_ms` (acquisition of its last camera line to its PUB send), and `stop_latency`
  the roll's p50/p99 and the median of each stage; null for a roll without an end event.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from runtime.grade import MM_PER_INCH, MM_PER_YARD, RollGrader, defect_points
from runtime.report.spool_rolls import RollEvents

log = logging.getLogger(__name__)

REPORT_SCHEMA = "loomsight.roll_report/1"
DEFAULT_ACCEPT_POINTS_PER_100_SQ_YD = 40.0


@dataclass(frozen=True)
class ReportOptions:
    accept_points_per_100_sq_yd: float | None = None  # None: what the spool says, else the default
    crops_dir_name: str | None = None  # where crop files go, relative to the report (None: no crops)


def safe_name(text: str) -> str:
    """`text` as a safe file name (anything but letters, digits, '.', '_', '-' becomes '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "roll"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def roll_state(roll: RollEvents) -> str:
    if roll.end is None:
        return "open"  # still running, or the daemon died and has not restarted yet
    return "interrupted" if roll.end.get("reason") == "interrupted" else "ended"


def build_report(roll: RollEvents, options: ReportOptions | None = None) -> dict[str, Any]:
    """The roll report (the JSON file's content)."""
    options = options or ReportOptions()
    start, end = roll.start or {}, roll.end or {}
    length_m, lower_bound = _length_m(roll)
    width_mm = _num(end.get("width_mm")) or _num(start.get("camera_width_mm")) or 0.0
    accept, accept_from = _acceptance(start, options)
    latency_by_seq = _latency_by_seq(end)

    grader = RollGrader(width_mm=width_mm)
    defects: list[dict[str, Any]] = []
    for body in roll.defects:
        defects.append(_defect_row(body, grader, options, roll.crop_seqs))
    points = grader.total_points
    score = grader.points_per_100_sq_yd(length_m * 1000.0)

    by_class: dict[str, dict[str, Any]] = defaultdict(lambda: {"defects": 0, "points": 0})
    for d in defects:
        by_class[d["class"]]["defects"] += 1
        by_class[d["class"]]["points"] += d["points"]

    model = start.get("model")
    if model is None:
        names = Counter(str(b.get("model")) for b in roll.defects if b.get("model"))
        model = {"name": names.most_common(1)[0][0]} if names else None
    notes = []
    if not roll.complete:
        notes.append(
            "the spool no longer holds this roll's start event (retention pruned it): totals may be short"
        )
    if lower_bound:
        notes.append("no end event: length inspected is the far end of the furthest defect (a lower bound)")
    daemon_points = end.get("points")
    if isinstance(daemon_points, int) and daemon_points != points and roll.complete:
        notes.append(
            f"the daemon's own total was {daemon_points} points; regraded from the defects: {points}"
        )

    return {
        "schema": REPORT_SCHEMA,
        "roll": {
            "line_id": roll.line_id,
            "roll_id": roll.roll_id,
            "state": roll_state(roll),
            "start_ts": start.get("ts", roll.first_ts),
            "end_ts": end.get("ts"),
            "length_inspected_m": round(length_m, 3),
            "length_is_lower_bound": lower_bound,
            "width_mm": round(width_mm, 2),
            "web_edges_mm": end.get("web_edges_mm"),
            "model": model,
            "calibration": start.get("calibration"),
            "spool_complete": roll.complete,
        },
        "grading": {
            "system": "four-point (ASTM D5430), as runtime/grade.py",
            "points": points,
            "daemon_points": daemon_points if isinstance(daemon_points, int) else None,
            "points_per_100_sq_yd": round(score, 2),
            "accept_points_per_100_sq_yd": accept,
            "acceptance_from": accept_from,
            "result": "pass" if score <= accept else "fail",
            "area_sq_yd": round(_area_sq_yd(length_m, width_mm), 3),
        },
        "totals_by_class": {k: by_class[k] for k in sorted(by_class)},
        "defects": defects,
        "stops": [_stop_row(s, latency_by_seq) for s in roll.stops],
        "stop_latency": _stop_latency(end),
        "gaps": _gaps(end),
        "notes": notes,
    }


def _length_m(roll: RollEvents) -> tuple[float, bool]:
    end = roll.end or {}
    for key in ("inspected_m", "inspected_m_at_least"):
        value = _num(end.get(key))
        if value is not None:
            return value, key != "inspected_m"
    far_mm = max(
        ((_num(d.get("y_mm")) or 0.0) + (_num(d.get("h_mm")) or 0.0) for d in roll.defects), default=0.0
    )
    return far_mm / 1000.0, True


def _acceptance(start: dict[str, Any], options: ReportOptions) -> tuple[float, str]:
    if options.accept_points_per_100_sq_yd is not None:
        return options.accept_points_per_100_sq_yd, "command line"
    spooled = start.get("acceptance")
    if isinstance(spooled, dict) and _num(spooled.get("points_per_100_sq_yd")) is not None:
        return float(spooled["points_per_100_sq_yd"]), "daemon config (grading.accept_points_per_100_sq_yd)"
    return DEFAULT_ACCEPT_POINTS_PER_100_SQ_YD, "default"


def _area_sq_yd(length_m: float, width_mm: float) -> float:
    return (length_m * 1000.0 / MM_PER_YARD) * (width_mm / MM_PER_INCH) / 36.0


def _defect_row(
    body: dict[str, Any], grader: RollGrader, options: ReportOptions, crop_seqs: dict[str, int]
) -> dict[str, Any]:
    name = str(body.get("class", "unknown"))
    x, y = _num(body.get("x_mm")) or 0.0, _num(body.get("y_mm")) or 0.0
    w, h = _num(body.get("w_mm")) or 0.0, _num(body.get("h_mm")) or 0.0
    grader.add(name, y, w, h)
    defect_id = str(body.get("defect_id", body.get("seq")))
    crop = None
    if options.crops_dir_name is not None and defect_id in crop_seqs:
        crop = f"{options.crops_dir_name}/{safe_name(defect_id)}.jpg"
    return {
        "defect_id": defect_id,
        "seq": body.get("seq"),
        "ts": body.get("ts"),
        "class": name,
        "score": body.get("score"),
        "x_mm": x,
        "y_mm": y,
        "w_mm": w,
        "h_mm": h,
        "x_from_edge_mm": _num(body.get("x_from_edge_mm")),
        "points": defect_points(name, w, h),
        "crop_file": crop,
    }


def _latency_by_seq(end: dict[str, Any]) -> dict[int, float]:
    block = end.get("stop_latency")
    rows = block.get("per_stop") if isinstance(block, dict) else None
    out: dict[int, float] = {}
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and isinstance(row.get("stop_seq"), int):
            value = _num(row.get("latency_ms"))
            if value is not None:
                out[int(row["stop_seq"])] = value
    return out


def _stop_latency(end: dict[str, Any]) -> dict[str, Any] | None:
    block = end.get("stop_latency")
    if not isinstance(block, dict):
        return None
    keys = ("stops", "unmeasured", "p50_ms", "p99_ms", "min_ms", "max_ms", "stages_p50_ms")
    return {
        "measured": "acquisition of the stop's last camera line -> its PUB send",
        **{k: block.get(k) for k in keys},
    }


def _stop_row(body: dict[str, Any], latency_by_seq: dict[int, float]) -> dict[str, Any]:
    defect = body.get("defect") if isinstance(body.get("defect"), dict) else {}
    at_m = _num(body.get("inspected_m"))
    y_mm = _num(defect.get("y_mm")) if defect else None
    return {
        "seq": body.get("seq"),
        "ts": body.get("ts"),
        "reason": body.get("reason"),
        "detail": body.get("detail"),
        "defect_id": body.get("defect_id"),
        "defect_y_m": None if y_mm is None else round(y_mm / 1000.0, 3),
        "inspected_m": at_m,
        "latency_ms": latency_by_seq.get(body["seq"]) if isinstance(body.get("seq"), int) else None,
    }


def _gaps(end: dict[str, Any]) -> dict[str, Any]:
    spans: list[dict[str, Any]] = []
    for item in end.get("gaps_m") or []:
        if isinstance(item, list) and len(item) >= 2:
            a, b = _num(item[0]), _num(item[1])
            if a is not None and b is not None:
                reason = str(item[2]) if len(item) > 2 else "not inspected"
                spans.append({"start_m": a, "end_m": b, "length_m": round(b - a, 3), "reason": reason})
    return {
        "known": "gaps_m" in end,
        "count": int(end.get("gaps", len(spans)) or 0),
        "total_m": round(sum(float(s["length_m"]) for s in spans), 3),
        "strips_dropped": end.get("strips_dropped"),
        "spans": spans,
    }
