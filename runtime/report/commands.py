"""`loomsight report`: the roll report (JSON, CSV, PNG defect map, crops) from a daemon's spool."""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.commands import Command


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spool", type=Path, required=True, help="the daemon's event spool (spool.path); read only"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--roll", help="the roll id to report (default: the newest roll in the spool)")
    which.add_argument("--all", action="store_true", help="report every roll the spool holds")
    p.add_argument("--out", type=Path, required=True, help="folder for ROLL_ID.json/.csv/.png")
    p.add_argument("--crops", action="store_true", help="also write each defect's JPEG crop (ROLL_ID_crops/)")
    p.add_argument(
        "--accept-points-per-100-sq-yd",
        type=float,
        default=None,
        help="pass/fail limit (default: the daemon's grading.accept_points_per_100_sq_yd recorded with the roll, else 40)",
    )


def _run(args: argparse.Namespace) -> int:
    import json

    from runtime.report.run import report_spool

    reports = report_spool(
        args.spool,
        args.out,
        roll_id=args.roll,
        every_roll=args.all,
        crops=args.crops,
        accept_points_per_100_sq_yd=args.accept_points_per_100_sq_yd,
    )
    for r in reports:
        g = r["grading"]
        print(
            json.dumps(
                {
                    "roll_id": r["roll"]["roll_id"],
                    "defects": len(r["defects"]),
                    "points_per_100_sq_yd": g["points_per_100_sq_yd"],
                    "result": g["result"],
                    "files": r["files"],
                }
            ),
            flush=True,
        )
    return 0


REPORT = Command(
    name="report",
    help="write roll reports (JSON, CSV, PNG defect map) from the daemon's spool",
    description=(
        "Reads the event spool read-only (never blocks a running daemon) and writes, per roll, "
        "ROLL_ID.json (header, defects, totals, points per 100 sq yd, pass/fail, stops, gaps), "
        "ROLL_ID.csv (one row per defect) and the defect map ROLL_ID.png (long rolls: more pages "
        "ROLL_ID_p02.png ..., 200 m each); --crops adds ROLL_ID_crops/DEFECT_ID.jpg."
    ),
    add_arguments=_add_arguments,
    run=_run,
)
