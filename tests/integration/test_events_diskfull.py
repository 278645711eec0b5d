"""A really full disk: the spool on a 4 MB tmpfs in a private mount namespace (`unshare -rm`).

The publisher keeps publishing past the end of the disk. It must never raise, must raise the
`disk_full` alarm (status and heartbeats), must go on committing by rolling over its oldest events
inside its own file, and the SQLite spool must stay intact with contiguous numbers. Skipped where
user namespaces are not allowed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, os, sqlite3, sys, time
from pathlib import Path
import zmq
from runtime.config import PublishConfig, SecurityConfig, SpoolConfig
from runtime.events.publisher import EventPublisher

d = Path(sys.argv[1])
pub = EventPublisher(
    line_id="L1",
    publish=PublishConfig(pub_endpoint="tcp://127.0.0.1:*", replay_endpoint="tcp://127.0.0.1:*",
                          heartbeat_s=0.1, linger_ms=0),
    spool=SpoolConfig(path=d / "spool.sqlite3", reserve_mb=1.0),
    security=SecurityConfig(),
)
pub.start()
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.linger = 0
sub.subscribe(b"heartbeat.")
sub.connect(pub.pub_endpoint)
returned, raised, alarms, hb_alarms = [], None, set(), []
pad = "x" * 8000
for i in range(1000):  # ~8 MB of events, 200 a second, into a 4 MB filesystem
    if i == 150:  # another program takes all but 64 kB of what is left: the disk is full at once
        st = os.statvfs(d)
        with open(d / "filler", "wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 65536))
    try:
        returned.append(pub.publish("defect", {"i": i, "pad": pad}, roll_id="R1"))
    except Exception as exc:
        raised = repr(exc)
        break
    alarm = pub.status()["alarm"]
    if alarm:
        alarms.add(alarm)
    while sub.poll(0):
        hb_alarms.append(json.loads(sub.recv_multipart()[1])["spool"]["alarm"])
    time.sleep(0.005)
time.sleep(1.0)  # the maintenance thread retries what was held
while sub.poll(0):
    hb_alarms.append(json.loads(sub.recv_multipart()[1])["spool"]["alarm"])
status = pub.status()
ctx.destroy(linger=0)
pub.close()
conn = sqlite3.connect(d / "spool.sqlite3")
integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
seqs = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
conn.close()
print(json.dumps({"returned": returned, "raised": raised, "alarms": sorted(alarms), "hb_alarms": hb_alarms,
                  "integrity": integrity, "seqs": seqs, "status": status}))
"""


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], check=False, capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="unshare -rm (user and mount namespaces) is not allowed here")
def test_a_full_disk_never_stops_publishing_raises_the_alarm_and_never_corrupts_the_spool(
    tmp_path: Path,
) -> None:
    script = tmp_path / "fill.py"
    script.write_text(SCRIPT)
    mnt = tmp_path / "small"
    mnt.mkdir()
    shell = f"mount -t tmpfs -o size=4m tmpfs {mnt} && exec {sys.executable} {script} {mnt}"
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["raised"] is None
    assert "disk_full" in result["alarms"]
    assert "disk_full" in result["hb_alarms"]  # subscribers are told too
    assert result["integrity"] == "ok"
    seqs = result["seqs"]
    assert seqs and seqs == list(range(seqs[0], seqs[-1] + 1))
    committed = [s for s in result["returned"] if s > 0]
    held = len(result["returned"]) - len(committed)
    assert committed == list(range(1, len(committed) + 1))  # numbers never skip or repeat
    assert set(committed) - set(seqs) <= set(range(1, seqs[0]))  # missing only if pruned to make room
    status = result["status"]
    # the spool rolled over inside its own file: the newest events are all there, the oldest went
    assert status["held"] == 0 and seqs[-1] == status["last_seq"]
    assert status["spool"]["pruned_rows"] > 0
    assert len(committed) + held == 1000
    print(
        f"\ndisk full: {len(committed)} committed, {held} held, {status['spool']['pruned_rows']} pruned, "
        f"spool rows {status['spool']['rows']}, write failures {status['spool']['write_failures']}, "
        f"heartbeat alarms {sorted(set(map(str, result['hb_alarms'])))}, final alarm {status['alarm']}"
    )
