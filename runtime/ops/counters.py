"""Which of the daemon's status leaves are counts (Prometheus counters) though their keys lack `_total`.

Each path is a key path in the daemon's status dict (`Daemon.status()`); `health.py` exposes a
leaf on one of these paths as a counter `loomsight_<path>_total`. A count belongs here when it only
ever grows while the daemon runs; a level (queue depth, rows kept, retries in the current outage)
or a per-roll figure stays a gauge.
"""

from __future__ import annotations

# Status leaves that only ever grow while the daemon runs (counts), though their keys lack `_total`.
_PIPELINE_COUNTS = (
    "frames",
    "strips",
    "strips_inspected",
    "strips_dropped",
    "lines_dropped",
    "tiles",
    "strip_errors",
    "source_errors",
    "non_finite_outputs",
    "non_finite_tiles",
)
_SOURCE_COUNTS = (
    "frames",
    "incomplete",
    "timeouts",
    "bad_frames",
    "frame_id_gaps",
    "reconnects",
    "outages",
    "lost_lines",
)
_ASSEMBLER_COUNTS = ("frames", "strips", "skipped_frames", "gaps", "gap_lines", "duplicate_lines", "lines")
_PUBLISHER_COUNTS = ("published", "dropped", "send_errors", "heartbeats", "session_resets")
_SERVER_COUNTS = ("requests", "errors", "events_sent", "sessions_dropped", "rebinds")
COUNTER_PATHS: frozenset[tuple[str, ...]] = frozenset(
    [(k,) for k in _PIPELINE_COUNTS]
    + [("source", k) for k in _SOURCE_COUNTS]
    + [("assembler", k) for k in _ASSEMBLER_COUNTS]
    + [("publisher", k) for k in _PUBLISHER_COUNTS]
    + [("publisher", "replay", k) for k in _SERVER_COUNTS]
    + [("publisher", "spool", k) for k in ("write_failures", "pruned_rows")]
    + [("control", k) for k in _SERVER_COUNTS]
    + [("http", k) for k in ("requests", "errors")]
)
