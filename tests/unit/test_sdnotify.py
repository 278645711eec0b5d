"""sd_notify spoken by the daemon: a real AF_UNIX datagram socket stands in for systemd."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.errors import ConfigError
from runtime.ops.sdnotify import Notifier, parse_notify_socket, watchdog_usec
from runtime.ops.watchdog import ProgressWatchdog


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: collects datagrams with their arrival time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(1.0)

    def recv(self, timeout_s: float = 1.0) -> str:
        self.sock.settimeout(timeout_s)
        return self.sock.recv(4096).decode()

    def drain(self, timeout_s: float = 0.05) -> list[tuple[float, str]]:
        got: list[tuple[float, str]] = []
        while True:
            try:
                self.sock.settimeout(timeout_s)
                data = self.sock.recv(4096)
            except TimeoutError:
                return got
            got.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify.sock"
    short_dir = None
    if len(str(path)) > 100:  # AF_UNIX paths are limited to 107 bytes
        short_dir = tempfile.mkdtemp(prefix="sdn", dir="/tmp")
        path = Path(short_dir) / "n.sock"
    server = FakeSystemd(str(path))
    yield server
    server.close()
    path.unlink(missing_ok=True)
    if short_dir:
        os.rmdir(short_dir)


def test_without_notify_socket_nothing_is_sent_and_calls_succeed() -> None:
    notifier = Notifier(env={})
    assert not notifier.enabled
    assert notifier.ready("warm") and notifier.watchdog() and notifier.stopping()
    assert notifier.stats().sent == 0


def test_ready_status_stopping_and_extend_timeout_reach_systemd(fake_systemd: FakeSystemd) -> None:
    with Notifier(env={"NOTIFY_SOCKET": fake_systemd.address}) as notifier:
        assert notifier.enabled
        assert notifier.extend_timeout(90)
        assert fake_systemd.recv() == "EXTEND_TIMEOUT_USEC=90000000"
        assert notifier.ready("model warm, 2 runs")
        assert fake_systemd.recv() == "READY=1\nSTATUS=model warm, 2 runs"
        assert notifier.status("12.5 m inspected\n3 defects")
        assert fake_systemd.recv() == "STATUS=12.5 m inspected 3 defects"
        assert notifier.watchdog()
        assert fake_systemd.recv() == "WATCHDOG=1"
        assert notifier.stopping("draining queues")
        assert fake_systemd.recv() == "STOPPING=1\nSTATUS=draining queues"
        assert notifier.stats().sent == 5 and notifier.stats().send_errors == 0


def test_abstract_socket_address() -> None:
    name = f"@loomsight-test-{os.getpid()}-{time.monotonic_ns()}"
    server = FakeSystemd(name)
    try:
        Notifier(name).ready()
        assert server.recv() == "READY=1"
    finally:
        server.close()


@pytest.mark.parametrize("value", ["relative/notify.sock", "vsock:2:1234", "@", "/" + "x" * 120])
def test_bad_notify_socket_is_a_clear_error(value: str) -> None:
    with pytest.raises(ConfigError, match="NOTIFY_SOCKET"):
        Notifier(env={"NOTIFY_SOCKET": value})


def test_parse_abstract_name_to_leading_nul() -> None:
    assert parse_notify_socket("@abc") == b"\0abc"
    assert parse_notify_socket("/run/systemd/notify") == "/run/systemd/notify"


def test_send_failure_is_logged_once_counted_and_returned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.DEBUG, logger="runtime.ops.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False
    stats = notifier.stats()
    assert stats.send_errors == 3 and stats.sent == 0
    assert stats.last_error is not None and "FileNotFoundError" in stats.last_error
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "nobody-listens.sock" in errors[0].getMessage()


def test_assignment_must_be_one_line(fake_systemd: FakeSystemd) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        Notifier(fake_systemd.address).send("READY=1\nWATCHDOG=1")
    with pytest.raises(ValueError, match="positive"):
        Notifier(fake_systemd.address).extend_timeout(0)


def test_watchdog_usec_honours_watchdog_pid() -> None:
    assert watchdog_usec({}) is None
    assert watchdog_usec({"WATCHDOG_USEC": "30000000"}) == 30_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=4242) is None
    with pytest.raises(ConfigError, match="WATCHDOG_USEC='30s'"):
        watchdog_usec({"WATCHDOG_USEC": "30s"})


def test_from_env_can_hide_the_socket_from_children(
    fake_systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", fake_systemd.address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = Notifier.from_env(unset_environment=True)
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    notifier.ready()
    assert fake_systemd.recv() == "READY=1"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_pings_at_most_once_per_half_period(fake_systemd: FakeSystemd) -> None:
    clock = FakeClock()
    env = {"WATCHDOG_USEC": "10000000"}  # WatchdogSec=10s -> ping at most every 5 s
    wd = ProgressWatchdog(Notifier(fake_systemd.address), env=env, clock=clock)
    assert wd.interval_s == 5.0
    for _ in range(50):  # 50 strips in 4.9 s: one ping (the first)
        wd.progress()
        clock.now += 0.1
    assert [m for _, m in fake_systemd.drain()] == ["WATCHDOG=1"]
    clock.now += 0.2  # 5.1 s after the first ping
    wd.progress()
    assert [m for _, m in fake_systemd.drain()] == ["WATCHDOG=1"]
    stats = wd.stats()
    assert stats.pings == 2 and stats.progress_total == 51


def test_no_progress_means_no_ping_however_long_we_wait(fake_systemd: FakeSystemd) -> None:
    clock = FakeClock()
    wd = ProgressWatchdog(Notifier(fake_systemd.address), interval_s=5.0, clock=clock)
    wd.progress()
    assert len(fake_systemd.drain()) == 1
    clock.now += 3600
    assert fake_systemd.drain() == []
    assert wd.stats().since_progress_s == pytest.approx(3600)
    wd.idle()  # the loom stopped: source timed out, queues empty -> still alive
    assert [m for _, m in fake_systemd.drain()] == ["WATCHDOG=1"]
    assert wd.stats().idle_total == 1


def test_watchdog_disabled_without_watchdog_usec_or_socket(fake_systemd: FakeSystemd) -> None:
    wd = ProgressWatchdog(Notifier(fake_systemd.address), env={})
    wd.progress(3)
    assert not wd.enabled and fake_systemd.drain() == [] and wd.stats().progress_total == 3
    wd2 = ProgressWatchdog(Notifier(env={}), env={"WATCHDOG_USEC": "1000000"})
    assert not wd2.enabled


def test_stuck_pipeline_stops_the_pings(fake_systemd: FakeSystemd) -> None:
    """A pipeline thread processes strips, then hangs: WATCHDOG=1 stops when it hangs."""
    wd = ProgressWatchdog(Notifier(fake_systemd.address), env={"WATCHDOG_USEC": "200000"})  # ping every 0.1 s
    assert wd.interval_s == pytest.approx(0.1)
    hung = threading.Event()
    release = threading.Event()

    def pipeline() -> None:
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            time.sleep(0.01)  # "process a strip"
            wd.progress()
        hung.set()
        release.wait(5)  # stuck in inference

    worker = threading.Thread(target=pipeline, daemon=True)
    worker.start()
    assert hung.wait(5)
    # A datagram is queued at the receiver when sendto returns: all pings sent while the
    # pipeline ran are waiting now.
    while_running = fake_systemd.drain()
    time.sleep(0.6)  # six watchdog intervals with the pipeline stuck
    while_stuck = fake_systemd.drain()
    release.set()
    worker.join(5)
    assert len(while_running) >= 4 and {m for _, m in while_running} == {"WATCHDOG=1"}
    assert while_stuck == [], f"{len(while_stuck)} ping(s) arrived while the pipeline was stuck"
    assert wd.stats().pings == len(while_running)


def test_extending_timeout_while_a_slow_load_runs_and_never_beyond_the_bound(
    fake_systemd: FakeSystemd,
) -> None:
    notifier = Notifier(fake_systemd.address)
    with notifier.extending_timeout(0.2, max_total_s=10.0, status="loading TensorRT engine"):
        time.sleep(0.35)  # the slow engine load
    messages = [m for _, m in fake_systemd.drain()]
    assert messages[0] == "STATUS=loading TensorRT engine"
    assert messages[1:] == ["EXTEND_TIMEOUT_USEC=200000"] * len(messages[1:]) and 2 <= len(messages[1:]) <= 5
    time.sleep(0.25)
    assert fake_systemd.drain() == []  # nothing after the block

    arrivals: list[tuple[float, str]] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            arrivals.extend(fake_systemd.drain(timeout_s=0.005))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    start = time.monotonic()
    with notifier.extending_timeout(0.1, max_total_s=0.3):
        time.sleep(0.8)  # a load that hangs: the start timeout is not pushed past start + 0.3 s
    stop.set()
    listener.join(5)
    assert len(arrivals) >= 3
    latest_deadline = max(t + int(m.split("=")[1]) / 1e6 for t, m in arrivals)
    assert latest_deadline <= start + 0.3 + 0.15  # unbounded, it would reach ~0.9 s
    with pytest.raises(ValueError, match="max_total_s"), notifier.extending_timeout(5.0, max_total_s=1.0):
        pass
