"""`loomsight subscribe` and `loomsight keys` as a user runs them (real processes, real sockets)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from runtime.config import SecurityConfig
from runtime.events.commands import format_event
from runtime.events.schema import Event, make_body, topic_for, utc_now_iso
from tests.integration.test_events_support import free_endpoint, make_publisher

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "runtime.cli", *args]


def _popen(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_subscribe_json_prints_every_event_from_the_start_then_exits_after_count(tmp_path: Path) -> None:
    pub_ep, replay_ep = free_endpoint(), free_endpoint()
    proc = _popen(
        "subscribe",
        "--connect",
        pub_ep,
        "--replay",
        replay_ep,
        "--json",
        "--count",
        "25",
        "--timeout-s",
        "20",
    )
    time.sleep(1.5)  # the subscriber is up before the daemon (as in `make demo`)
    pub = make_publisher(tmp_path, pub=pub_ep, replay=replay_ep)
    pub.start()  # it must print from seq 1 although its SUB connects after the first events went out
    try:
        pub.publish("roll", {"event": "start"}, roll_id="R1")
        for i in range(40):
            pub.publish("defect", {"class": "hole", "score": 0.9, "i": i}, roll_id="R1")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        pub.close()
    assert proc.returncode == 0, err
    bodies = [json.loads(line) for line in out.splitlines()]
    assert [b["seq"] for b in bodies] == list(range(1, 26))
    assert bodies[0]["kind"] == "roll" and bodies[1]["class"] == "hole"
    assert "25 events" in err and "lost 0" in err


def test_subscribe_since_0_prints_the_whole_spool_and_a_late_start_prints_the_roll_then_new(
    tmp_path: Path,
) -> None:
    pub = make_publisher(tmp_path)
    pub.start()
    try:
        pub.publish("roll", {"event": "start"}, roll_id="R1")
        for i in range(9):
            pub.publish("defect", {"i": i}, roll_id="R1")
        replay = pub.replay_endpoint or ""
        whole = _popen("subscribe", "--connect", pub.pub_endpoint, "--replay", replay, "--json", "--since", "0",
                       "--count", "10")  # fmt: skip
        out_whole, err = whole.communicate(timeout=30)
        assert whole.returncode == 0, err
        time.sleep(0.3)  # more than the join margin after the last event
        late = _popen(
            "subscribe", "--connect", pub.pub_endpoint, "--replay", replay, "--json", "--timeout-s", "3"
        )
        time.sleep(1.5)
        pub.publish("defect", {"i": 100}, roll_id="R1")
        out_late, err = late.communicate(timeout=30)
        assert late.returncode == 0, err
    finally:
        pub.close()
    assert [json.loads(x)["seq"] for x in out_whole.splitlines()] == list(range(1, 11))
    assert [json.loads(x)["seq"] for x in out_late.splitlines()] == [1, 11]  # current roll, then new


def test_subscribe_human_lines_and_timeout_of_silence(tmp_path: Path) -> None:
    pub = make_publisher(tmp_path)
    pub.start()
    try:
        proc = _popen(
            "subscribe",
            "--connect",
            pub.pub_endpoint,
            "--replay",
            pub.replay_endpoint or "",
            "--timeout-s",
            "1.5",
        )
        time.sleep(1.0)
        pub.publish("defect", {"class": "broken_end", "x_mm": 12.5, "y_mm": 3400.0}, roll_id="R3")
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=20)
        waited = time.monotonic() - t0
    finally:
        pub.close()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("#1 ")
        and "defect" in lines[0]
        and "class=broken_end" in lines[0]
    )
    assert "roll=R3" in lines[0] and "x_mm=12.5" in lines[0]
    assert waited < 10


def test_subscribe_with_no_publisher_reports_it_dead_and_fails(tmp_path: Path) -> None:
    proc = _popen("subscribe", "--connect", free_endpoint(), "--timeout-s", "4", "--dead-after", "2")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert "is dead" in err and "no publisher heard" in err
    assert out == ""


def test_subscribe_over_curve_with_keys_made_by_loomsight_keys(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for out_dir, name in ((tmp_path / "srv", "server"), (tmp_path / "cli", "plc")):
        done = subprocess.run(
            _cli("keys", "--out", str(out_dir), "--name", name),
            check=False,
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        secret_text = (out_dir / f"{name}.key_secret").read_text()
        secret = secret_text.split('secret-key = "')[1].split('"')[0]
        assert secret not in done.stdout + done.stderr  # never printed
        assert stat.S_IMODE((out_dir / f"{name}.key_secret").stat().st_mode) == 0o600
    again = subprocess.run(
        _cli("keys", "--out", str(tmp_path / "cli"), "--name", "plc"),
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode == 2 and "already exists" in again.stderr
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "plc.key").write_bytes((tmp_path / "cli" / "plc.key").read_bytes())
    security = SecurityConfig(
        curve=True, server_secret_key=tmp_path / "srv" / "server.key_secret", authorized_keys_dir=allowed
    )
    pub = make_publisher(tmp_path, security=security)
    pub.start()
    try:
        proc = _popen(
            "subscribe", "--connect", pub.pub_endpoint, "--replay", pub.replay_endpoint or "", "--json",
            "--count", "3", "--timeout-s", "20",
            "--curve-server-key", str(tmp_path / "srv" / "server.key"),
            "--curve-client-key", str(tmp_path / "cli" / "plc.key_secret"),
        )  # fmt: skip
        time.sleep(1.0)
        for i in range(3):
            pub.publish("defect", {"i": i}, roll_id="R1")
        out, err = proc.communicate(timeout=30)
    finally:
        pub.close()
    assert proc.returncode == 0, err
    assert [json.loads(line)["i"] for line in out.splitlines()] == [0, 1, 2]


def test_subscribe_refuses_half_a_curve_configuration() -> None:
    proc = _popen("subscribe", "--connect", free_endpoint(), "--curve-server-key", "/nonexistent.key")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "go together" in err


def test_format_event_leads_with_what_an_operator_reads_first() -> None:
    body = make_body(
        kind="defect", seq=12, epoch="e", ts=utc_now_iso(), line_id="line-1", roll_id="R9",
        fields={"model": "m1", "bbox_px": [1, 2, 3, 4], "class": "hole", "score": 0.934, "x_mm": 120.25},
    )  # fmt: skip
    line = format_event(Event(topic_for("defect", "line-1"), body, b"\xff\xd8" + b"\0" * 2048))
    assert line.startswith("#12 ") and "defect" in line and "line-1 roll=R9" in line
    assert line.index("class=hole") < line.index("score=0.934") < line.index("model=m1")
    assert "crop=2.0kB" in line


def test_subscribe_refuses_a_since_beyond_int64_before_sending_anything() -> None:
    # issue 17: a typo such as 20 nines used to kill the daemon's replay thread
    proc = _popen("subscribe", "--connect", free_endpoint(), "--since", "99999999999999999999")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "--since '99999999999999999999'" in err and "9223372036854775807" in err
