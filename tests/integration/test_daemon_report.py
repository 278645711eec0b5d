"""`[report] dir`: the daemon writes each ended roll's report (JSON, CSV, PNG map) by itself."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import cv2
import pytest

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


def test_every_stop_is_timed_in_status_events_the_roll_end_and_the_report(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    config = _config(tmp_path, {"dir": str(out)})
    bundle = write_tiny_bundle(tmp_path / "always", classes=["stain"], gain=0.0, class_bias=[8.0])
    config = config.model_copy(
        update={
            "model": config.model.model_copy(update={"bundle": bundle}),
            "grading": config.grading.model_copy(update={"stop_classes": ["stain"]}),
        }
    )  # a stain in every tile, and a stain stops the loom: many stops
    daemon = Daemon(config, roll_id="ROLL-S")
    summary = daemon.run()
    latency = summary["stop_latency"]
    assert latency["stops"] >= 1 and latency["unmeasured"] == 0
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert len(latency["per_stop"]) == latency["stops"]
    for stop in latency["per_stop"]:
        stages = sum(stop[k] for k in ("accumulate_ms", "prepare_ms", "wait_ms", "infer_ms", "report_ms"))
        assert stages == pytest.approx(stop["latency_ms"], abs=1.0)  # the stages add up
    with sqlite3.connect(tmp_path / "spool.sqlite3") as conn:
        bodies = [json.loads(b) for (b,) in conn.execute("SELECT body FROM events WHERE kind = 'status'")]
    status = [b for b in bodies if "last_stop" in b]  # one status event after each stop
    assert [b["last_stop"] for b in status] == latency["per_stop"]
    assert status[-1]["stop_latency"]["p99_ms"] == latency["p99_ms"]
    assert all("source_state" in b for b in status)  # the last-value cache's status stays whole
    report = json.loads((out / "ROLL-S.json").read_text())
    assert report["stop_latency"]["p99_ms"] == latency["p99_ms"]
    timed = {s["seq"]: s["latency_ms"] for s in report["stops"]}
    assert timed == {s["stop_seq"]: s["latency_ms"] for s in latency["per_stop"]}
