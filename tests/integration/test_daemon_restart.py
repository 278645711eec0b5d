"""`kill -9` of `loomsight run --config` mid-roll, then a restart on the same spool.

The guarantees (issue 5): no spooled event is lost (every row committed before the kill is still
there, byte for byte, and everything a subscriber received is in the spool), no `seq` is reused
(seqs keep increasing across the restart, one epoch), and the interrupted roll is closed
explicitly: the restarted daemon's first event is `roll` `{"state": "end", "reason":
"interrupted"}` for the old roll, before the new roll starts (runtime/daemon/roll_state.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from runtime.config import parse_config
from runtime.daemon.app import Daemon
from runtime.daemon.roll_state import find_open_roll
from runtime.events.spool_reader import SpoolReader
from tests.conftest import ROOT, free_tcp_port
from tests.helpers.tiny_models import write_tiny_bundle

Row = tuple[bytes, bytes, bytes | None]


def _write_config(tmp_path: Path, bundle: Path, pub: str, replay: str) -> Path:
    path = tmp_path / "loomsight.toml"
    path.write_text(
        f"""
line_id = "restart"

[source]
kind = "synthetic"

[source.synthetic]
width_px = 512
block_lines = 256
realtime = true
speed_m_min = 12.0
seed = 3

[model]
bundle = {json.dumps(str(bundle))}
batch_size = 8
warmup_runs = 1

[web]
strip_lines = 512
overlap_lines = 64

[publish]
pub_endpoint = "{pub}"
replay_endpoint = "{replay}"
heartbeat_s = 0.5

