"""A read-only view of the event spool, for the replay thread (its own SQLite connection).

WAL readers never block the writer; every query is a short implicit read transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from runtime.errors import SpoolError


def connect_sqlite(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode that waits (up to 10 s) for a lock instead of failing."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


class SpoolReader:
    """A read-only view for the replay thread (its own connection; use from one thread)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._conn = connect_sqlite(self.path)
        self._conn.execute("PRAGMA query_only = 1")
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is None:
            raise SpoolError(f"spool {self.path} has no epoch; open it with EventSpool first")
        self.epoch = str(row[0])

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def bounds(self) -> tuple[int | None, int]:
        """(oldest seq kept or None, last seq ever committed)."""
        first, last = self._conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
        pruned = int(self._conn.execute("SELECT value FROM meta WHERE key = 'pruned_through'").fetchone()[0])
        return (None if first is None else int(first)), max(int(last or 0), pruned)

    def read_after(self, since_seq: int, until_seq: int, limit: int) -> list[tuple[int, list[bytes]]]:
        rows = self._conn.execute(
            "SELECT seq, topic, body, crop FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (since_seq, until_seq, limit),
        ).fetchall()
        return [(int(seq), _frames(topic, body, crop)) for seq, topic, body, crop in rows]

    def last_values(self, max_seq: int) -> list[tuple[int, list[bytes]]]:
        """The cached last `roll` and `status` events with seq <= max_seq, in seq order."""
        rows = self._conn.execute(
            "SELECT seq, topic, body, crop FROM lvc WHERE seq <= ? ORDER BY seq", (max_seq,)
        ).fetchall()
        return [(int(seq), _frames(topic, body, crop)) for seq, topic, body, crop in rows]

    def seq_before(self, wall_s: float) -> int:
        """The last seq committed before `wall_s` (binary search on seq; created_s grows with it)."""
        first, last = self.bounds()
        if first is None:
            return last
        lo, hi = first, last
        created_first = self._created(first)
        if created_first is None or created_first >= wall_s:
            return first - 1
        # invariant: created(lo) < wall_s
        while lo < hi:
            mid = (lo + hi + 1) // 2
            created = self._created_at_or_after(mid)
            if created is not None and created < wall_s:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _created(self, seq: int) -> float | None:
        row = self._conn.execute("SELECT created_s FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else float(row[0])

    def _created_at_or_after(self, seq: int) -> float | None:
        row = self._conn.execute(
            "SELECT created_s FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (seq,)
        ).fetchone()
        return None if row is None else float(row[0])


def _frames(topic: bytes, body: bytes, crop: bytes | None) -> list[bytes]:
    parts = [bytes(topic), bytes(body)]
    if crop is not None:
        parts.append(bytes(crop))
    return parts
