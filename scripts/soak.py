#!/usr/bin/env python3
"""Soak: `loomsight run --config` on the synthetic loom at 2x the demo line rate, with a subscriber.

Issue 5 floor: a 10-minute soak at 2x the demo line rate (the demo runs at 12 m/min, so 24 m/min,
paced in real time) keeps RSS growth <= 5 % from minute 1 to the end, no queue grows without
bound, and no file descriptor or thread leaks. Not part of `make test`; run it by hand:

    .venv/bin/python scripts/soak.py                 # 600 s
    .venv/bin/python scripts/soak.py --duration-s 90 # a quick look

The daemon runs as its own process (what systemd runs); this script is the PLC side. Every
`--sample-s` seconds it reads the daemon's RSS, open fds and threads from /proc/<pid>, and its
queue depths, drops and published events from the control socket (`{"cmd": "status"}`). The
reference subscriber (`EventSubscriber`, gaps filled from replay) counts what it receives. At the
end: SIGTERM (the exit code and the stop time are checked too), the figures, `out/soak/soak.json`
and `out/soak/soak.png` (RSS, fds/threads and queue depths over time). Exit code 1 when a floor
fails. The model is models/default when it exists, else a tiny in-test detector (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zmq

from runtime.events.spool_reader import SpoolReader
from runtime.events.subscriber import EventSubscriber

ROOT = Path(__file__).resolve().parents[1]

DEMO_SPEED_M_MIN = 12.0  # scripts/demo.py
STOP_BOUND_S = 10.0  # well inside TimeoutStopSec=30s (systemd/loomsight.service)
QUEUE_CAPACITY = {"strips": 4, "results": 4}  # [queues] strips / batches in the config below


def free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


# ----------------------------------------------------------------------------- process figures
def proc_sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024.0,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,  # utime + stime
        "load1": float(Path("/proc/loadavg").read_text().split()[0]),
    }


def choose_bundle(model: Path, out: Path) -> tuple[Path, str]:
    if (model / "manifest.json").is_file():
        return model, f"{model} (the bundled default model)"
    sys.path.insert(0, str(ROOT))  # the tiny model comes from the checkout's tests/ (and deploy/)
    from tests.helpers.tiny_models import write_tiny_bundle

    # the darkness detector fires on tiles darker than the fabric: the dark defects of the loom
    bundle = write_tiny_bundle(out / "tiny-bundle", classes=["dark"], gain=40.0, class_bias=[-2.7])
    return bundle, f"{bundle} (tiny in-test darkness detector: {model} has no bundle yet)"


def write_config(out: Path, bundle: Path, args: argparse.Namespace, ends: dict[str, str]) -> Path:
    spool = out / "spool.sqlite3"
    for p in out.glob("spool.sqlite3*"):
        p.unlink()
    path = out / "loomsight.toml"
    path.write_text(
        f"""line_id = "soak"
