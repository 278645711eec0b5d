"""The subscriber's bookkeeping: events in, exactly once and in `(epoch, seq)` order out.

No sockets here: `EventSubscriber` feeds it what arrives (live events, replayed events, what
heartbeats and `replay.end` say exists) and asks it what can be delivered and whether a gap is
open. Rules:

- an event at or below the delivered position, or already buffered, is a duplicate;
- events above the next expected seq wait in a bounded buffer until the gap is filled;
- `exists_up_to(n)` (a heartbeat's next seq) proves events up to n - 1 exist even if none arrived;
- `spool_answered_up_to(m)` (a `replay.end`) means whatever is still missing up to m is gone from
  the spool: it is counted lost and skipped;
- a new epoch delivers what was buffered from the old one (counting the holes lost) and restarts
  at seq 0 of the new one.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from runtime.events.schema import Event

log = logging.getLogger(__name__)

MAX_PENDING = 200_000


@dataclass
class SubscriberStats:
    delivered: int = 0
    live: int = 0  # delivered events that arrived on the PUB stream
    recovered: int = 0  # delivered events that came from replay (gaps, slow-joiner start)
    lvc: int = 0  # last-value events delivered at start
    lost: int = 0  # seqs the spool no longer had (or that could not be replayed)
    duplicates: int = 0  # copies discarded (live and replay overlap)
    gaps: int = 0  # gap episodes detected
    live_received: int = 0  # event messages (not heartbeats) read from the SUB socket
    heartbeats: int = 0
    replay_requests: int = 0
    replay_errors: int = 0
    malformed: int = 0
    epoch_changes: int = 0
    first_live_seq: int | None = None
    publisher_dead: bool = False

    @property
    def missing_detected(self) -> int:
        """Seqs found missing from the live stream (then recovered or lost)."""
        return self.recovered + self.lost

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "missing_detected": self.missing_detected}


class Sequencer:
    """Orders one publisher's events; `count_lost=False` where gaps are expected (topic filter, no replay)."""

    def __init__(self, stats: SubscriberStats, *, count_lost: bool = True) -> None:
        self.stats = stats
        self.count_lost = count_lost
        self.epoch: str | None = None
        self.pos: int | None = None  # last delivered (or skipped) seq; None until the start is known
        self.known_next = 1  # events below this seq are known to exist
        self.lost_through = 0  # missing seqs up to here are gone from the spool
        self._pending: dict[int, tuple[Event, str]] = {}
        self._heap: list[int] = []
        self._ready: deque[tuple[Event, str]] = deque()

    # ------------------------------------------------------------------ start
    @property
    def started(self) -> bool:
        return self.pos is not None

    def resume(self, epoch: str | None, pos: int) -> None:
        """Start right after a saved position (epoch None: whatever epoch the publisher has)."""
        self.epoch, self.pos = epoch, pos
        self.known_next = max(self.known_next, pos + 1)

    def start_at(self, pos: int, *, last_seq: int = 0, lvc_events: list[Event] | None = None) -> None:
        """Start after `pos`; the last-value events (seq <= pos) are delivered first."""
        self.pos = pos
        self.known_next = max(self.known_next, pos + 1, last_seq + 1)
        if lvc_events:
            self._ready.extend((e, "lvc") for e in sorted(lvc_events, key=lambda e: e.seq) if e.seq <= pos)
        for seq in [s for s in self._pending if s <= pos]:
            del self._pending[seq]
        self._heap = sorted(self._pending)

    def start_from_live(self) -> bool:
        """Start at the first event we have (no replay answer came); False if we have none yet."""
        if self._heap:
            self.start_at(self._heap[0] - 1)
        elif self.known_next > 1:
            self.start_at(self.known_next - 1)
        else:
            return False
        return True

    # ------------------------------------------------------------------ input
    def observe_epoch(self, epoch: str) -> bool:
        """Track the publisher's epoch; True when it changed (its spool was recreated)."""
        if self.epoch is None:
            self.epoch = epoch
            return False
        if epoch == self.epoch:
            return False
        log.warning("publisher epoch changed from %s to %s (its spool was recreated)", self.epoch, epoch)
        self.stats.epoch_changes += 1
        if self.pos is not None:
            prev = self.pos
            for seq in sorted(self._pending):
                self._count_lost(seq - prev - 1)
                self._ready.append(self._pending[seq])
                prev = seq
            self._count_lost(self.known_next - 1 - prev)
            self.pos = 0
        self._pending.clear()
        self._heap.clear()
        self.epoch = epoch
        self.known_next = 1
        self.lost_through = 0
        return True

    def accept(self, event: Event, source: str) -> bool:
        """Take an event ("live" or "replay"); True when it revealed a new epoch."""
        switched = self.observe_epoch(event.epoch)
        seq = event.seq
        if (self.pos is not None and seq <= self.pos) or seq in self._pending:
            self.stats.duplicates += 1
            return switched
        self.known_next = max(self.known_next, seq + 1)
        if len(self._pending) >= MAX_PENDING:
            top = max(self._pending)
            if seq > top:
                return switched  # dropped here; the gap logic replays it later
            del self._pending[top]
            self._heap = sorted(self._pending)
        self._pending[seq] = (event, source)
        heapq.heappush(self._heap, seq)
        return switched

    def exists_up_to(self, next_seq: int) -> None:
        """A heartbeat says the publisher's next seq is `next_seq`."""
        self.known_next = max(self.known_next, next_seq)

    def spool_answered_up_to(self, last_seq: int) -> None:
        """A replay ended at `last_seq`: what is still missing up to it is not in the spool."""
        self.lost_through = max(self.lost_through, last_seq)
        self.known_next = max(self.known_next, last_seq + 1)

    # ------------------------------------------------------------------ output
    @property
    def gap(self) -> bool:
        """Events we know exist are missing right after the delivered position."""
        return self.pos is not None and self.known_next > self.pos + 1 and not self.deliverable

    @property
    def deliverable(self) -> bool:
        return bool(self._ready) or (self.pos is not None and self.pos + 1 in self._pending)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def pop(self) -> tuple[Event, str] | None:
        """The next event to deliver and where it came from, or None while waiting."""
        if self._ready:
            return self._ready.popleft()
        if self.pos is None:
            return None
        while True:
            while self._heap:
                seq = self._heap[0]
                if seq not in self._pending or seq <= self.pos:
                    heapq.heappop(self._heap)
                    self._pending.pop(seq, None)
                    continue
                if seq == self.pos + 1:
                    heapq.heappop(self._heap)
                    self.pos = seq
                    return self._pending.pop(seq)
                break
            limit = self.lost_through
            if self._heap:
                limit = min(limit, self._heap[0] - 1)
            if limit <= self.pos:
                return None
            self.declare_lost(limit, "no longer in the publisher's spool")

    def give_up_gap(self, why: str) -> None:
        """Stop waiting: skip to the next buffered event (or to the last one known to exist)."""
        self.pop_stale()
        through = self._heap[0] - 1 if self._heap else self.known_next - 1
        self.declare_lost(through, why)

    def pop_stale(self) -> None:
        while self._heap and (self._heap[0] not in self._pending or (self.pos or 0) >= self._heap[0]):
            self._pending.pop(heapq.heappop(self._heap), None)

    def declare_lost(self, through: int, why: str) -> None:
        if self.pos is None or through <= self.pos:
            return
        if self._count_lost(through - self.pos):
            log.warning("events %d..%d lost: %s", self.pos + 1, through, why)
        self.pos = through

    def _count_lost(self, n: int) -> bool:
        if n <= 0 or not self.count_lost:
            return False
        self.stats.lost += n
        return True
