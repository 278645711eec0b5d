"""The durable spool: seq and epoch survive restarts, retention prunes safely, a full disk never corrupts."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from runtime.config import SpoolConfig
from runtime.errors import SpoolError
from runtime.events.schema import Event, make_body, topic_for
from runtime.events.spool import EventSpool, SpoolFullError, SpoolReader


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _frames(spool: EventSpool, kind: str = "defect", pad: int = 0) -> list[bytes]:
    body = make_body(
        kind=kind,
        seq=spool.next_seq,
        epoch=spool.epoch,
        ts="2026-01-01T00:00:00.000Z",
        line_id="L",
        roll_id="R",
        fields={"pad": "x" * pad},
    )
    return Event(topic_for(kind, "L"), body).frames()


def _append(spool: EventSpool, kind: str = "defect", pad: int = 0) -> int:
    seq = spool.next_seq
    spool.append(seq, kind, _frames(spool, kind, pad))
    return seq


def _open(tmp_path: Path, clock: Clock | None = None, **cfg: float) -> EventSpool:
    spool = EventSpool(
        SpoolConfig(path=tmp_path / "s.sqlite3", **{"reserve_mb": 0.1, **cfg}), clock=clock or Clock()
    )
    spool.open()
    return spool


def test_seq_and_epoch_survive_a_restart_and_a_new_file_gets_a_new_epoch(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    epoch = spool.epoch
    assert [_append(spool) for _ in range(5)] == [1, 2, 3, 4, 5]
    spool.close()
    again = _open(tmp_path)
    assert again.epoch == epoch
    assert _append(again) == 6
    again.close()
    (tmp_path / "s.sqlite3").unlink()
    fresh = _open(tmp_path)
    assert fresh.epoch != epoch and fresh.next_seq == 1
    fresh.close()


def test_spool_uses_wal_with_full_sync(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    conn = spool._require()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    spool.close()


def test_out_of_order_append_is_refused(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    with pytest.raises(SpoolError, match="out of order"):
        spool.append(5, "defect", _frames(spool))
    spool.close()


def test_reader_serves_exact_frames_bounds_and_last_values(tmp_path: Path) -> None:
    clock = Clock()
    spool = _open(tmp_path, clock)
    sent = {}
    for kind in ("roll", "defect", "status", "defect", "roll", "defect"):
        clock.t += 1.0
        frames = _frames(spool, kind)
        sent[spool.next_seq] = frames
        spool.append(spool.next_seq, kind, frames)
    reader = SpoolReader(spool.path)
    assert reader.epoch == spool.epoch
    assert reader.bounds() == (1, 6)
    rows = reader.read_after(2, 6, 100)
    assert [s for s, _ in rows] == [3, 4, 5, 6]
    assert all(f == sent[s] for s, f in rows)
    assert [s for s, _ in reader.read_after(0, 6, 2)] == [1, 2]
    assert [s for s, _ in reader.last_values(6)] == [3, 5]  # last status (3), last roll (5)
    assert [s for s, _ in reader.last_values(4)] == [3]  # roll 1 was replaced by roll 5
    # seq_before: events were committed at t0+1 .. t0+6
    assert reader.seq_before(clock.t + 10) == 6
    assert reader.seq_before(1_000_000.0 + 3.5) == 3
    assert reader.seq_before(0.0) == 0
    reader.close()
    spool.close()


def test_retention_by_age_prunes_oldest_and_never_reuses_seq(tmp_path: Path) -> None:
    clock = Clock()
    spool = _open(tmp_path, clock, retention_days=1.0)
    for _ in range(1200):
        _append(spool)
    clock.t += 0.5 * 86400
    for _ in range(10):
        _append(spool)
    clock.t += 0.75 * 86400  # the first 1200 are now 1.25 days old, the last 10 are 0.75 days old
    deleted = spool.prune()
    assert deleted == 1200
    assert spool.rows == 10
    assert SpoolReader(spool.path).bounds() == (1201, 1210)
    clock.t += 2 * 86400
    assert spool.prune() == 10 and spool.rows == 0
    spool.close()
    again = _open(tmp_path, clock)
    assert again.next_seq == 1211  # the table is empty, yet numbers continue
    again.close()


def test_retention_by_size_keeps_the_spool_under_max_mb(tmp_path: Path) -> None:
    spool = _open(tmp_path, max_mb=0.25)
    for _ in range(400):
        _append(spool, pad=2000)  # ~0.8 MB of events
    assert spool.used_bytes() > 0.25 * 1024 * 1024
    while spool.prune():
        pass
    assert spool.used_bytes() <= 0.25 * 1024 * 1024
    assert spool.rows > 0
    first, last = SpoolReader(spool.path).bounds()
    assert last == 400 and first is not None and first > 1
    spool.close()


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_disk_full_releases_the_reserve_then_prunes_then_refuses_cleanly(tmp_path: Path) -> None:
    spool = _open(tmp_path, reserve_mb=0.1)
    assert spool.reserve_path.stat().st_size == int(0.1 * 1024 * 1024)
    for _ in range(1000):
        _append(spool)
    failures = {"left": 1}

    def full_once() -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")

    spool._fault = full_once
    # 1st failure: the reserve is released, the retry succeeds, the alarm is up
    assert _append(spool) == 1001
    assert spool.alarm == "disk_full"
    assert not spool.reserve_path.exists()
    assert spool.rows == 1001
    # reserve gone: the next failure prunes the oldest tenth to make room, the retry succeeds
    failures["left"] = 1
    assert _append(spool) == 1002
    stats = spool.stats()
    assert stats.pruned_rows == 100 and stats.first_seq == 101
    # a disk that stays full: SpoolFullError, nothing written, seq not consumed, and since pruning
    # did not help, further failures keep the history
    spool._fault = lambda: (_ for _ in ()).throw(sqlite3.OperationalError("database or disk is full"))
    with pytest.raises(SpoolFullError, match="disk full"):
        _append(spool)
    pruned = spool.stats().pruned_rows
    for _ in range(3):
        with pytest.raises(SpoolFullError):
            _append(spool)
    assert spool.stats().pruned_rows == pruned
    assert spool.next_seq == 1003
    # space is back: the alarm clears and the reserve is recreated
    spool._fault = None
    spool.check_disk()
    assert spool.alarm is None and spool.reserve_path.exists()
    assert _append(spool) == 1003
    spool.close()
    assert _integrity(tmp_path / "s.sqlite3") == "ok"
    reader = SpoolReader(tmp_path / "s.sqlite3")
    seqs = [s for s, _ in reader.read_after(0, 10**9, 10**6)]
    assert seqs == list(range(pruned + 1, 1004))


def test_other_database_errors_raise_spool_error_and_set_an_alarm(tmp_path: Path) -> None:
    spool = _open(tmp_path)

    def io_error() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    spool._fault = io_error
    with pytest.raises(SpoolError, match="disk I/O error") as info:
        _append(spool)
    assert not isinstance(info.value, SpoolFullError)
    assert spool.alarm == "spool_error" and spool.next_seq == 1
    spool._fault = None
    assert _append(spool) == 1 and spool.alarm is None
    spool.close()


def test_unusable_paths_give_clear_spool_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SpoolError, match="cannot create its folder"):
        EventSpool(SpoolConfig(path=blocker / "sub" / "s.sqlite3")).open()
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match="cannot open the SQLite spool"):
        EventSpool(SpoolConfig(path=garbage)).open()


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema', 'someone.else/3')")
    conn.commit()
    conn.close()
    with pytest.raises(SpoolError, match=r"someone\.else/3"):
        EventSpool(SpoolConfig(path=path)).open()


def test_last_body_restores_the_current_roll(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    assert spool.last_body() is None
    _append(spool, "roll")
    body = spool.last_body()
    assert body is not None and body["roll_id"] == "R" and json.dumps(body)
    spool.close()


# ----------------------------------------------------------------------------- issue 17: one spool, one owner
def test_a_second_open_of_a_spool_in_use_is_refused_until_the_owner_closes(tmp_path: Path) -> None:
    import os

    first = _open(tmp_path)
    assert first.owner_pid == os.getpid()
    assert first.lock_path.read_text().strip() == str(os.getpid())
    second = EventSpool(SpoolConfig(path=tmp_path / "s.sqlite3", reserve_mb=0.1))
    with pytest.raises(
        SpoolError, match=rf"in use by another Loomsight daemon \(PID {os.getpid()}, lock file"
    ):
        second.open()
    assert not second.is_open
    assert _append(first) == 1  # the owner is untouched
    first.close()
    assert first.owner_pid is None  # the PID goes with the lock; the file stays
    second.open()
    assert _append(second) == 2
    second.close()


def test_a_spool_held_by_another_process_names_its_pid_and_kill_9_frees_it(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    path = tmp_path / "s.sqlite3"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from runtime.config import SpoolConfig; from runtime.events.spool import EventSpool; "
            f"s = EventSpool(SpoolConfig(path={str(path)!r}, reserve_mb=0)); s.open(); print('open', flush=True); "
            "sys.stdin.read()",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(
            SpoolError, match=rf"PID {holder.pid}\b.*stop that daemon, or give this one its own"
        ):
            EventSpool(SpoolConfig(path=path, reserve_mb=0)).open()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        spool = EventSpool(SpoolConfig(path=path, reserve_mb=0))
        spool.open()  # the kernel dropped the dead owner's lock
        assert spool.owner_pid == os.getpid()
        spool.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


def test_a_constraint_error_is_not_called_a_full_disk(tmp_path: Path) -> None:
    spool = _open(tmp_path)

    def taken() -> None:
        raise sqlite3.IntegrityError("UNIQUE constraint failed: events.seq")

    spool._fault = taken
    with pytest.raises(SpoolError, match="seq already taken: another process wrote this spool") as info:
        _append(spool)
    assert not isinstance(info.value, SpoolFullError) and "not a full disk" in str(info.value)
    assert spool.alarm == "spool_error"
    spool.close()
