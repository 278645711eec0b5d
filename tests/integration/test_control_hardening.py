"""Issue 17 on the control socket: no request stops it, a failing loop restarts (counted), a dead
thread makes the daemon unready until the supervisor starts it again. Real ROUTER/DEALER sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from runtime.config import SecurityConfig
from runtime.daemon.control import ControlServer
from runtime.ops.health import HealthState


class _Target:
    def __init__(self) -> None:
        self.roll_id = "R-1"
        self.rolls = 0

    def status(self) -> dict[str, Any]:
        return {"roll_id": self.roll_id}

    def new_roll(self, roll_id: str | None = None) -> str:
        self.rolls += 1
        self.roll_id = roll_id or f"R-{self.rolls + 1}"
        return self.roll_id


@pytest.fixture
def server() -> Iterator[ControlServer]:
    srv = ControlServer(_Target(), endpoint="tcp://127.0.0.1:0", security=SecurityConfig())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ControlServer) -> Iterator[zmq.Socket[Any]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 3000
    sock.connect(server.endpoint)
    yield sock
    ctx.destroy(linger=0)


def _ask(sock: zmq.Socket[Any], raw: bytes) -> dict[str, Any]:
    sock.send(raw)
    return dict(json.loads(sock.recv()))


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"[" * 3000, "nested 3000 deep"),
        (b'{"cmd": "status", "id": ' + b"[" * 1000 + b"]" * 1000 + b"}", "nested"),
        (b'{"cmd": "status", "id": 18446744073709551616}', "64-bit"),
        (b'{"cmd": "status", "id": ' + b"7" * 3000 + b"}", "out of range"),
        (b'{"cmd": ["status"]}', "unknown cmd"),
        (b'{"cmd": {"a": 1}}', "unknown cmd"),
        (b'{"cmd": "status", "x": NaN}', "not JSON"),
    ],
)
def test_adversarial_control_requests_get_an_error_and_the_next_is_answered(
    server: ControlServer, client: zmq.Socket[Any], raw: bytes, needle: str
) -> None:
    answer = _ask(client, raw)
    assert answer["ok"] is False and needle in answer["error"]
    assert _ask(client, b'{"cmd": "status", "id": 2}') == {"ok": True, "status": {"roll_id": "R-1"}, "id": 2}
    assert server.status()["restarts_total"] == 0 and server.running


def test_an_error_escaping_the_control_loop_is_counted_and_serving_goes_on(
    server: ControlServer, client: zmq.Socket[Any]
) -> None:
    real = server._answer
    calls = {"n": 0}

    def failing_once(sock: zmq.Socket[Any], msg: list[bytes]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        real(sock, msg)

    server._answer = failing_once  # type: ignore[method-assign]
    client.send(b'{"cmd": "status", "id": 1}')  # lost to the fault
    assert _ask(client, b'{"cmd": "status", "id": 2}')["id"] == 2
    assert server.status()["restarts_total"] == 1 and server.problem() is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_control_thread_makes_readiness_false_until_ensure_running(
    server: ControlServer, client: zmq.Socket[Any]
) -> None:
    health = HealthState(process_metrics=False)
    health.add_check("control", server.problem)
    health.set_ready(True)
    thread = server._thread
    assert thread is not None and health.ready

    def die(sock: zmq.Socket[Any], msg: list[bytes]) -> None:
        raise SystemExit("injected thread death")

    server._answer = die  # type: ignore[method-assign]
    client.send(b'{"cmd": "status"}')
    thread.join(5)
    assert not thread.is_alive()
    doc = health.snapshot()
    assert doc["ready"] is False and "control socket" in doc["reason"] and "thread dead" in doc["reason"]
    del server._answer
    assert server.ensure_running() and not server.ensure_running()
    assert _ask(client, b'{"cmd": "status", "id": 3}')["id"] == 3
    assert health.ready and server.status()["restarts_total"] == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_daemon_is_unready_while_its_control_thread_is_dead_and_its_status_loop_restarts_it(
    tmp_path: Path,
) -> None:
    from runtime.daemon.app import Daemon
    from tests.conftest import free_tcp_port
    from tests.integration.test_daemon_cli import _daemon_config, _Running, _until

    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    health = HealthState(process_metrics=False)
    daemon = Daemon(_daemon_config(tmp_path, endpoint), roll_id="R1", health=health, status_interval_s=0.2)
    with _Running(daemon):
        _until(lambda: health.ready, 30)
        assert [name for name, _ in health._checks] == ["publisher", "control"]
        control = daemon.control
        assert control is not None and control._thread is not None
        thread = control._thread
        seen: list[str] = []

        def die(sock: zmq.Socket[Any], msg: list[bytes]) -> None:
            seen.append(health.snapshot()["reason"])
            raise SystemExit("injected thread death")

        control._answer = die
        ctx = zmq.Context()
        try:
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.rcvtimeo = 5000
            sock.connect(endpoint)
            sock.send(b'{"cmd": "status"}')
            thread.join(5)
            assert not thread.is_alive()
            doc = health.snapshot()
            restarted = control.stats.restarts_total == 1  # the status loop may already have restarted it
            assert restarted or (doc["ready"] is False and "control socket" in doc["reason"])
            del control._answer
            _until(lambda: control.stats.restarts_total == 1 and health.ready, 10)
            sock.send(b'{"cmd": "status", "id": 5}')
            assert json.loads(sock.recv())["id"] == 5
        finally:
            ctx.destroy(linger=0)


def test_the_daemon_restarts_a_dead_http_thread_and_counts_it(tmp_path: Path) -> None:
    # issue 17.1: the HTTP server is supervised like the replay and control servers
    import urllib.request

    from runtime.daemon.app import Daemon
    from runtime.ops.health import HealthServer
    from tests.conftest import free_tcp_port
    from tests.integration.test_daemon_cli import _daemon_config, _Running, _until

    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    health = HealthState(process_metrics=False)
    http = HealthServer(health, "127.0.0.1", 0).start()
    daemon = Daemon(
        _daemon_config(tmp_path, endpoint), roll_id="R1", health=health, http=http, status_interval_s=0.2
    )
    try:
        with _Running(daemon):
            _until(lambda: health.ready, 30)
            assert [name for name, _ in health._checks] == ["publisher", "control", "http"]
            inner, thread = http._server, http._thread
            assert inner is not None and thread is not None
            inner.shutdown()  # the serving thread ends as if it had died
            thread.join(5)
            _until(lambda: http.status()["restarts_total"] == 1 and http.problem() is None, 10)
            with urllib.request.urlopen(http.url + "/healthz/ready", timeout=5) as response:
                assert response.status == 200
            _until(lambda: daemon.status()["http"]["restarts_total"] == 1, 10)
    finally:
        http.stop()
