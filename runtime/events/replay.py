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
- Anything else (not one frame, more than 4096 bytes, nested deeper than 4, not JSON, unknown
  keys, bad values such as a `since_seq` outside 0..2**63-1) gets `[b"replay.error", {"error":
  "...", ...}]` and the server carries on; size and nesting are checked before the JSON is parsed
  (`bounded_json.py`). Requests larger than 1 MiB are cut off by ZeroMQ (`MAXMSGSIZE`) before they
  reach us: the connection is dropped.
- A REQ socket (its requests carry an empty delimiter frame) can take one reply, not a stream: it
  gets one `[b"replay.error", ...]` saying to use a DEALER, instead of hanging.
- Nothing a client sends can stop the server: a failing request is answered with `replay.error`;
  an error escaping the loop restarts it (`restarts_total`); a dead thread is restarted by the
  publisher's maintenance thread (`ensure_running`), and `problem()` feeds the daemon's readiness.

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

from runtime.events.bounded_json import (
    INT64_MAX,
    BoundedJSONError,
    int64_at_least_zero,
    load_request,
    request_id_ok,
)
from runtime.events.sockets import rebind
from runtime.events.spool_reader import SpoolReader

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096
MAX_REQUEST_DEPTH = 4
MAX_MESSAGE_BYTES = 1 << 20
MAX_SESSIONS = 64
MAX_QUEUED_PER_CLIENT = 8
CHUNK_ROWS = 256
RESTART_BACKOFF_S = (0.05, 1.0)  # first and longest wait before the serving loop starts again
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
    """Validate the frames after the identity; raises RequestError with a message for the client.

    Size and nesting are checked before the JSON is parsed (`bounded_json.py`), and `since_seq`
    must be an int64 >= 0 (what the spool's INTEGER column holds), so no request can raise
    anything but RequestError here.
    """
    if len(frames) != 1:
        raise RequestError(f"a replay request is exactly one frame of JSON, got {len(frames)} frames")
    try:
        data = load_request(
            frames[0], max_bytes=MAX_REQUEST_BYTES, max_depth=MAX_REQUEST_DEPTH, example='{"since_seq": N}'
        )
    except BoundedJSONError as exc:
        raise RequestError(str(exc)) from None
    if not isinstance(data, dict):
        raise RequestError('request must be a JSON object such as {"since_seq": N}')
    unknown = sorted(set(data) - _ALLOWED_KEYS)
    if unknown:
        raise RequestError(f"unknown key(s) {unknown}; allowed: {sorted(_ALLOWED_KEYS)}")
    req_id = data.get("id")
    if req_id is not None and not request_id_ok(req_id):
        raise RequestError("id must be a 64-bit integer or a string of at most 64 characters")
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
    if not int64_at_least_zero(since):
        shown = repr(since)
        raise RequestError(
            f"since_seq must be an integer from 0 to {INT64_MAX}, got {shown[:40]}{'...' if len(shown) > 40 else ''}"
        )
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
    restarts_total: int = 0  # the server loop failed (or its thread died) and was started again


def configure_router(socket: zmq.Socket[Any]) -> None:
    """Options the replay ROUTER needs before it binds."""
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    socket.setsockopt(zmq.LINGER, 0)


