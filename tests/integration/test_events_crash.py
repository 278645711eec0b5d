"""kill -9 of a publishing process, then a restart: no spooled event lost, no seq reused.

A subprocess publishes as fast as the spool allows and prints each seq that `publish()` returned
(committed, then sent). We SIGKILL it mid-stream, start a new process on the same spool and
endpoints, and check the spool, the new process's numbering and a subscriber that stayed connected
through both.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from runtime.events.spool import SpoolReader
from runtime.events.subscriber import EventSubscriber
from tests.integration.test_events_support import free_endpoint

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys, time
from runtime.config import PublishConfig, SecurityConfig, SpoolConfig
from runtime.events.publisher import EventPublisher
pub = EventPublisher(
    line_id="L1",
    publish=PublishConfig(pub_endpoint=sys.argv[1], replay_endpoint=sys.argv[2], linger_ms=0, heartbeat_s=0.2),
    spool=SpoolConfig(path=sys.argv[3], reserve_mb=0),
    security=SecurityConfig(),
)
pub.start()
print("READY", pub.epoch, pub.last_seq, pub.status()["roll_id"] or "-", flush=True)
run = sys.argv[4]
i = 0
while True:
    seq = pub.publish("defect", {"run": run, "i": i}, roll_id="R1")
    print(seq, flush=True)
    i += 1
    time.sleep(0.0005)
"""


class Proc:
    def __init__(self, tmp_path: Path, pub: str, replay: str, spool: Path, run: str) -> None:
        script = tmp_path / "publish_forever.py"
        script.write_text(SCRIPT)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.p = subprocess.Popen(
            [sys.executable, str(script), pub, replay, str(spool), run],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.p.stdout is not None
        ready = self.p.stdout.readline().split()
        assert ready and ready[0] == "READY", f"publisher did not start: {ready}"
        self.epoch, self.last_seq_at_start, self.roll_id = ready[1], int(ready[2]), ready[3]
        self.seqs: list[int] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            if line.strip().isdigit():
                self.seqs.append(int(line))

    def wait_for(self, n: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.seqs) < n:
            assert time.monotonic() < deadline, f"only {len(self.seqs)} events published"
            assert self.p.poll() is None, "publisher died"
            time.sleep(0.02)

    def kill9(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)
        self._reader.join(5)


def test_kill_9_and_restart_lose_no_spooled_event_and_reuse_no_seq(tmp_path: Path) -> None:
    pub_ep, replay_ep, spool = free_endpoint(), free_endpoint(), tmp_path / "spool.sqlite3"
    sub = EventSubscriber(connect=pub_ep, replay=replay_ep, replay_timeout_s=1.0)
    delivered: list[tuple[str, int, str]] = []
    try:
        first = Proc(tmp_path, pub_ep, replay_ep, spool, "first")
        first.wait_for(800)
        first.kill9()
        reported = list(first.seqs)
        second = Proc(tmp_path, pub_ep, replay_ep, spool, "second")
        try:
            # the restart sees every committed event and goes on after the last one
            assert second.epoch == first.epoch
            assert second.last_seq_at_start >= reported[-1]
            assert second.roll_id == "R1"
            second.wait_for(400)
            for event in sub.events(timeout_s=10):
                delivered.append((event.epoch, event.seq, event.body["run"]))
                if event.body["run"] == "second" and len(delivered) >= second.last_seq_at_start + 300:
                    break
        finally:
            second.kill9()
    finally:
        sub.close()
    assert reported == list(range(1, len(reported) + 1))
    assert second.seqs[0] == second.last_seq_at_start + 1  # no number given twice
    # the spool is intact and holds every event either process reported, once
    conn = sqlite3.connect(spool)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    reader = SpoolReader(spool)
    rows = reader.read_after(0, 10**9, 10**6)
    reader.close()
    seqs = [s for s, _ in rows]
    assert seqs == list(range(1, len(seqs) + 1))
    assert set(reported) <= set(seqs) and set(second.seqs) <= set(seqs)
    # the subscriber that stayed up got both runs, in order, exactly once
    assert [s for _, s, _ in delivered] == list(range(1, len(delivered) + 1))
    assert {r for _, _, r in delivered} == {"first", "second"}
    assert sub.stats.lost == 0 and sub.stats.epoch_changes == 0
