"""The systemd watchdog, fed by pipeline progress rather than by a clock.

A timer thread that sends WATCHDOG=1 every few seconds keeps a wedged daemon alive forever: the
thread ticks while inference hangs. Here nothing ticks by itself. The pipeline calls
`progress()` whenever a strip has been fully processed (detected, merged, handed to the
publisher); that call sends WATCHDOG=1 when half the watchdog period has passed since the last
ping. When the pipeline stops making progress the pings stop, and systemd (WatchdogSec=) aborts
and restarts the daemon.

A loom that is not moving is not a stuck pipeline: when the source timed out and every queue is
empty, the daemon calls `idle()` instead, which also keeps the watchdog fed. It must not call
`idle()` while work is queued, or a hung detector would look idle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from runtime.ops.sdnotify import Notifier, watchdog_usec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchdogStats:
    """For the daemon's `status`: is the watchdog on, how often it pinged, how long since progress."""

    enabled: bool
    interval_s: float | None
    pings: int
    progress_total: int
    idle_total: int
    since_progress_s: float | None


class ProgressWatchdog:
    """Sends WATCHDOG=1 from pipeline progress, at most once per `interval_s`.

    `interval_s` defaults to half of systemd's WATCHDOG_USEC (honouring WATCHDOG_PID); without it
    the watchdog is disabled and `progress()` only counts. Thread-safe.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        interval_s: float | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s is None:
            usec = watchdog_usec(env)
            interval_s = usec / 2_000_000 if usec is not None else None
        if interval_s is not None and interval_s <= 0:
            raise ValueError(f"watchdog interval_s must be positive, got {interval_s}")
        self.notifier = notifier
        self.interval_s = interval_s if notifier.enabled else None
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ping: float | None = None
        self._last_beat: float | None = None
        self._pings = 0
        self._progress = 0
        self._idle = 0
        if self.interval_s is not None:
            log.info(
                "systemd watchdog on: pinging at most every %.1f s while the pipeline progresses",
                self.interval_s,
            )

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None

    def progress(self, strips: int = 1) -> None:
        """`strips` strips were fully processed."""
        self._beat(progress=strips)

    def idle(self) -> None:
        """The pipeline is alive with nothing to do: the source timed out and every queue is empty."""
        self._beat(idle=1)

    def stats(self) -> WatchdogStats:
        with self._lock:
            since = None if self._last_beat is None else self._clock() - self._last_beat
            return WatchdogStats(
                self.enabled, self.interval_s, self._pings, self._progress, self._idle, since
            )

    def _beat(self, *, progress: int = 0, idle: int = 0) -> None:
        with self._lock:
            now = self._clock()
            self._progress += progress
            self._idle += idle
            self._last_beat = now
            if self.interval_s is None:
                return
            if self._last_ping is not None and now - self._last_ping < self.interval_s:
                return
            # Rate-limit even when the send fails: the notifier logs and counts the failure.
            self._last_ping = now
            if self.notifier.watchdog():
                self._pings += 1
