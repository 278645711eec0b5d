"""`loomsight bench publish`: publish latency on loopback at a fixed event rate, with the real spool.

A real `EventPublisher` (SQLite spool in WAL + synchronous=FULL, PUB socket) publishes defect-like
events at `--rate-hz` for `--duration-s`; a real SUB socket receives them, by default in its own
process as a PLC client would be (`--receiver thread` puts it in a thread of the publishing process,
where it competes for the GIL). Both sides read `time.perf_counter_ns()`, which on Linux is the
system-wide CLOCK_MONOTONIC, so one clock serves both:

- publish latency = SUB receive time - PUB send time of that event (floor: p99 <= 1 ms at 1,000/s);
- spool commit = the commit inside `publish()` (one WAL append + fsync), from the publisher's timer;
- end to end = SUB receive time - the moment `publish()` was called (commit included).

Events are published one by one while the spool keeps up; when an fsync takes longer than the
period, what is due goes out with one `publish_many` (one commit), as the daemon's publish stage
drains its queue. Exit status 0 when the latency floor holds and no event was lost, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STOP_MARK = "bench-stop"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate-hz", type=float, default=1000.0, help="events per second")
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="seconds published before measuring")
    parser.add_argument("--payload-bytes", type=int, default=400, help="approximate JSON size of each event")
    parser.add_argument("--spool", type=Path, default=None, help="spool file (default: a temporary folder)")
    parser.add_argument(
        "--receiver", choices=["process", "thread"], default="process", help="where the SUB runs"
    )
    parser.add_argument("--floor-p99-ms", type=float, default=1.0, help="publish latency p99 floor")


def _summary(values_ns: list[int]) -> dict[str, float]:
    v = sorted(values_ns)
    if not v:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "n": 0}

    def pct(q: float) -> float:
        return round(v[min(len(v) - 1, int(len(v) * q))] / 1e6, 4)

    return {
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": round(v[-1] / 1e6, 4),
        "n": len(v),
    }


def receive(endpoint: str, on_ready: Any) -> dict[int, int]:
    """SUB loop: {seq: receive time} until the stop mark (or 30 s of silence)."""
    import zmq

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"defect.")
    sub.setsockopt(zmq.SUBSCRIBE, b"status.")
    sub.setsockopt(zmq.RCVTIMEO, 30_000)
    sub.connect(endpoint)
    recv_ns: dict[int, int] = {}
    try:
        while True:
            try:
                frames = sub.recv_multipart()
            except zmq.Again:
                break
            t = time.perf_counter_ns()
            body = json.loads(frames[1])
            if body["kind"] == "status" and body.get("bench") == STOP_MARK:
                break
            if not recv_ns:
                on_ready()
            recv_ns[body["seq"]] = t
    finally:
        ctx.destroy(linger=0)
    return recv_ns


class _ProcessReceiver:
    """The SUB in a child process (`python -m runtime.bench.publish ENDPOINT OUT`); no pickling."""

    def __init__(self, endpoint: str, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.bench.publish", endpoint, str(out)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == "READY":
                self.ready.set()

    def result(self) -> dict[int, int]:
        self.proc.wait(60)
        rows = (line.split() for line in self.out.read_text().splitlines())
        return {int(seq): int(t) for seq, t in rows}


class _ThreadReceiver:
    def __init__(self, endpoint: str) -> None:
        self.ready = threading.Event()
        self.recv_ns: dict[int, int] = {}
        self.thread = threading.Thread(target=self._run, args=(endpoint,), daemon=True)
        self.thread.start()

    def _run(self, endpoint: str) -> None:
        self.recv_ns = receive(endpoint, self.ready.set)

    def result(self) -> dict[int, int]:
        self.thread.join(60)
        return self.recv_ns


def main(args: argparse.Namespace) -> int:
    from runtime.config import PublishConfig, SecurityConfig, SpoolConfig
    from runtime.events.publisher import EventPublisher, OutgoingEvent

    tmp = tempfile.TemporaryDirectory(prefix="loomsight-bench-")
    spool_path = args.spool or Path(tmp.name) / "spool.sqlite3"
    pub = EventPublisher(
        line_id="bench",
        publish=PublishConfig(pub_endpoint="tcp://127.0.0.1:*", replay_endpoint=None),
        spool=SpoolConfig(path=spool_path, reserve_mb=0),
        security=SecurityConfig(),
    )
    pub.start()
    if args.receiver == "process":
        receiver: _ProcessReceiver | _ThreadReceiver = _ProcessReceiver(
            pub.pub_endpoint, Path(tmp.name) / "recv.txt"
        )
    else:
        receiver = _ThreadReceiver(pub.pub_endpoint)
    fields: dict[str, Any] = {
        "class": "hole",
        "score": 0.93,
        "bbox_px": [1200, 53000, 1260, 53070],
        "x_mm": 120.0,
        "y_mm": 5300.0,
        "w_mm": 6.0,
        "h_mm": 7.0,
        "points": 4,
        "model": "bench",
        "pad": "x" * max(0, args.payload_bytes - 330),
    }
    call_ns: dict[int, int] = {}
    send_ns: dict[int, int] = {}
    commit_ns: list[int] = []
    period_s = 1.0 / args.rate_hz
    total = int((args.warmup_s + args.duration_s) * args.rate_hz)
    n_warm = int(args.warmup_s * args.rate_hz)
    commits = 0
    try:
        deadline = time.monotonic() + 10.0  # until the SUB hears us (slow joiner)
        while not receiver.ready.is_set() and time.monotonic() < deadline:
            pub.publish("defect", fields, roll_id="R")
            time.sleep(0.01)
        if not receiver.ready.is_set():
            print("bench publish: the SUB socket received nothing within 10 s", flush=True)
            return 1
        print(
            f"bench publish: {args.rate_hz:.0f} events/s for {args.duration_s:.0f} s (+{args.warmup_s:.0f} s "
            f"warm-up), ~{args.payload_bytes} B JSON, SUB in a {args.receiver}, spool {spool_path}",
            flush=True,
        )
        start = time.perf_counter()
        next_report = start + 2.0
        i = 0
        while i < total:
            due = min(total, int((time.perf_counter() - start) / period_s) + 1)
            if due <= i:
                time.sleep(max(0.0, start + i * period_s - time.perf_counter()))
                continue
            batch = [OutgoingEvent("defect", {**fields, "defect_id": f"d{k}"}, "R") for k in range(i, due)]
            t_call = time.perf_counter_ns()
            seqs = pub.publish_many(batch)
            commits += 1
            if i >= n_warm:
                commit_ns.append(pub._commit_ns[-1])
                for seq, t_send in zip(seqs, pub.last_sends_ns, strict=True):
                    call_ns[seq] = t_call
                    send_ns[seq] = t_send
            i = due
            if time.perf_counter() > next_report:
                next_report += 2.0
                print(f"  {i}/{total} events", flush=True)
        elapsed = time.perf_counter() - start
        time.sleep(0.3)
        pub.publish("status", {"bench": STOP_MARK}, roll_id="R")
        recv_ns = receiver.result()
    finally:
        status = pub.status()
        pub.close()
        tmp.cleanup()
    received = [s for s in send_ns if s in recv_ns]
    latency = _summary([recv_ns[s] - send_ns[s] for s in received])
    lost = len(send_ns) - len(received)
    figures = {
        "rate_hz": args.rate_hz,
        "achieved_rate_hz": round(total / elapsed, 1),
        "duration_s": args.duration_s,
        "receiver": args.receiver,
        "events_measured": len(send_ns),
        "events_lost": lost,
        "publish_latency": latency,
        "spool_commit": _summary(commit_ns),
        "events_per_commit": round(total / max(1, commits), 3),
        "end_to_end": _summary([recv_ns[s] - call_ns[s] for s in received]),
        "spool_rows": status["spool"].get("rows"),
        "floor_p99_ms": args.floor_p99_ms,
    }
    ok = latency["p99_ms"] <= args.floor_p99_ms and lost == 0
    figures["floor_met"] = ok

    def row(name: str, s: dict[str, float]) -> str:
        return (
            f"  {name:<34} p50 {s['p50_ms']:.3f}  p90 {s['p90_ms']:.3f}  p99 {s['p99_ms']:.3f}  "
            f"p99.9 {s['p999_ms']:.3f}  max {s['max_ms']:.3f} ms"
        )

    print(f"  achieved {figures['achieved_rate_hz']} events/s, {len(send_ns)} measured, {lost} lost")
    print(row("publish latency (send -> SUB recv)", latency))
    print(
        row("spool commit (WAL fsync)", figures["spool_commit"])
        + f"  ({figures['events_per_commit']} ev/commit)"
    )
    print(row("end to end (publish() -> SUB recv)", figures["end_to_end"]))
    print(f"  floor p99 <= {args.floor_p99_ms} ms: {'MET' if ok else 'NOT MET'}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if ok else 1


def _receiver_process(endpoint: str, out: str) -> int:
    recv_ns = receive(endpoint, lambda: print("READY", flush=True))
    Path(out).write_text("".join(f"{seq} {t}\n" for seq, t in recv_ns.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(_receiver_process(sys.argv[1], sys.argv[2]))
