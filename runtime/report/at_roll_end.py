"""The daemon's own roll reports: at every roll end, the roll's report is written to `report.dir`.

Off unless `[report] dir` is set. The report is made from the spool (as `loomsight report`), in a
thread of its own, so a long roll's report never holds up the next roll's inspection; it reads
only the events after the roll's start. A report that fails is logged and never stops inspecting.
At shutdown the daemon waits (at most `JOIN_TIMEOUT_S`) for the last roll's report.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from runtime.config import ReportConfig

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 20.0


class RollEndReports:
    def __init__(self, config: ReportConfig, spool_path: Path) -> None:
        assert config.dir is not None
        self.out_dir = Path(config.dir)
        self.crops = config.crops
        self.spool_path = spool_path
        self._threads: list[threading.Thread] = []
        self.written: list[str] = []  # roll ids reported
        self.failed: list[str] = []

    def submit(self, roll_id: str, start_seq: int) -> None:
        """Write `roll_id`'s report (its start event is `start_seq`, 0 if unknown) in the background."""
        t = threading.Thread(
            target=self._write, args=(roll_id, max(0, start_seq - 1)), name="loomsight-report", daemon=True
        )
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _write(self, roll_id: str, since_seq: int) -> None:
        from runtime.report.run import report_spool

        try:
            report_spool(
                self.spool_path,
                self.out_dir,
                roll_id=roll_id,
                crops=self.crops,
                since_seq=since_seq,
            )
            self.written.append(roll_id)
        except Exception:  # a report must never take inspection down
            self.failed.append(roll_id)
            log.exception("report.dir %s: the report of roll %s failed", self.out_dir, roll_id)

    def close(self, timeout_s: float = JOIN_TIMEOUT_S) -> None:
        for t in self._threads:
            t.join(timeout_s)
            if t.is_alive():
                log.warning(
                    "the last roll report is still being written after %.0f s; not waiting", timeout_s
                )
