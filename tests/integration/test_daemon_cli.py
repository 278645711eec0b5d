"""The operator's side of the daemon: `loomsight run --config` in a subprocess, its signals, and the
control socket.

- A bad config exits non-zero with one line per problem naming the key path, the bad value and
  what is allowed; never a traceback.
- SIGTERM with every subscriber gone exits 0 well inside systemd's TimeoutStopSec (30 s in
  systemd/loomsight.service), after the open defect and the roll summary are in the spool.
- SIGUSR1 ends the roll; the next frames start a new one.
- The control socket (`publish.control_endpoint`) answers status and roll commands over a real
  REQ/DEALER socket, refuses malformed requests with an error, and with CURVE answers only
  clients on the allow-list (a revoked key is cut off).
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

import pytest
import zmq

from runtime.config import LoomsightConfig, parse_config
from runtime.daemon.app import Daemon
from runtime.events.security import ClientCurve, generate_key_files, load_client_curve
from runtime.events.spool_reader import SpoolReader
from tests.conftest import ROOT, free_tcp_port
from tests.helpers.tiny_models import write_tiny_bundle

LOOMSIGHT = [sys.executable, "-m", "runtime.cli"]
STOP_BOUND_S = 10.0  # systemd/loomsight.service: TimeoutStopSec=30s


# ----------------------------------------------------------------------------- helpers
def _events(spool: Path) -> list[dict[str, Any]]:
    if not spool.exists():
        return []
    try:
        reader = SpoolReader(spool)
    except Exception:  # created but not initialised yet
        return []
    try:
        return [json.loads(f[1]) for _, f in reader.read_after(0, 1 << 62, 1_000_000)]
    finally:
        reader.close()


def _wait_for(
    spool: Path, ok: Callable[[list[dict[str, Any]]], bool], timeout_s: float, proc: Any = None
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = _events(spool)
        if ok(events):
            return events
        assert proc is None or proc.poll() is None, f"the daemon exited early with {proc.returncode}"
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s; spool holds {[e['kind'] for e in _events(spool)]}")


def _toml(tmp_path: Path, bundle: Path, pub: str, *, merge_gap_mm: float = 3.0) -> Path:
    path = tmp_path / "loomsight.toml"
    path.write_text(
        f"""
line_id = "cli"

[source.synthetic]
width_px = 512
block_lines = 256
realtime = true
speed_m_min = 12.0

[model]
bundle = {json.dumps(str(bundle))}
batch_size = 8
warmup_runs = 1

[web]
strip_lines = 512
overlap_lines = 64

[merge]
gap_mm = {merge_gap_mm}

[publish]
pub_endpoint = "{pub}"
replay_endpoint = "tcp://127.0.0.1:{free_tcp_port()}"
heartbeat_s = 0.5

