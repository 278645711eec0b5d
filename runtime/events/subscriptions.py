"""Subscriptions seen on the publisher's XPUB socket, and the bounded wait after a restart.

The publisher's socket is an XPUB: to a subscriber it is the same as PUB, but it hears every
subscribe and unsubscribe. With `XPUB_VERBOSER` each subscriber's every subscription reaches us,
and so does every unsubscription, including those ZeroMQ makes when a subscriber's connection
ends; `active` is therefore the number of subscription filters that connected subscribers hold
right now (a plain SUB with one `SUBSCRIBE ""` counts one).

After a restart, PUB drops whatever it sends before a subscriber is back, so the restart's first
events (the interrupted roll's end) would be lost to plain SUB clients. The publisher keeps the
`active` count in the spool whenever it changes (`remember`), and a restart waits, bounded by
`publish.restart_grace_s`, until as many subscriptions as were active before it are back (at least
one): a plain SUB that comes back within the grace hears everything from the restart's first
event on, and the wait ends as soon as the last one is back instead of always taking the grace.

Anything else an XPUB can receive (an XSUB peer's own messages) is counted as `other` and dropped.
Every `drain` reads at most `MAX_DRAIN` messages, so one call never holds the socket lock long.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

log = logging.getLogger(__name__)

MAX_DRAIN = 10_000
WAIT_POLL_S = 0.02


def configure_xpub(sock: zmq.Socket[Any]) -> None:
    """Pass every subscription and unsubscription up, not only the first/last per topic."""
    sock.setsockopt(zmq.XPUB_VERBOSER, 1)


class SubscriptionTracker:
    """Counts the XPUB socket's subscription messages. Not thread-safe: call under the socket's lock."""

    def __init__(self, sock: zmq.Socket[Any], *, remember: Callable[[int], None] | None = None) -> None:
        self._sock = sock
        self._remember = remember
        self.active = 0
        self.subscribed_total = 0
        self.unsubscribed_total = 0
        self.other_total = 0
        self._remembered: int | None = None

    def drain(self) -> int:
        """Read the pending subscription messages; returns how many new subscriptions arrived."""
        new = 0
        for _ in range(MAX_DRAIN):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            msg = frames[0] if len(frames) == 1 else b""
            if msg[:1] == b"\x01":
                new += 1
                self.subscribed_total += 1
                self.active += 1
            elif msg[:1] == b"\x00":
                self.unsubscribed_total += 1
                self.active = max(0, self.active - 1)
            else:
                self.other_total += 1
        if self._remember is not None and self.active != self._remembered:
            try:
                self._remember(self.active)
                self._remembered = self.active
            except Exception as exc:  # a spool that cannot take it must not stop publishing
                log.warning("could not record %d active subscriptions in the spool: %s", self.active, exc)
        return new

    def stats(self) -> dict[str, int]:
        return {
            "active": self.active,
            "subscribed_total": self.subscribed_total,
            "unsubscribed_total": self.unsubscribed_total,
            "other_messages_total": self.other_total,
        }


@dataclass(frozen=True)
class RestartWait:
    """What the wait after a restart found: `expected` subscriptions, `heard` of them, in `waited_s`."""

    expected: int
    heard: int
    waited_s: float
    limit_s: float

    @property
    def complete(self) -> bool:
        return self.heard >= self.expected

    def as_dict(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "heard": self.heard,
            "waited_s": round(self.waited_s, 3),
            "limit_s": self.limit_s,
            "complete": self.complete,
        }


def wait_for_subscribers(
    poll_active: Callable[[], int],
    *,
    expected: int,
    limit_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RestartWait:
    """Wait until `poll_active()` (drain, then the active count) reaches `expected`, at most `limit_s`."""
    expected = max(1, expected)
    t0 = clock()
    heard = poll_active()
    while heard < expected and clock() - t0 < limit_s:
        sleep(min(WAIT_POLL_S, max(0.0, limit_s - (clock() - t0))))
        heard = poll_active()
    return RestartWait(expected=expected, heard=heard, waited_s=clock() - t0, limit_s=limit_s)
