"""The systemd notify protocol, spoken by the daemon itself (no python-systemd dependency).

systemd passes `NOTIFY_SOCKET` (a filesystem path, or `@name` for an abstract socket) to a
`Type=notify` service; the service sends newline-separated `KEY=VALUE` datagrams to it:
`READY=1` after warm-up, `STATUS=...`, `EXTEND_TIMEOUT_USEC=...` while a slow engine loads,
`WATCHDOG=1` keep-alives and `STOPPING=1`. Outside systemd (no `NOTIFY_SOCKET`) a `Notifier`
does nothing and says so once in the log.

Errors are not swallowed: a malformed `NOTIFY_SOCKET` raises `ConfigError` when the notifier is
built; a failed send is logged (the first one at ERROR, the rest at DEBUG), counted in `stats()`,
and reported to the caller by a False return.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from runtime.errors import ConfigError

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
SEND_TIMEOUT_S = 1.0
MAX_STATUS_CHARS = 1024


def parse_notify_socket(value: str) -> str | bytes:
    """The address to `sendto` for a NOTIFY_SOCKET value: a path, or bytes for an abstract socket.

    Raises ConfigError for anything else (an empty name, a relative path, `vsock:` which this
    daemon does not speak, a path longer than AF_UNIX allows).
    """
    if value.startswith("@"):
        if len(value) < 2:
            raise ConfigError(f"{NOTIFY_SOCKET_ENV}={value!r}: an abstract socket needs a name after '@'")
        address: str | bytes = b"\0" + value[1:].encode()
        size = len(address)
    elif value.startswith("/"):
        address = value
        size = len(os.fsencode(value))
    else:
        raise ConfigError(
            f"{NOTIFY_SOCKET_ENV}={value!r}: expected an absolute AF_UNIX path or '@abstract-name'; "
            "unset it to run outside systemd"
        )
    if size > 107:
        raise ConfigError(f"{NOTIFY_SOCKET_ENV}={value!r}: {size} bytes is longer than AF_UNIX allows (107)")
    return address


def watchdog_usec(env: Mapping[str, str] | None = None, pid: int | None = None) -> int | None:
    """The watchdog period systemd expects from this process, in microseconds, or None.

    None when `WATCHDOG_USEC` is unset, or when `WATCHDOG_PID` names another process (the
    watchdog then belongs to that one). A malformed value raises ConfigError.
    """
    env = os.environ if env is None else env
    raw = env.get(WATCHDOG_USEC_ENV)
    if raw is None or raw == "":
        return None
    try:
        usec = int(raw)
    except ValueError:
        raise ConfigError(f"{WATCHDOG_USEC_ENV}={raw!r} is not an integer number of microseconds") from None
    if usec <= 0:
        raise ConfigError(f"{WATCHDOG_USEC_ENV}={raw!r} must be positive")
    owner = env.get(WATCHDOG_PID_ENV)
    if owner:
        try:
            owner_pid = int(owner)
        except ValueError:
            raise ConfigError(f"{WATCHDOG_PID_ENV}={owner!r} is not a process id") from None
        if owner_pid != (os.getpid() if pid is None else pid):
            log.info("systemd watchdog belongs to pid %s, not to this process; not pinging", owner_pid)
            return None
    return usec


@dataclass(frozen=True)
class NotifyStats:
    """What the notifier did, for the daemon's `status`."""

    enabled: bool
    sent: int
    send_errors: int
    last_error: str | None


