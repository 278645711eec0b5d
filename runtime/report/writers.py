"""Write one roll's report files: ROLL_ID.json, ROLL_ID.csv, the map pages, and (asked for) crops.

The CSV has one row per defect, for a spreadsheet: units are in the column names, lengths in mm
and the position along the roll in metres, UTF-8 with a header row, `,` separated.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from runtime.errors import ReportError
from runtime.report.defect_map import draw_map, page_names
from runtime.report.roll_report import ReportOptions, build_report, safe_name
from runtime.report.spool_rolls import RollEvents

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    ("defect_id", "defect_id"),
    ("class", "class"),
    ("score (0-1)", "score"),
    ("along_roll_m", None),
    ("across_from_camera_left_mm", "x_mm"),
    ("across_from_fabric_edge_mm", "x_from_edge_mm"),
    ("length_along_mm", "h_mm"),
    ("width_across_mm", "w_mm"),
    ("points (4-point)", "points"),
    ("time_utc", "ts"),
    ("crop_file", "crop_file"),
)


def write_roll_report(
    roll: RollEvents,
    out_dir: Path,
    *,
    accept_points_per_100_sq_yd: float | None = None,
    crop_reader: Callable[[int], bytes | None] | None = None,
) -> dict[str, Any]:
    """Write the roll's files into `out_dir`; returns the report (with `files` filled in).
    `crop_reader` (seq -> JPEG bytes) turns on the crops."""
    stem = safe_name(roll.roll_id)
    crops_dir = f"{stem}_crops" if crop_reader is not None else None
    report = build_report(roll, ReportOptions(accept_points_per_100_sq_yd, crops_dir))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(
            f"--out {out_dir}: cannot create the folder ({exc.strerror}); choose a writable one"
        ) from None
    pages = draw_map(report)
    names = page_names(stem, len(pages))
    report["files"] = {"json": f"{stem}.json", "csv": f"{stem}.csv", "map_pages": names, "crops": 0}
    try:
        for name, image in zip(names, pages, strict=True):
            if not cv2.imwrite(str(out_dir / name), image):
                raise ReportError(f"cannot write {out_dir / name}")
        if crop_reader is not None and crops_dir is not None:
            report["files"]["crops"] = _write_crops(roll, report, out_dir / crops_dir, crop_reader)
        _write_csv(report, out_dir / f"{stem}.csv")
        (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ReportError(
            f"--out {out_dir}: cannot write the report ({exc}); choose a writable folder"
        ) from None
    log.info(
        "roll %s: %d defects, %.2f points/100 sq yd (%s), %d map page(s) in %s",
        roll.roll_id,
        len(report["defects"]),
        report["grading"]["points_per_100_sq_yd"],
        report["grading"]["result"],
        len(pages),
        out_dir,
    )
    return report


def _write_crops(
    roll: RollEvents, report: dict[str, Any], folder: Path, crop_reader: Callable[[int], bytes | None]
) -> int:
    written = 0
    for d in report["defects"]:
        if d["crop_file"] is None:
            continue
        jpeg = crop_reader(roll.crop_seqs[d["defect_id"]])
        if jpeg is None:
            d["crop_file"] = None
            continue
        folder.mkdir(parents=True, exist_ok=True)
        (folder / Path(d["crop_file"]).name).write_bytes(jpeg)
        written += 1
    return written


def _write_csv(report: dict[str, Any], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([name for name, _ in CSV_COLUMNS])
        for d in report["defects"]:
            row: list[Any] = []
            for _, key in CSV_COLUMNS:
                if key is None:  # along_roll_m
                    row.append(round(d["y_mm"] / 1000.0, 4))
                else:
                    value = d.get(key)
                    row.append("" if value is None else value)
            writer.writerow(row)
