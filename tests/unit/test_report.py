"""`loomsight report`: numbers against hand-computed four-point totals, on a spool the real daemon
path wrote (DefectReporter -> EventPublisher -> EventSpool); files; bad input."""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.config import PublishConfig, SecurityConfig, SpoolConfig
from runtime.daemon.inspector import StripResult
from runtime.daemon.reporter import CropOptions, DefectReporter, WebGeometry
from runtime.errors import ReportError
from runtime.events.publisher import EventPublisher
from runtime.events.spool import EventSpool
from runtime.frame import Strip
from runtime.grade import RollGrader
from runtime.merge import Merger
from runtime.preprocess import ModelView
from runtime.report.commands import REPORT
from runtime.report.defect_map import PAGE_H_PX, PAGE_W_PX, MapLayout
from runtime.report.run import report_spool
from tests.conftest import free_tcp_port

CLASSES = ["hole", "stain", "broken_end", "knot", "slub"]
STRIP, OVERLAP = 1000, 100  # camera lines; at 1 mm per line a strip is 1 m of web
# Defects in roll coordinates (camera px = mm here): x0, y0, x1, y1, class id.
DEFECTS = [
    (100, 100, 120, 120, 0),  # hole 20 x 20 mm: <= 1 in -> 2 points (yard 0) and a stop
    (500, 300, 560, 340, 1),  # stain 60 x 40 mm: 2.4 in -> 1 point (yard 0: 3 in all)
    (200, 2000, 210, 2200, 3),  # knot 200 mm: 7.9 in -> 3 points (yard 2)
    (700, 2100, 705, 2400, 4),  # slub 300 mm: 11.8 in -> 4 points (yard 2: 7, capped at 4)
    (400, 4000, 404, 6000, 2),  # broken end 2 m: 4 points per yard it runs (yards 4, 5, 6): 12
]
HAND_POINTS = {"hole": 2, "stain": 1, "knot": 3, "slub": 4, "broken_end": 12}
HAND_ROLL_POINTS = 3 + 4 + 4 * 3  # per linear yard capped at 4: yard 0 (3), yard 2 (4), yards 4-6 (12)
DROPPED_STRIP = 8  # strip 8 is "dropped" (the detector was behind): a gap


def _strip_result(seq: int, line0: int, overlap: int) -> StripResult:
    pixels = np.full((STRIP, 1000), 180, np.uint8)
    boxes = []
    for x0, y0, x1, y1, cid in DEFECTS:
        a, b = max(y0, line0), min(y1, line0 + STRIP)
        if a < b:  # a detector sees the part of the defect inside this strip
            pixels[a - line0 : b - line0, x0:x1] = 20
            boxes.append((x0, a, x1, b, cid))
    strip = Strip(pixels, seq, line0, overlap, "R1", 0)
    return StripResult(
        strip=strip,
        view=ModelView(pixels, line0, 1.0, 1.0),
        xyxy=np.array([b[:4] for b in boxes], np.float64).reshape(-1, 4),
        class_id=np.array([b[4] for b in boxes], np.int64),
        score=np.full(len(boxes), 0.9),
        tiles=1,
        infer_s=0.0,
        prep_s=0.0,
    )


def _write_roll(publisher: EventPublisher, roll_id: str = "R1", strips: int = 10) -> DefectReporter:
    rep = DefectReporter(
        classes=CLASSES,
        geometry=WebGeometry(1.0, 1.0, 1000),
        merger=Merger(gap_px=5, gap_lines=5),
        grader=RollGrader(width_mm=1000.0),
        publisher=publisher,
        roll_id=roll_id,
        model_name="tiny",
        crops=CropOptions(enabled=True, max_px=64),
        roll_fields={"model": {"name": "tiny"}, "acceptance": {"points_per_100_sq_yd": 40.0}},
    )
    for s in range(strips):
        if s == DROPPED_STRIP:
            continue
        line0 = s * (STRIP - OVERLAP)
        rep.on_strip(_strip_result(s, line0, OVERLAP if s else 0))
    rep.end_roll(strips_dropped=1)
    return rep


