"""Issue 17's floor: at least 10,000 random and adversarial requests at the replay and control
sockets (CURVE off) in bursts from many clients: huge integers, deep nesting, wrong types, unknown
keys, garbage bytes, several frames, REQ-style envelopes, frames near and over the size limits
(10 MB ones included). Afterwards no server thread has died or restarted and a normal replay
request is answered within 1 s. CI-sized: seeded, a few seconds on a loaded machine."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from runtime.config import SecurityConfig
from runtime.daemon.control import ControlServer
from runtime.events.publisher import EventPublisher
from tests.integration.test_events_support import make_publisher

REQUESTS_PER_SERVER = 5_000  # 10,000 in all: the floor of issue 17
CLIENTS = 12
BURST = 100
HUGE_FRAMES = 3  # 10 MB each, per server: ZeroMQ's MAXMSGSIZE drops the sender's connection

_HUGE_INTS = [2**63, 2**63 - 1, 2**64, -(2**63) - 1, 10**30, -1, 18446744073709551616]
_ODD_VALUES: list[Any] = [None, True, False, 1.5, -0.0, 1e308, "", "x" * 70, [], {}, [1, [2]], {"a": None}]


def _nested(rng: random.Random) -> bytes:
    depth = rng.choice([5, 50, 500, 1000, 2000])
    opener = rng.choice([b"[", b'{"a":'])
    closer = b"]" if opener == b"[" else b"}"
    return opener * depth + b"1" + closer * depth


def _value(rng: random.Random) -> Any:
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(_HUGE_INTS)
    if pick < 0.6:
        return rng.choice(_ODD_VALUES)
    return rng.randrange(0, 1000)


def _replay_request(rng: random.Random) -> list[bytes]:
    kind = rng.randrange(10)
    if kind == 0:
        return [json.dumps({"since_seq": rng.randrange(0, 12), "id": rng.randrange(1 << 20)}).encode()]
    if kind == 1:
        return [json.dumps({"lvc": rng.choice([True, "yes", 1]), "age_s": _value(rng)}).encode()]
    if kind == 2:
        return [json.dumps({"since_seq": _value(rng), "id": _value(rng)}).encode()]
    if kind == 3:
        return [b'{"since_seq": ' + _nested(rng) + b"}"]
    if kind == 4:
        return [rng.randbytes(rng.randrange(0, 5000))]
    if kind == 5:
        return [json.dumps({"since_seq": 1, rng.choice(["x", "drop", "seq"]): _value(rng)}).encode()]
    if kind == 6:
        return [b"", json.dumps({"since_seq": 0}).encode()]  # what a REQ socket sends
    if kind == 7:
        return [b'{"since_seq": 1}'] * rng.randrange(2, 5)
    if kind == 8:
        return [b'{"since_seq": ' + b"9" * rng.choice([19, 20, 400, 4000]) + b"}"]
    good = json.dumps({"since_seq": 3}).encode()
    return [good[: rng.randrange(len(good))] + rng.choice([b"NaN", b"Infinity", b"\xff", b""])]


def _control_request(rng: random.Random) -> list[bytes]:
    kind = rng.randrange(9)
    if kind == 0:
        return [json.dumps({"cmd": "status", "id": rng.randrange(1 << 20)}).encode()]
    if kind == 1:
        return [json.dumps({"cmd": _value(rng), "id": _value(rng)}).encode()]
    if kind == 2:
        return [json.dumps({"cmd": "roll.start", "roll_id": _value(rng)}).encode()]
    if kind == 3:
        return [b'{"cmd": "status", "id": ' + _nested(rng) + b"}"]
    if kind == 4:
        return [rng.randbytes(rng.randrange(0, 5000))]
    if kind == 5:
        return [b"", b'{"cmd": "status"}']
    if kind == 6:
        return [b'{"cmd": "status"}'] * rng.randrange(2, 5)
    if kind == 7:
        return [b'{"cmd": "status", "id": ' + b"7" * rng.choice([19, 20, 400, 4000]) + b"}"]
    return [json.dumps({"cmd": "status", "pad": "x" * rng.randrange(3000, 60_000)}).encode()]


def _dealer(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndtimeo = 5000
    sock.rcvhwm = 0  # keep every answer until we read it
    sock.connect(endpoint)
    return sock


def _drain(socks: list[zmq.Socket[Any]], counts: dict[bytes, int]) -> None:
    for sock in socks:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            key = frames[1] if frames[0] == b"" and len(frames) > 1 else frames[0]
            key = key if key in (b"replay.end", b"replay.error") else b"other"
            counts[key] = counts.get(key, 0) + 1


def _hammer(
    endpoint: str,
    make: Callable[[random.Random], list[bytes]],
    requests_seen: Callable[[], int],
    *,
    seed: int,
) -> tuple[int, dict[bytes, int]]:
    """Send REQUESTS_PER_SERVER requests in bursts over CLIENTS dealers plus the 10 MB frames;
    after each burst wait (bounded) until the server has taken every request of it."""
    rng = random.Random(seed)
    ctx: zmq.Context[Any] = zmq.Context()
    counts: dict[bytes, int] = {}
    sent = 0
    try:
        socks = [_dealer(ctx, endpoint) for _ in range(CLIENTS)]
        base = requests_seen()
        for _ in range(HUGE_FRAMES):  # each from its own socket: the server drops that connection
            _dealer(ctx, endpoint).send(b"{" * (10 << 20))
        while sent < REQUESTS_PER_SERVER:
            for _ in range(min(BURST, REQUESTS_PER_SERVER - sent)):
                rng.choice(socks).send_multipart(make(rng))
                sent += 1
            deadline = time.monotonic() + 10.0
            while requests_seen() - base < sent:
                assert time.monotonic() < deadline, f"server took {requests_seen() - base} of {sent} requests"
                _drain(socks, counts)
                zmq.select(socks, [], [], 0.01)
            _drain(socks, counts)
        return sent, counts
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[EventPublisher]:
    pub = make_publisher(tmp_path)
    pub.start()
    for i in range(10):
        pub.publish("defect", {"i": i}, roll_id="R1")
    yield pub
    pub.close()


class _Target:
    roll_id = "R-1"

    def status(self) -> dict[str, Any]:
        return {"roll_id": self.roll_id}

    def new_roll(self, roll_id: str | None = None) -> str:
        self.roll_id = roll_id or "R-next"
        return self.roll_id


def test_ten_thousand_adversarial_requests_leave_replay_and_control_serving(
    publisher: EventPublisher,
) -> None:
    control = ControlServer(_Target(), endpoint="tcp://127.0.0.1:0", security=SecurityConfig())
    control.start()
    replay = publisher._replay
    assert replay is not None and publisher.replay_endpoint is not None
    t0 = time.monotonic()
    try:
        sent_replay, replay_counts = _hammer(
            publisher.replay_endpoint, _replay_request, lambda: replay.stats.requests, seed=17
        )
        sent_control, control_counts = _hammer(
            control.endpoint, _control_request, lambda: control.stats.requests, seed=1717
        )
        took_s = time.monotonic() - t0
        assert sent_replay + sent_control >= 10_000
        assert replay_counts.get(b"replay.end", 0) > 0 and replay_counts.get(b"replay.error", 0) > 1000
        assert control_counts.get(b"other", 0) > 1000  # control answers are one JSON frame
        # no server thread died or restarted
        assert replay.running and replay.stats.restarts_total == 0
        assert control.running and control.stats.restarts_total == 0
        assert publisher.server_problems() == [] and control.problem() is None

        ctx: zmq.Context[Any] = zmq.Context()
        try:
            sock = _dealer(ctx, publisher.replay_endpoint)
            started = time.monotonic()
            sock.send(b'{"since_seq": 0, "id": 1}')
            frames: list[list[bytes]] = []
            while not frames or frames[-1][0] != b"replay.end":
                assert sock.poll(1000), "no replay answer within 1 s after the fuzz"
                frames.append(sock.recv_multipart())
            answered_s = time.monotonic() - started
            assert answered_s < 1.0 and len(frames) == 11 and json.loads(frames[-1][1])["id"] == 1
            ctl = _dealer(ctx, control.endpoint)
            ctl.send(b'{"cmd": "status"}')
            assert ctl.poll(1000) and json.loads(ctl.recv())["ok"] is True
        finally:
            ctx.destroy(linger=0)
        print(
            f"fuzz: {sent_replay} replay + {sent_control} control requests + {2 * HUGE_FRAMES} 10 MB frames "
            f"in {took_s:.1f} s; replay answers {replay_counts}, control answers {control_counts}; "
            f"normal replay answered in {answered_s * 1000:.0f} ms"
        )
    finally:
        control.stop()