class ReplayServer:
    """Serve replay and last-value requests on `socket` (a bound ROUTER), reading `spool_path`.

    The socket belongs to the server thread from `start()` on. Supervision: an error escaping the
    serving loop drops every session, reopens the spool reader and starts the loop again after a
    short back-off (counted in `stats.restarts_total`); a thread that died anyway is started again
    by `ensure_running()`, which the publisher's maintenance thread calls every heartbeat. While
    the server is down, `problem()` says so (the daemon's readiness goes false on it).
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
        self._supervise = threading.Lock()
        self._down_since: float | None = None
        self._last_failure = ""
        self._closed = False

    def start(self) -> None:
        self._reader = SpoolReader(self._spool_path)
        self._spawn()

    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loomsight-replay", daemon=True)
        self._thread.start()

    def request_rebind(self) -> None:
        """Drop every connection (after a key revocation); done by the server thread."""
        self._rebind.set()

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        with self._supervise:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("replay server thread did not stop within %.1f s", timeout_s)
                return  # it still owns the socket; the process exit releases it
        self._close()  # a thread that died left the socket open

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(zmq.ZMQError):
            self._socket.close(linger=0)
        if self._reader is not None:
            self._reader.close()

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    @property
    def running(self) -> bool:
        """The server thread is alive and serving (not failed, not waiting to restart)."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._down_since is None

    def problem(self) -> str | None:
        """Why replay requests are not being answered now, or None while they are (or after stop)."""
        if self._stop.is_set() or self.running:
            return None
        thread = self._thread
        state = "restarting" if thread is not None and thread.is_alive() else "thread dead"
        return (
            f"replay server on {self.endpoint} is down ({state}; last error: {self._last_failure or 'none'}; "
            f"{self.stats.restarts_total} restarts so far)"
        )

    def ensure_running(self) -> bool:
        """Supervisor: start a new server thread on the same socket if the last one died."""
        with self._supervise:
            thread = self._thread
            if self._stop.is_set() or thread is None or thread.is_alive():
                return False
            self.stats.restarts_total += 1
            log.error(
                "replay server thread on %s had died (%s); starting it again (restart %d)",
                self.endpoint,
                self._last_failure or "no error recorded",
                self.stats.restarts_total,
            )
            self._sessions.clear()
            self._spawn()
            return True

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        backoff_s = RESTART_BACKOFF_S[0]
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    self._down_since = None
                    self._loop()
                except Exception as exc:
                    self._failed(exc)
                    self.stats.restarts_total += 1
                    if time.monotonic() - began > 10.0:
                        backoff_s = RESTART_BACKOFF_S[0]
                    log.exception(
                        "replay server loop failed; %d sessions dropped; restarting in %.2f s (restart %d)",
                        len(self._sessions),
                        backoff_s,
                        self.stats.restarts_total,
                    )
                    self._abort_sessions()
                    self._reopen_reader()
                    if self._stop.wait(backoff_s):
                        break
                    backoff_s = min(RESTART_BACKOFF_S[1], backoff_s * 2)
        except BaseException as exc:  # not even Exception: the thread ends, ensure_running() restarts it
            self._failed(exc)
            log.critical("replay server thread died: %s: %s", type(exc).__name__, exc)
            raise
        finally:
            if self._stop.is_set():
                self._close()

    def _abort_sessions(self) -> None:
        """Tell every client with a request in progress that it was dropped, so none waits for it."""
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            ids = [r.id for r in session.queue]
            self._error(
                session.identity,
                "the replay server restarted after an internal error; send the request again",
                ids[0] if ids and session.job is None else None,
            )

    def _failed(self, exc: BaseException) -> None:
        self._down_since = time.monotonic()
        self._last_failure = f"{type(exc).__name__}: {exc}"[:300]

    def _reopen_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
        try:
            self._reader = SpoolReader(self._spool_path)
        except Exception as exc:  # retried at the next restart; requests meanwhile get replay.error
            log.error("replay: cannot reopen the spool %s: %s", self._spool_path, exc)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
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

    def _receive(self) -> None:
        for _ in range(256):
            try:
                msg = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.stats.requests += 1
            if len(msg) >= 3 and msg[1] == b"":  # a REQ socket: it can take one reply, not a stream
                self._error(
                    msg[0],
                    "the replay socket streams many messages per request: connect a DEALER "
                    "(ZeroMQ REQ sockets take one reply, so they get only this error)",
                    None,
                    envelope=[msg[0], b""],
                )
                continue
            identity, frames = msg[0], msg[1:]
            try:
                request = parse_request(frames)
            except RequestError as exc:
                self._error(identity, str(exc), None)
                continue
            except Exception as exc:  # a bug in validation must cost one request, not the server
                log.exception("replay request validation failed unexpectedly")
                self._error(identity, f"request could not be handled ({type(exc).__name__})", None)
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

    def _error(
        self,
        identity: bytes,
        message: str,
        req_id: int | str | None,
        *,
        envelope: list[bytes] | None = None,
    ) -> None:
        self.stats.errors += 1
        if (
            self.stats.errors <= 10 or self.stats.errors % 1000 == 0
        ):  # a misbehaving client must not flood the log
            log.warning("replay request refused (%d so far): %s", self.stats.errors, message)
        body: dict[str, Any] = {"error": message}
        if req_id is not None:
            body["id"] = req_id
        with contextlib.suppress(zmq.ZMQError):
            self._socket.send_multipart(
                [*(envelope or [identity]), *_control(ERROR_TOPIC, body)], zmq.NOBLOCK
            )

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
        end: dict[str, Any]
        try:
            reader = self._reader
            if reader is None:
                raise RuntimeError("the spool reader is not open")
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
        except Exception as exc:  # one failed replay answers its client with an error, nothing more
            if isinstance(exc, sqlite3.Error):
                log.error("replay: reading the spool failed: %s", exc)
                message = f"spool read failed: {exc}"
            else:
                log.exception("replay: request %r failed", request)
                message = f"replay failed: {type(exc).__name__}: {exc}"[:300]
            self.stats.errors += 1
            body: dict[str, Any] = {"error": message}
            if request.id is not None:
                body["id"] = request.id
            yield _control(ERROR_TOPIC, body)
            return
        if request.id is not None:
            end["id"] = request.id
        yield _control(END_TOPIC, end)
