"""The replay server on a real ROUTER: exact frames, end marker, and bad requests that never stop it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from runtime.events.publisher import EventPublisher
from runtime.events.schema import Event
from tests.integration.test_events_support import make_publisher


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[EventPublisher]:
    pub = make_publisher(tmp_path)
    pub.start()
    yield pub
    pub.close()


@pytest.fixture
def dealer(publisher: EventPublisher) -> Iterator[zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 3000
    sock.sndtimeo = 3000
    sock.connect(str(publisher.replay_endpoint))
    yield sock
    ctx.destroy(linger=0)


def _answer(sock: zmq.Socket, request: list[bytes]) -> tuple[list[list[bytes]], list[bytes]]:
    """Send one request; return (event messages, final control message)."""
    sock.send_multipart(request)
    events: list[list[bytes]] = []
    while True:
        frames = sock.recv_multipart()
        if frames[0] in (b"replay.end", b"replay.error"):
            return events, frames
        events.append(frames)


def test_replay_sends_the_exact_published_frames_then_the_end_marker(
    publisher: EventPublisher,
    dealer: zmq.Socket,
) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvtimeo = 3000
    sub.subscribe(b"defect.")
    sub.connect(publisher.pub_endpoint)
    time.sleep(0.3)
    try:
        jpeg = b"\xff\xd8" + bytes(range(256)) * 4
        for i in range(10):
            publisher.publish(
                "defect", {"i": i, "x_mm": 1.5 * i}, roll_id="R1", crop_jpeg=jpeg if i % 2 else None
            )
        live = [sub.recv_multipart() for _ in range(10)]
    finally:
        ctx.destroy(linger=0)
    events, end = _answer(dealer, [json.dumps({"since_seq": 3, "id": 5}).encode()])
    assert events == live[3:]  # byte for byte what the PUB sent, crops included
    body = json.loads(end[1])
    assert body == {"last_seq": 10, "first_seq": 1, "epoch": publisher.epoch, "id": 5}
    events, end = _answer(dealer, [json.dumps({"since_seq": 10}).encode()])
    assert events == [] and json.loads(end[1])["last_seq"] == 10


@pytest.mark.parametrize(
    ("request_frames", "needle"),
    [
        ([b"not json at all"], "not JSON"),
        ([b'{"since_seq": -5}'], "from 0 to"),
        ([b'{"since_seq": "all"}'], "integer"),
        ([b'{"since": 1}'], "unknown key"),
        ([b"[]"], "JSON object"),
        ([b'{"since_seq": 1}', b"extra"], "exactly one frame"),
        ([b'{"since_seq": 1, "pad": "' + b"x" * 100_000 + b'"}'], "at most 4096"),
    ],
)
def test_malformed_and_oversized_requests_get_replay_error_and_the_server_keeps_serving(
    publisher: EventPublisher,
    dealer: zmq.Socket,
    request_frames: list[bytes],
    needle: str,
) -> None:
    publisher.publish("defect", {}, roll_id="R1")
    events, reply = _answer(dealer, request_frames)
    assert events == [] and reply[0] == b"replay.error"
    assert needle in json.loads(reply[1])["error"]
    events, end = _answer(dealer, [b'{"since_seq": 0}'])
    assert end[0] == b"replay.end" and len(events) == 1


def test_a_request_over_the_message_limit_drops_only_that_client(
    publisher: EventPublisher,
    dealer: zmq.Socket,
) -> None:
    publisher.publish("defect", {}, roll_id="R1")
    ctx = zmq.Context()
    abuser = ctx.socket(zmq.DEALER)
    abuser.linger = 0
    abuser.connect(str(publisher.replay_endpoint))
    try:
        abuser.send(b"x" * (2 << 20))  # 2 MiB: over MAXMSGSIZE, the server drops the connection
        assert not abuser.poll(500)
    finally:
        ctx.destroy(linger=0)
    events, end = _answer(dealer, [b'{"since_seq": 0}'])
    assert end[0] == b"replay.end" and len(events) == 1
    assert publisher.status()["replay"] is not None


def test_a_long_replay_to_a_slow_reader_is_complete_and_in_order(
    publisher: EventPublisher,
    dealer: zmq.Socket,
) -> None:
    n = 2000
    for i in range(n):
        publisher.publish("defect", {"i": i, "pad": "x" * 2000}, roll_id="R1")
    ctx = zmq.Context()
    slow = ctx.socket(zmq.DEALER)  # tiny queues: the server's pipe to us fills up for sure
    slow.linger = 0
    slow.rcvtimeo = 3000
    slow.rcvhwm = 20
    slow.setsockopt(zmq.RCVBUF, 4096)
    slow.connect(str(publisher.replay_endpoint))
    slow.send(b'{"since_seq": 0}')
    seqs = []
    try:
        while True:
            frames = slow.recv_multipart()
            if frames[0] == b"replay.end":
                break
            seqs.append(Event.from_frames(frames).seq)
            if len(seqs) % 500 == 0:
                time.sleep(0.3)  # the server must wait for us (ROUTER_MANDATORY), not drop
                _, end = _answer(dealer, [b'{"since_seq": 1999}'])  # meanwhile others are served
                assert end[0] == b"replay.end"
    finally:
        ctx.destroy(linger=0)
    assert seqs == list(range(1, n + 1))
    assert publisher.status()["replay"]["events_sent"] >= n


# ----------------------------------------------------------------------------- issue 17: no request kills it
@pytest.mark.parametrize(
    ("request_bytes", "needle"),
    [
        (b'{"since_seq": 18446744073709551616}', "from 0 to"),  # was OverflowError in the spool reader
        (b'{"since_seq": ' + b"[" * 2000 + b"]" * 2000 + b"}", "nested"),  # was RecursionError
        (b"[" * 4000, "nested"),
        (b'{"since_seq": 99999999999999999999}', "from 0 to"),  # what a typo in --since sent
    ],
)
def test_a_request_that_used_to_kill_the_replay_thread_gets_replay_error_and_the_next_is_served(
    publisher: EventPublisher, dealer: zmq.Socket, request_bytes: bytes, needle: str
) -> None:
    publisher.publish("defect", {}, roll_id="R1")
    events, reply = _answer(dealer, [request_bytes])
    assert events == [] and reply[0] == b"replay.error"
    assert needle in json.loads(reply[1])["error"]
    events, end = _answer(dealer, [b'{"since_seq": 0}'])
    assert end[0] == b"replay.end" and len(events) == 1
    replay = publisher.status()["replay"]
    assert replay["running"] and replay["restarts_total"] == 0


def test_a_req_socket_gets_one_error_reply_instead_of_hanging(publisher: EventPublisher) -> None:
    ctx = zmq.Context()
    try:
        req = ctx.socket(zmq.REQ)
        req.linger = 0
        req.rcvtimeo = 3000
        req.connect(str(publisher.replay_endpoint))
        req.send(b'{"since_seq": 0}')
        topic, body = req.recv_multipart()
        assert topic == b"replay.error" and "DEALER" in json.loads(body)["error"]
    finally:
        ctx.destroy(linger=0)


def test_an_error_escaping_the_serving_loop_restarts_it_and_is_counted(
    publisher: EventPublisher, dealer: zmq.Socket
) -> None:
    publisher.publish("defect", {}, roll_id="R1")
    server = publisher._replay
    assert server is not None
    real_serve = server._serve
    calls = {"n": 0}

    def failing_once() -> None:
        if calls["n"] == 0 and server._sessions:  # once, with our request in progress
            calls["n"] += 1
            raise RuntimeError("injected fault")
        real_serve()

    server._serve = failing_once  # type: ignore[method-assign]
    events, reply = _answer(dealer, [b'{"since_seq": 0, "id": 9}'])  # caught by the fault: told so
    assert reply[0] == b"replay.error" and "restarted" in json.loads(reply[1])["error"]
    assert json.loads(reply[1])["id"] == 9
    events, end = _answer(dealer, [b'{"since_seq": 0}'])
    assert end[0] == b"replay.end" and len(events) == 1
    assert publisher.status()["replay"]["restarts_total"] == 1
    assert publisher.server_problems() == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_replay_thread_makes_the_daemon_unready_until_the_supervisor_restarts_it(
    tmp_path: Path,
) -> None:
    from prometheus_client import generate_latest

    from runtime.ops.health import HealthState

    pub = make_publisher(tmp_path, heartbeat_s=3600.0)  # the supervisor's tick is ours to call
    pub.start()
    ctx = zmq.Context()
    try:
        pub.publish("defect", {}, roll_id="R1")
        health = HealthState(process_metrics=False)
        health.add_check("publisher", lambda: "; ".join(pub.server_problems()) or None)
        health.set_ready(True)
        assert health.ready
        server = pub._replay
        assert server is not None and server._thread is not None
        thread = server._thread

        def die() -> None:
            raise SystemExit("injected thread death")  # not an Exception: the thread ends

        server._serve = die  # type: ignore[method-assign]
        thread.join(5)
        assert not thread.is_alive()
        doc = health.snapshot()
        assert doc["ready"] is False and "replay server" in doc["reason"] and "thread dead" in doc["reason"]
        assert pub.status()["alarm"] == "replay_down"

        del server._serve  # the bug is gone; the supervisor starts a new thread on the same socket
        assert server.ensure_running() is True
        assert not server.ensure_running()  # only once
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.rcvtimeo = 3000
        dealer.connect(str(pub.replay_endpoint))
        events, end = _answer(dealer, [b'{"since_seq": 0}'])
        assert end[0] == b"replay.end" and len(events) == 1
        assert health.ready
        health.update({"publisher": pub.status()})
        assert b"loomsight_publisher_replay_restarts_total 1.0" in generate_latest(health.registry)
    finally:
        ctx.destroy(linger=0)
        pub.close()
