"""Issue 17.3: after a restart, plain SUB clients (no replay) hear the restart's first events.

A PUB socket drops what it sends while no subscriber is connected, and a SUB reconnects on its own
only every `RECONNECT_IVL` (100 ms by default; the clients here retry every 500 ms). So the
publisher's XPUB counts active subscriptions (kept in the spool), a restarted publisher waits after
binding until that many are back (bounded by `publish.restart_grace_s`) before its first event,
sends heartbeats meanwhile, and every heartbeat re-announces the current roll state (the last
`roll` event committed), so a client that missed the event itself still learns that the roll ended
and why. Before the fix (no wait) both plain clients missed the interrupted roll's end.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from runtime.events.publisher import EventPublisher
from tests.integration.test_events_support import free_endpoint, make_publisher

RECONNECT_IVL_MS = 500  # a client retrying twice a second; the default 1 s grace covers it
WAIT_S = 10.0  # generous: only a failure waits this long


def _plain_sub(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sub.connect(endpoint)  # nobody is bound yet: ZeroMQ keeps retrying
    return sub


def _until(predicate: Any, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s")
        time.sleep(0.02)


def _active(pub: EventPublisher) -> int:
    return int(pub.status()["subscriptions"]["active"])


def _restart_and_end_roll(pub: EventPublisher) -> None:
    pub.start()  # waits for the subscriptions to come back
    # the very first event after the restart, as the daemon sends it for an interrupted roll
    fields = {"state": "end", "reason": "interrupted", "next_roll_id": "R2"}
    assert pub.publish("roll", fields, roll_id="R1") == 2


def _receive_until_seq(subs: list[zmq.Socket[Any]], seq: int, timeout_s: float) -> list[list[dict[str, Any]]]:
    """Every body each client hears until each has heard the event `seq` (polled together)."""
    heard: list[list[dict[str, Any]]] = [[] for _ in subs]
    done = [False] * len(subs)
    poller = zmq.Poller()
    for sub in subs:
        poller.register(sub, zmq.POLLIN)
    deadline = time.monotonic() + timeout_s
    while not all(done):
        if time.monotonic() > deadline:
            raise AssertionError(f"event {seq} not heard by every client within {timeout_s} s: {done}")
        for sock, _ in poller.poll(100):
            i = subs.index(sock)
            body = json.loads(sock.recv_multipart()[1])
            heard[i].append(body)
            done[i] = done[i] or (body["kind"] != "heartbeat" and body["seq"] == seq)
    return heard


def test_plain_subscribers_hear_the_first_event_after_a_restart_and_heartbeats_carry_the_roll(
    tmp_path: Path,
) -> None:
    pub_ep, replay_ep = free_endpoint(), free_endpoint()
    first = make_publisher(tmp_path, pub=pub_ep, replay=replay_ep)
    t0 = time.monotonic()
    first.start()
    fresh_start_s = time.monotonic() - t0
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        subs = [_plain_sub(ctx, pub_ep) for _ in range(2)]
        _until(lambda: _active(first) == 2)  # the XPUB heard both, and the spool keeps the count
        assert first.spool.get_meta("subscriptions") == "2"
        assert first.publish("roll", {"state": "start"}, roll_id="R1") == 1
        first.close()  # as far as a subscriber can tell, the same as kill -9: the socket goes away
        second = make_publisher(tmp_path, pub=pub_ep, replay=replay_ep)
        restarted = threading.Thread(target=_restart_and_end_roll, args=(second,))
        restarted.start()  # the clients below keep receiving (ZeroMQ re-subscribes inside their calls)
        try:
            heard = _receive_until_seq(subs, 2, WAIT_S)
            restarted.join(WAIT_S)
            wait = second.restart_wait
            assert wait is not None and (wait.expected, wait.heard, wait.complete) == (2, 2, True)
            assert second.status()["restart_wait"]["complete"] is True
            for bodies in heard:
                rolls = [b for b in bodies if b["kind"] == "roll" and b["seq"] == 2]
                assert [(r["state"], r["reason"]) for r in rolls] == [("end", "interrupted")]
                # heartbeats heard before it (next seq 2) already said where the roll stood
                before = [b for b in bodies if b["kind"] == "heartbeat" and b["seq"] == 2]
                assert all(hb["roll"] == {"roll_id": "R1", "state": "start", "seq": 1} for hb in before)
            later = json.loads(subs[0].recv_multipart()[1])
            while later["kind"] != "heartbeat":
                later = json.loads(subs[0].recv_multipart()[1])
            assert later["roll"] == {
                "roll_id": "R1",
                "state": "end",
                "seq": 2,
                "reason": "interrupted",
                "next_roll_id": "R2",
            }
        finally:
            restarted.join(WAIT_S)
            second.close()
    finally:
        ctx.destroy(linger=0)
    assert second.config.restart_grace_s == 1.0  # the default bound
    assert fresh_start_s < 1.0  # a new spool has nobody to wait for


def test_the_wait_after_a_restart_is_bounded_when_a_subscriber_does_not_come_back(tmp_path: Path) -> None:
    first = make_publisher(tmp_path, restart_grace_s=0.3)
    first.start()
    first.publish("roll", {"state": "start"}, roll_id="R1")
    first.close()
    # two were subscribed before the crash; neither comes back
    with contextlib.closing(sqlite3.connect(first.spool.path)) as db, db:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('subscriptions', '2')")
    second = make_publisher(tmp_path, restart_grace_s=0.3)
    t0 = time.monotonic()
    second.start()
    took_s = time.monotonic() - t0
    try:
        wait = second.restart_wait
        assert wait is not None and (wait.expected, wait.heard, wait.complete) == (2, 0, False)
        assert wait.waited_s >= 0.3 and took_s >= 0.3
        assert second.publish("defect", {}, roll_id="R1") == 2  # and then it publishes as usual
    finally:
        second.close()


def test_a_new_subscription_gets_a_heartbeat_without_waiting_heartbeat_s(tmp_path: Path) -> None:
    pub = make_publisher(tmp_path, heartbeat_s=3600.0)  # no periodic heartbeat within the test
    pub.start()
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        pub.publish("roll", {"state": "start"}, roll_id="R7")
        sub = _plain_sub(ctx, pub.pub_endpoint)
        sub.rcvtimeo = int(WAIT_S * 1000)
        body = json.loads(sub.recv_multipart()[1])
        assert body["kind"] == "heartbeat" and body["roll"] == {"roll_id": "R7", "state": "start", "seq": 1}
        subs = pub.status()["subscriptions"]
        assert subs["active"] == 1 and subs["subscribed_total"] == 1
        sub.close(linger=0)
        _until(lambda: _active(pub) == 0)  # XPUB_VERBOSER: a closed subscriber's filter is dropped
        assert pub.spool.get_meta("subscriptions") == "0"
    finally:
        ctx.destroy(linger=0)
        pub.close()