[spool]
path = {json.dumps(str(tmp_path / "spool.sqlite3"))}
""",
        encoding="utf-8",
    )
    return path


def _start(config: Path, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "run", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _rows(spool: Path) -> dict[int, Row]:
    if not spool.exists():
        return {}
    try:
        reader = SpoolReader(spool)
    except Exception:  # created but not initialised yet
        return {}
    try:
        return {
            seq: (f[0], f[1], f[2] if len(f) > 2 else None)
            for seq, f in reader.read_after(0, 1 << 62, 1_000_000)
        }
    finally:
        reader.close()


def _bodies(rows: dict[int, Row]) -> list[dict[str, Any]]:
    return [json.loads(rows[s][1]) for s in sorted(rows)]


def _wait_for(spool: Path, ok: Callable[[list[dict[str, Any]]], bool], timeout_s: float, proc: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ok(_bodies(_rows(spool))):
            return
        assert proc.poll() is None, f"the daemon exited early with {proc.returncode}"
        time.sleep(0.1)
    raise AssertionError(
        f"timed out after {timeout_s} s; spool holds {[b['kind'] for b in _bodies(_rows(spool))]}"
    )


class _Listener:
    """A SUB socket that records every event it receives, in a thread."""

    def __init__(self, endpoint: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.raw: dict[int, bytes] = {}
        self._stop = threading.Event()
        self._sub: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(endpoint)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sub.poll(50):
                frames = self._sub.recv_multipart()
                body = json.loads(frames[1])
                if body["kind"] != "heartbeat":
                    self.events.append(body)
                    self.raw[body["seq"]] = frames[1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sub.close()


def _replay_all(endpoint: str) -> tuple[list[tuple[int, bytes]], dict[str, Any]]:
    dealer: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 5000)
    dealer.connect(endpoint)
    try:
        dealer.send(json.dumps({"since_seq": 0}).encode())
        got: list[tuple[int, bytes]] = []
        while True:
            frames = dealer.recv_multipart()
            if frames[0] == b"replay.end":
                return got, json.loads(frames[1])
            assert frames[0] != b"replay.error", frames
            got.append((json.loads(frames[1])["seq"], frames[1]))
    finally:
        dealer.close()


def test_kill_9_mid_roll_then_restart_loses_nothing_reuses_no_seq_and_closes_the_roll(tmp_path: Path) -> None:
    bundle = write_tiny_bundle(tmp_path / "bundle", classes=["stain"], gain=0.0, class_bias=[8.0])
    pub, replay = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
    config = _write_config(tmp_path, bundle, pub, replay)
    spool = tmp_path / "spool.sqlite3"

    # -- run 1: mid-roll, with a subscriber, then SIGKILL
    sub1 = _Listener(pub)
    p1 = _start(config, tmp_path, "run1")
    try:
        _wait_for(spool, lambda b: sum(e["kind"] == "defect" for e in b) >= 60, 40.0, p1)  # a few strips in
        before = _rows(spool)
        os.kill(p1.pid, signal.SIGKILL)
        assert p1.wait(timeout=10) == -signal.SIGKILL
    finally:
        if p1.poll() is None:
            p1.kill()
        time.sleep(0.2)
        sub1.close()
    after_kill = _rows(spool)
    first_run = _bodies(after_kill)
    assert {s: after_kill.get(s) for s in before} == before  # committed before the kill: all still there
    assert sub1.events, "the subscriber received nothing from run 1"
    for seq, body in sub1.raw.items():  # whatever a subscriber saw can be replayed
        assert after_kill[seq][1] == body
    roll1 = first_run[0]["roll_id"]
    assert [e["state"] for e in first_run if e["kind"] == "roll"] == ["start"]  # interrupted mid-roll
    open_roll = find_open_roll(spool)
    assert open_roll is not None and open_roll.roll_id == roll1
    last_before_restart = max(after_kill)

    # -- run 2: the same spool
    sub2 = _Listener(pub)
    p2 = _start(config, tmp_path, "run2")
    try:
        _wait_for(
            spool,
            lambda b: sum(e["kind"] == "defect" and e["roll_id"] != roll1 for e in b) >= 10,
            40.0,
            p2,
        )
        replayed, end = _replay_all(replay)
        t0 = time.monotonic()
        p2.send_signal(signal.SIGTERM)
        assert p2.wait(timeout=15) == 0
        stop_s = time.monotonic() - t0
    finally:
        if p2.poll() is None:
            p2.kill()
        sub2.close()
    final = _rows(spool)
    events = _bodies(final)

    # nothing lost, nothing rewritten
    assert {s: final.get(s) for s in after_kill} == after_kill
    # no seq reused: one epoch, seqs continue after the last one of run 1
    seqs = sorted(final)
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert len({e["epoch"] for e in events}) == 1
    assert sub2.events and min(e["seq"] for e in sub2.events) > last_before_restart
    live2 = [e["seq"] for e in sub2.events]
    assert live2 == sorted(live2) and len(set(live2)) == len(live2)
    # replay from the restarted daemon serves the whole history, run 1 included, byte for byte
    assert [s for s, _ in replayed] == [s for s in seqs if s <= end["last_seq"]]
    assert all(final[s][1] == body for s, body in replayed)

    # the interrupted roll is closed explicitly, first thing, before the new roll starts
    closing = events[seqs.index(last_before_restart + 1)]
    assert closing["kind"] == "roll" and closing["roll_id"] == roll1
    assert closing["state"] == "end" and closing["reason"] == "interrupted"
    roll1_defects = [e for e in first_run if e["kind"] == "defect"]
    assert closing["defects"] == len(roll1_defects) and closing["tally_complete"] is True
    roll2 = closing["next_roll_id"]
    assert roll2 != roll1
    rolls2 = [(e["seq"], e["state"]) for e in events if e["kind"] == "roll" and e["roll_id"] == roll2]
    assert [state for _, state in rolls2] == ["start", "end"] and rolls2[0][0] > closing["seq"]
    assert find_open_roll(spool) is None  # run 2 stopped cleanly: nothing left to close
    assert stop_s < 10.0


def test_after_a_clean_stop_a_restart_closes_nothing(tmp_path: Path) -> None:
    bundle = write_tiny_bundle(tmp_path / "bundle", classes=["stain"])
    config = parse_config(
        {
            "line_id": "clean",
            "source": {
                "kind": "synthetic",
                "synthetic": {"width_px": 256, "realtime": False, "length_m": 0.3},
            },
            "model": {"bundle": str(bundle), "retry_load_s": None, "warmup_runs": 0},
            "web": {"strip_lines": 512, "overlap_lines": 64},
            "publish": {"pub_endpoint": "tcp://127.0.0.1:0", "replay_endpoint": None},
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
        }
    )
    first = Daemon(config, roll_id="A")
    first.run()
    second = Daemon(config, roll_id="B")
    second.run()
    assert first.interrupted_roll is None and second.interrupted_roll is None
    rolls = [
        (e["roll_id"], e["state"]) for e in _bodies(_rows(tmp_path / "spool.sqlite3")) if e["kind"] == "roll"
    ]
    assert rolls == [("A", "start"), ("A", "end"), ("B", "start"), ("B", "end")]
    assert all("reason" not in e for e in _bodies(_rows(tmp_path / "spool.sqlite3")) if e["kind"] == "roll")
