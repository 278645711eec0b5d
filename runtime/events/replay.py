"""The replay server: a ROUTER socket that answers from the spool, in its own thread.

Protocol (DESIGN.md "Contracts/Events"): a DEALER sends one frame of JSON.

- `{"since_seq": N}`: every spooled event with seq > N, in order, each as the very frames the PUB
  socket sent (`[topic, json(, jpeg)]`), then `[b"replay.end", {"last_seq": M, "first_seq": F,
  "epoch": E}]`. M is the last seq at the time of the request (events after it come live); F is
  the oldest seq still kept (older ones aged out: the client counts them lost).
- `{"lvc": true, "age_s": A}` (our extension, the last-value cache): the last `roll` and `status`
  events committed before the client started, then `replay.end` with `"lvc": true` and
  `"start_seq": S`, the last seq committed more than A seconds ago by the server's clock. A client
  measures A on its own monotonic clock from its start to the moment its request left, so no clock
  needs to agree: S is "where this subscriber joined", and a subscriber that started with (or
  before) the daemon gets S = the last seq before the daemon's first event.
- Either may carry `"id"` (integer or short string), echoed in `replay.end` / `replay.error`.
- Anything else (not one frame, more than 4096 bytes, not JSON, unknown keys, bad values) gets
  `[b"replay.error", {"error": "...", ...}]` and the server carries on. Requests larger than 1 MiB
  are cut off by ZeroMQ (`MAXMSGSIZE`) before they reach us: the connection is dropped.

Long replays are streamed in chunks of rows with `ROUTER_MANDATORY` and non-blocking sends, round
robin over clients, so one slow or huge replay never stalls the others and nothing is dropped
silently (a full client pipe is retried; a vanished client ends its session).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from runtime.events.sockets import rebind
from runtime.events.spool_reader import SpoolReader

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096
MAX_MESSAGE_BYTES = 1 << 20
MAX_SESSIONS = 64
MAX_QUEUED_PER_CLIENT = 8
CHUNK_ROWS = 256
SENDS_PER_TURN = 128
END_TOPIC = b"replay.end"
ERROR_TOPIC = b"replay.error"
_ALLOWED_KEYS = {"since_seq", "lvc", "age_s", "id"}


class RequestError(ValueError):
    """A replay request that the protocol does not allow."""


@dataclass(frozen=True)
class ReplayRequest:
    since_seq: int | None
    lvc: bool
    age_s: float
    id: int | str | None


def parse_request(frames: list[bytes]) -> ReplayRequest:
    """Validate the frames after the identity; raises RequestError with a message for the client."""
    if len(frames) != 1:
        raise RequestError(f"a replay request is exactly one frame of JSON, got {len(frames)} frames")
    raw = frames[0]
    if len(raw) > MAX_REQUEST_BYTES:
        raise RequestError(f"request is {len(raw)} bytes; at most {MAX_REQUEST_BYTES}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise RequestError('request is not JSON; send {"since_seq": N}') from None
    if not isinstance(data, dict):
        raise RequestError('request must be a JSON object such as {"since_seq": N}')
    unknown = sorted(set(data) - _ALLOWED_KEYS)
    if unknown:
        raise RequestError(f"unknown key(s) {unknown}; allowed: {sorted(_ALLOWED_KEYS)}")
    req_id = data.get("id")
    if req_id is not None and not (
        (isinstance(req_id, int) and not isinstance(req_id, bool))
        or (isinstance(req_id, str) and len(req_id) <= 64)
    ):
        raise RequestError("id must be an integer or a string of at most 64 characters")
    if data.get("lvc", False) is not False:
        if data["lvc"] is not True:
            raise RequestError("lvc must be true or false")
        age = data.get("age_s", 0.0)
        if not isinstance(age, (int, float)) or isinstance(age, bool) or not (0 <= age < 1e9):
            raise RequestError("age_s must be a number of seconds >= 0")
        if "since_seq" in data:
            raise RequestError("send either since_seq or lvc, not both")
        return ReplayRequest(since_seq=None, lvc=True, age_s=float(age), id=req_id)
    if "since_seq" not in data:
        raise RequestError('missing since_seq; send {"since_seq": N}')
    since = data["since_seq"]
    if not isinstance(since, int) or isinstance(since, bool) or since < 0:
        raise RequestError(f"since_seq must be an integer >= 0, got {since!r}")
    return ReplayRequest(since_seq=since, lvc=False, age_s=0.0, id=req_id)


def _control(topic: bytes, body: dict[str, Any]) -> list[bytes]:
    return [topic, json.dumps(body, separators=(",", ":")).encode()]


@dataclass
class _Session:
    identity: bytes
    queue: deque[ReplayRequest] = field(default_factory=deque)
    job: Iterator[list[bytes]] | None = None
    pending: list[bytes] | None = None
    blocked_until: float = 0.0


@dataclass
class ReplayStats:
    requests: int = 0
    errors: int = 0
    events_sent: int = 0
    sessions_dropped: int = 0
    rebinds: int = 0


def configure_router(socket: zmq.Socket[Any]) -> None:
    """Options the replay ROUTER needs before it binds."""
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    socket.setsockopt(zmq.LINGER, 0)


class ReplayServer:
    """Serve replay and last-value requests on `socket` (a bound ROUTER), reading `spool_path`.

    The socket belongs to the server thread from `start()` on.
    """

    def __init__(self, socket: zmq.Socket[Any], spool_path: Path, *, endpoint: str) -> None:
        self._socket = socket
        self._spool_path = spool_path
        self.endpoint = endpoint
        self.stats = ReplayStats()
        self._sessions: dict[bytes, _Session] = {}
        self._stop = threading.Event()
        self._rebind = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: SpoolReader | None = None

    def start(self) -> None:
        self._reader = SpoolReader(self._spool_path)
        self._thread = threading.Thread(target=self._run, name="loomsight-replay", daemon=True)
        self._thread.start()

    def request_rebind(self) -> None:
        """Drop every connection (after a key revocation); done by the server thread."""
        self._rebind.set()

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("replay server thread did not stop within %.1f s", timeout_s)
            self._thread = None

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if self._rebind.is_set():
                    self._rebind.clear()
                    self._sessions.clear()
                    self.stats.rebinds += 1
                    rebind(self._socket, self.endpoint)
                now = time.monotonic()
                busy = any(s.blocked_until <= now for s in self._sessions.values())
                timeout_ms = 0 if busy else (5 if self._sessions else 100)
                if poller.poll(timeout_ms):
                    self._receive()
                self._serve()
        except Exception:
            log.exception("replay server stopped by an error")
        finally:
            with contextlib.suppress(zmq.ZMQError):
                self._socket.close(linger=0)
            if self._reader is not None:
                self._reader.close()

    def _receive(self) -> None:
        for _ in range(256):
            try:
                msg = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, frames = msg[0], msg[1:]
            self.stats.requests += 1
            try:
                request = parse_request(frames)
            except RequestError as exc:
                self._error(identity, str(exc), None)
                continue
            session = self._sessions.get(identity)
            if session is None:
                if len(self._sessions) >= MAX_SESSIONS:
                    self._error(
                        identity, f"server busy: {MAX_SESSIONS} replays in progress; retry later", request.id
                    )
                    continue
                session = self._sessions[identity] = _Session(identity)
            if len(session.queue) >= MAX_QUEUED_PER_CLIENT:
                self._error(identity, f"more than {MAX_QUEUED_PER_CLIENT} requests outstanding", request.id)
                continue
            session.queue.append(request)

    def _error(self, identity: bytes, message: str, req_id: int | str | None) -> None:
        self.stats.errors += 1
        if (
            self.stats.errors <= 10 or self.stats.errors % 1000 == 0
        ):  # a misbehaving client must not flood the log
            log.warning("replay request refused (%d so far): %s", self.stats.errors, message)
        body: dict[str, Any] = {"error": message}
        if req_id is not None:
            body["id"] = req_id
        with contextlib.suppress(zmq.ZMQError):
            self._socket.send_multipart([identity, *_control(ERROR_TOPIC, body)], zmq.NOBLOCK)

    def _serve(self) -> None:
        now = time.monotonic()
        for identity in list(self._sessions):
            session = self._sessions[identity]
            if session.blocked_until > now:
                continue
            for _ in range(SENDS_PER_TURN):
                if session.pending is None:
                    if session.job is None:
                        if not session.queue:
                            del self._sessions[identity]
                            break
                        session.job = self._job(session.queue.popleft())
                    try:
                        session.pending = next(session.job)
                    except StopIteration:
                        session.job = None
                        continue
                try:
                    self._socket.send_multipart([identity, *session.pending], zmq.NOBLOCK)
                except zmq.Again:
                    session.blocked_until = now + 0.005
                    break
                except zmq.ZMQError as exc:  # EHOSTUNREACH: the client is gone
                    log.info("replay client went away (%s); dropping its session", exc)
                    self.stats.sessions_dropped += 1
                    del self._sessions[identity]
                    break
                if session.pending[0] not in (END_TOPIC, ERROR_TOPIC):
                    self.stats.events_sent += 1
                session.pending = None

    def _job(self, request: ReplayRequest) -> Iterator[list[bytes]]:
        reader = self._reader
        assert reader is not None
        end: dict[str, Any]
        try:
            first, last = reader.bounds()
            if request.lvc:
                start = reader.seq_before(time.time() - request.age_s)
                for _seq, frames in reader.last_values(start):
                    yield frames
                end = {
                    "last_seq": last,
                    "first_seq": first,
                    "epoch": reader.epoch,
                    "lvc": True,
                    "start_seq": start,
                }
            else:
                cursor = request.since_seq or 0
                while True:
                    rows = reader.read_after(cursor, last, CHUNK_ROWS)
                    if not rows:
                        break
                    for _seq, frames in rows:
                        yield frames
                    cursor = rows[-1][0]
                end = {"last_seq": last, "first_seq": first, "epoch": reader.epoch}
        except sqlite3.Error as exc:
            log.error("replay: reading the spool failed: %s", exc)
            self.stats.errors += 1
            body: dict[str, Any] = {"error": f"spool read failed: {exc}"}
            if request.id is not None:
                body["id"] = request.id
            yield _control(ERROR_TOPIC, body)
            return
        if request.id is not None:
            end["id"] = request.id
        yield _control(END_TOPIC, end)
