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
        ([b'{"since_seq": -5}'], ">= 0"),
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