def _publisher(path: Path) -> EventPublisher:
    return EventPublisher(
        line_id="L1",
        publish=PublishConfig(
            pub_endpoint=f"tcp://127.0.0.1:{free_tcp_port()}", replay_endpoint=None, linger_ms=0
        ),
        spool=SpoolConfig(path=path, reserve_mb=0),
        security=SecurityConfig(),
    )


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spool") / "spool.sqlite3"
    with _publisher(path) as pub:
        _write_roll(pub, "R1")
        _write_roll(pub, "R2", strips=3)  # a second roll, 2.8 m: hole, stain, knot, slub (3 + 4 points)
    return path


def test_points_match_the_hand_computed_four_point_totals(spool: Path, tmp_path: Path) -> None:
    (report,) = report_spool(spool, tmp_path, roll_id="R1")
    by_class = {k: v["points"] for k, v in report["totals_by_class"].items()}
    assert by_class == HAND_POINTS
    assert {d["class"]: d["points"] for d in report["defects"]} == HAND_POINTS
    g = report["grading"]
    assert g["points"] == HAND_ROLL_POINTS == g["daemon_points"] == 19
    length_m = (9 * (STRIP - OVERLAP) + STRIP) / 1000.0  # the last strip ends at line 9,100
    assert report["roll"]["length_inspected_m"] == pytest.approx(length_m)
    hand = 19 * 3600 / ((length_m * 1000 / 914.4) * (1000 / 25.4))  # points x 3600 / (yd x in)
    assert g["points_per_100_sq_yd"] == pytest.approx(hand, abs=0.01)  # 174.6
    assert g["result"] == "fail" and g["accept_points_per_100_sq_yd"] == 40.0
    assert "daemon config" in g["acceptance_from"]
    broken = next(d for d in report["defects"] if d["class"] == "broken_end")
    assert (broken["x_mm"], broken["y_mm"], broken["w_mm"], broken["h_mm"]) == (400.0, 4000.0, 4.0, 2000.0)
    assert report["roll"]["width_mm"] == 1000.0 and report["roll"]["model"] == {"name": "tiny"}
    reasons = sorted(s["reason"] for s in report["stops"])
    assert reasons == ["class", "open_length", "points"]
    hole_stop = next(s for s in report["stops"] if s["reason"] == "class")
    assert hole_stop["defect_y_m"] == 0.1
    gaps = report["gaps"]
    assert gaps["count"] == 1 and gaps["strips_dropped"] == 1
    assert gaps["spans"] == [{"start_m": 7.3, "end_m": 8.1, "length_m": 0.8, "reason": "dropped_strips"}]


def test_a_looser_acceptance_passes_the_roll(spool: Path, tmp_path: Path) -> None:
    (report,) = report_spool(spool, tmp_path, roll_id="R1", accept_points_per_100_sq_yd=200.0)
    assert report["grading"]["result"] == "pass" and report["grading"]["acceptance_from"] == "command line"


def test_files_json_csv_png_and_crops(spool: Path, tmp_path: Path) -> None:
    reports = report_spool(spool, tmp_path, every_roll=True, crops=True)
    assert [r["roll"]["roll_id"] for r in reports] == ["R1", "R2"]
    assert json.loads((tmp_path / "R1.json").read_text())["grading"]["points"] == 19
    with (tmp_path / "R1.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    assert {"along_roll_m", "across_from_camera_left_mm", "length_along_mm", "points (4-point)"} <= set(
        rows[0]
    )
    broken = next(r for r in rows if r["class"] == "broken_end")
    assert float(broken["along_roll_m"]) == 4.0 and float(broken["length_along_mm"]) == 2000.0
    assert sum(int(r["points (4-point)"]) for r in rows) == sum(HAND_POINTS.values())
    image = cv2.imread(str(tmp_path / "R1.png"))
    assert image is not None and image.shape == (PAGE_H_PX, PAGE_W_PX, 3)
    hole_red = np.all(image == (0, 0, 220), axis=2).sum()
    assert hole_red > 20  # the hole's marker is on the map
    crops = sorted((tmp_path / "R1_crops").glob("*.jpg"))
    assert len(crops) == 5 and reports[0]["files"]["crops"] == 5
    assert all(cv2.imread(str(c)) is not None for c in crops)
    assert reports[0]["defects"][0]["crop_file"] == "R1_crops/R1-1.jpg"


