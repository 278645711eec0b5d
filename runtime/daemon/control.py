"""The control socket: status and roll commands over ZeroMQ, for a PLC, an MES or an operator.

`publish.control_endpoint` (default off) names a ROUTER socket, served by its own thread
("loomsight-control"). A client (REQ, or DEALER with or without the empty delimiter frame) sends
one frame of JSON and gets one frame of JSON back:

- `{"cmd": "status"}` -> `{"ok": true, "status": {...}}`: the daemon's status dict (what the
  heartbeat, `/metrics` and the `status` events are made from).
- `{"cmd": "roll.start", "roll_id": "R-123"}` (roll_id optional) -> `{"ok": true, "roll_id": NEW,
  "ended_roll_id": OLD}`: the current roll ends (its summary event goes out) and NEW starts at
  the next frame.
- `{"cmd": "roll.end"}` -> `{"ok": true, "ended_roll_id": OLD, "next_roll_id": NEW}`: the same
  with a generated id: the next frames belong to a new roll.
- Anything else -> `{"ok": false, "error": "..."}`. Every request may carry `"id"` (an integer or
  a short string), echoed in the answer.

Limits: a request is at most `MAX_REQUEST_BYTES` (answered with an error when longer); ZeroMQ
drops the connection of a client that sends a message over `MAX_MESSAGE_BYTES` (`MAXMSGSIZE`)
before it reaches us; nesting deeper than `MAX_REQUEST_DEPTH` is refused before the JSON is parsed
(`runtime/events/bounded_json.py`). A failing command is answered with an error and logged;
nothing a client sends can stop the thread or the daemon. An error escaping the serving loop is
counted (`restarts_total`) and the loop serves again after a short back-off; a thread that died
anyway is started again by `ensure_running()` (the daemon's status loop), and `problem()` makes
the daemon not ready while the socket is not served.

CURVE: with `security.curve` the socket is a CURVE server behind the same allow-list as the PUB and
replay sockets (`runtime/events/security.py`), with its own ZAP authenticator in the control
socket's own ZeroMQ context (ZAP handlers are per context), failing closed the same way. The
thread re-reads the allow-list every `security.recheck_s`; when a key is removed it unbinds and
binds again, so a revoked client is cut off and every other one handshakes again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import zmq

from runtime.config import SecurityConfig
from runtime.events.bounded_json import BoundedJSONError, load_request, request_id_ok
from runtime.events.security import CurveServer
from runtime.events.sockets import bind, rebind

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096
MAX_REQUEST_DEPTH = 4
MAX_MESSAGE_BYTES = 64 * 1024
MAX_PER_POLL = 64
POLL_MS = 100
COMMANDS = ("status", "roll.start", "roll.end")
ROLL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_KEYS = {"status": {"cmd", "id"}, "roll.start": {"cmd", "id", "roll_id"}, "roll.end": {"cmd", "id"}}


class ControlTarget(Protocol):
    """What the control socket drives (the `Daemon`)."""

    @property
    def roll_id(self) -> str: ...

    def status(self) -> dict[str, Any]: ...

    def new_roll(self, roll_id: str | None = None) -> str: ...


class ControlRequestError(ValueError):
    """A request the control protocol does not allow; its message goes back to the client."""


@dataclass(frozen=True)
class ControlRequest:
    cmd: str
    roll_id: str | None = None
    id: int | str | None = None


@dataclass
class ControlStats:
    requests: int = 0
    errors: int = 0
    rebinds: int = 0
    restarts_total: int = 0  # an error escaped the serving loop (or the thread died) and it started again


def parse_request(frames: list[bytes]) -> ControlRequest:
    """Validate the request frames (after the envelope); raises ControlRequestError."""
    if len(frames) != 1:
        raise ControlRequestError(f"a control request is exactly one frame of JSON, got {len(frames)} frames")
    try:
        data = load_request(
            frames[0], max_bytes=MAX_REQUEST_BYTES, max_depth=MAX_REQUEST_DEPTH, example='{"cmd": "status"}'
        )
    except BoundedJSONError as exc:
        raise ControlRequestError(str(exc)) from None
    if not isinstance(data, dict):
        raise ControlRequestError('request must be a JSON object such as {"cmd": "status"}')
    req_id = data.get("id")
    if req_id is not None and not request_id_ok(req_id):
        raise ControlRequestError("id must be a 64-bit integer or a string of at most 64 characters")
    cmd = data.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise ControlRequestError(f"unknown cmd {cmd!r}; one of {', '.join(COMMANDS)}")
    unknown = sorted(set(data) - _KEYS[cmd])
    if unknown:
        raise ControlRequestError(f"unknown key(s) {unknown} for {cmd}; allowed: {sorted(_KEYS[cmd])}")
    roll_id = data.get("roll_id")
    if roll_id is not None and not (isinstance(roll_id, str) and ROLL_ID.match(roll_id)):
        raise ControlRequestError(
            f"roll_id {roll_id!r}: 1-128 characters, letters, digits and _ . : - (starting with a letter or digit)"
        )
    return ControlRequest(cmd=cmd, roll_id=roll_id, id=req_id)


def execute(target: ControlTarget, request: ControlRequest) -> dict[str, Any]:
    """Run one validated command; returns the answer's fields."""
    if request.cmd == "status":
        return {"ok": True, "status": target.status()}
    current = target.roll_id
    if request.cmd == "roll.start":
        if request.roll_id is not None and request.roll_id == current:
            raise ControlRequestError(f"roll {current} is the current roll; choose a new roll_id")
        new = target.new_roll(request.roll_id)
        log.info("control: roll.start %s (ends %s)", new, current)
        return {"ok": True, "roll_id": new, "ended_roll_id": current}
    new = target.new_roll(None)
    log.info("control: roll.end %s (next roll %s)", current, new)
    return {"ok": True, "ended_roll_id": current, "next_roll_id": new}


