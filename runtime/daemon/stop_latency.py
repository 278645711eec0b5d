"""Stop latency: from the acquisition of a stopping defect's last camera line to its `stop` on PUB.

Measured once per stop by the reporter, on the wall clock the frame sources stamp frames with
(`time.time_ns()`). The evidence line is the defect's last line seen when the stop fires (a closed
defect's last line; for an open streak, the furthest line seen so far); a points stop has no one
defect, its evidence is the last line of the strip whose inspection crossed the limit. The latency
splits into stages that add up to it:

- `accumulate_ms`: the line's acquisition until the last frame of the strip that fired the stop
  arrived (the strip filling up, plus, for a defect closed by a later strip, that strip too);
- `prepare_ms`: resampling and tiling that strip (acquisition thread);
- `wait_ms`: the strip waiting in the detect queue, plus decoding boxes;
- `infer_ms`: the detector on the strip's tiles;
- `report_ms`: merging, grading, then the spool commit and PUB send of the stop.

Per roll: `summary()` (p50/p99 by nearest rank, so with fewer than 100 stops p99 is the maximum)
goes into the daemon's status, a `status` event after each stop, and the roll's end event.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

MAX_KEPT = 1000  # stops kept per roll for the percentiles (a roll with more keeps the last ones)
STAGES = ("accumulate_ms", "prepare_ms", "wait_ms", "infer_ms", "report_ms")


@dataclass(frozen=True)
class StopTiming:
    stop_seq: int
    reason: str
    evidence_line: int
    latency_ms: float
    accumulate_ms: float
    prepare_ms: float
    wait_ms: float
    infer_ms: float
    report_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}


def stop_timing(
    *,
    stop_seq: int,
    reason: str,
    evidence_line: int,
    line_ns: int,
    strip_ns: int,
    prep_s: float,
    infer_s: float,
    inspected_ns: int,
    sent_ns: int,
) -> StopTiming:
    """One stop's latency and its stages from the timestamps along its path (wall-clock ns)."""
    prepare_ms, infer_ms = prep_s * 1e3, infer_s * 1e3
    detect_ms = (inspected_ns - strip_ns) / 1e6
    return StopTiming(
        stop_seq=stop_seq,
        reason=reason,
        evidence_line=evidence_line,
        latency_ms=(sent_ns - line_ns) / 1e6,
        accumulate_ms=(strip_ns - line_ns) / 1e6,
        prepare_ms=prepare_ms,
        wait_ms=max(0.0, detect_ms - prepare_ms - infer_ms),
        infer_ms=infer_ms,
        report_ms=(sent_ns - inspected_ns) / 1e6,
    )


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class StopLatencyLog:
    """The stop timings of one roll. Thread-safe: the reporter adds, the status thread reads."""

    def __init__(self) -> None:
        self._timings: list[StopTiming] = []
        self._unmeasured = 0
        self._lock = threading.Lock()

    def add(self, timing: StopTiming | None) -> None:
        """A stop's timing; None for a stop whose evidence line has no known acquisition time."""
        with self._lock:
            if timing is None:
                self._unmeasured += 1
                return
            self._timings.append(timing)
            if len(self._timings) > MAX_KEPT:
                del self._timings[0]

    def timings(self) -> list[StopTiming]:
        with self._lock:
            return list(self._timings)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            timings, unmeasured = list(self._timings), self._unmeasured
        out: dict[str, Any] = {"stops": len(timings), "unmeasured": unmeasured}
        if not timings:
            return {**out, "p50_ms": None, "p99_ms": None, "min_ms": None, "max_ms": None}
        total = [t.latency_ms for t in timings]
        out.update(
            p50_ms=round(nearest_rank(total, 0.5), 1),
            p99_ms=round(nearest_rank(total, 0.99), 1),
            min_ms=round(min(total), 1),
            max_ms=round(max(total), 1),
            stages_p50_ms={s: round(nearest_rank([getattr(t, s) for t in timings], 0.5), 1) for s in STAGES},
        )
        return out
