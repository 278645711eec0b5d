"""The durable event spool: SQLite in WAL mode with `synchronous=FULL`.

Every spooled event (defect, stop, roll, status; never heartbeats) is committed here *before* it is
sent, so a power cut loses nothing that any subscriber could have seen, and the replay server can
answer `since_seq` from it.

- `seq` comes from the spool: the next number is `max(max(events.seq), meta.pruned_through) + 1`,
  so numbers survive restarts and are never reused, even when retention emptied the table.
- `epoch` is a random id written into the `meta` table when the database is created; a new spool
  file means a new epoch, and subscribers never confuse two histories.
- The `lvc` table keeps the last `roll` and `status` event (the last-value cache a late joiner gets
  at once); it is not pruned.
- Retention by age (`retention_days`) and size (`max_mb`, pages in use) deletes the oldest rows in
  small batches, each its own short transaction, so a publish never waits long.
- A full disk never corrupts the spool (SQLite rolls a failed transaction back) and never stops
  it. A reserve file of `reserve_mb` is kept beside the database. On the first "disk full" the
  `disk_full` alarm goes up, the reserve is deleted (room for the WAL to be checkpointed) and the
  commit is retried; once the reserve is spent, a further failure prunes the oldest tenth of the
  rows (at most 2,000) and checkpoints before the retry, unless pruning already failed to help
  since the last successful commit. If the retry fails too, `SpoolFullError` tells the publisher to
  hold the event and try again later. While the disk is low (`needs_room`), retention also keeps
  min(`reserve_mb`, a quarter of the spool) of free pages inside the file, so the spool rolls over
  its oldest events in its own space and keeps every new one. The reserve is recreated (and the
  alarm cleared) once free space is back above twice its size.
- Checkpoints (PASSIVE, every 0.25 s, by the publisher's maintenance thread) run on a separate
  connection and `wal_autocheckpoint` is off on the writer, so the commit a publish waits for is
  one WAL append and one fsync.

The writer connection is guarded by a lock; `SpoolReader` (spool_reader.py) opens its own
connection for the replay thread (WAL readers never block the writer).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runtime.config import SpoolConfig
from runtime.errors import SpoolError
from runtime.events.spool_reader import SpoolReader, connect_sqlite

log = logging.getLogger(__name__)

__all__ = ["EventSpool", "SpoolError", "SpoolFullError", "SpoolReader", "SpoolStats"]

SPOOL_SCHEMA = "loomsight.spool/1"
LVC_KINDS = ("roll", "status")
PRUNE_BATCH_ROWS = 500
EMERGENCY_PRUNE_ROWS = 2000
WAL_SIZE_LIMIT_BYTES = 16 << 20

_DDL = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, created_s REAL NOT NULL,"
    " topic BLOB NOT NULL, body BLOB NOT NULL, crop BLOB)",
    "CREATE TABLE IF NOT EXISTS lvc (kind TEXT PRIMARY KEY, seq INTEGER NOT NULL, topic BLOB NOT NULL,"
    " body BLOB NOT NULL, crop BLOB)",
)


class SpoolFullError(SpoolError):
    """The event could not be committed because the disk (or the spool's share of it) is full."""


def is_disk_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.Error) and ("disk is full" in text or "database or disk is full" in text)


