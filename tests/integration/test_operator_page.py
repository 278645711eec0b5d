"""The operator's live page: served read-only by the daemon's HTTP server, checked in a real Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from runtime.config import LoomsightConfig, parse_config
from runtime.daemon.app import Daemon
from runtime.errors import ConfigError
from runtime.ops.health import HealthServer, HealthState
from runtime.ops.operator_page import OperatorPage, alarms
from tests.helpers.tiny_models import write_tiny_bundle

CHROMIUM = os.environ.get("LOOMSIGHT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _config(tmp_path: Path) -> LoomsightConfig:
    # a model that finds nothing: the defects on the page are the ones the test publishes
    bundle = write_tiny_bundle(
        tmp_path / "bundle", classes=["hole", "stain"], gain=0.0, class_bias=[-8.0, -8.0]
    )
    return parse_config(
        {
            "line_id": "page",
            "source": {
                "kind": "synthetic",
                "synthetic": {"width_px": 256, "block_lines": 256, "realtime": True, "speed_m_min": 12.0},
            },
            "model": {"bundle": str(bundle), "retry_load_s": None, "warmup_runs": 0},
            "web": {"strip_lines": 512, "overlap_lines": 64},
            "publish": {"pub_endpoint": "tcp://127.0.0.1:0", "replay_endpoint": None},
            "spool": {"path": str(tmp_path / "spool.sqlite3"), "reserve_mb": 0},
            "health": {"enabled": True, "port": 0},
        }
    )


def _until(fn: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not fn():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


class _LiveDaemon:
    """The daemon on the synthetic loom in a thread, with its HTTP server and the page."""

    def __init__(self, tmp_path: Path) -> None:
        config = _config(tmp_path)
        self.health = HealthState(line_id="page", process_metrics=False)
        self.page = OperatorPage(self.health, config.spool.path)
        self.server = HealthServer(self.health, "127.0.0.1", 0, routes=self.page)
        self.daemon = Daemon(config, roll_id="ROLL-PAGE", health=self.health, status_interval_s=0.2)
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)

    def __enter__(self) -> _LiveDaemon:
        self.server.start()
        self.thread.start()
        _until(lambda: self.health.ready and self.daemon.pipeline is not None, 60)
        _until(lambda: self.daemon.pipeline is not None and self.daemon.pipeline.reporter.start_seq > 0, 60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
        self.thread.join(timeout=20)
        self.server.stop()
        self.page.close()
        assert not self.thread.is_alive(), "the daemon did not stop"

    def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.server.url + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[_LiveDaemon]:
    with _LiveDaemon(tmp_path) as running:
        yield running


def _jpeg() -> bytes:
    ramp = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    ok, buf = cv2.imencode(".jpg", ramp)
    assert ok
    return buf.tobytes()


def _publish_defect_and_stop(live: _LiveDaemon) -> int:
    """A defect with a crop and a stop, through the daemon's own publisher (spool, then PUB)."""
    publisher: Any = live.daemon._publisher
    fields = {"defect_id": "PAGE-TEST-1", "class": "hole", "score": 0.93, "x_mm": 12.0, "y_mm": 40.0}
    fields |= {"w_mm": 6.0, "h_mm": 5.0, "points": 2, "bbox_px": [120, 400, 180, 450], "model": "tiny"}
    seq = int(publisher.publish("defect", fields, roll_id=live.daemon.roll_id, crop_jpeg=_jpeg()))
    stop = {"reason": "class", "detail": "hole found", "inspected_m": 0.05, "defect_id": "PAGE-TEST-1"}
    publisher.publish("stop", stop, roll_id=live.daemon.roll_id)
    return seq