class Notifier:
    """Sends sd_notify messages to systemd; a no-op when NOTIFY_SOCKET is unset.

    Thread-safe: the pipeline's watchdog and the main thread may both send.
    """

    def __init__(self, address: str | None = None, *, env: Mapping[str, str] | None = None) -> None:
        """`address` is a NOTIFY_SOCKET value; None reads it from `env` (default os.environ)."""
        if address is None:
            address = (os.environ if env is None else env).get(NOTIFY_SOCKET_ENV) or None
        self.address_text = address
        self._address = parse_notify_socket(address) if address else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._sent = 0
        self._errors = 0
        self._last_error: str | None = None
        if self._address is None:
            log.debug(
                "%s is not set: not running under systemd, notifications are skipped", NOTIFY_SOCKET_ENV
            )

    @classmethod
    def from_env(cls, *, unset_environment: bool = False) -> Notifier:
        """A notifier for this process's NOTIFY_SOCKET.

        With `unset_environment`, NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are removed from
        os.environ afterwards so that child processes do not talk to systemd on our behalf.
        """
        notifier = cls(os.environ.get(NOTIFY_SOCKET_ENV) or None)
        if unset_environment:
            for name in (NOTIFY_SOCKET_ENV, WATCHDOG_USEC_ENV, WATCHDOG_PID_ENV):
                os.environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send one datagram of `KEY=VALUE` lines. True when sent (or disabled and nothing to do)."""
        if self._address is None:
            return True
        for item in assignments:
            if "=" not in item or "\n" in item:
                raise ValueError(f"sd_notify assignment {item!r} must be one KEY=VALUE line")
        payload = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._sock.settimeout(SEND_TIMEOUT_S)
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                self._errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                level = logging.ERROR if self._errors == 1 else logging.DEBUG
                log.log(
                    level,
                    "sd_notify to %s failed (%s); systemd may not see READY/WATCHDOG (failure #%d, "
                    "further failures are counted in status)",
                    self.address_text,
                    self._last_error,
                    self._errors,
                )
                return False
            self._sent += 1
            return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (after warm-up): systemd moves the unit to 'active'."""
        return self.send("READY=1", *self._status_line(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (queues are draining)."""
        return self.send("STOPPING=1", *self._status_line(status))

    def status(self, text: str) -> bool:
        """One line shown by `systemctl status`."""
        return self.send(*self._status_line(text))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the start (or stop) timeout fires: EXTEND_TIMEOUT_USEC.

        Send it again before that time runs out while a slow step (engine load) continues.
        """
        if seconds <= 0:
            raise ValueError(f"extend_timeout needs a positive number of seconds, got {seconds}")
        return self.send(f"EXTEND_TIMEOUT_USEC={round(seconds * 1_000_000)}")

    @contextmanager
    def extending_timeout(
        self, step_s: float, *, max_total_s: float, status: str | None = None
    ) -> Iterator[None]:
        """Keep systemd's start (or stop) timeout ahead of a slow blocking step, within a bound.

        Sends EXTEND_TIMEOUT_USEC=step_s now and every step_s/2 while the block runs, but never
        beyond `max_total_s` in all: a load that hangs still ends in systemd's timeout.
        """
        if step_s <= 0 or max_total_s < step_s:
            raise ValueError(f"extending_timeout needs 0 < step_s ({step_s}) <= max_total_s ({max_total_s})")
        if status:
            self.status(status)
        if not self.enabled:
            yield
            return
        done = threading.Event()
        deadline = time.monotonic() + max_total_s

        def extend() -> None:
            while not done.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "%s still running after %.0f s: no more start-up time requested",
                        status or "step",
                        max_total_s,
                    )
                    return
                self.extend_timeout(min(step_s, remaining))
                done.wait(step_s / 2)

        thread = threading.Thread(target=extend, name="sd-extend-timeout", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def watchdog(self) -> bool:
        """One keep-alive. Call it from pipeline progress (see ProgressWatchdog), never from a timer."""
        return self.send("WATCHDOG=1")

    def stats(self) -> NotifyStats:
        with self._lock:
            return NotifyStats(self.enabled, self._sent, self._errors, self._last_error)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    @staticmethod
    def _status_line(text: str | None) -> list[str]:
        if text is None:
            return []
        one_line = " ".join(text.split())
        return [f"STATUS={one_line[:MAX_STATUS_CHARS]}"]

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
