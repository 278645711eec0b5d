"""Read a daemon's event spool, read-only, and group its events into rolls.

The spool is opened with SQLite's `mode=ro` URI: a reader never writes, never takes a write lock
and, the spool being in WAL mode, never blocks the running daemon (nor is blocked by it). Reading
is a few plain SELECTs in seq order; crops are fetched one by one only when asked for. The
database file is never written; like every WAL reader, SQLite may create the `-wal`/`-shm` side
files beside it when the daemon is not running (the daemon uses them as they are).

A roll is every event whose `roll_id` it is: its `roll` start event (header fields), its
`defect` and `stop` events, and its `roll` end event (the daemon's summary, or the explicit end
of a roll a crash left open, `reason: "interrupted"`). Retention may have pruned a roll's oldest
events; `RollEvents.complete` says whether its start is still there.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ReportError, SpoolError
from runtime.events.schema import EVENT_SCHEMA
from runtime.events.spool import SPOOL_SCHEMA

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 2000


@dataclass
class RollEvents:
    """The spooled events of one roll, in seq order (bodies as parsed JSON)."""

    roll_id: str
    line_id: str
    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    defects: list[dict[str, Any]] = field(default_factory=list)
    stops: list[dict[str, Any]] = field(default_factory=list)
    crop_seqs: dict[str, int] = field(default_factory=dict)  # defect_id -> seq, defects with a crop
    first_ts: str = ""
    last_ts: str = ""

    @property
    def complete(self) -> bool:
        """The spool still holds the roll's start event (retention has not pruned it)."""
        return self.start is not None


class SpoolRolls:
    """A read-only view of one spool file. Use as a context manager."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._conn = _open_read_only(self.path)
        self.epoch, self.pruned_through = _check_meta(self._conn, self.path)

    def __enter__(self) -> SpoolRolls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def rolls(self, since_seq: int = 0) -> dict[str, RollEvents]:
        """Every roll the spool holds events of (after `since_seq`), by roll id, in the order they started."""
        rolls: dict[str, RollEvents] = {}
        cursor = self._conn.execute(
            "SELECT seq, kind, body, crop IS NOT NULL FROM events"
            " WHERE seq > ? AND kind IN ('roll', 'defect', 'stop') ORDER BY seq",
            (since_seq,),
        )
        for seq, kind, raw, has_crop in cursor:
            body = _parse(raw, seq, self.path)
            roll_id = body.get("roll_id")
            if not isinstance(roll_id, str) or not roll_id:
                continue
            roll = rolls.get(roll_id)
            if roll is None:
                roll = rolls[roll_id] = RollEvents(roll_id, str(body.get("line_id", "")))
                roll.first_ts = str(body.get("ts", ""))
            roll.last_ts = str(body.get("ts", roll.last_ts))
            if kind == "defect":
                roll.defects.append(body)
                if has_crop:
                    roll.crop_seqs[str(body.get("defect_id", seq))] = int(seq)
            elif kind == "stop":
                roll.stops.append(body)
            elif body.get("state") == "start":
                roll.start = body
            elif body.get("state") == "end":
                roll.end = body
        return rolls

    def roll(self, roll_id: str, since_seq: int = 0) -> RollEvents:
        rolls = self.rolls(since_seq)
        if roll_id not in rolls:
            known = ", ".join(list(rolls)[-10:]) or "none"
            raise ReportError(
                f"roll {roll_id!r} is not in spool {self.path}; the rolls it holds (newest 10): {known}. "
                "Pass one of them to --roll, or --all"
            )
        return rolls[roll_id]

    def crop(self, seq: int) -> bytes | None:
        row = self._conn.execute("SELECT crop FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])


def _open_read_only(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise SpoolError(
            f"spool {path} does not exist; pass --spool with the daemon's spool.path "
            "(the demo's is loomsight-demo-SEED.sqlite3 in the temp folder)"
        )
    if not path.is_file():
        raise SpoolError(f"spool {path} is not a file; pass --spool with the daemon's spool.path")
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only = 1")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise SpoolError(
            f"spool {path} is not a Loomsight spool (SQLite says: {exc}); pass --spool with the "
            "daemon's spool.path"
        ) from None
    return conn


def _check_meta(conn: sqlite3.Connection, path: Path) -> tuple[str, int]:
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        conn.execute("SELECT seq, kind, body, crop FROM events LIMIT 0").fetchall()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise SpoolError(
            f"spool {path} is not a Loomsight spool (no meta/events tables: {exc}); pass --spool with "
            "the daemon's spool.path"
        ) from None
    schema = meta.get("schema")
    if schema != SPOOL_SCHEMA:
        conn.close()
        if isinstance(schema, str) and schema.startswith("loomsight.spool/"):
            raise SpoolError(
                f"spool {path} has schema {schema!r}; this loomsight reads {SPOOL_SCHEMA!r}: "
                "report it with the loomsight version that wrote it (upgrade this one)"
            )
        raise SpoolError(f"spool {path} is not a Loomsight spool (meta schema {schema!r})")
    return str(meta.get("epoch", "")), int(meta.get("pruned_through", "0") or 0)


def _parse(raw: bytes, seq: int, path: Path) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise SpoolError(f"spool {path}: event seq {seq} is not JSON; the file is damaged") from None
    if not isinstance(body, dict):
        raise SpoolError(f"spool {path}: event seq {seq} is not a JSON object; the file is damaged")
    schema = body.get("schema")
    if schema != EVENT_SCHEMA:
        raise SpoolError(
            f"spool {path}: event seq {seq} has schema {schema!r}; this loomsight reads {EVENT_SCHEMA!r}: "
            "report it with the loomsight version that wrote it (upgrade this one)"
        )
    return body
