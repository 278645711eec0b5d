"""The event publisher: spool first, then a ZeroMQ PUB send; replay server and heartbeats beside it.

`publish()` numbers the event from the spool, commits it (WAL, fsync) and only then sends it, so
anything a subscriber may have seen can be replayed, and a crash never reuses a `seq`.
`publish_many()` does the same for a batch in one transaction: a stage that drains its queue keeps
up with any event rate even where one fsync takes milliseconds.

Threads: the caller's (publish), "loomsight-events" (heartbeats every `heartbeat_s`, held-event
retries, disk checks, WAL checkpoints, retention, CURVE allow-list re-checks) and
"loomsight-replay" (the ROUTER, see `replay.py`). The PUB socket is only touched under one lock.

Heartbeats (`heartbeat.<line>`) are not spooled: they carry no data to recover. Their `seq` is the
next seq the spool will give, so a subscriber learns that events up to `seq - 1` exist even when
the last ones were dropped; they also carry `interval_s`, the spool state (rows, alarm), counters
and whatever the daemon passes to `set_heartbeat_fields`.

Disk full: `publish()` never raises for it, and the spool normally goes on by rolling over its
oldest events in its own file (see `spool.py`). Only when even that fails is the event held in
memory (bounded, in order) and `publish()` returns 0 instead of a seq; the maintenance thread
commits and sends held events as soon as the spool accepts writes again. `status()["alarm"]` and
every heartbeat's `spool.alarm` say `disk_full` (or `disk_low`); held events that do not fit (over
`MAX_HELD_EVENTS`) are counted as `dropped`.

CURVE (`security.curve`): the PUB and replay sockets become CURVE servers behind a ZAP allow-list
(`security.py`); `self.curve` is that `CurveServer`, so the daemon's control socket can
`apply()` the same keys and `add_revocation_listener()` to be reset on revocation too.

The PUB socket is an XPUB (the same to a subscriber) so the publisher hears subscriptions
(`subscriptions.py`): a new subscription gets a heartbeat at once (the current roll state without
waiting `heartbeat_s`), the number of active subscriptions is kept in the spool, and after a
restart the first event waits, at most `publish.restart_grace_s`, until that many are back.

PUB's SNDHWM is `publish.sndhwm` (default 20,000 messages, over 10 s at 1,000 events/s) and
`close()` lingers at most `min(publish.linger_ms, timeout_s)`, so stopping never hangs on absent
subscribers.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from runtime.config import PublishConfig, SecurityConfig, SpoolConfig
from runtime.errors import SpoolError
from runtime.events.replay import ReplayServer, configure_router
from runtime.events.schema import (
    HEADER_KEYS,
    JPEG_MAGIC,
    SPOOLED_KINDS,
    Event,
    EventFormatError,
    encode_body,
    make_body,
    topic_for,
    utc_now_iso,
)
from runtime.events.security import CurveServer
from runtime.events.sockets import bind, rebind, set_keepalive
from runtime.events.spool import EventSpool
from runtime.events.subscriptions import (
    RestartWait,
    SubscriptionTracker,
    configure_xpub,
    wait_for_subscribers,
)

log = logging.getLogger(__name__)

MAX_HELD_EVENTS = 10_000
HELD_BATCH = 500
CHECKPOINT_INTERVAL_S = 0.25
PRUNE_INTERVAL_S = 10.0


@dataclass(frozen=True)
class OutgoingEvent:
    """One event handed to `publish_many` (what `publish` takes as arguments)."""

    kind: str
    fields: dict[str, Any]
    roll_id: str
    crop_jpeg: bytes | None = None


@dataclass(frozen=True)
class _Pending:
    event: OutgoingEvent
    ts: str


def _percentiles_ms(values: list[int]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    values = sorted(values)
    n = len(values)
    return {
        "p50": round(values[n // 2] / 1e6, 4),
        "p99": round(values[min(n - 1, int(n * 0.99))] / 1e6, 4),
        "max": round(values[-1] / 1e6, 4),
    }


class EventPublisher:
    """Spool, PUB socket, replay server and heartbeats for one line. Thread-safe `publish()`."""

    def __init__(
        self,
        *,
        line_id: str,
        publish: PublishConfig,
        spool: SpoolConfig,
        security: SecurityConfig,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.line_id = line_id
        self.config = publish
        self.security = security
        self.spool = EventSpool(spool)
        self._context = context
        self._own_context = context is None
        self._lock = threading.RLock()
        self._pub: zmq.Socket[Any] | None = None
        self._subs: SubscriptionTracker | None = None
        self.restart_wait: RestartWait | None = None  # what the wait after a restart found
        self._replay: ReplayServer | None = None
        self.curve: CurveServer | None = None
        self.pub_endpoint = ""
        self.replay_endpoint: str | None = None
        self._hb_fields: dict[str, Any] = {}
        self._roll_id = ""
        self._held: deque[_Pending] = deque()
        self._hold_reason = ""  # the spool error that made us hold events (not always a full disk)
        self._last_roll: dict[str, Any] | None = None  # see _note_roll
        self._published = 0
        self._dropped = 0
        self._send_errors = 0
        self._heartbeats = 0
        self._session_resets = 0
        self._commit_ns: deque[int] = deque(maxlen=4096)
        self.last_send_ns = 0  # perf_counter_ns() when the last commit ended (for benchmarks)
        self.last_sends_ns: list[int] = []  # perf_counter_ns() before each send of the last commit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open the spool, bind PUB and the replay ROUTER, start the threads. Cleans up on failure."""
        if self._started:
            raise RuntimeError("EventPublisher.start() called twice")
        try:
            self._start()
        except BaseException:
            self._teardown(0.5)
            raise
        self._started = True

    def _start(self) -> None:
        self.spool.open()
        last = self.spool.last_body()
        if last is not None:
            self._roll_id = str(last.get("roll_id", ""))
        restarting = self.spool.last_seq > 0
        text = self.spool.get_meta("subscriptions")  # before our own count replaces it
        subscribed_before = int(text) if text is not None and text.isdigit() else 0
        roll = self.spool.last_value("roll")
        if roll is not None:
            self._note_roll(roll[0], str(roll[1].get("roll_id", "")), roll[1])
        if self._context is None:
            self._context = zmq.Context()
        ctx = self._context
        if self.security.curve:
            assert self.security.server_secret_key is not None
            assert self.security.authorized_keys_dir is not None
            self.curve = CurveServer(
                server_secret_key=self.security.server_secret_key,
                authorized_keys_dir=self.security.authorized_keys_dir,
                recheck_s=self.security.recheck_s,
                strict_modes=self.security.strict_modes,
            )
            self.curve.start(ctx)
        pub = ctx.socket(zmq.XPUB)  # a PUB to subscribers; we hear their subscriptions (subscriptions.py)
        self._pub = pub
        configure_xpub(pub)
        self._subs = SubscriptionTracker(pub, remember=self._remember_subscriptions)
        pub.setsockopt(zmq.SNDHWM, self.config.sndhwm)
        pub.setsockopt(zmq.LINGER, self.config.linger_ms)
        set_keepalive(pub)
        if self.curve is not None:
            self.curve.apply(pub)
        self.pub_endpoint = bind(pub, self.config.pub_endpoint, "publish.pub_endpoint")
        if self.config.replay_endpoint:
            router = ctx.socket(zmq.ROUTER)
            try:
                configure_router(router)
                set_keepalive(router)
                if self.curve is not None:
                    self.curve.apply(router)
                self.replay_endpoint = bind(router, self.config.replay_endpoint, "publish.replay_endpoint")
            except BaseException:
                router.close(linger=0)
                raise
            self._replay = ReplayServer(router, self.spool.path, endpoint=self.replay_endpoint)
            self._replay.start()
        if self.curve is not None:
            self.curve.add_revocation_listener(self._reset_sessions)
        self._stop.clear()
        self._thread = threading.Thread(target=self._maintain, name="loomsight-events", daemon=True)
        self._thread.start()
        log.info(
            "publishing line %s on %s (replay %s, CURVE %s), epoch %s, next seq %d",
            self.line_id,
            self.pub_endpoint,
            self.replay_endpoint or "off",
            "on" if self.curve else "off",
            self.spool.epoch,
            self.spool.next_seq,
        )
        grace = self.config.restart_grace_s
        if restarting and grace > 0:
            self._wait_after_restart(grace, subscribed_before)

    def _wait_after_restart(self, grace: float, expected: int) -> None:
        """PUB drops what it sends before a subscriber is back: after a restart, wait (at most
        `grace`) until the subscriptions active before it are back, so the restart's first events
        (the interrupted roll's end) reach plain SUB clients. Heartbeats, which carry the current
        roll state, go out meanwhile."""
        log.info(
            "restart: waiting up to %.1f s for %d subscription(s) to come back before the first event",
            grace,
            max(1, expected),
        )
        wait = self.restart_wait = wait_for_subscribers(
            self._poll_subscriptions, expected=expected, limit_s=grace
        )
        log.log(
            logging.INFO if wait.complete else logging.WARNING,
            "restart: %d of %d subscription(s) back after %.3f s%s",
            wait.heard,
            wait.expected,
            wait.waited_s,
            "" if wait.complete else f" (limit {grace:g} s reached; late subscribers miss the first events)",
        )

    def _poll_subscriptions(self) -> int:
        with self._lock:
            if self._subs is None:
                return 0
            self._subs.drain()
            return self._subs.active

    def _remember_subscriptions(self, active: int) -> None:
        if self.spool.is_open:
            self.spool.set_meta("subscriptions", str(active))

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop threads, commit held events if the spool allows, close sockets with a bounded linger."""
        if not self._started:
            return
        self._started = False
        self._teardown(timeout_s)

    def _teardown(self, timeout_s: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout_s)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
            self._thread = None
        if self._replay is not None:
            self._replay.stop(max(0.1, deadline - time.monotonic()))
            self._replay = None
        with self._lock:
            if self._pub is not None and self.spool.is_open:
                self._flush_held()
                if self._held:
                    log.error(
                        "closing with %d events that the spool did not take: lost (%s)",
                        len(self._held),
                        self._hold_reason or "no error recorded",
                    )
                    self._dropped += len(self._held)
                    self._held.clear()
            linger_ms = int(max(0.0, min(self.config.linger_ms / 1000.0, deadline - time.monotonic())) * 1000)
            if self._pub is not None:
                self._pub.close(linger=linger_ms)
                self._pub = None
                self._subs = None
        if self.curve is not None:
            self.curve.stop()
        self.spool.close()
        if self._own_context and self._context is not None:
            self._context.destroy(linger=linger_ms if self._pub is None else 0)
            self._context = None

    def __enter__(self) -> EventPublisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ publishing
    def publish(
        self, kind: str, fields: dict[str, Any], *, roll_id: str, crop_jpeg: bytes | None = None
    ) -> int:
        """Spool then send one event; returns its seq, or 0 when the full disk made us hold it.

        Raises ValueError (EventFormatError) for a kind that is not published this way, a field that
        sets a header key, NaN/Infinity or non-JSON values, or a crop that is not JPEG; nothing is
        spooled or sent then.
        """
        return self.publish_many([OutgoingEvent(kind, fields, roll_id, crop_jpeg)])[0]

    def publish_many(self, events: Sequence[OutgoingEvent]) -> list[int]:
        """Spool several events in one transaction (one fsync), then send them in order.

        For a stage that drains its queue: under load the commit cost is shared by the batch, so the
        event rate no longer depends on the disk's fsync latency. Same errors as `publish`; a batch
        with one bad event publishes none. Returns the seqs (0 for each event held by a full disk).
        """
        ts = utc_now_iso()
        pending = [_Pending(self._checked(e), ts) for e in events]
        if not pending:
            return []
        with self._lock:
            if not self._started or self._pub is None:
                raise RuntimeError("EventPublisher.publish() before start() or after close()")
            if not self._held:
                try:
                    seqs = self._commit_and_send(pending)
                    self._roll_id = pending[-1].event.roll_id
                    return seqs
                except SpoolError as exc:
                    self._hold_reason = str(exc)
                    log.error("%s; holding events in memory until the spool accepts them", exc)
            for p in pending:  # a held event must not fail later: check its body now
                e = p.event
                encode_body(
                    make_body(
                        kind=e.kind,
                        seq=0,
                        epoch="-",
                        ts=ts,
                        line_id=self.line_id,
                        roll_id=e.roll_id,
                        fields=e.fields,
                    )
                )
            self._roll_id = pending[-1].event.roll_id
            for p in pending:
                self._hold(p)
            return [0] * len(pending)

    @staticmethod
    def _checked(event: OutgoingEvent) -> OutgoingEvent:
        if event.kind not in SPOOLED_KINDS:
            raise EventFormatError(
                f"kind {event.kind!r}: publish() takes one of {', '.join(SPOOLED_KINDS)} (heartbeats are automatic)"
            )
        if not isinstance(event.roll_id, str):
            raise EventFormatError(f"roll_id {event.roll_id!r} must be a string")
        if event.crop_jpeg is not None and bytes(event.crop_jpeg[:2]) != JPEG_MAGIC:
            raise EventFormatError("crop_jpeg is not a JPEG image (no FF D8 start marker)")
        return OutgoingEvent(event.kind, dict(event.fields), event.roll_id, event.crop_jpeg)

    def _commit_and_send(self, pending: Sequence[_Pending]) -> list[int]:
        assert self._pub is not None
        first = self.spool.next_seq
        items: list[tuple[int, str, list[bytes]]] = []
        for i, p in enumerate(pending):
            e = p.event
            body = make_body(
                kind=e.kind,
                seq=first + i,
                epoch=self.spool.epoch,
                ts=p.ts,
                line_id=self.line_id,
                roll_id=e.roll_id,
                fields=e.fields,
            )
            items.append(
                (first + i, e.kind, Event(topic_for(e.kind, self.line_id), body, e.crop_jpeg).frames())
            )
        t0 = time.perf_counter_ns()
        self.spool.append_many(items)
        self.last_send_ns = t1 = time.perf_counter_ns()
        self._commit_ns.append(t1 - t0)
        sends_ns = self.last_sends_ns = []
        for seq, _, frames in items:
            sends_ns.append(time.perf_counter_ns())
            try:
                self._pub.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # spooled already: subscribers get it by replay
                self._send_errors += 1
                log.warning("PUB send of seq %d failed (%s); it stays in the spool for replay", seq, exc)
        self._published += len(items)
        for i, p in enumerate(pending):
            if p.event.kind == "roll":
                self._note_roll(first + i, p.event.roll_id, p.event.fields)
        return [seq for seq, _, _ in items]

    def _note_roll(self, seq: int, roll_id: str, fields: dict[str, Any]) -> None:
        """The roll state every heartbeat re-announces: the last `roll` event committed."""
        state: dict[str, Any] = {"roll_id": roll_id, "state": fields.get("state"), "seq": seq}
        if fields.get("reason") is not None:
            state["reason"] = fields.get("reason")
        if fields.get("next_roll_id") is not None:
            state["next_roll_id"] = fields.get("next_roll_id")
        self._last_roll = state

    def _hold(self, pending: _Pending) -> None:
        if len(self._held) >= MAX_HELD_EVENTS:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.error(
                    "spool refuses events (%s) and %d are held: %d events dropped so far",
                    self._hold_reason or "no error recorded",
                    MAX_HELD_EVENTS,
                    self._dropped,
                )
            return
        self._held.append(pending)

    def _flush_held(self) -> None:
        while self._held:
            batch = list(itertools.islice(self._held, HELD_BATCH))
            try:
                self._commit_and_send(batch)
            except SpoolError as exc:
                self._hold_reason = str(exc)
                return
            for _ in batch:
                self._held.popleft()
            if not self._held:
                log.warning("spool accepts events again; all held events committed and sent")

    def set_heartbeat_fields(self, fields: dict[str, Any]) -> None:
        """Stats merged into each heartbeat (rates, queue depths, drops). Header keys are refused."""
        clash = sorted(set(fields) & set(HEADER_KEYS))
        if clash:
            raise EventFormatError(f"heartbeat fields may not set header keys {clash}")
        encode_body(fields)
        with self._lock:
            self._hb_fields = dict(fields)

    def _send_heartbeat(self) -> None:
        assert self._pub is not None
        spool_state = {"rows": self.spool.rows, "alarm": self.spool.alarm}
        own = {
            "interval_s": self.config.heartbeat_s,
            "published": self._published,
            "held": len(self._held),
            "dropped": self._dropped,
            "spool": spool_state,
            "roll": self._last_roll,
        }
        fields = {**self._hb_fields, **own}
        seq = self.spool.next_seq
        args = {"seq": seq, "epoch": self.spool.epoch, "ts": utc_now_iso(), "line_id": self.line_id}
        try:
            body = make_body(kind="heartbeat", roll_id=self._roll_id, fields=fields, **args)  # type: ignore[arg-type]
            frames = Event(topic_for("heartbeat", self.line_id), body).frames()
        except EventFormatError as exc:
            log.error("heartbeat fields are not plain JSON (%s); sending the heartbeat without them", exc)
            body = make_body(kind="heartbeat", roll_id=self._roll_id, fields=own, **args)  # type: ignore[arg-type]
            frames = Event(topic_for("heartbeat", self.line_id), body).frames()
        with contextlib.suppress(zmq.ZMQError):
            self._pub.send_multipart(frames, zmq.NOBLOCK)
            self._heartbeats += 1

    def _reset_sessions(self) -> None:
        """A CURVE key was revoked: drop every connection so each client handshakes again."""
        with self._lock:
            if self._pub is not None:
                rebind(self._pub, self.pub_endpoint)
            self._session_resets += 1
        if self._replay is not None:
            self._replay.request_rebind()

    # ------------------------------------------------------------------ maintenance thread
    def _maintain(self) -> None:
        now = time.monotonic()
        hb_s = self.config.heartbeat_s
        next_hb = now
        next_ckpt = now + CHECKPOINT_INTERVAL_S
        next_prune = now + PRUNE_INTERVAL_S / 2
        recheck_s = self.security.recheck_s
        next_recheck = now + recheck_s
        while True:
            wake = min(next_hb, next_ckpt, next_prune, next_recheck if self.curve else next_hb)
            if self._stop.wait(max(0.0, wake - time.monotonic())):
                return
            now = time.monotonic()
            if self._guard(self._drain_subscriptions):
                next_hb = now  # a new subscriber hears the roll state at once, not within heartbeat_s
            if now >= next_hb:
                next_hb = max(next_hb + hb_s, now + hb_s / 2)
                self._guard(self._tick_heartbeat)
                if self._replay is not None:
                    self._guard(self._replay.ensure_running)
            if self.curve is not None and now >= next_recheck:
                next_recheck = now + recheck_s
                self._guard(self.curve.recheck)
            if now >= next_ckpt:
                next_ckpt = now + CHECKPOINT_INTERVAL_S
                self._guard(self.spool.checkpoint)
            if now >= next_prune or self.spool.needs_room:
                next_prune = now + PRUNE_INTERVAL_S
                self._guard(self.spool.prune)

    def _drain_subscriptions(self) -> bool:
        with self._lock:
            return self._subs is not None and self._pub is not None and self._subs.drain() > 0

    def _tick_heartbeat(self) -> None:
        self.spool.check_disk()
        with self._lock:
            if self._pub is None:
                return
            if self._held:
                self._flush_held()
            self._send_heartbeat()

    @staticmethod
    def _guard(task: Any) -> Any:
        try:
            return task()
        except Exception:
            log.exception("event maintenance task %s failed", getattr(task, "__name__", task))
            return None

    # ------------------------------------------------------------------ status
    def server_problems(self) -> list[str]:
        """Servers that should be answering and are not (for the daemon's readiness)."""
        replay = self._replay
        problem = None if replay is None else replay.problem()
        return [] if problem is None else [problem]

    @property
    def last_seq(self) -> int:
        return self.spool.last_seq

    @property
    def epoch(self) -> str:
        return self.spool.epoch

    def status(self) -> dict[str, Any]:
        with self._lock:
            commit = list(self._commit_ns)
            spool_stats = self.spool.stats().as_dict() if self.spool.is_open else {}
            held = len(self._held)
            out: dict[str, Any] = {
                "line_id": self.line_id,
                "running": self._started,
                "pub_endpoint": self.pub_endpoint,
                "replay_endpoint": self.replay_endpoint,
                "epoch": self.spool.epoch,
                "last_seq": self.spool.last_seq,
                "next_seq": self.spool.next_seq,
                "roll_id": self._roll_id,
                "published": self._published,
                "held": held,
                "dropped": self._dropped,
                "send_errors": self._send_errors,
                "heartbeats": self._heartbeats,
                "sndhwm": self.config.sndhwm,
                "commit_ms": _percentiles_ms(commit),
                "spool": spool_stats,
                "session_resets": self._session_resets,
                "subscriptions": None if self._subs is None else self._subs.stats(),
                "restart_wait": None if self.restart_wait is None else self.restart_wait.as_dict(),
            }
        alarm = spool_stats.get("alarm")
        out["alarm"] = alarm or ("events_held" if held else None)
        replay = self._replay
        out["replay"] = (
            None
            if replay is None
            else {**vars(replay.stats), "active_sessions": replay.active_sessions, "running": replay.running}
        )
        if out["alarm"] is None and replay is not None and replay.problem() is not None:
            out["alarm"] = "replay_down"
        out["curve"] = None if self.curve is None else self.curve.stats()
        return out
