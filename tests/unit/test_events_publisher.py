"""EventPublisher: clear start errors, strict publish(), heartbeats, a full disk that never stops it."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from runtime.config import PublishConfig, SecurityConfig, SpoolConfig
from runtime.errors import ConfigError, SpoolError
from runtime.events.publisher import EventPublisher, OutgoingEvent
from runtime.events.schema import Event, EventFormatError
from runtime.events.security import generate_key_files
from tests.conftest import free_tcp_port


def _ep() -> str:
    return f"tcp://127.0.0.1:{free_tcp_port()}"


def _publisher(
    tmp_path: Path, *, pub: str | None = None, replay: str | None = None, **sec: object
) -> EventPublisher:
    return EventPublisher(
        line_id="L1",
        publish=PublishConfig(
            pub_endpoint=pub or _ep(), replay_endpoint=replay, heartbeat_s=0.1, linger_ms=0
        ),
        spool=SpoolConfig(path=tmp_path / "spool.sqlite3", reserve_mb=0.1),
        security=SecurityConfig(**sec),
    )


@pytest.fixture
def sub_ctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _subscriber(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"")
    sub.connect(endpoint)
    return sub


def _next(sub: zmq.Socket, kind: str, timeout_s: float = 3.0) -> Event:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sub.poll(50):
            event = Event.from_frames(sub.recv_multipart())
            if event.kind == kind:
                return event
    raise AssertionError(f"no {kind} event within {timeout_s} s")


def test_endpoint_in_use_is_a_config_error_that_names_it(tmp_path: Path) -> None:
    ep = _ep()
    first = _publisher(tmp_path / "a", pub=ep)
    first.start()
    try:
        second = _publisher(tmp_path / "b", pub=ep)
        with pytest.raises(ConfigError, match=r"publish.pub_endpoint.*already in use"):
            second.start()
        with pytest.raises(ConfigError, match=r"publish\.replay_endpoint"):
            _publisher(tmp_path / "c", replay=ep).start()
    finally:
        first.close()
    with pytest.raises(ConfigError, match="cannot bind"):
        _publisher(tmp_path / "d", pub="bogus://x").start()


def test_unwritable_spool_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    pub = EventPublisher(
        line_id="L1",
        publish=PublishConfig(pub_endpoint=_ep(), replay_endpoint=None),
        spool=SpoolConfig(path=tmp_path / "file" / "spool.sqlite3"),
        security=SecurityConfig(),
    )
    with pytest.raises(SpoolError, match=r"spool\.path"):
        pub.start()


def test_curve_misconfiguration_refuses_to_start_and_leaves_nothing_bound(tmp_path: Path) -> None:
    _, server_secret = generate_key_files(tmp_path / "keys", "server")
    empty = tmp_path / "allowed"
    empty.mkdir()
    ep = _ep()
    pub = _publisher(tmp_path, pub=ep, curve=True, server_secret_key=server_secret, authorized_keys_dir=empty)
    with pytest.raises(ConfigError, match="no client public keys"):
        pub.start()
    # the endpoint is free again: a correct publisher can take it
    ok = _publisher(tmp_path / "ok", pub=ep)
    ok.start()
    ok.close()


def test_publish_refuses_bad_events_and_spools_nothing(tmp_path: Path) -> None:
    pub = _publisher(tmp_path)
    pub.start()
    try:
        with pytest.raises(EventFormatError, match="heartbeats are automatic"):
            pub.publish("heartbeat", {}, roll_id="R")
        with pytest.raises(EventFormatError, match="header keys"):
            pub.publish("defect", {"seq": 99}, roll_id="R")
        with pytest.raises(EventFormatError, match="not plain JSON"):
            pub.publish("defect", {"score": float("nan")}, roll_id="R")
        with pytest.raises(EventFormatError, match="not a JPEG"):
            pub.publish("defect", {}, roll_id="R", crop_jpeg=b"\x89PNG")
        assert pub.status()["last_seq"] == 0
        assert pub.publish("defect", {"class": "hole"}, roll_id="R", crop_jpeg=b"\xff\xd8jpeg") == 1
    finally:
        pub.close()
    with pytest.raises(RuntimeError, match="after close"):
        pub.publish("defect", {}, roll_id="R")


def test_heartbeat_carries_next_seq_stats_and_the_current_roll(tmp_path: Path, sub_ctx: zmq.Context) -> None:
    pub = _publisher(tmp_path)
    pub.start()
    try:
        sub = _subscriber(sub_ctx, pub.pub_endpoint)
        pub.set_heartbeat_fields({"tiles_per_s": 812.5, "queue_depths": {"frames": 3}})
        for _ in range(3):
            pub.publish("defect", {}, roll_id="R9")
        hb = _next(sub, "heartbeat")
        while hb.seq < 4:  # one may have gone out between the publishes
            hb = _next(sub, "heartbeat")
        assert hb.seq == 4 and hb.roll_id == "R9" and hb.epoch == pub.epoch
        assert hb.body["tiles_per_s"] == 812.5 and hb.body["queue_depths"] == {"frames": 3}
        assert hb.body["interval_s"] == 0.1 and hb.body["spool"]["rows"] == 3
        with pytest.raises(EventFormatError):
            pub.set_heartbeat_fields({"seq": 1})
    finally:
        pub.close()
    # heartbeats are not spooled
    conn = sqlite3.connect(tmp_path / "spool.sqlite3")
    assert conn.execute("SELECT count(*) FROM events WHERE kind = 'heartbeat'").fetchone()[0] == 0
    conn.close()


def test_restart_continues_seq_and_restores_the_roll(tmp_path: Path, sub_ctx: zmq.Context) -> None:
    pub = _publisher(tmp_path)
    pub.start()
    assert [pub.publish("roll", {"event": "start"}, roll_id="R5") for _ in range(2)] == [1, 2]
    epoch = pub.epoch
    pub.close()
    again = _publisher(tmp_path)
    again.start()
    try:
        sub = _subscriber(sub_ctx, again.pub_endpoint)
        hb = _next(sub, "heartbeat")
        assert (hb.epoch, hb.seq, hb.roll_id) == (epoch, 3, "R5")
        assert again.publish("defect", {}, roll_id="R5") == 3
    finally:
        again.close()


def test_full_disk_holds_events_raises_the_alarm_and_sends_them_in_order_later(
    tmp_path: Path,
    sub_ctx: zmq.Context,
) -> None:
    pub = _publisher(tmp_path)
    pub.start()
    try:
        sub = _subscriber(sub_ctx, pub.pub_endpoint)
        _next(sub, "heartbeat")
        assert pub.publish("defect", {"n": 0}, roll_id="R") == 1

        def disk_full() -> None:
            raise sqlite3.OperationalError("database or disk is full")

        pub.spool._fault = disk_full
        assert [pub.publish("defect", {"n": n}, roll_id="R") for n in (1, 2, 3)] == [0, 0, 0]
        status = pub.status()
        assert status["alarm"] == "disk_full" and status["held"] == 3 and status["last_seq"] == 1
        hb = _next(sub, "heartbeat")
        while hb.body["held"] < 3:  # one may have gone out before the failures
            hb = _next(sub, "heartbeat")
        assert hb.body["spool"]["alarm"] == "disk_full" and hb.body["held"] == 3
        pub.spool._fault = None  # space is back
        received: list[tuple[int, int]] = []
        deadline = time.monotonic() + 3
        while len(received) < 3 and time.monotonic() < deadline:
            if sub.poll(50):
                event = Event.from_frames(sub.recv_multipart())
                if event.kind == "defect" and event.seq > 1:
                    received.append((event.seq, event.body["n"]))
        assert received == [(2, 1), (3, 2), (4, 3)]
        assert pub.status()["held"] == 0
        assert pub.publish("defect", {"n": 4}, roll_id="R") == 5
    finally:
        pub.close()


def test_close_is_bounded_with_a_stalled_subscriber(tmp_path: Path, sub_ctx: zmq.Context) -> None:
    pub = EventPublisher(
        line_id="L1",
        publish=PublishConfig(pub_endpoint=_ep(), replay_endpoint=_ep(), linger_ms=60000),
        spool=SpoolConfig(path=tmp_path / "s.sqlite3", reserve_mb=0),
        security=SecurityConfig(),
    )
    pub.start()
    sub = sub_ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = 10
    sub.setsockopt(zmq.RCVBUF, 4096)
    sub.subscribe(b"")
    sub.connect(pub.pub_endpoint)
    time.sleep(0.2)
    big = {"pad": "x" * 20000}
    for _ in range(200):  # never read: the PUB has data queued for this peer
        pub.publish("status", big, roll_id="R")
    t0 = time.monotonic()
    pub.close(timeout_s=0.5)
    assert time.monotonic() - t0 < 2.0
    status = pub.status()
    assert status["running"] is False and status["published"] == 200
    assert json.dumps(status)


def test_publish_many_commits_once_and_sends_in_order_and_a_bad_event_publishes_none(
    tmp_path: Path,
    sub_ctx: zmq.Context,
) -> None:
    pub = _publisher(tmp_path)
    pub.start()
    try:
        sub = _subscriber(sub_ctx, pub.pub_endpoint)
        _next(sub, "heartbeat")
        bad = [OutgoingEvent("defect", {"i": 0}, "R"), OutgoingEvent("defect", {"x": float("inf")}, "R")]
        with pytest.raises(EventFormatError):
            pub.publish_many(bad)
        assert pub.last_seq == 0
        commits_before = len(pub._commit_ns)
        seqs = pub.publish_many([OutgoingEvent("defect", {"i": i}, "R") for i in range(50)])
        assert seqs == list(range(1, 51))
        assert len(pub._commit_ns) == commits_before + 1  # one transaction for the batch
        got = [_next(sub, "defect") for _ in range(50)]
        assert [(e.seq, e.body["i"]) for e in got] == [(i + 1, i) for i in range(50)]
        assert pub.publish_many([]) == []
    finally:
        pub.close()


def test_close_leaves_nothing_open_in_a_context_the_daemon_owns(tmp_path: Path) -> None:
    import threading

    public, server_secret = generate_key_files(tmp_path / "keys", "server")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "server.key").write_bytes(public.read_bytes())
    ctx = zmq.Context()
    pub = EventPublisher(
        line_id="L1",
        publish=PublishConfig(pub_endpoint=_ep(), replay_endpoint=_ep(), heartbeat_s=0.1),
        spool=SpoolConfig(path=tmp_path / "spool.sqlite3", reserve_mb=0),
        security=SecurityConfig(curve=True, server_secret_key=server_secret, authorized_keys_dir=allowed),
        context=ctx,
    )
    pub.start()
    pub.publish("roll", {"event": "start"}, roll_id="R1")
    pub.close()
    done = threading.Event()

    def term() -> None:
        ctx.term()
        done.set()

    threading.Thread(target=term, daemon=True).start()
    assert done.wait(3.0), "a socket of the publisher is still open: context.term() blocks"


def test_events_held_for_a_constraint_error_are_reported_with_that_cause_not_a_full_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pub = _publisher(tmp_path)
    pub.start()

    def taken() -> None:
        raise sqlite3.IntegrityError("UNIQUE constraint failed: events.seq")

    pub.spool._fault = taken
    assert pub.publish("defect", {}, roll_id="R") == 0
    with caplog.at_level("ERROR", logger="runtime.events.publisher"):
        pub.close()
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert lost and "UNIQUE constraint failed" in lost[0] and "full disk could not" not in lost[0]


def test_a_second_publisher_on_the_same_spool_refuses_to_start_and_the_first_keeps_its_seqs(
    tmp_path: Path,
) -> None:
    import os

    first = _publisher(tmp_path)
    first.start()
    try:
        assert first.publish("roll", {"state": "started"}, roll_id="R1") == 1
        port = free_tcp_port()
        second = _publisher(tmp_path, pub=f"tcp://127.0.0.1:{port}")
        with pytest.raises(SpoolError, match=rf"in use by another Loomsight daemon \(PID {os.getpid()}"):
            second.start()
        # it left nothing bound and did not touch the first's spool
        probe: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        try:
            probe.bind(f"tcp://127.0.0.1:{port}")
        finally:
            probe.close(linger=0)
        assert first.publish("defect", {}, roll_id="R1") == 2
        assert first.status()["alarm"] is None
    finally:
        first.close()
