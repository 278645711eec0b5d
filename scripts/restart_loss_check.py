#!/usr/bin/env python3
"""Issue 17 floor: kill -9 the daemon and restart it 20 times; two plain SUB clients miss nothing.

A PLC that does not use replay is a plain ZeroMQ SUB: it connects once, ZeroMQ reconnects it on its
own after every restart, and it only hears what the publisher sends while it is subscribed. This
script is that PLC side, twice over, against the real daemon (`loomsight run --config`, its own
process, on the synthetic loom with the bundled model):

    .venv/bin/python scripts/restart_loss_check.py             # 20 kill -9 restarts
    .venv/bin/python scripts/restart_loss_check.py --restarts 3 --run-s 2   # a quick look

Each daemon run lasts until it has inspected (published past the interrupted roll's end, which goes
out before the model loads) for `--run-s` seconds, then gets SIGKILL; the next one
starts on the same spool (so every restart closes an interrupted roll: its first event is that
roll's `end`, the one issue 17.3 found lost to plain SUBs). The last run is stopped with SIGTERM.
Then the spool (the durable record of every event the daemon published) is compared, run by run,
with what each client heard:

- `missed`: events of the run a client did not hear, up to the last event it heard from that run
  (seq gaps: the floor is 0 for both clients in every run, the restart's first event included);
- `tail`: events committed in the last instant before the kill and never sent (a kill -9 cannot
  flush them); counted apart, recoverable by replay, not a restart loss;
- `first`: whether the client heard the run's first event;
- the wait the daemon logged ("restart: N of M subscription(s) back after X s").

Prints a table and writes `--out`/restart_loss.json; exit code 1 when any client missed an event.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import zmq

ROOT = Path(__file__).resolve().parents[1]
WAIT_LINE = re.compile(r"restart: (\d+) of (\d+) subscription\(s\) back after ([0-9.]+) s")
START_TIMEOUT_S = 120.0  # a daemon that publishes nothing in this time is a failure
STOP_TIMEOUT_S = 60.0


def free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def write_config(out: Path, args: argparse.Namespace, pub: str, replay: str) -> tuple[Path, Path]:
    spool = out / "spool.sqlite3"
    for p in out.glob("spool.sqlite3*"):
        p.unlink()
    path = out / "loomsight.toml"
    path.write_text(
        f"""line_id = "restart"
[source]
kind = "synthetic"
[source.synthetic]
fabric = "plain_gray"
width_px = 1024
speed_m_min = {args.speed_m_min}
realtime = true
seed = 11
defects_per_m = {args.defects_per_m}
[model]
bundle = {json.dumps(str(args.model))}
[publish]
pub_endpoint = "{pub}"
replay_endpoint = "{replay}"
{"" if args.grace_s is None else f"restart_grace_s = {args.grace_s}"}
heartbeat_s = 0.5
[spool]
path = {json.dumps(str(spool))}
[health]
enabled = false
""",
        encoding="utf-8",
    )
    return path, spool


class PlainClient:
    """A plain SUB (no replay, default reconnect) in its own thread, recording every message heard."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, name: str) -> None:
        self.name = name
        self.heard: list[tuple[float, str, int]] = []  # (monotonic time, kind, seq)
        self._sock = ctx.socket(zmq.SUB)
        self._sock.linger = 0
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(endpoint)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(100):
                continue
            frames = self._sock.recv_multipart()
            body = json.loads(frames[1])
            self.heard.append((time.monotonic(), str(body["kind"]), int(body["seq"])))
        self._sock.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)


def spool_last_seq(spool: Path) -> int:
    if not spool.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=10)) as db:
            return int(db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    except sqlite3.OperationalError:  # the daemon is creating it
        return 0


def spool_events(spool: Path) -> dict[int, str]:
    with closing(sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=10)) as db:
        return {int(s): str(k) for s, k in db.execute("SELECT seq, kind FROM events ORDER BY seq")}