@dataclass(frozen=True)
class SpoolStats:
    rows: int
    used_bytes: int
    first_seq: int | None
    last_seq: int
    free_disk_bytes: int | None
    reserve_held: bool
    alarm: str | None
    write_failures: int
    pruned_rows: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventSpool:
    """The writer side. `open()`, then `append()` from the publisher (under its lock or this one)."""

    def __init__(self, config: SpoolConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.path = Path(config.path)
        self.reserve_path = self.path.with_name(self.path.name + ".reserve")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_fd: int | None = None
        self._clock = clock
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._ckpt: sqlite3.Connection | None = None
        self.epoch = ""
        self.next_seq = 1
        self._rows = 0
        self._pruned_through = 0
        self._reserve_held = False
        self._reserve_warned = False
        self._disk_full = False
        self._prune_futile = False
        self._disk_low = False
        self._error: str | None = None
        self._write_failures = 0
        self._pruned_rows = 0
        self._room_pruned = 0
        self._room_logged_at = -1e9
        self._free_bytes: int | None = None
        # Test seam: called inside each append transaction before COMMIT (raise to simulate a fault).
        self._fault: Callable[[], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(
                f"spool.path {self.path}: cannot create its folder ({exc.strerror}); "
                "choose a writable spool.path (systemd: StateDirectory=)"
            ) from None
        if not os.access(self.path.parent, os.W_OK):
            raise SpoolError(
                f"spool.path {self.path}: folder {self.path.parent} is not writable by this user; "
                "choose a writable spool.path or fix its permissions"
            )
        self._take_lock()
        try:
            self._open_database()
        except BaseException:
            self._release_lock()
            raise

    def _take_lock(self) -> None:
        """One spool, one owner: an exclusive flock on `<spool>.lock`, held until `close()` (the
        kernel drops it when the process dies, kill -9 included), with the owner's PID written in it.
        A second daemon on the same spool.path would take over its seq numbers; it refuses instead."""
        if self._lock_fd is not None:
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SpoolError(
                f"spool.path {self.path}: cannot open the lock file {self.lock_path} ({exc.strerror}); "
                "choose a writable spool.path or fix its permissions"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpoolError(
                    f"spool.path {self.path}: cannot lock {self.lock_path} ({exc.strerror})"
                ) from None
            who = f"PID {holder}" if holder.isdigit() else "a process that has not written its PID yet"
            raise SpoolError(
                f"spool.path {self.path} is in use by another Loomsight daemon ({who}, lock file "
                f"{self.lock_path}); a spool has one owner: stop that daemon, or give this one its own "
                "spool.path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # the file stays (removing it would race a new owner); the PID goes
            os.close(fd)  # closing the last descriptor drops the flock

    @property
    def owner_pid(self) -> int | None:
        """The PID written in the lock file (this process's while open), or None."""
        try:
            text = self.lock_path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def _open_database(self) -> None:
        try:
            conn = connect_sqlite(self.path)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError(f"spool.path {self.path}: this filesystem does not support SQLite WAL mode")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
            conn.execute("BEGIN IMMEDIATE")
            for ddl in _DDL:
                conn.execute(ddl)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                meta = {"schema": SPOOL_SCHEMA, "epoch": secrets.token_hex(8), "pruned_through": "0"}
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
                log.info("created event spool %s (epoch %s)", self.path, meta["epoch"])
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise SpoolError(
                f"spool.path {self.path}: cannot open the SQLite spool ({exc}); "
                "if the file is not a Loomsight spool, move it away (a new one starts a new epoch)"
            ) from None
        if meta.get("schema") != SPOOL_SCHEMA:
            conn.close()
            raise SpoolError(
                f"spool.path {self.path}: schema {meta.get('schema')!r} is not {SPOOL_SCHEMA!r}; "
                "move the file away to start a new spool"
            )
        self.epoch = meta["epoch"]
        self._pruned_through = int(meta.get("pruned_through", "0"))
        max_seq = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        self.next_seq = max(max_seq, self._pruned_through) + 1
        self._rows = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        self._conn = conn
        self._ckpt = connect_sqlite(self.path)
        self.check_disk()
        log.info(
            "event spool %s: epoch %s, %d rows, next seq %d", self.path, self.epoch, self._rows, self.next_seq
        )

    def close(self) -> None:
        with self._lock:
            for conn in (self._ckpt, self._conn):
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        if conn is self._ckpt:
                            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                        conn.close()
            self._conn = self._ckpt = None
            self._release_lock()

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def alarm(self) -> str | None:
        if self._disk_full:
            return "disk_full"
        if self._error:
            return "spool_error"
        if self._disk_low:
            return "disk_low"
        return None

    # ------------------------------------------------------------------ writing
    def append(self, seq: int, kind: str, frames: Sequence[bytes]) -> None:
        """Commit one event (its exact wire frames) as `seq`, which must be `next_seq`."""
        self.append_many([(seq, kind, frames)])

    def append_many(self, items: Sequence[tuple[int, str, Sequence[bytes]]]) -> None:
        """Commit events `(seq, kind, frames)` in one transaction (one fsync); seqs must follow on.

        Raises SpoolFullError when the disk is full even after releasing the reserve and pruning,
        SpoolError for any other database failure. All or nothing is written, never part.
        """
        if not items:
            return
        with self._lock:
            conn = self._require()
            for offset, (seq, _, _) in enumerate(items):
                if seq != self.next_seq + offset:
                    raise SpoolError(
                        f"spool append out of order: seq {seq}, expected {self.next_seq + offset}"
                    )
            first, last = items[0][0], items[-1][0]
            try:
                self._insert(conn, items)
            except sqlite3.Error as exc:
                self._write_failures += 1
                if not is_disk_full(exc):
                    self._error = str(exc)
                    hint = (
                        " (seq already taken: another process wrote this spool; the lock file "
                        f"{self.lock_path} should prevent that)"
                        if isinstance(exc, sqlite3.IntegrityError)
                        else ""
                    )
                    raise SpoolError(
                        f"spool {self.path}: cannot commit events {first}..{last}: {exc}{hint}; not a full disk"
                    ) from None
                self._on_disk_full(conn)
                try:
                    self._insert(conn, items)
                except sqlite3.Error as exc2:
                    self._write_failures += 1
                    self._prune_futile = not self._reserve_held
                    raise SpoolFullError(
                        f"spool {self.path}: disk full, events {first}..{last} held back ({exc2}); free disk space"
                    ) from None
            self.next_seq = last + 1
            self._rows += len(items)
            self._error = None
            self._prune_futile = False

    def _insert(self, conn: sqlite3.Connection, items: Sequence[tuple[int, str, Sequence[bytes]]]) -> None:
        now = self._clock()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for seq, kind, frames in items:
                topic, body = frames[0], frames[1]
                crop = frames[2] if len(frames) > 2 else None
                conn.execute(
                    "INSERT INTO events (seq, kind, created_s, topic, body, crop) VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, kind, now, topic, body, crop),
                )
                if kind in LVC_KINDS:
                    conn.execute(
                        "INSERT OR REPLACE INTO lvc (kind, seq, topic, body, crop) VALUES (?, ?, ?, ?, ?)",
                        (kind, seq, topic, body, crop),
                    )
            if self._fault is not None:
                self._fault()
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _on_disk_full(self, conn: sqlite3.Connection) -> None:
        """Make room: first the reserve file; once it is gone, the oldest events. Then checkpoint,
        so the WAL's frames move into the database and the WAL can start over in its own space."""
        if not self._disk_full:
            log.error("spool %s: disk full; raising the disk_full alarm", self.path)
        self._disk_full = True
        if self._reserve_held:
            log.warning("spool %s: releasing the %.1f MB reserve", self.path, self.config.reserve_mb)
            self._release_reserve()
        elif not self._prune_futile:
            with contextlib.suppress(sqlite3.Error):
                n = self._delete_oldest(conn, max(1, min(EMERGENCY_PRUNE_ROWS, self._rows // 10)))
                if n:
                    log.warning(
                        "spool %s: disk full, reserve used up: pruned the oldest %d events", self.path, n
                    )
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # ------------------------------------------------------------------ maintenance
    def check_disk(self) -> int | None:
        """Refresh free space; recreate the reserve and clear `disk_full` when space is back."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            self._free_bytes = None
            return None
        free = int(st.f_bavail * st.f_frsize)
        self._free_bytes = free
        reserve = self._reserve_bytes
        with self._lock:
            if self._disk_full and free >= 2 * reserve + (1 << 20):
                self._disk_full = False
                log.warning("spool %s: disk space is back (%.1f MB free)", self.path, free / 1e6)
            if not self._disk_full and not self._reserve_held and self._conn is not None:
                self._ensure_reserve()
            self._disk_low = reserve > 0 and (free < reserve or not self._reserve_held)
        return free

    @property
    def _reserve_bytes(self) -> int:
        return int(self.config.reserve_mb * 1024 * 1024)

    def _ensure_reserve(self) -> None:
        size = self._reserve_bytes
        if size <= 0:
            self._reserve_held = False
            return
        try:
            if self.reserve_path.exists() and self.reserve_path.stat().st_size >= size:
                self._reserve_held = True
                return
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate here: write zeros
                        raise
                    chunk = b"\0" * (1 << 20)
                    written = 0
                    while written < size:
                        written += os.write(fd, chunk[: min(len(chunk), size - written)])
                os.fsync(fd)
            finally:
                os.close(fd)
            self._reserve_held = True
            self._reserve_warned = False
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()
            if self._reserve_held or not self._reserve_warned:
                log.warning(
                    "spool %s: cannot keep a %.0f MB reserve (%s)", self.path, self.config.reserve_mb, exc
                )
            self._reserve_warned = True
            self._reserve_held = False

    def _release_reserve(self) -> None:
        with contextlib.suppress(OSError):
            self.reserve_path.unlink()
        self._reserve_held = False

    @property
    def needs_room(self) -> bool:
        """The disk has less than the reserve free (or the reserve file is spent): make room inside."""
        reserve = self._reserve_bytes
        if reserve <= 0:
            return False
        return (
            self._disk_full
            or not self._reserve_held
            or (self._free_bytes is not None and self._free_bytes < reserve)
        )

    def prune(self, *, max_batches: int = 20) -> int:
        """Delete the oldest rows, in small transactions, while any retention rule asks for it.

        Rules: older than `retention_days`; pages in use over `max_mb`; and, while the disk is low
        (`needs_room`), fewer free pages inside the database than `reserve_mb` or a quarter of the
        spool, whichever is less: the spool then rolls over in its own file, keeping the newest
        events, when the disk has no room left.
        """
        deleted_total = 0
        cutoff = self._clock() - self.config.retention_days * 86400.0
        max_bytes = int(self.config.max_mb * 1024 * 1024)
        for _ in range(max_batches):
            with self._lock:
                conn = self._require()
                oldest = conn.execute(
                    "SELECT seq, created_s FROM events ORDER BY seq LIMIT ?", (PRUNE_BATCH_ROWS,)
                ).fetchall()
                if not oldest:
                    break
                n = len([seq for seq, created in oldest if created < cutoff])
                used = self.used_bytes()
                over_size = used > max_bytes
                # on a full disk: keep min(reserve, a quarter of the spool) free inside the file, so the
                # spool rolls over its oldest events instead of stopping
                short_of_room = self.needs_room and self._free_page_bytes() < min(
                    self._reserve_bytes, used // 4
                )
                if n == 0 and (over_size or short_of_room) and self._rows > 1:
                    n = min(len(oldest), max(1, self._rows // 100))
                if n == 0:
                    break
                try:
                    deleted_total += self._delete_oldest(conn, n)
                except sqlite3.Error as exc:
                    log.warning("spool %s: pruning failed: %s", self.path, exc)
                    break
        if deleted_total and self.needs_room:
            self._room_pruned += deleted_total
            now = time.monotonic()
            if now - self._room_logged_at > 60.0:  # a full disk prunes on every tick: log a summary
                log.warning(
                    "spool %s: disk low: pruned the oldest %d events to keep room (first seq now %s)",
                    self.path,
                    self._room_pruned,
                    self._pruned_through + 1,
                )
                self._room_pruned = 0
                self._room_logged_at = now
        return deleted_total

    def _free_page_bytes(self) -> int:
        conn = self._require()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int(conn.execute("PRAGMA freelist_count").fetchone()[0] * page_size)

    def _delete_oldest(self, conn: sqlite3.Connection, n: int) -> int:
        row = conn.execute("SELECT seq FROM events ORDER BY seq LIMIT 1 OFFSET ?", (n - 1,)).fetchone()
        if row is None:
            row = conn.execute("SELECT max(seq) FROM events").fetchone()
            if row is None or row[0] is None:
                return 0
        upto = int(row[0])
        conn.execute("BEGIN IMMEDIATE")
        try:
            deleted = conn.execute("DELETE FROM events WHERE seq <= ?", (upto,)).rowcount
            through = max(self._pruned_through, upto)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'pruned_through'", (str(through),))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._pruned_through = through
        self._rows -= deleted
        self._pruned_rows += deleted
        return int(deleted)

    def checkpoint(self) -> None:
        """Copy the WAL into the database without blocking the writer (PASSIVE)."""
        if self._ckpt is None:
            return
        try:
            self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.debug("spool checkpoint: %s", exc)

    def last_body(self) -> dict[str, Any] | None:
        """The JSON body of the newest event still kept (e.g. to restore the current roll at restart)."""
        with self._lock:
            row = self._require().execute("SELECT body FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return None
        try:
            body = json.loads(row[0])
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def last_value(self, kind: str) -> tuple[int, dict[str, Any]] | None:
        """(seq, body) of the last `kind` event in the last-value cache (`roll` or `status`), or None."""
        with self._lock:
            row = self._require().execute("SELECT seq, body FROM lvc WHERE kind = ?", (kind,)).fetchone()
        if row is None:
            return None
        try:
            body = json.loads(row[1])
        except ValueError:
            return None
        return (int(row[0]), body) if isinstance(body, dict) else None

    def get_meta(self, key: str) -> str | None:
        """A value of the `meta` table (e.g. the publisher's `subscriptions`), or None."""
        with self._lock:
            row = self._require().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set one `meta` value in its own short transaction (not for the spool's own keys)."""
        if key in ("schema", "epoch", "pruned_through"):
            raise ValueError(f"meta key {key!r} belongs to the spool itself")
        with self._lock:
            self._require().execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def used_bytes(self) -> int:
        with self._lock:
            conn = self._require()
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            return int((pages - free) * page_size)

    def stats(self) -> SpoolStats:
        with self._lock:
            first = None
            if self._conn is not None:
                first = self._conn.execute("SELECT min(seq) FROM events").fetchone()[0]
            used = self.used_bytes() if self._conn is not None else 0
            return SpoolStats(
                rows=self._rows,
                used_bytes=used,
                first_seq=first,
                last_seq=self.last_seq,
                free_disk_bytes=self._free_bytes,
                reserve_held=self._reserve_held,
                alarm=self.alarm,
                write_failures=self._write_failures,
                pruned_rows=self._pruned_rows,
            )

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError(f"spool {self.path} is not open")
        return self._conn