[spool]
path = {json.dumps(str(tmp_path / "spool.sqlite3"))}
""",
        encoding="utf-8",
    )
    return path


def _spawn(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LOOMSIGHT, "run", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"no exit within {timeout_s} s; stderr:\n{err[-3000:]}") from None
    return proc.returncode, out, err, time.monotonic() - t0


# ----------------------------------------------------------------------------- config errors
BAD_CONFIGS = [
    pytest.param(
        "[model]\nbatch_sise = 4\n",
        ["model.batch_sise: unknown key", "did you mean 'batch_size'", "allowed here: bundle, backend"],
        id="misspelt-key",
    ),
    pytest.param(
        "[publish]\nsndhwm = 5\n", ["publish.sndhwm = 5", "greater than or equal to 100"], id="out-of-range"
    ),
    pytest.param(
        '[source]\nkind = "webcam"\n',
        ["source.kind = 'webcam'", "'genicam', 'synthetic' or 'replay'"],
        id="not-a-choice",
    ),
    pytest.param(
        '[publish]\nheartbeat_s = "fast"\n', ["publish.heartbeat_s = 'fast'", "valid number"], id="wrong-type"
    ),
    pytest.param(
        "[web]\nstrip_lines = 100\noverlap_lines = 200\n",
        ["web.overlap_lines (200) must be smaller than web.strip_lines (100)"],
        id="cross-field",
    ),
    pytest.param("[web\n", ["not valid TOML", "line 1"], id="not-toml"),
    pytest.param(
        '[publish]\npub_endpoint = "tcp://nowhere:x"\n[spool]\npath = "{tmp}/spool.sqlite3"\n',
        ["publish.pub_endpoint = 'tcp://nowhere:x'", "use e.g. 'tcp://127.0.0.1:5556'"],
        id="bad-endpoint",
    ),
    pytest.param(
        '[publish]\npub_endpoint = "tcp://127.0.0.1:0"\nreplay_endpoint = "tcp://127.0.0.1:0"\n'
        'control_endpoint = "carrier-pigeon"\n[spool]\npath = "{tmp}/spool.sqlite3"\n',
        ["publish.control_endpoint = 'carrier-pigeon'", "cannot bind"],
        id="bad-control-endpoint",
    ),
    pytest.param(None, ["does not exist", "pass --config with a TOML file"], id="no-file"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_CONFIGS)
def test_a_bad_config_exits_non_zero_naming_key_value_and_what_is_allowed(
    tmp_path: Path, text: str | None, expected: list[str]
) -> None:
    config = tmp_path / "bad.toml"
    if text is not None:
        config.write_text(text.replace("{tmp}", str(tmp_path)), encoding="utf-8")
    proc = subprocess.run(
        [*LOOMSIGHT, "run", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "loomsight run: error:" in proc.stderr
    for piece in expected:
        assert piece in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- signals
def test_sigterm_with_every_subscriber_gone_exits_0_after_spooling_the_open_defect_and_roll_summary(
    tmp_path: Path,
) -> None:
    # every tile fires and the boxes touch: one defect that stays open as long as the roll runs
    bundle = write_tiny_bundle(
        tmp_path / "bundle", classes=["stain"], gain=0.0, class_bias=[8.0], box_cxcywh=(0.5, 0.5, 1.0, 1.0)
    )
    pub = f"tcp://127.0.0.1:{free_tcp_port()}"
    spool = tmp_path / "spool.sqlite3"
    proc = _spawn(_toml(tmp_path, bundle, pub, merge_gap_mm=20.0))
    try:
        sub: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVTIMEO, 20_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"heartbeat.")
        sub.connect(pub)
        assert json.loads(sub.recv_multipart()[1])["kind"] == "heartbeat"  # it was connected ...
        sub.close()  # ... and is gone: the PUB has no peer left
        _wait_for(spool, lambda ev: any(e["kind"] == "roll" for e in ev), 30.0, proc)
        time.sleep(1.5)  # a few strips: the defect grows
        before = _events(spool)
        # the defect is still open (its open-length stop, and the status event timing that stop, went out)
        assert [e["kind"] for e in before if e["kind"] not in ("stop", "status")] == ["roll"]
        proc.send_signal(signal.SIGTERM)
        rc, out, err, stop_s = _finish(proc, 20.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert rc == 0, err[-3000:]
    assert stop_s < STOP_BOUND_S
    assert "Traceback" not in err
    events = _events(spool)
    assert events[: len(before)] == before
    tail = [e for e in events[len(before) :] if e["kind"] not in ("stop", "status")]
    assert [e["kind"] for e in tail] == ["defect", "roll"]
    defect, summary = tail
    assert summary["state"] == "end" and summary["defects_by_class"] == {"stain": 1}
    assert summary["inspected_m"] > 0.3
    assert defect["h_mm"] == pytest.approx(summary["inspected_m"] * 1000.0, abs=1.0)  # its full extent
    assert json.loads(out.strip().splitlines()[-1])["roll_summary"]["state"] == "end"


def test_sigusr1_ends_the_roll_and_the_next_frames_start_a_new_one(tmp_path: Path) -> None:
    bundle = write_tiny_bundle(tmp_path / "bundle", classes=["stain"], gain=0.0, class_bias=[8.0])
    spool = tmp_path / "spool.sqlite3"
    proc = _spawn(_toml(tmp_path, bundle, f"tcp://127.0.0.1:{free_tcp_port()}"))
    try:
        first = _wait_for(spool, lambda ev: sum(e["kind"] == "defect" for e in ev) >= 3, 30.0, proc)
        roll1 = first[0]["roll_id"]
        proc.send_signal(signal.SIGUSR1)
        events = _wait_for(
            spool,
            lambda ev: any(e["kind"] == "defect" and e["roll_id"] != roll1 for e in ev),
            15.0,
            proc,
        )
        proc.send_signal(signal.SIGTERM)
        rc, _, err, _ = _finish(proc, 20.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert rc == 0, err[-3000:]
    events = _events(spool)
    rolls = [(e["roll_id"], e["state"]) for e in events if e["kind"] == "roll"]
    roll2 = rolls[2][0]
    assert rolls == [(roll1, "start"), (roll1, "end"), (roll2, "start"), (roll2, "end")] and roll2 != roll1
    # every defect belongs to the roll that was running when it was published
    end1 = next(
        e["seq"] for e in events if e["kind"] == "roll" and e["roll_id"] == roll1 and e["state"] == "end"
    )
    assert all(e["roll_id"] == (roll1 if e["seq"] < end1 else roll2) for e in events if e["kind"] == "defect")


# ----------------------------------------------------------------------------- control socket
def _daemon_config(tmp_path: Path, control: str, **security: Any) -> LoomsightConfig:
    bundle = write_tiny_bundle(tmp_path / "bundle", classes=["stain"], gain=0.0, class_bias=[8.0])
    return parse_config(
        {
            "line_id": "ctl",
            "source": {
                "kind": "synthetic",
                "synthetic": {"width_px": 256, "block_lines": 256, "realtime": True, "speed_m_min": 12.0},
            },
            "model": {"bundle": str(bundle), "batch_size": 8, "retry_load_s": None, "warmup_runs": 0},
            "web": {"strip_lines": 512, "overlap_lines": 64},
            "publish": {
                "pub_endpoint": "tcp://127.0.0.1:0",
                "replay_endpoint": None,
                "control_endpoint": control,
                "jpeg_crops": False,
            },
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
            "security": security,
        }
    )


class _Running:
    """A Daemon running in a thread for the duration of a `with` block."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.thread = threading.Thread(target=daemon.run, daemon=True)

    def __enter__(self) -> Daemon:
        self.thread.start()
        return self.daemon

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the daemon did not stop"