def test_the_page_its_live_document_and_crops_are_served_read_only(live: _LiveDaemon) -> None:
    code, headers, html = live.get("/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert b"http://" not in html and b"https://" not in html  # nothing loads from the internet
    seq = _publish_defect_and_stop(live)
    code, _, body = live.get("/operator/live.json")
    doc = json.loads(body)
    assert code == 200 and doc["roll_id"] == "ROLL-PAGE" and doc["ready"] is True
    assert doc["stats"]["camera_state"] == "running"
    _until(
        lambda: (json.loads(live.get("/operator/live.json?since=0")[2])["stats"]["speed_m_min"] or 0) > 0, 30
    )
    assert not {"model_not_ready", "camera_lost", "disk_full"} & {a["kind"] for a in doc["alarms"]}
    kinds = [(e["kind"], e.get("defect_id")) for e in doc["events"]]
    assert (
        kinds[0] == ("roll", None) and ("defect", "PAGE-TEST-1") in kinds and ("stop", "PAGE-TEST-1") in kinds
    )
    mine = next(e for e in doc["events"] if e.get("defect_id") == "PAGE-TEST-1" and e["kind"] == "defect")
    assert mine["crop"] == f"/operator/crop/{seq}.jpg"
    code, headers, crop = live.get(mine["crop"])
    assert code == 200 and headers["Content-Type"] == "image/jpeg" and crop == _jpeg()
    code, _, later = live.get(f"/operator/live.json?since={doc['next_since']}")
    assert all(e["seq"] > doc["next_since"] for e in json.loads(later)["events"])
    assert live.get("/operator/crop/999999.jpg")[0] == 404
    assert live.get("/", method="POST")[0] == 501  # read-only: nothing but GET and HEAD
    assert live.get("/operator/live.json", method="DELETE")[0] == 501
    assert live.get("/healthz")[0] == 200  # the health endpoints are still there


def test_the_page_answers_this_machine_only_unless_opened_to_the_network(tmp_path: Path) -> None:
    state = HealthState(process_metrics=False)
    local = OperatorPage(state, tmp_path / "no-spool.sqlite3")
    refused = local.respond("/", "", "10.1.2.3")
    assert refused is not None and refused.code == 403 and b"health.operator_page" in refused.body
    assert local.respond("/", "", "127.0.0.1").code == 200  # type: ignore[union-attr]
    assert local.respond("/", "", "::1").code == 200  # type: ignore[union-attr]
    assert local.respond("/", "", "::ffff:127.0.0.1").code == 200  # type: ignore[union-attr]
    assert local.respond("/", "", "::ffff:10.1.2.3").code == 403  # type: ignore[union-attr]
    assert local.respond("/metrics", "", "10.1.2.3") is None  # not the page's: the health server's
    opened = OperatorPage(state, tmp_path / "no-spool.sqlite3", allow_network=True)
    assert opened.respond("/", "", "10.1.2.3").code == 200  # type: ignore[union-attr]
    doc = json.loads(opened.respond("/operator/live.json", "", "10.1.2.3").body)  # type: ignore[union-attr]
    assert doc["events"] == [] and doc["alarms"][0]["kind"] == "not_inspecting"  # no spool yet: no error
    assert parse_config({"health": {"operator_page": "network"}}).health.operator_page == "network"
    with pytest.raises(ConfigError, match=r"health\.operator_page"):
        parse_config({"health": {"operator_page": "everyone"}})


def test_alarms_for_disk_full_camera_lost_and_model_not_ready() -> None:
    doc = {
        "ready": False,
        "reason": "model failed to load: bad hash",
        "status_age_s": 0.5,
        "status": {
            "model": {"loaded": False, "error": "model failed to load: bad hash"},
            "source": {"state": "lost", "last_error": "no frame for 5 s"},
            "publisher": {"alarm": "disk_full"},
            "strips_dropped": 3,
        },
    }
    kinds = [a["kind"] for a in alarms(doc)]
    assert kinds == ["model_not_ready", "camera_lost", "disk_full", "detector_behind"]
    assert alarms({"ready": True, "status_age_s": 0.2, "status": {"source": {"state": "running"}}}) == []


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    cmd += [f"--user-data-dir={profile}", "--virtual-time-budget=6000", "--window-size=1400,900", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (apt install chromium)")
def test_chromium_shows_a_defect_published_during_the_test_and_takes_a_screenshot(
    live: _LiveDaemon, tmp_path: Path
) -> None:
    seq = _publish_defect_and_stop(live)
    url = live.server.url + "/"
    html = ""
    for attempt in range(3):  # a loaded CI machine may answer the page's first poll late: load it again
        dom = _chromium("--dump-dom", url, profile=tmp_path / f"profile-dom{attempt}")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        if "PAGE-TEST-1" in html:
            break
    assert 'data-defect-id="PAGE-TEST-1"' in html  # the defect, rendered by the page's script
    assert f'src="/operator/crop/{seq}.jpg"' in html  # with its crop from the spool
    assert 'class="row stop"' in html and "STOP - hole found" in html  # the stop, highlighted
    assert '<div id="state" class="ok">INSPECTING</div>' in html
    assert '<b id="camera">running</b>' in html
    shot = tmp_path / "page.png"
    run = _chromium(f"--screenshot={shot}", url, profile=tmp_path / "profile-shot")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (900, 1400)
    assert image.std() > 10  # a rendered page, not a blank frame


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (apt install chromium)")
def test_chromium_shows_the_alarms_of_a_daemon_that_cannot_inspect(tmp_path: Path) -> None:
    state = HealthState(line_id="alarm", process_metrics=False)
    state.set_ready(False, "model failed to load: sha256 mismatch")
    state.update(
        {
            "roll_id": "R-ALARM",
            "model": {"loaded": False, "error": "model failed to load: sha256 mismatch"},
            "source": {"state": "lost", "last_error": "no complete frame for 5 s"},
            "publisher": {"alarm": "disk_full"},
        }
    )
    page = OperatorPage(state, tmp_path / "spool-not-yet.sqlite3")
    with HealthServer(state, "127.0.0.1", 0, routes=page) as server:
        dom = _chromium("--dump-dom", server.url + "/", profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    for kind, text in [
        ("model_not_ready", "sha256 mismatch"),
        ("camera_lost", "camera lost: no complete frame for 5 s"),
        ("disk_full", "disk full"),
    ]:
        assert f'<div class="alarm {kind}">' in html and text in html
    assert '<div id="state" class="bad">NOT INSPECTING</div>' in html