def test_the_newest_roll_by_default_and_no_such_roll(spool: Path, tmp_path: Path) -> None:
    (report,) = report_spool(spool, tmp_path)
    assert report["roll"]["roll_id"] == "R2" and report["grading"]["points"] == 7
    with pytest.raises(ReportError, match=r"roll 'R9' is not in spool .*R1, R2"):
        report_spool(spool, tmp_path, roll_id="R9")


def test_long_rolls_are_split_into_panels_and_pages() -> None:
    assert MapLayout.for_length(100.0) == MapLayout(100.0, 50.0, 2, 1)
    assert MapLayout.for_length(3000.0) == MapLayout(3000.0, 50.0, 60, 15)
    assert MapLayout.for_length(9.1).panel_m == 10.0


def test_reading_does_not_block_a_running_daemon(spool: Path, tmp_path: Path) -> None:
    copy = tmp_path / "live.sqlite3"
    with sqlite3.connect(spool) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    writer = EventSpool(SpoolConfig(path=copy, reserve_mb=0))
    writer.open()
    try:
        holder = sqlite3.connect(copy, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the daemon is in the middle of a commit
        t0 = time.monotonic()
        (report,) = report_spool(copy, tmp_path / "out", roll_id="R1")
        assert time.monotonic() - t0 < 5.0 and report["grading"]["points"] == 19
        holder.execute("ROLLBACK")
        holder.close()
        writer.append(writer.next_seq, "status", [b"status.L1", b"{}"])  # and it can still write
    finally:
        writer.close()


def _cli(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    import runtime.cli

    monkeypatch.setattr(runtime.cli, "discover", lambda: iter([REPORT]))
    rc = runtime.cli.main(["report", *argv])
    return rc, capsys.readouterr().err


def test_bad_input_is_a_clear_message_and_a_non_zero_exit(
    spool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = ["--out", str(tmp_path / "out")]
    rc, err = _cli(["--spool", str(tmp_path / "nope.sqlite3"), *out], capsys, monkeypatch)
    assert rc == 2 and "does not exist" in err and "--spool" in err

    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not SQLite at all" * 100)
    rc, err = _cli(["--spool", str(junk), *out], capsys, monkeypatch)
    assert rc == 2 and "is not a Loomsight spool" in err

    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    rc, err = _cli(["--spool", str(other), *out], capsys, monkeypatch)
    assert rc == 2 and "is not a Loomsight spool" in err

    rc, err = _cli(["--spool", str(spool), "--roll", "R9", *out], capsys, monkeypatch)
    assert rc == 2 and "roll 'R9' is not in spool" in err

    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(spool) as src, sqlite3.connect(newer) as dst:
        src.backup(dst)
        dst.execute("UPDATE meta SET value = 'loomsight.spool/2' WHERE key = 'schema'")
    rc, err = _cli(["--spool", str(newer), *out], capsys, monkeypatch)
    assert rc == 2 and "'loomsight.spool/2'" in err and "upgrade" in err
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_the_command_prints_one_line_per_roll(
    spool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    REPORT.add_arguments(parser)
    args = parser.parse_args(["--spool", str(spool), "--all", "--out", str(tmp_path)])
    assert REPORT.run(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["roll_id"], r["result"]) for r in lines] == [("R1", "fail"), ("R2", "fail")]
