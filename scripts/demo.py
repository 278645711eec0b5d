#!/usr/bin/env python3
"""`make demo`: the daemon on the synthetic loom with the bundled model, and a subscriber in the same run.

Starts `loomsight subscribe` (the reference PLC-side client) first, then `loomsight run --demo`
for a few metres. The daemon prints its live one-line summary; the subscriber prints every
event it receives; the operator's live page is served on a free loopback port (the URL is
printed). At the end both summaries are shown. Ports are picked free unless given.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOOMSIGHT = [sys.executable, "-m", "runtime.cli"]


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def pump(stream: object, prefix: str, sink: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line.rstrip("\n"))
        sys.stdout.write(f"{prefix}{line}")
        sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--length-m", type=float, default=6.0)
    ap.add_argument("--speed-m-min", type=float, default=12.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--pub", default="auto", help="PUB endpoint, or 'auto' for a free loopback port")
    ap.add_argument("--replay", default="auto")
    ap.add_argument(
        "--http-port",
        default="auto",
        help="operator page and /healthz on 127.0.0.1:PORT ('auto': a free port, 'off')",
    )
    args = ap.parse_args()
    pub = free_endpoint() if args.pub == "auto" else args.pub
    replay = free_endpoint() if args.replay == "auto" else args.replay
    http = (
        []
        if args.http_port == "off"
        else [
            "--http-port",
            free_endpoint().rsplit(":", 1)[1] if args.http_port == "auto" else args.http_port,
        ]
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    spool = ROOT / "out" / "demo" / "spool.sqlite3"
    spool.parent.mkdir(parents=True, exist_ok=True)
    for old in spool.parent.glob(spool.name + "*"):  # each demo is a new line with a new history
        old.unlink()

    print(f"== Loomsight demo: {args.length_m} m of synthetic fabric at {args.speed_m_min} m/min")
    print(f"== events on {pub} (replay {replay}); subscriber lines start with [sub]", flush=True)
    if http:
        print(f"== the operator's live page: http://127.0.0.1:{http[1]}/ (open it in a browser)", flush=True)
    print(flush=True)
    sub = subprocess.Popen(
        [*LOOMSIGHT, "--log-level", "WARNING", "subscribe", "--connect", pub, "--replay", replay, "--timeout-s", "3600"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    sub_lines: list[str] = []
    t = threading.Thread(target=pump, args=(sub.stdout, "[sub] ", sub_lines), daemon=True)
    t.start()
    daemon = subprocess.Popen(
        [
            *LOOMSIGHT, "--log-level", "WARNING", "run", "--demo", "--length-m", str(args.length_m), "--speed-m-min", str(args.speed_m_min),
            "--seed", str(args.seed), "--pub", pub, "--replay", replay, "--spool", str(spool),
            "--truth-out", str(ROOT / "out" / "demo" / "truth.json"), *http,
        ],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        rc = daemon.wait()
    except KeyboardInterrupt:
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait()
    time.sleep(1.5)  # the last events (open defects, roll summary) are on their way
    sub.send_signal(signal.SIGINT)
    try:
        sub.wait(timeout=10)
    except subprocess.TimeoutExpired:
        sub.kill()
    t.join(timeout=5)
    kinds: dict[str, int] = {}
    for line in sub_lines:
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith("#"):
            kinds[parts[2]] = kinds.get(parts[2], 0) + 1
    got = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "none"
    print(f"\n== daemon exit code {rc}; the subscriber received: {got}")
    print("== ground truth of the roll: out/demo/truth.json; event spool: out/demo/spool.sqlite3")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
