"""Report rolls of a spool: pick the rolls (one, the newest, or all) and write their files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from runtime.errors import ReportError
from runtime.report.spool_rolls import SpoolRolls
from runtime.report.writers import write_roll_report

log = logging.getLogger(__name__)


def report_spool(
    spool: Path | str,
    out_dir: Path | str,
    *,
    roll_id: str | None = None,
    every_roll: bool = False,
    crops: bool = False,
    accept_points_per_100_sq_yd: float | None = None,
    since_seq: int = 0,
) -> list[dict[str, Any]]:
    """Write the reports; returns them. No roll id and not `every_roll`: the newest roll.
    `since_seq`: read only the events after it (the daemon knows where its roll started)."""
    if accept_points_per_100_sq_yd is not None and not accept_points_per_100_sq_yd > 0:
        raise ReportError(
            f"--accept-points-per-100-sq-yd {accept_points_per_100_sq_yd}: must be > 0 (40 is the usual limit)"
        )
    with SpoolRolls(spool) as reader:
        if roll_id is not None:
            rolls = [reader.roll(roll_id, since_seq)]
        else:
            found = reader.rolls(since_seq)
            if not found:
                raise ReportError(f"spool {reader.path} holds no roll events yet; run the daemon first")
            rolls = list(found.values()) if every_roll else [list(found.values())[-1]]
        return [
            write_roll_report(
                roll,
                Path(out_dir),
                accept_points_per_100_sq_yd=accept_points_per_100_sq_yd,
                crop_reader=reader.crop if crops else None,
            )
            for roll in rolls
        ]
