"""Issue 17.3: after a restart, plain SUB clients (no replay) hear the restart's first events.

A PUB socket drops what it sends while no subscriber is connected, and a SUB reconnects on its own
only every `RECONNECT_IVL` (100 ms by default; the clients here retry every 500 ms). So a restarted publisher waits
`publish.restart_grace_s` after binding before its first event, sends heartbeats meanwhile, and
every heartbeat re-announces the current roll state (the last `roll` event committed), so a
client that missed the event itself still learns that the roll ended and why.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import zmq

from tests.integration.test_events_support import free_endpoint, make_publisher

RECONNECT_IVL_MS = 500  # a client retrying twice a second; the default 1 s grace covers it


def _plain_sub(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sub.connect(endpoint)  # nobody is bound yet: ZeroMQ keeps retrying
    return sub


def _until_roll_event(sub: zmq.Socket[Any], timeout_s: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The first `roll` event, and the heartbeats heard before it."""
    heartbeats: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not sub.poll(100):
            continue
        frames = sub.recv_multipart()
        body = json.loads(frames[1])
        if body["kind"] == "roll":
            return body, heartbeats
        if body["kind"] == "heartbeat":
            heartbeats.append(body)
    raise AssertionError(f"no roll event within {timeout_s} s (heard {len(heartbeats)} heartbeats)")


def test_plain_subscribers_hear_the_first_event_after_a_restart_and_heartbeats_carry_the_roll(
    tmp_path: Path,
) -> None:
    pub_ep, replay_ep = free_endpoint(), free_endpoint()
    first = make_publisher(tmp_path, pub=pub_ep, replay=replay_ep)
    t0 = time.monotonic()
    first.start()
    fresh_start_s = time.monotonic() - t0
    assert first.publish("roll", {"state": "start"}, roll_id="R1") == 1
    first.close()  # as far as a subscriber can tell, the same as kill -9: the socket goes away
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        subs = [_plain_sub(ctx, pub_ep) for _ in range(2)]
        second = make_publisher(tmp_path, pub=pub_ep, replay=replay_ep)
        t0 = time.monotonic()
        second.start()
        restart_s = time.monotonic() - t0
        try:
            # the very first event after the restart, as the daemon sends it for an interrupted roll
            seq = second.publish(
                "roll", {"state": "end", "reason": "interrupted", "next_roll_id": "R2"}, roll_id="R1"
            )
            assert seq == 2
            for sub in subs:
                roll, heartbeats = _until_roll_event(sub, 5.0)
                assert (roll["seq"], roll["state"], roll["reason"]) == (2, "end", "interrupted")
                # heartbeats heard before it already said where the roll stood
                assert all(hb["roll"] == {"roll_id": "R1", "state": "start", "seq": 1} for hb in heartbeats)
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
            second.close()
    finally:
        ctx.destroy(linger=0)
    grace = second.config.restart_grace_s
    assert grace == 1.0 and restart_s >= grace  # the default grace was kept
    assert fresh_start_s < grace  # a new spool has nobody to wait for