[source]
kind = "synthetic"
[source.synthetic]
fabric = "plain_gray"
width_px = {args.width_px}
speed_m_min = {args.speed_m_min}
realtime = true
seed = 7
defects_per_m = 1.5
[model]
bundle = {json.dumps(str(bundle))}
batch_size = 8
[queues]
strips = {QUEUE_CAPACITY["strips"]}
batches = {QUEUE_CAPACITY["results"]}
[publish]
pub_endpoint = "{ends["pub"]}"
replay_endpoint = "{ends["replay"]}"
control_endpoint = "{ends["control"]}"
[spool]
path = {json.dumps(str(spool))}
""",
        encoding="utf-8",
    )
    return path


# ----------------------------------------------------------------------------- subscriber
class Counting:
    """The reference subscriber in a thread, counting events by kind and checking seq order."""

    def __init__(self, pub: str, replay: str) -> None:
        self.sub = EventSubscriber(connect=pub, replay=replay)
        self.kinds: Counter[str] = Counter()
        self.out_of_order = 0
        self.last_seq = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="soak-subscriber", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for event in self.sub.events(timeout_s=0.5):
                self.kinds[event.kind] += 1
                if event.seq <= self.last_seq:
                    self.out_of_order += 1
                self.last_seq = max(self.last_seq, event.seq)
                if self.stop.is_set():
                    break

    @property
    def received(self) -> int:
        return sum(self.kinds.values())


def control_status(sock: zmq.Socket[Any]) -> dict[str, Any] | None:
    try:
        sock.send(b'{"cmd": "status"}')
        answer = json.loads(sock.recv())
    except zmq.Again:
        return None
    return answer.get("status") if answer.get("ok") else None


def new_req(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.setsockopt(zmq.SNDTIMEO, 3000)
    sock.connect(endpoint)
    return sock


# ----------------------------------------------------------------------------- figures
def window_median(samples: list[dict[str, Any]], key: str, t0: float, t1: float) -> float:
    values = [s[key] for s in samples if t0 <= s["t_s"] <= t1]
    return float(statistics.median(values)) if values else float("nan")


def figures(samples: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    baseline_s = min(args.baseline_s, samples[-1]["t_s"] / 2)
    half = max(args.sample_s, 5.0)
    end0 = samples[-1]["t_s"] - 2.5 * args.sample_s
    out: dict[str, Any] = {"baseline_s": baseline_s}
    for key in ("rss_mb", "fds", "threads"):
        base = window_median(samples, key, baseline_s - half, baseline_s + half)
        end = window_median(samples, key, end0, samples[-1]["t_s"])
        out[key] = {
            "at_baseline": base,
            "at_end": end,
            "min": min(s[key] for s in samples),
            "max": max(s[key] for s in samples),
        }
    out["rss_growth"] = out["rss_mb"]["at_end"] / out["rss_mb"]["at_baseline"] - 1.0
    out["fd_growth"] = out["fds"]["at_end"] - out["fds"]["at_baseline"]
    out["thread_growth"] = out["threads"]["at_end"] - out["threads"]["at_baseline"]
    # the deepest each queue has been: sampled depths, and the pipeline's own peak after every put
    out["max_queue_depth"] = {
        q: max(max(s["queues"].get(q, 0), s["queue_peaks"].get(q, 0)) for s in samples)
        for q in QUEUE_CAPACITY
    }
    cpu = samples[-1]["cpu_s"] - samples[0]["cpu_s"]
    out["daemon_cpu_percent"] = round(100.0 * cpu / max(samples[-1]["t_s"] - samples[0]["t_s"], 1e-9), 1)
    loads = [s["load1"] for s in samples]
    out["load1"] = {"mean": round(statistics.fmean(loads), 2), "max": max(loads), "cpus": os.cpu_count()}
    return out


def plot(samples: list[dict[str, Any]], path: Path, title: str) -> None:
    """Three panels over time: RSS (MB); fds and threads; queue depths. OpenCV only."""
    w, h, pad, top = 960, 620, 60, 40
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.putText(img, title, (pad, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    t = np.array([s["t_s"] for s in samples], float)
    panels: list[tuple[str, list[tuple[str, np.ndarray, tuple[int, int, int]]]]] = [
        ("RSS (MB)", [("rss", np.array([s["rss_mb"] for s in samples]), (200, 60, 20))]),
        (
            "open fds / threads",
            [
                ("fds", np.array([s["fds"] for s in samples], float), (30, 120, 30)),
                ("threads", np.array([s["threads"] for s in samples], float), (160, 40, 160)),
            ],
        ),
        (
            f"queue depth (capacity {max(QUEUE_CAPACITY.values())})",
            [
                ("strips", np.array([s["queues"].get("strips", 0) for s in samples], float), (20, 20, 200)),
                ("results", np.array([s["queues"].get("results", 0) for s in samples], float), (0, 150, 220)),
            ],
        ),
    ]
    ph = (h - top - 40) // len(panels)
    t_max = max(float(t[-1]), 1.0)
    for i, (label, series) in enumerate(panels):
        y0, y1 = top + i * ph + 10, top + (i + 1) * ph - 10
        lo = min(float(v.min()) for _, v, _ in series)
        hi = max(float(v.max()) for _, v, _ in series)
        if label.startswith("queue"):
            lo, hi = 0.0, max(hi, 4.0)
        span = max(hi - lo, 1e-6)
        lo, hi = lo - 0.1 * span, hi + 0.1 * span
        cv2.rectangle(img, (pad, y0), (w - 20, y1), (180, 180, 180), 1)
        cv2.putText(img, label, (pad + 6, y0 + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for val, y in ((hi, y0), (lo, y1)):
            cv2.putText(
                img, f"{val:.1f}", (4, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (80, 80, 80), 1, cv2.LINE_AA
            )
        for j, (name, v, colour) in enumerate(series):
            xs = pad + (t / t_max) * (w - 20 - pad)
            ys = y1 - (v - lo) / (hi - lo) * (y1 - y0)
            pts = np.stack([xs, ys], axis=1).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
            cv2.putText(
                img,
                name,
                (pad + 220 + 90 * j, y0 + 16),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                colour,
                1,
                cv2.LINE_AA,
            )
    for k in range(6):
        x = pad + k * (w - 20 - pad) // 5
        cv2.putText(
            img, f"{t_max * k / 5:.0f}s", (x - 10, h - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1
        )
    cv2.imwrite(str(path), img)


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration-s", type=float, default=600.0)
    ap.add_argument("--speed-m-min", type=float, default=2 * DEMO_SPEED_M_MIN, help="2x the demo line rate")
    ap.add_argument("--width-px", type=int, default=2048, help="camera line width (the demo's)")
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--baseline-s", type=float, default=60.0, help="RSS growth is measured from here")
    ap.add_argument("--rss-growth-max", type=float, default=0.05)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "soak")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bundle, model_note = choose_bundle(args.model, args.out)
    ends = {"pub": free_endpoint(), "replay": free_endpoint(), "control": free_endpoint()}
    config = write_config(args.out, bundle, args, ends)
    print(
        f"== soak: {args.duration_s:.0f} s at {args.speed_m_min} m/min, {args.width_px} px; model {model_note}"
    )
    print(f"== config {config}; daemon log {args.out / 'daemon.log'}", flush=True)

    sub = Counting(ends["pub"], ends["replay"])
    sub.thread.start()
    log = (args.out / "daemon.log").open("wb")
    cmd = [sys.executable, "-m", "runtime.cli", "--log-level", "WARNING", "run", "--config", str(config)]
    daemon = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    ctx: zmq.Context[Any] = zmq.Context()
    req = new_req(ctx, ends["control"])
    samples: list[dict[str, Any]] = []
    t_start = time.monotonic()
    status: dict[str, Any] = {}
    try:
        while (now := time.monotonic() - t_start) < args.duration_s:
            if daemon.poll() is not None:
                print(f"!! the daemon exited early with {daemon.returncode}; see {args.out / 'daemon.log'}")
                return 1
            answer = control_status(req)
            if answer is None:  # a REQ that timed out must be replaced
                req.close()
                req = new_req(ctx, ends["control"])
            else:
                status = answer
            if status.get("strips_inspected"):
                pub = status.get("publisher", {})
                s = {
                    "t_s": round(now, 1),
                    **proc_sample(daemon.pid),
                    "queues": status.get("queues", {}),
                    "queue_peaks": status.get("queue_peaks", {}),
                    "strips_dropped": status.get("strips_dropped", 0),
                    "inspected_m": status.get("inspected_m", 0.0),
                    "tiles_per_s": status.get("tiles_per_s", 0.0),
                    "published": pub.get("published", 0),
                    "received": sub.received,
                }
                samples.append(s)
                print(
                    f"{s['t_s']:6.0f} s {s['inspected_m']:7.1f} m | RSS {s['rss_mb']:6.1f} MB | fds {s['fds']:3d} | "
                    f"threads {s['threads']:2d} | queues {s['queues']} peak {s['queue_peaks']} | dropped {s['strips_dropped']} | "
                    f"events {s['published']} published, {s['received']} received | load {s['load1']:.2f}",
                    flush=True,
                )
            time.sleep(max(0.0, args.sample_s - (time.monotonic() - t_start - now)))
        t_stop = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            rc = daemon.wait()
        stop_s = time.monotonic() - t_stop
    finally:
        if daemon.poll() is None:
            daemon.kill()
        req.close()
        ctx.destroy(linger=0)
        log.close()

    reader = SpoolReader(args.out / "spool.sqlite3")
    first, last = reader.bounds()
    reader.close()
    spooled = last - (first or 1) + 1 if first is not None else 0
    deadline = time.monotonic() + 15
    while sub.received < spooled and time.monotonic() < deadline:  # let replay fill the last gaps
        time.sleep(0.2)
    sub.stop.set()
    sub.thread.join(timeout=5)
    sub_stats = sub.sub.stats.as_dict()
    sub.sub.close()
    if len(samples) < 4:
        print("!! too few samples to judge; run longer")
        return 1

    fig = figures(samples, args)
    fig.update(
        {
            "strips_dropped": samples[-1]["strips_dropped"],
            "lines_dropped": status.get("lines_dropped", 0),
            "inspected_m": samples[-1]["inspected_m"],
            "tiles_per_s_mean": status.get("tiles_per_s_mean"),
            "events_published": spooled,
            "events_received": sub.received,
            "events_by_kind": dict(sub.kinds),
            "subscriber": sub_stats,
            "out_of_order": sub.out_of_order,
            "exit_code": rc,
            "stop_s": round(stop_s, 2),
        }
    )
    floors = {
        f"rss_growth <= {100 * args.rss_growth_max:.0f}%": fig["rss_growth"] <= args.rss_growth_max,
        "fd growth == 0": fig["fd_growth"] <= 0,
        "thread growth == 0": fig["thread_growth"] <= 0,
        "queues bounded": all(fig["max_queue_depth"][q] <= c for q, c in QUEUE_CAPACITY.items()),
        "every event received once, in order": (
            sub.received == spooled and sub.out_of_order == 0 and sub_stats["lost"] == 0
        ),
        f"SIGTERM: exit 0 within {STOP_BOUND_S:.0f} s": rc == 0 and stop_s < STOP_BOUND_S,
    }
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "duration_s": args.duration_s,
        "speed_m_min": args.speed_m_min,
        "width_px": args.width_px,
        "model": model_note,
        "figures": fig,
        "floors": floors,
        "samples": samples,
    }
    (args.out / "soak.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    title = (
        f"soak {args.duration_s:.0f} s at {args.speed_m_min} m/min: RSS {100 * fig['rss_growth']:+.1f}% "
        f"since {fig['baseline_s']:.0f} s, fds {fig['fd_growth']:+.0f}, threads {fig['thread_growth']:+.0f}, "
        f"dropped {fig['strips_dropped']}"
    )
    plot(samples, args.out / "soak.png", title)

    print("\n== figures")
    print(f"model: {model_note}")
    print(
        f"RSS {fig['rss_mb']['at_baseline']:.1f} MB at {fig['baseline_s']:.0f} s -> {fig['rss_mb']['at_end']:.1f} MB "
        f"at the end ({100 * fig['rss_growth']:+.2f}%); max {fig['rss_mb']['max']:.1f} MB"
    )
    print(f"fds {fig['fds']['at_baseline']:.0f} -> {fig['fds']['at_end']:.0f}; threads "
          f"{fig['threads']['at_baseline']:.0f} -> {fig['threads']['at_end']:.0f}")  # fmt: skip
    print(f"max queue depth {fig['max_queue_depth']} (capacity {QUEUE_CAPACITY})")
    print(
        f"strips dropped {fig['strips_dropped']} ({fig['lines_dropped']} lines); {fig['inspected_m']:.1f} m inspected"
    )
    print(
        f"events: {spooled} published, {sub.received} received ({dict(sub.kinds)}); subscriber recovered "
        f"{sub_stats['recovered']} by replay, lost {sub_stats['lost']}, duplicates dropped {sub_stats['duplicates']}"
    )
    print(
        f"daemon CPU {fig['daemon_cpu_percent']}% of one core; machine load1 mean {fig['load1']['mean']} "
        f"max {fig['load1']['max']} on {fig['load1']['cpus']} CPUs"
    )
    print(f"SIGTERM: exit {rc} after {stop_s:.2f} s")
    for name, ok in floors.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"== {args.out / 'soak.json'}, {args.out / 'soak.png'}")
    return 0 if all(floors.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