def _client(endpoint: str, kind: int = zmq.REQ, curve: ClientCurve | None = None) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.setsockopt(zmq.SNDTIMEO, 2000)  # a REQ with no peer it may talk to blocks in send()
    if curve is not None:
        curve.apply(sock)
    sock.connect(endpoint)
    return sock


def _ask(sock: zmq.Socket[Any], request: Any) -> dict[str, Any]:
    sock.send(request if isinstance(request, bytes) else json.dumps(request).encode())
    return dict(json.loads(sock.recv()))


def _no_answer(sock: zmq.Socket[Any], request: dict[str, Any]) -> bool:
    """True when the request cannot be sent (no accepted peer) or gets no answer within 1.5 s."""
    sock.setsockopt(zmq.RCVTIMEO, 1500)
    try:
        sock.send(json.dumps(request).encode())
        sock.recv()
    except zmq.Again:
        return True
    return False


def _until(fn: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not fn():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_the_control_socket_answers_status_and_roll_commands(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    spool = tmp_path / "spool.sqlite3"
    with _Running(Daemon(_daemon_config(tmp_path, endpoint), roll_id="R1")) as daemon:
        req = _client(endpoint)
        try:
            first = _ask(req, {"cmd": "status", "id": 1})
            assert first["ok"] is True and first["id"] == 1 and first["status"]["roll_id"] == "R1"
            _until(lambda: _ask(req, {"cmd": "status"})["status"].get("strips_inspected", 0) > 0, 15)
            status = _ask(req, {"cmd": "status"})["status"]
            assert status["line_id"] == "ctl" and status["frames"] > 0 and status["model"]["loaded"] is True
            assert status["control"]["requests"] >= 3

            started = _ask(req, {"cmd": "roll.start", "roll_id": "R2", "id": "a"})
            assert started == {"ok": True, "roll_id": "R2", "ended_roll_id": "R1", "id": "a"}
            _until(lambda: any(e["kind"] == "roll" and e["roll_id"] == "R2" for e in _events(spool)), 10)
            ended = _ask(req, {"cmd": "roll.end"})
            assert ended["ok"] is True and ended["ended_roll_id"] == "R2"
            roll3 = ended["next_roll_id"]
            assert roll3 not in ("R1", "R2")
            _until(lambda: any(e["kind"] == "roll" and e["roll_id"] == roll3 for e in _events(spool)), 10)
            assert daemon.roll_id == roll3

            # refusals: each answered with an error, and the socket goes on serving
            refusals = {
                b"{not json": "not JSON",
                json.dumps(["status"]).encode(): "must be a JSON object",
                json.dumps(
                    {"cmd": "reboot"}
                ).encode(): "unknown cmd 'reboot'; one of status, roll.start, roll.end",
                json.dumps({"cmd": "status", "verbose": True}).encode(): "unknown key(s) ['verbose']",
                json.dumps({"cmd": "roll.start", "roll_id": "../../etc"}).encode(): "roll_id '../../etc'",
                json.dumps({"cmd": "roll.start", "roll_id": roll3}).encode(): "is the current roll",
                json.dumps({"cmd": "status", "pad": "x" * 5000}).encode(): "at most 4096",
            }
            for raw, message in refusals.items():
                answer = _ask(req, raw)
                assert answer["ok"] is False and message in answer["error"], (raw[:40], answer)
            assert _ask(req, {"cmd": "status"})["ok"] is True
        finally:
            req.close()

        # a DEALER works too (no envelope); two frames are refused; an over-size message is cut off
        dealer = _client(endpoint, zmq.DEALER)
        try:
            dealer.send(json.dumps({"cmd": "status"}).encode())
            assert json.loads(dealer.recv())["status"]["roll_id"] == roll3
            dealer.send_multipart([b'{"cmd":', b'"status"}'])
            assert "exactly one frame" in json.loads(dealer.recv())["error"]
            dealer.send(b"x" * (200 * 1024))  # over MAXMSGSIZE: ZeroMQ drops the connection
            dealer.setsockopt(zmq.RCVTIMEO, 1000)
            with pytest.raises(zmq.Again):
                dealer.recv()
        finally:
            dealer.close()
        again = _client(endpoint)
        try:
            assert _ask(again, {"cmd": "status"})["ok"] is True  # still serving
        finally:
            again.close()
    rolls = [(e["roll_id"], e["state"]) for e in _events(spool) if e["kind"] == "roll"]
    assert rolls == [
        ("R1", "start"), ("R1", "end"), ("R2", "start"), ("R2", "end"), (roll3, "start"), (roll3, "end"),
    ]  # fmt: skip


def test_with_curve_the_control_socket_answers_only_allowed_keys_and_cuts_off_a_revoked_one(
    tmp_path: Path,
) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "authorized"
    server_public, server_secret = generate_key_files(keys, "server")
    client_public, client_secret = generate_key_files(keys, "plc")
    generate_key_files(keys, "stranger")
    other_public, _ = generate_key_files(keys, "mes")
    allowed.mkdir()
    (allowed / "plc.key").write_bytes(client_public.read_bytes())
    (allowed / "mes.key").write_bytes(other_public.read_bytes())
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    config = _daemon_config(
        tmp_path,
        endpoint,
        curve=True,
        server_secret_key=str(server_secret),
        authorized_keys_dir=str(allowed),
        recheck_s=0.3,
    )
    plc = load_client_curve(server_public, client_secret)
    stranger = load_client_curve(server_public, keys / "stranger.key_secret")
    with _Running(Daemon(config)):
        good = _client(endpoint, curve=plc)
        outsiders = [_client(endpoint, curve=stranger), _client(endpoint)]  # unknown key, plaintext
        try:
            assert _ask(good, {"cmd": "status"})["ok"] is True
            for sock in outsiders:
                assert _no_answer(sock, {"cmd": "roll.end"})
            (allowed / "plc.key").unlink()  # revoke
            time.sleep(1.5)  # > recheck_s: the server re-reads the allow-list and resets sessions
            assert _no_answer(good, {"cmd": "roll.end"})
        finally:
            good.close()
            for sock in outsiders:
                sock.close()
    rolls = [e for e in _events(tmp_path / "spool.sqlite3") if e["kind"] == "roll"]
    assert [e["state"] for e in rolls] in (["start", "end"], [])  # no roll.end got through
