"""The reference subscriber's bookkeeping, driven by a scripted publisher on real loopback sockets.

The script decides exactly which messages the PUB stream carries (drops, duplicates, heartbeats,
an epoch change) and what the replay ROUTER answers (including events it no longer has), so each
rule of the subscriber is checked deterministically.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from runtime.events.schema import Event, make_body, topic_for, utc_now_iso
from runtime.events.subscriber import EventSubscriber
from tests.conftest import free_tcp_port


def _event(seq: int, kind: str = "defect", epoch: str = "E1", roll_id: str = "R1") -> Event:
    body = make_body(
        kind=kind, seq=seq, epoch=epoch, ts=utc_now_iso(), line_id="L", roll_id=roll_id, fields={}
    )
    return Event(topic_for(kind, "L"), body)


class ScriptedPublisher:
    """A PUB socket the test drives by hand and a replay ROUTER answering from `stored`."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.pub.bind(self.pub_endpoint)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.replay_endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.router.bind(self.replay_endpoint)
        self.epoch = "E1"
        self.stored: dict[int, Event] = {}
        self.lvc_events: list[Event] = []
        self.start_seq = 0
        self.errors_to_send = 0
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.router.poll(20):
                continue
            identity, raw = self.router.recv_multipart()
            req = json.loads(raw)
            self.requests.append(req)
            if self.errors_to_send > 0:
                self.errors_to_send -= 1
                self.router.send_multipart(
                    [identity, b"replay.error", json.dumps({"error": "busy", "id": req["id"]}).encode()]
                )
                continue
            last = max(self.stored, default=0)
            if req.get("lvc"):
                for e in self.lvc_events:
                    self.router.send_multipart([identity, *e.frames()])
                end = {"last_seq": last, "epoch": self.epoch, "lvc": True, "start_seq": self.start_seq}
            else:
                for seq in sorted(s for s in self.stored if s > req["since_seq"]):
                    self.router.send_multipart([identity, *self.stored[seq].frames()])
                end = {"last_seq": last, "epoch": self.epoch}
            end["id"] = req["id"]
            self.router.send_multipart([identity, b"replay.end", json.dumps(end).encode()])

    def store(self, *seqs: int, kind: str = "defect") -> None:
        for s in seqs:
            self.stored[s] = _event(s, kind, self.epoch)

    def live(self, *seqs: int) -> None:
        for s in seqs:
            event = self.stored.get(s) or _event(s, epoch=self.epoch)
            self.pub.send_multipart(event.frames())

    def heartbeat(self, next_seq: int, interval_s: float = 0.1) -> None:
        body = make_body(
            kind="heartbeat",
            seq=next_seq,
            epoch=self.epoch,
            ts=utc_now_iso(),
            line_id="L",
            roll_id="R1",
            fields={"interval_s": interval_s},
        )
        self.pub.send_multipart(Event(topic_for("heartbeat", "L"), body).frames())

    def sync(self, sub: EventSubscriber) -> None:
        """Send heartbeats until the subscriber hears one, so nothing after is lost to a slow join."""
        deadline = time.monotonic() + 5
        while sub.stats.heartbeats == 0:
            assert time.monotonic() < deadline, "subscriber never connected"
            self.heartbeat(max(self.stored, default=0) + 1)
            for event in sub.events(timeout_s=0.05):
                raise AssertionError(f"sync() must not consume events, got {event.seq}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.ctx.destroy(linger=0)


@pytest.fixture
def fake() -> Iterator[ScriptedPublisher]:
    f = ScriptedPublisher()
    yield f
    f.close()


def _take(sub: EventSubscriber, n: int, timeout_s: float = 5.0) -> list[Event]:
    out: list[Event] = []
    for event in sub.events(timeout_s=timeout_s):
        out.append(event)
        if len(out) == n:
            break
    return out


def _sub(fake: ScriptedPublisher, **kw: Any) -> EventSubscriber:
    kw.setdefault("replay", fake.replay_endpoint)
    return EventSubscriber(connect=fake.pub_endpoint, replay_timeout_s=1.0, **kw)


def test_dropped_events_in_the_middle_and_at_the_tail_are_replayed_in_order(fake: ScriptedPublisher) -> None:
    with _sub(fake) as sub:
        fake.sync(sub)
        fake.store(*range(1, 11))
        fake.live(1, 2, 3, 6, 7)  # 4 and 5 dropped
        fake.heartbeat(11)  # 8, 9, 10 dropped at the tail: only the heartbeat tells
        got = _take(sub, 10)
        assert [e.seq for e in got] == list(range(1, 11))
        s = sub.stats
        assert (s.live, s.recovered, s.lost, s.live_received) == (5, 5, 0, 5)
        assert s.missing_detected == 10 - s.live_received
        assert sub.position == ("E1", 10)


def test_events_the_spool_no_longer_has_are_counted_lost_not_awaited(fake: ScriptedPublisher) -> None:
    with _sub(fake) as sub:
        fake.sync(sub)
        fake.store(1, 2, 3, 5, 6)  # 4 aged out of the spool
        fake.live(1, 2, 5, 6)
        got = _take(sub, 5, timeout_s=3)
        assert [e.seq for e in got] == [1, 2, 3, 5, 6]
        assert sub.stats.lost == 1 and sub.stats.recovered == 1


def test_duplicates_from_live_and_replay_are_delivered_once(fake: ScriptedPublisher) -> None:
    with _sub(fake) as sub:
        fake.sync(sub)
        fake.store(1, 2, 3, 4)
        fake.live(1, 2, 2, 4, 3, 4)
        got = _take(sub, 4)
        assert [e.seq for e in got] == [1, 2, 3, 4]
        assert list(sub.events(timeout_s=0.3)) == []
        assert sub.stats.duplicates >= 2


def test_a_new_epoch_restarts_the_sequence_without_mixing_histories(fake: ScriptedPublisher) -> None:
    with _sub(fake) as sub:
        fake.sync(sub)
        fake.store(1, 2, 3)
        fake.live(1, 2, 3)
        fake.epoch = "E2"
        fake.stored = {}
        fake.store(1, 2)
        fake.live(2)  # 1 of the new epoch was dropped
        got = _take(sub, 5)
        assert [(e.epoch, e.seq) for e in got] == [("E1", 1), ("E1", 2), ("E1", 3), ("E2", 1), ("E2", 2)]
        assert sub.stats.epoch_changes == 1 and sub.stats.lost == 0


def test_without_replay_gaps_are_reported_lost_and_delivery_goes_on(fake: ScriptedPublisher) -> None:
    with _sub(fake, replay=None) as sub:
        fake.sync(sub)
        fake.live(1, 2, 5)
        got = _take(sub, 3)
        assert [e.seq for e in got] == [1, 2, 5]
        assert sub.stats.lost == 2


def test_replay_error_is_retried(fake: ScriptedPublisher) -> None:
    with _sub(fake, since=("E1", 0)) as sub:
        fake.errors_to_send = 1
        fake.store(1, 2, 3)
        got = _take(sub, 3)
        assert [e.seq for e in got] == [1, 2, 3]
        assert sub.stats.replay_errors == 1 and sub.stats.recovered == 3


def test_last_value_cache_gives_the_current_roll_then_only_new_events(fake: ScriptedPublisher) -> None:
    fake.store(1, kind="roll")
    fake.store(2, 3, 4, 5)
    fake.lvc_events = [fake.stored[1]]
    fake.start_seq = 5  # this subscriber joined after seq 5
    with _sub(fake) as sub:
        fake.store(6, 7)
        fake.live(6, 7)  # probably lost to the slow join: replay has them
        got = _take(sub, 3)
        assert [(e.kind, e.seq) for e in got] == [("roll", 1), ("defect", 6), ("defect", 7)]
        assert sub.stats.lvc == 1
        assert fake.requests[0]["lvc"] is True and fake.requests[0]["age_s"] >= 0


def test_topic_filter_keeps_seq_tracking_on_every_event(fake: ScriptedPublisher) -> None:
    with _sub(fake, topics=("stop.",)) as sub:
        fake.sync(sub)
        fake.store(1, 2)
        fake.store(3, kind="stop")
        fake.store(4)
        fake.live(1, 3, 4)  # 2 dropped: must be replayed before 3 can be delivered
        got = _take(sub, 1)
        assert [(e.kind, e.seq) for e in got] == [("stop", 3)]
        assert list(sub.events(timeout_s=0.3)) == []
        assert sub.position == ("E1", 4) and sub.stats.lost == 0


def test_silence_reports_a_dead_publisher_and_a_heartbeat_revives_it(fake: ScriptedPublisher) -> None:
    states: list[str] = []
    with _sub(fake, dead_after_heartbeats=3, on_state=lambda s, m: states.append(s)) as sub:
        fake.sync(sub)  # heartbeats announce interval_s = 0.1
        assert list(sub.events(timeout_s=0.6)) == []
        assert sub.publisher_dead and states == ["dead"]
        fake.heartbeat(1)
        list(sub.events(timeout_s=0.1))
        assert not sub.publisher_dead and states == ["dead", "alive"]


def test_malformed_messages_are_counted_and_skipped(fake: ScriptedPublisher) -> None:
    with _sub(fake) as sub:
        fake.sync(sub)
        fake.pub.send_multipart([b"defect.L", b"not json"])
        fake.pub.send_multipart([b"defect.L"])
        fake.store(1)
        fake.live(1)
        assert [e.seq for e in _take(sub, 1)] == [1]
        assert sub.stats.malformed == 2
