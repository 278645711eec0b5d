"""The reference subscriber: every event exactly once, in `seq` order, gaps filled from replay.

PUB/SUB alone loses messages without a word (slow joiners, high-water-mark drops, outages). This
client tracks `(epoch, seq)` and fixes that:

- Start position. Without `since`, a subscriber wants what was published after it started. It asks
  the replay server `{"lvc": true, "age_s": A}` the moment its DEALER is connected (ZMQ_IMMEDIATE),
  with A = seconds since the subscriber was created plus `join_margin_s` (0.25 s, for the
  request's own transit: better one event from just before the start than one missed); the
  server answers the last `roll` and `status` events (the last-value cache: a late joiner knows the current roll at once) and
  `start_seq`, the last seq committed before the subscriber started. Every event after it is
  delivered, including those the PUB sent before the subscription reached it (slow joiner). A
  subscriber that starts with or before the daemon therefore gets the daemon's whole run.
  With `since=(epoch, seq)` (a position saved earlier, see `position`) it resumes right after it.
- Gaps (bookkeeping in `sequencer.py`). A PUB stream is FIFO, so a live event with seq > next-expected, or a heartbeat whose `seq`
  (the publisher's next seq) is past what we have, proves that events were dropped. Live events
  wait in a bounded buffer while `{"since_seq": last_delivered}` is replayed; duplicates are
  discarded. What the spool no longer holds (`replay.end` says up to where it answered) is counted
  `lost` and skipped, never waited for forever; a replay server that stays silent for
  `gap_timeout_s` makes the gap `lost` too.
- Epochs. A new epoch means the publisher's spool was recreated: what was buffered from the old
  one is delivered, and the new history is taken from its seq 1.
- Liveness. No message for `dead_after_heartbeats` heartbeat intervals reports the publisher dead
  (`publisher_dead`, the `on_state` callback, a log warning); the next message reports it alive.
  A handshake the publisher refuses (CURVE key not allowed, CURVE/plaintext mismatch) is reported
  as state "refused", from the SUB socket's monitor: ZeroMQ itself would only stay silent.
- Topics. With a replay endpoint the SUB socket takes every topic (seq continuity needs all of
  them) and filters in the client; without one it subscribes to the topics and `heartbeat.` only
  and cannot detect gaps of filtered streams.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from runtime.events.bounded_json import INT64_MAX, int64_at_least_zero
from runtime.events.replay import END_TOPIC, ERROR_TOPIC
from runtime.events.schema import Event, EventFormatError
from runtime.events.security import ClientCurve
from runtime.events.sequencer import Sequencer, SubscriberStats
from runtime.events.sockets import set_keepalive

log = logging.getLogger(__name__)

__all__ = ["EventSubscriber", "SubscriberStats"]

POLL_S = 0.05
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass
class _Inflight:
    id: int
    kind: str  # "lvc" or "replay"
    last_activity: float


class EventSubscriber:
    """Connects a SUB (and a DEALER for replay) at construction; read with `events()`."""

    def __init__(
        self,
        *,
        connect: str,
        replay: str | None,
        topics: Sequence[str] = ("",),
        curve: ClientCurve | None = None,
        dead_after_heartbeats: int = 3,
        since: tuple[str | None, int] | None = None,
        lvc: bool = True,
        rcvhwm: int = 100_000,
        rcvbuf_bytes: int | None = None,
        replay_timeout_s: float = 5.0,
        gap_timeout_s: float = 30.0,
        join_margin_s: float = 0.25,
        on_state: Callable[[str, str], None] | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        if dead_after_heartbeats < 1:
            raise ValueError("dead_after_heartbeats must be >= 1")
        if since is not None and not int64_at_least_zero(since[1]):
            raise ValueError(f"since seq {since[1]!r}: must be an integer from 0 to {INT64_MAX}")
        self.connect_endpoint = connect
        self.replay_endpoint = replay
        self._topics = tuple(t.encode() for t in topics) or (b"",)
        self._filtered = any(t != b"" for t in self._topics)
        self._curve = curve
        self._dead_after = dead_after_heartbeats
        self._lvc = lvc
        self._replay_timeout_s = replay_timeout_s
        self._gap_timeout_s = gap_timeout_s
        self._join_margin_s = join_margin_s
        self._on_state = on_state
        self._own_context = context is None
        self._ctx = context if context is not None else zmq.Context()
        self.stats = SubscriberStats()
        self.last_source = ""  # "live", "replay" or "lvc": where the last yielded event came from
        self.last_heartbeat: dict[str, Any] | None = None
        self._seq = Sequencer(self.stats, count_lost=not (self._filtered and replay is None))

        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.RCVHWM, rcvhwm)
        if rcvbuf_bytes is not None:
            self._sub.setsockopt(zmq.RCVBUF, rcvbuf_bytes)
        set_keepalive(self._sub)
        if curve is not None:
            curve.apply(self._sub)
        if replay is not None or not self._filtered:
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        else:
            for t in (*self._topics, b"heartbeat."):
                self._sub.setsockopt(zmq.SUBSCRIBE, t)
        self._monitor = self._sub.get_monitor_socket(_HANDSHAKE_EVENTS)
        self._sub.connect(connect)
        self._dealer: zmq.Socket[Any] | None = None
        self._poller = zmq.Poller()
        self._poller.register(self._sub, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._handshake_failure: int | None = None
        self._handshake_why = ""
        self._t0 = time.monotonic()

        self._lvc_events: list[Event] = []
        self._in_gap = False
        self._gap_since: float | None = None
        self._gap_pos: int | None = None
        self._want: str | None = None
        self._inflight: _Inflight | None = None
        self._retry_at = 0.0
        self._req_id = 0
        self._last_heard: float | None = None
        self._interval_s = 1.0
        if since is not None:
            self._seq.resume(since[0], int(since[1]))
        if replay is not None:
            self._new_dealer()
            self._want = "lvc" if since is None else "replay"

    # ------------------------------------------------------------------ public
    @property
    def position(self) -> tuple[str | None, int | None]:
        """(epoch, last delivered seq): pass it back as `since` to resume after a restart."""
        return self._seq.epoch, self._seq.pos

    @property
    def publisher_dead(self) -> bool:
        return self.stats.publisher_dead

    def events(self, timeout_s: float | None = None) -> Iterator[Event]:
        """Yield events in seq order; return after `timeout_s` without a delivery (None: never)."""
        last_delivery = time.monotonic()
        while True:
            item = self._seq.pop()
            if item is not None:
                event, source = item
                if self._filtered and not event.topic.startswith(self._topics):
                    continue
                self._count(source)
                self.last_source = source
                yield event
                last_delivery = time.monotonic()
                continue
            now = time.monotonic()
            if timeout_s is not None and now - last_delivery >= timeout_s:
                return
            self._maintain(now)
            wait = POLL_S if timeout_s is None else max(0.0, min(POLL_S, timeout_s - (now - last_delivery)))
            self._poll(wait)

    def close(self) -> None:
        if not self._sub.closed:
            self._sub.disable_monitor()
        for sock in (self._monitor, self._sub, self._dealer):
            if sock is not None and not sock.closed:
                sock.close(linger=0)
        self._dealer = None
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> EventSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ sockets
    def _new_dealer(self) -> None:
        if self._dealer is not None:
            self._poller.unregister(self._dealer)
            self._dealer.close(linger=0)
        assert self.replay_endpoint is not None
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.IMMEDIATE, 1)  # a request leaves only over a live connection
        dealer.setsockopt(zmq.RCVHWM, 10_000)
        set_keepalive(dealer)
        if self._curve is not None:
            self._curve.apply(dealer)
        dealer.connect(self.replay_endpoint)
        self._dealer = dealer
        self._poller.register(dealer, zmq.POLLIN)
        self._inflight = None

    def _poll(self, wait_s: float) -> None:
        ready = dict(self._poller.poll(int(wait_s * 1000)))
        if self._monitor in ready:
            self._on_monitor()
        if self._sub in ready:
            # Read only until an event can be delivered: a slow application leaves the rest in the
            # socket, whose high-water mark (not an unbounded buffer here) decides what is dropped.
            for _ in range(1000):
                try:
                    frames = self._sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_live(frames)
                if self._seq.deliverable:
                    break
        dealer = self._dealer
        if dealer is not None and dealer in ready:
            for _ in range(5000):
                try:
                    frames = dealer.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_replay(frames)
                if self._dealer is not dealer:
                    break

    def _on_monitor(self) -> None:
        """Say why nothing arrives when the publisher refuses us (ZeroMQ itself stays silent)."""
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            code = int(event["event"])
            if code == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_failure = None
                self._handshake_why = ""
                continue
            if self._handshake_failure is not None:
                continue  # reconnects repeat it: report once until a handshake succeeds
            self._handshake_failure = code
            if code == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                why = "the publisher refused this client's CURVE key (not in its allow-list)"
            elif self._curve is None:
                why = "handshake failed: the publisher probably requires CURVE (--curve-server-key/--curve-client-key)"
            else:
                why = "handshake failed: wrong server key, or the publisher does not use CURVE"
            self._handshake_why = why
            self._state("refused", f"{self.connect_endpoint}: {why}")

    # ------------------------------------------------------------------ incoming
    def _parse(self, frames: list[bytes], where: str) -> Event | None:
        try:
            return Event.from_frames(frames)
        except EventFormatError as exc:
            self.stats.malformed += 1
            if self.stats.malformed <= 10 or self.stats.malformed % 1000 == 0:
                log.warning(
                    "malformed message from %s ignored (%d so far): %s", where, self.stats.malformed, exc
                )
            return None

    def _on_live(self, frames: list[bytes]) -> None:
        self._last_heard = time.monotonic()
        if self.stats.publisher_dead:
            self.stats.publisher_dead = False
            self._state("alive", f"publisher {self.connect_endpoint} is alive again")
        event = self._parse(frames, "PUB")
        if event is None:
            return
        no_replay_start = not self._seq.started and self.replay_endpoint is None
        if event.kind == "heartbeat":
            self.stats.heartbeats += 1
            self.last_heartbeat = event.body
            interval = event.body.get("interval_s")
            if isinstance(interval, (int, float)) and interval > 0:
                self._interval_s = float(interval)
            if self._seq.observe_epoch(event.epoch):
                self._on_epoch_switch()
            self._seq.exists_up_to(event.seq)
            if no_replay_start:
                self._seq.start_at(event.seq - 1)
            return
        self.stats.live_received += 1
        if self.stats.first_live_seq is None:
            self.stats.first_live_seq = event.seq
        if no_replay_start:
            self._seq.start_at(event.seq - 1)
        if self._seq.accept(event, "live"):
            self._on_epoch_switch()

    def _on_replay(self, frames: list[bytes]) -> None:
        inflight = self._inflight
        if inflight is None:
            return  # an answer we no longer wait for
        inflight.last_activity = time.monotonic()
        topic = frames[0] if frames else b""
        if topic in (END_TOPIC, ERROR_TOPIC):
            try:
                body = json.loads(frames[1]) if len(frames) == 2 else None
            except ValueError:
                body = None
            if not isinstance(body, dict) or body.get("id") != inflight.id:
                return
            self._inflight = None
            if topic == ERROR_TOPIC:
                self.stats.replay_errors += 1
                log.warning("replay server refused our request: %s", body.get("error"))
                self._want = inflight.kind
                self._retry_at = time.monotonic() + 1.0
                return
            self._on_end(inflight, body)
            return
        event = self._parse(frames, "replay")
        if event is None:
            return
        if inflight.kind == "lvc":
            self._lvc_events.append(event)
        elif self._seq.accept(event, "replay"):
            self._on_epoch_switch()

    def _on_end(self, inflight: _Inflight, body: dict[str, Any]) -> None:
        epoch = body.get("epoch")
        last_seq = body.get("last_seq")
        if not isinstance(epoch, str) or not isinstance(last_seq, int):
            log.warning("replay.end without epoch/last_seq ignored: %r", body)
            return
        switched = self._seq.observe_epoch(epoch)
        if inflight.kind == "lvc":
            start = body.get("start_seq")
            if not self._seq.started and isinstance(start, int):
                lvc = [e for e in self._lvc_events if e.epoch == epoch] if self._lvc else None
                self._seq.start_at(start, last_seq=last_seq, lvc_events=lvc)
                log.info("subscribed to epoch %s after seq %d (last seq %d)", epoch, start, last_seq)
            self._lvc_events = []
        elif switched:
            self._want = "replay"  # the new history, from its seq 1
        else:
            self._seq.spool_answered_up_to(last_seq)

    def _on_epoch_switch(self) -> None:
        """Answers in flight belong to the old history: drop them and ask again."""
        if self._inflight is not None and self.replay_endpoint is not None:
            kind = self._inflight.kind
            self._new_dealer()
            self._want = kind

    # ------------------------------------------------------------------ delivery and gaps
    def _count(self, source: str) -> None:
        self.stats.delivered += 1
        if source == "live":
            self.stats.live += 1
        elif source == "replay":
            self.stats.recovered += 1
        else:
            self.stats.lvc += 1

    def _maintain(self, now: float) -> None:
        self._check_dead(now)
        seq = self._seq
        gap = seq.gap
        if gap and not self._in_gap:
            self.stats.gaps += 1
        self._in_gap = gap
        if not gap or seq.pos != self._gap_pos:  # the gap timeout counts from the last progress
            self._gap_since, self._gap_pos = (now if gap else None), seq.pos
        if self.replay_endpoint is None:
            if gap:
                seq.give_up_gap("dropped by ZeroMQ and no replay endpoint configured")
            return
        if self._inflight is not None:
            if now - self._inflight.last_activity > self._replay_timeout_s:
                log.warning(
                    "replay server %s did not answer for %.1f s; reconnecting",
                    self.replay_endpoint,
                    self._replay_timeout_s,
                )
                kind = self._inflight.kind
                self._new_dealer()
                self._want = kind
        elif now >= self._retry_at:
            if not seq.started:
                self._want = "lvc"
            elif gap:
                self._want = "replay"
            if self._want is not None:
                self._send_request(now)
        if not seq.started and now - self._t0 > self._gap_timeout_s:
            if seq.start_from_live():
                log.warning(
                    "replay server %s does not answer; starting from the live stream at seq %d",
                    self.replay_endpoint,
                    (seq.pos or 0) + 1,
                )
        elif gap and self._gap_since is not None and now - self._gap_since > self._gap_timeout_s:
            seq.give_up_gap(f"replay server gave nothing for {self._gap_timeout_s:.0f} s")

    def _send_request(self, now: float) -> None:
        assert self._dealer is not None and self._want is not None
        self._req_id += 1
        if self._want == "lvc":
            age_s = now - self._t0 + self._join_margin_s  # margin: the request's transit time
            body: dict[str, Any] = {"lvc": True, "age_s": round(age_s, 6), "id": self._req_id}
        else:
            body = {"since_seq": self._seq.pos or 0, "id": self._req_id}
        try:
            self._dealer.send(json.dumps(body).encode(), zmq.NOBLOCK)
        except zmq.Again:
            return  # not connected yet (IMMEDIATE): try again on the next turn
        self.stats.replay_requests += 1
        self._inflight = _Inflight(self._req_id, self._want, now)
        self._want = None

    def _check_dead(self, now: float) -> None:
        silent_s = now - (self._last_heard if self._last_heard is not None else self._t0)
        if not self.stats.publisher_dead and silent_s > self._dead_after * self._interval_s:
            self.stats.publisher_dead = True
            self._state(
                "dead",
                f"publisher {self.connect_endpoint} is dead: nothing heard for {silent_s:.1f} s "
                f"({self._dead_after} heartbeats)"
                + (f"; it is running but {self._handshake_why}" if self._handshake_why else ""),
            )

    def _state(self, state: str, message: str) -> None:
        (log.info if state == "alive" else log.warning)("%s", message)
        if self._on_state is not None:
            self._on_state(state, message)