def run_daemon(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "runtime.cli", "--log-level", "INFO", "run", "--config", str(config)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--restarts", type=int, default=20, help="kill -9 restarts (runs = restarts + 1)")
    ap.add_argument("--run-s", type=float, default=3.0, help="seconds each run inspects before the kill")
    ap.add_argument(
        "--grace-s",
        type=float,
        default=None,
        help="publish.restart_grace_s, the bound (default: the daemon's, 1 s)",
    )
    ap.add_argument("--speed-m-min", type=float, default=30.0)
    ap.add_argument("--defects-per-m", type=float, default=8.0)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "restart_loss")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pub, replay = free_endpoint(), free_endpoint()
    config, spool = write_config(args.out, args, pub, replay)
    ctx: zmq.Context[Any] = zmq.Context()
    clients = [PlainClient(ctx, pub, f"sub{i + 1}") for i in range(2)]
    for c in clients:
        c.thread.start()
    grace = "the default" if args.grace_s is None else f"{args.grace_s} s"
    print(f"== {args.restarts} kill -9 restarts, restart_grace_s {grace}, runs of {args.run_s} s; {config}")
    runs: list[dict[str, Any]] = []
    t_all = time.monotonic()
    try:
        for r in range(args.restarts + 1):
            log_path = args.out / f"daemon-{r:02d}.log"
            before = spool_last_seq(spool)
            started = time.monotonic()
            daemon = run_daemon(config, log_path)
            deadline = started + START_TIMEOUT_S
            first_at = None
            while True:
                time.sleep(0.05)
                if daemon.poll() is not None:
                    print(f"!! run {r}: the daemon exited with {daemon.returncode}; see {log_path}")
                    return 1
                now = time.monotonic()
                # inspecting: past the interrupted roll's end (published before the model loads)
                if first_at is None and spool_last_seq(spool) > before + (1 if r else 0):
                    first_at = now
                if first_at is not None and now - first_at >= args.run_s:
                    break
                if now > deadline:
                    print(f"!! run {r}: nothing published within {START_TIMEOUT_S:.0f} s; see {log_path}")
                    daemon.kill()
                    return 1
            last = r == args.restarts
            daemon.send_signal(signal.SIGTERM if last else signal.SIGKILL)
            try:
                daemon.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"!! run {r}: no exit {STOP_TIMEOUT_S:.0f} s after SIGTERM; killed; see {log_path}")
                daemon.kill()
                daemon.wait()
            ended = time.monotonic()
            runs.append({"run": r, "started": started, "ended": ended, "first_seq": before + 1})
            runs[-1]["last_seq"] = spool_last_seq(spool)
            runs[-1]["stop"] = "SIGTERM" if last else "SIGKILL"
            match = WAIT_LINE.search(log_path.read_text(errors="replace"))
            runs[-1]["wait"] = (
                None
                if match is None
                else {"heard": int(match[1]), "expected": int(match[2]), "waited_s": float(match[3])}
            )
        time.sleep(0.5)  # let the clients take the last messages
    finally:
        for c in clients:
            c.stop()
        ctx.destroy(linger=0)
    wall_s = time.monotonic() - t_all
    kinds = spool_events(spool)
    worst = 0
    rows = []
    for run in runs:
        expected = [s for s in range(run["first_seq"], run["last_seq"] + 1) if s in kinds]
        row: dict[str, Any] = {
            "run": run["run"],
            "events": len(expected),
            "first_kind": kinds.get(run["first_seq"]),
            "stop": run["stop"],
            "wait": run["wait"],
        }
        for c in clients:
            got = {seq for _, kind, seq in c.heard if kind != "heartbeat"} & set(expected)
            top = max(got, default=0)
            missed = [s for s in expected if s <= top and s not in got]
            tail = [s for s in expected if s > top]
            worst = max(worst, len(missed))
            row[c.name] = {
                "missed": len(missed),
                "missed_seqs": missed[:20],
                "tail": len(tail),
                "first": run["first_seq"] in got,
            }
        rows.append(row)
    print(
        f"{'run':>3} {'events':>6} {'first event':<11} {'wait (heard/expected, s)':<26} sub1 missed/tail  sub2 missed/tail"
    )
    for row in rows:
        w = row["wait"]
        wait = (
            ("fresh spool" if row["run"] == 0 else "no wait")
            if w is None
            else f"{w['heard']}/{w['expected']} in {w['waited_s']:.3f}"
        )
        cells = "  ".join(
            f"{row[c.name]['missed']:>4}/{row[c.name]['tail']:<3}{' first' if row[c.name]['first'] else ' NO-1st'}"
            for c in clients
        )
        print(f"{row['run']:>3} {row['events']:>6} {row['first_kind']!s:<11} {wait:<26} {cells}")
    waits = [r["wait"]["waited_s"] for r in rows if r["wait"]]
    summary = {
        "restarts": args.restarts,
        "grace_s": args.grace_s,
        "run_s": args.run_s,
        "wall_s": round(wall_s, 1),
        "events": sum(r["events"] for r in rows),
        "missed": {c.name: sum(r[c.name]["missed"] for r in rows) for c in clients},
        "tail_at_kill": {c.name: sum(r[c.name]["tail"] for r in rows) for c in clients},
        "first_event_heard": {c.name: sum(r[c.name]["first"] for r in rows) for c in clients},
        "wait_s": {"min": min(waits, default=None), "max": max(waits, default=None)},
        "waits_complete": sum(1 for r in rows if r["wait"] and r["wait"]["heard"] >= r["wait"]["expected"]),
        "runs": rows,
    }
    (args.out / "restart_loss.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(
        f"== {summary['events']} events in {len(rows)} runs, {wall_s:.0f} s: missed {summary['missed']}, "
        f"unsent at kill {summary['tail_at_kill']}, first event heard {summary['first_event_heard']} "
        f"of {len(rows)}; restart waits {summary['wait_s']} (complete {summary['waits_complete']} "
        f"of {len(waits)}); {args.out / 'restart_loss.json'}"
    )
    return 1 if worst else 0


if __name__ == "__main__":
    raise SystemExit(main())
