"""CURVE on the PUB and replay sockets: only allow-listed clients hear anything, and revoking a key
cuts that client off within `recheck_s`, live sessions included, while the others carry on."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from runtime.config import SecurityConfig
from runtime.events.publisher import EventPublisher
from runtime.events.security import ClientCurve, generate_key_files, load_client_curve
from runtime.events.subscriber import EventSubscriber
from tests.integration.test_events_support import make_publisher

RECHECK_S = 0.3


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, ClientCurve]:
    server_public, _ = generate_key_files(tmp_path / "server", "server")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    curves = {}
    for name in ("plc", "hmi", "stranger"):
        public, secret = generate_key_files(tmp_path / "clients", name)
        if name != "stranger":
            (allowed / public.name).write_bytes(public.read_bytes())
        curves[name] = load_client_curve(server_public, secret)
    return curves


@pytest.fixture
def publisher(tmp_path: Path, keys: dict[str, ClientCurve]) -> Iterator[EventPublisher]:
    security = SecurityConfig(
        curve=True,
        server_secret_key=tmp_path / "server" / "server.key_secret",
        authorized_keys_dir=tmp_path / "allowed",
        recheck_s=RECHECK_S,
    )
    pub = make_publisher(tmp_path, security=security)
    pub.start()
    yield pub
    pub.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _raw_sub(ctx: zmq.Context, endpoint: str, curve: ClientCurve | None) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    if curve is not None:
        curve.apply(sub)
    sub.subscribe(b"")
    sub.connect(endpoint)
    return sub


def _seqs(sock: zmq.Socket, duration_s: float) -> list[int]:
    """Every event seq the socket receives during `duration_s` (heartbeats excluded)."""
    out = []
    deadline = time.monotonic() + duration_s
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            frames = sock.recv_multipart()
            body = json.loads(frames[1])
            if body["kind"] != "heartbeat":
                out.append(body["seq"])
    return out


def _publish(pub: EventPublisher, n: int) -> list[int]:
    seqs = []
    for _ in range(n):
        seqs.append(pub.publish("defect", {"class": "hole"}, roll_id="R1"))
        time.sleep(0.002)
    return seqs


def test_allow_listed_client_receives_and_replays_others_get_nothing(
    publisher: EventPublisher,
    keys: dict[str, ClientCurve],
    ctx: zmq.Context,
) -> None:
    plc = EventSubscriber(connect=publisher.pub_endpoint, replay=publisher.replay_endpoint, curve=keys["plc"])
    stranger = _raw_sub(ctx, publisher.pub_endpoint, keys["stranger"])
    plaintext = _raw_sub(ctx, publisher.pub_endpoint, None)
    replay_plain = ctx.socket(zmq.DEALER)
    replay_plain.linger = 0
    replay_plain.sndtimeo = 500
    replay_plain.connect(publisher.replay_endpoint)
    replay_plain.send(json.dumps({"since_seq": 0}).encode())
    try:
        time.sleep(0.3)
        published = _publish(publisher, 100)
        got = []
        for event in plc.events(timeout_s=5):
            got.append(event.seq)
            if event.seq == published[-1]:
                break
        assert got == published  # everything, in order (slow join filled over the CURVE replay socket)
        assert _seqs(stranger, 0.5) == []
        assert _seqs(plaintext, 0.2) == []
        assert not replay_plain.poll(300), "the replay socket answered a plaintext client"
        assert publisher.status()["curve"]["handshakes_denied"] >= 1
    finally:
        plc.close()


def test_revoked_key_is_cut_off_live_within_recheck_s_while_others_continue(
    tmp_path: Path,
    publisher: EventPublisher,
    keys: dict[str, ClientCurve],
    ctx: zmq.Context,
) -> None:
    plc = EventSubscriber(connect=publisher.pub_endpoint, replay=publisher.replay_endpoint, curve=keys["plc"])
    hmi = _raw_sub(ctx, publisher.pub_endpoint, keys["hmi"])
    hmi_replay = ctx.socket(zmq.DEALER)
    hmi_replay.linger = 0
    hmi_replay.sndtimeo = 500
    keys["hmi"].apply(hmi_replay)
    hmi_replay.connect(publisher.replay_endpoint)
    try:
        time.sleep(0.3)
        before = _publish(publisher, 50)
        assert set(_seqs(hmi, 0.3)) == set(before), "hmi must receive while allowed"
        hmi_replay.send(json.dumps({"since_seq": 0}).encode())
        assert hmi_replay.poll(2000), "hmi's replay request must be answered while allowed"
        while hmi_replay.poll(200):
            hmi_replay.recv_multipart()

        (tmp_path / "allowed" / "hmi.key").unlink()  # revoke
        cut_off = time.monotonic()
        deadline = cut_off + RECHECK_S + 2.0
        while publisher.status()["session_resets"] == 0:
            assert time.monotonic() < deadline, "the revocation was not applied"
            time.sleep(0.05)
        assert time.monotonic() - cut_off <= RECHECK_S + 1.5  # one re-check period plus scheduling slack
        _seqs(hmi, 0.2)  # whatever was already queued in the socket before the cut-off

        after = _publish(publisher, 200)
        assert [s for s in _seqs(hmi, 1.0) if s >= after[0]] == [], "revoked client still receives"
        with contextlib.suppress(zmq.Again):  # a DEALER with no live connection cannot even queue it
            hmi_replay.send(json.dumps({"since_seq": 0}).encode())
        assert not hmi_replay.poll(500), "revoked client still gets replays"
        # the allowed subscriber was reset too, reconnected and recovered everything by replay
        got = []
        for event in plc.events(timeout_s=5):
            got.append(event.seq)
            if event.seq == after[-1]:
                break
        assert got == before + after
        assert plc.stats.lost == 0
    finally:
        plc.close()


def _recorder(into: list[tuple[str, str]]) -> Callable[[str, str], None]:
    return lambda state, message: into.append((state, message))


def test_refused_subscribers_are_told_why_instead_of_silence(
    publisher: EventPublisher, keys: dict[str, ClientCurve]
) -> None:
    reports: dict[str, list[tuple[str, str]]] = {}
    for name, curve in (("stranger", keys["stranger"]), ("plaintext", None), ("plc", keys["plc"])):
        got: list[tuple[str, str]] = []
        sub = EventSubscriber(
            connect=publisher.pub_endpoint, replay=None, curve=curve, on_state=_recorder(got)
        )
        try:
            assert list(sub.events(timeout_s=1.0)) == []
        finally:
            sub.close()
        reports[name] = got
    assert [s for s, _ in reports["stranger"]] == ["refused"]
    assert "refused this client's CURVE key" in reports["stranger"][0][1]
    assert [s for s, _ in reports["plaintext"]] == ["refused"]
    assert "requires CURVE" in reports["plaintext"][0][1]
    assert reports["plc"] == []  # allowed: heartbeats arrive, nothing to report


def test_a_plaintext_subscriber_that_gives_up_is_told_the_publisher_requires_curve_not_only_dead(
    publisher: EventPublisher,
) -> None:
    got: list[tuple[str, str]] = []
    sub = EventSubscriber(
        connect=publisher.pub_endpoint, replay=None, dead_after_heartbeats=1, on_state=_recorder(got)
    )
    try:
        assert list(sub.events(timeout_s=2.5)) == []
    finally:
        sub.close()
    dead = [m for s, m in got if s == "dead"]
    assert dead and "is dead" in dead[0] and "it is running but" in dead[0] and "requires CURVE" in dead[0]
