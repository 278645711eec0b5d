"""`[report] dir`: the daemon writes each ended roll's report (JSON, CSV, PNG map) by itself."""

from __future__ import annotations

import json
from pathlib import Path

import cv2

from runtime.config import LoomsightConfig, parse_config
from runtime.daemon.app import Daemon
from tests.helpers.tiny_models import write_tiny_bundle


def _config(tmp_path: Path, report: dict[str, object] | None) -> LoomsightConfig:
    bundle = write_tiny_bundle(tmp_path / "bundle", classes=["stain"])
    data: dict[str, object] = {
        "line_id": "rep",
        "source": {
            "kind": "synthetic",
            "synthetic": {"width_px": 256, "realtime": False, "length_m": 0.5, "seed": 4},
        },
        "model": {"bundle": str(bundle), "retry_load_s": None, "warmup_runs": 0},
        "web": {"strip_lines": 512, "overlap_lines": 64},
        "publish": {"pub_endpoint": "tcp://127.0.0.1:0", "replay_endpoint": None},
        "spool": {"path": str(tmp_path / "spool.sqlite3"), "reserve_mb": 0},
        "grading": {"accept_points_per_100_sq_yd": 25.0},
    }
    if report is not None:
        data["report"] = report
    return parse_config(data)


def test_the_daemon_writes_the_report_at_roll_end(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    daemon = Daemon(_config(tmp_path, {"dir": str(out), "crops": True}), roll_id="ROLL-A")
    summary = daemon.run()
    assert daemon.roll_reports is not None and daemon.roll_reports.written == ["ROLL-A"]
    report = json.loads((out / "ROLL-A.json").read_text())
    assert report["roll"]["state"] == "ended" and report["roll"]["roll_id"] == "ROLL-A"
    assert report["roll"]["length_inspected_m"] == summary["inspected_m"]
    assert report["grading"]["points"] == summary["points"]
    assert report["grading"]["accept_points_per_100_sq_yd"] == 25.0
    assert report["roll"]["calibration"]["source"] == "synthetic loom"
    assert report["roll"]["model"]["classes"] == ["stain"]
    image = cv2.imread(str(out / "ROLL-A.png"))
    assert image is not None and image.shape[:2] == (1754, 1240)
    assert (out / "ROLL-A.csv").is_file()


def test_no_report_unless_configured(tmp_path: Path) -> None:
    daemon = Daemon(_config(tmp_path, None), roll_id="ROLL-B")
    daemon.run()
    assert daemon.roll_reports is None
    assert not list(tmp_path.glob("**/ROLL-B.json"))
