"""The real path: viky.cti frames -> daemon (assembler, preprocess, tiler, ONNX Runtime, merger,
grader, spool, PUB) -> a real SUB socket.

The simulated camera shows a small black square moving over white; the tiny in-test model
fires on tiles containing dark pixels, so defects must come out where the square was.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import zmq

from runtime.config import parse_config
from runtime.daemon.app import Daemon
from tests.helpers.tiny_models import write_tiny_bundle

pytestmark = pytest.mark.camera


def _receive(sub: zmq.Socket, until_s: float, stop_when: object = None) -> list[tuple[str, dict]]:
    got: list[tuple[str, dict]] = []
    deadline = time.monotonic() + until_s
    while time.monotonic() < deadline:
        if sub.poll(100):
            frames = sub.recv_multipart()
            got.append((frames[0].decode(), json.loads(frames[1])))
            if callable(stop_when) and stop_when(got):
                break
    return got


def test_viky_frames_become_defect_events_on_a_sub_socket(
    tmp_path: Path, viky_cti: Path, loopback_endpoint: str
) -> None:
    bundle = write_tiny_bundle(
        tmp_path / "bundle",
        classes=["hole"],
        size_px=64,
        overlap_px=8,
        mm_per_px=0.5,
        gain=100.0,
        class_bias=[45.0],
    )
    config = parse_config(
        {
            "line_id": "viky",
            "source": {
                "kind": "genicam",
                "genicam": {
                    "cti_path": str(viky_cti),
                    "serial_number": "0",
                    "nodes": {"PixelFormat": "Mono8"},
                },
            },
            "calibration": {"mm_per_px_x": 0.5, "mm_per_line": 0.5},
            "model": {"bundle": str(bundle), "batch_size": 8, "retry_load_s": None, "warmup_runs": 1},
            "web": {"strip_lines": 400, "overlap_lines": 32},
            "merge": {"gap_mm": 2.0},
            "publish": {"pub_endpoint": loopback_endpoint, "replay_endpoint": None, "heartbeat_s": 0.5},
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
        }
    )
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(loopback_endpoint)
    daemon = Daemon(config, roll_id="viky-roll")
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        events = _receive(sub, 20.0, lambda got: sum(t.startswith("defect.") for t, _ in got) >= 3)
    finally:
        daemon.stop()
        runner.join(timeout=20)
    events += _receive(sub, 3.0, lambda got: any(b.get("state") == "end" for _, b in got))
    sub.close()
    assert not runner.is_alive(), "the daemon did not stop within 20 s"

    status = daemon.status()
    assert status["frames"] > 0 and status["strips_inspected"] > 0 and status["tiles"] > 0
    assert status["source"]["source"].startswith("genicam"), status["source"]
    defects = [b for t, b in events if t == "defect.viky"]
    assert len(defects) >= 3, [t for t, _ in events]
    for d in defects:
        assert d["schema"] == "loomsight.event/1" and d["class"] == "hole" and d["roll_id"] == "viky-roll"
        x0, y0, x1, y1 = d["bbox_px"]
        assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1  # inside the 400 px wide web
        assert d["w_mm"] == pytest.approx((x1 - x0) * 0.5, abs=0.1)
    seqs = [b["seq"] for _, b in events if "seq" in b and not _.startswith("heartbeat")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert any(b.get("state") == "end" for t, b in events if t == "roll.viky")