def _plain(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, unknown objects their str()."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def encode_answer(fields: dict[str, Any]) -> bytes:
    return json.dumps(_plain(fields), separators=(",", ":"), allow_nan=False).encode()


class ControlServer:
    """Serves `target` on a ROUTER at `endpoint` from its own thread (see module doc)."""

    def __init__(self, target: ControlTarget, *, endpoint: str, security: SecurityConfig) -> None:
        self.target = target
        self.requested_endpoint = endpoint
        self.security = security
        self.endpoint = ""
        self.stats = ControlStats()
        self.curve: CurveServer | None = None
        self._ctx: zmq.Context[Any] | None = None
        self._socket: zmq.Socket[Any] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rebind = threading.Event()
        self._supervise = threading.Lock()
        self._down_since: float | None = None
        self._last_failure = ""

    def start(self) -> None:
        """Bind (ConfigError for a bad or taken endpoint, or CURVE that cannot be enforced), serve."""
        ctx: zmq.Context[Any] = zmq.Context()
        self._ctx = ctx
        try:
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
                self.curve.add_revocation_listener(self._rebind.set)
            sock = ctx.socket(zmq.ROUTER)
            self._socket = sock
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            sock.setsockopt(zmq.RCVHWM, 1000)
            sock.setsockopt(zmq.SNDHWM, 1000)
            if self.curve is not None:
                self.curve.apply(sock)
            self.endpoint = bind(sock, self.requested_endpoint, "publish.control_endpoint")
        except BaseException:
            self._close_sockets()
            raise
        self._stop.clear()
        self._spawn()
        log.info("control socket on %s (CURVE %s)", self.endpoint, "on" if self.curve else "off")

    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loomsight-control", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """The server thread is alive and serving (not in an error's back-off)."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._down_since is None

    def problem(self) -> str | None:
        """Why control requests are not being answered now, or None while they are (or after stop)."""
        if self._stop.is_set() or self._thread is None or self.running:
            return None
        state = "restarting" if self._thread.is_alive() else "thread dead"
        return (
            f"control socket on {self.endpoint} is down ({state}; last error: {self._last_failure or 'none'}; "
            f"{self.stats.restarts_total} restarts so far)"
        )

    def ensure_running(self) -> bool:
        """Supervisor (the daemon's status loop): start a new thread on the same socket if it died."""
        with self._supervise:
            thread = self._thread
            if self._stop.is_set() or thread is None or thread.is_alive() or self._socket is None:
                return False
            self.stats.restarts_total += 1
            log.error(
                "control thread on %s had died (%s); starting it again (restart %d)",
                self.endpoint,
                self._last_failure or "no error recorded",
                self.stats.restarts_total,
            )
            self._spawn()
            return True

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        with self._supervise:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("control thread did not stop within %.1f s", timeout_s)
                return  # it still owns the socket; the process exit releases it
        self._close_sockets()

    def _close_sockets(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._socket.close(linger=0)
            self._socket = None
        if self.curve is not None:
            self.curve.stop()
            self.curve = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            **asdict(self.stats),
            "running": self.running,
            "curve": self.curve.stats() if self.curve else None,
        }

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        sock = self._socket
        assert sock is not None
        next_recheck = time.monotonic() + self.security.recheck_s
        backoff_s = POLL_MS / 1000.0
        while not self._stop.is_set():
            try:
                self._down_since = None
                if self.curve is not None and time.monotonic() >= next_recheck:
                    next_recheck = time.monotonic() + self.security.recheck_s
                    self.curve.recheck()
                if self._rebind.is_set():
                    self._rebind.clear()
                    self.stats.rebinds += 1
                    rebind(sock, self.endpoint)
                if sock.poll(POLL_MS, zmq.POLLIN):
                    for _ in range(MAX_PER_POLL):
                        try:
                            msg = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._answer(sock, msg)
                backoff_s = POLL_MS / 1000.0
            except zmq.ContextTerminated:
                return
            except Exception as exc:  # the control socket must never take the daemon down
                self._down_since = time.monotonic()
                self._last_failure = f"{type(exc).__name__}: {exc}"[:300]
                self.stats.restarts_total += 1
                log.exception(
                    "control socket: unexpected error; serving again in %.2f s (restart %d)",
                    backoff_s,
                    self.stats.restarts_total,
                )
                self._stop.wait(backoff_s)
                backoff_s = min(1.0, backoff_s * 2)
            except BaseException as exc:  # the thread ends; ensure_running() starts another
                self._down_since = time.monotonic()
                self._last_failure = f"{type(exc).__name__}: {exc}"[:300]
                log.critical("control thread died: %s", self._last_failure)
                raise

    def _answer(self, sock: zmq.Socket[Any], msg: list[bytes]) -> None:
        self.stats.requests += 1
        if len(msg) >= 3 and msg[1] == b"":  # REQ (or a DEALER imitating it): identity, delimiter
            envelope, frames = msg[:2], msg[2:]
        else:
            envelope, frames = msg[:1], msg[1:]
        req_id: int | str | None = None
        try:
            request = parse_request(frames)
            req_id = request.id
            fields = execute(self.target, request)
        except ControlRequestError as exc:
            fields = self._error(str(exc))
        except Exception as exc:
            log.exception("control command failed")
            fields = self._error(f"command failed: {type(exc).__name__}: {exc}")
        if req_id is not None:
            fields["id"] = req_id
        try:
            answer = encode_answer(fields)
        except (TypeError, ValueError) as exc:
            answer = encode_answer(self._error(f"answer could not be encoded: {exc}"))
        with contextlib.suppress(zmq.ZMQError):  # a client that left does not get its answer
            sock.send_multipart([*envelope, answer], zmq.NOBLOCK)

    def _error(self, message: str) -> dict[str, Any]:
        self.stats.errors += 1
        if self.stats.errors <= 10 or self.stats.errors % 1000 == 0:
            log.warning("control request refused (%d so far): %s", self.stats.errors, message)
        return {"ok": False, "error": message}


__all__ = [
    "COMMANDS",
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_BYTES",
    "ControlRequest",
    "ControlRequestError",
    "ControlServer",
    "ControlTarget",
    "encode_answer",
    "execute",
    "parse_request",
]
