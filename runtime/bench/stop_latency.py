"""Stop latency on the demo line: `loomsight bench stop-latency` (floor: p99 <= 1.5 s + one strip).

Runs the daemon as `loomsight run --demo` does (synthetic loom paced in real time at the demo's
speed, the bundled model, spool and PUB on loopback) and reads back the timing of every stop
(runtime/daemon/stop_latency.py): from the acquisition of the stop's last camera line to the return
of its PUB send. Prints the median, p99 and spread over the stops, the median of each stage, the
stage that dominates, and the floor: 1.5 s plus the time one strip takes to pass the camera at the
configured speed.

So that a few minutes of web give enough stops, every class of the model except the streaks is a
stop class here (`--stop-classes`); streaks stop by the demo's open-length rule while they still
run, as on the demo line (a streak class listed as a stop class stops only once it has ended and
its along-web join gap has passed: `--stop-classes all` shows that).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

FLOOR_BASE_S = 1.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default_bundle = Path(__file__).resolve().parents[2] / "models" / "default"
    parser.add_argument("--model", type=Path, default=default_bundle)
    parser.add_argument("--length-m", type=float, default=12.0, help="web to run (at --speed-m-min)")
    parser.add_argument("--speed-m-min", type=float, default=6.0, help="the demo's default speed")
    parser.add_argument("--width-px", type=int, default=2048)
    parser.add_argument("--defects-per-m", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fabric", default="plain_gray")
    parser.add_argument(
        "--stop-classes",
        default="non-streak",
        help='"non-streak" (every model class but the streaks), "all", or a comma-separated list',
    )


def _stop_classes(spec: str, classes: list[str]) -> list[str]:
    from runtime.taxonomy import ACROSS_WEB_STREAKS, ALONG_WEB_STREAKS

    if spec == "all":
        return list(classes)
    if spec == "non-streak":
        return [c for c in classes if c not in ALONG_WEB_STREAKS | ACROSS_WEB_STREAKS]
    return [c.strip() for c in spec.split(",") if c.strip()]


def _config(args: argparse.Namespace, spool: Path, stop_classes: list[str]) -> Any:
    from runtime.config import parse_config

    return parse_config(
        {
            "line_id": "bench",
            "source": {
                "kind": "synthetic",
                "synthetic": {
                    "fabric": args.fabric, "width_px": args.width_px, "speed_m_min": args.speed_m_min,
                    "realtime": True, "seed": args.seed, "length_m": args.length_m,
                    "defects_per_m": args.defects_per_m,
                },
            },
            "model": {"bundle": str(args.model), "retry_load_s": None},
            "publish": {"pub_endpoint": "tcp://127.0.0.1:*", "replay_endpoint": None},
            "spool": {"path": str(spool)},
            "grading": {"stop_classes": stop_classes},
        },
        source="bench",
    )  # fmt: skip


def _stats(values: list[float]) -> dict[str, float | None]:
    from runtime.daemon.stop_latency import nearest_rank

    if not values:
        return {"p50_ms": None, "p99_ms": None, "min_ms": None, "max_ms": None, "stdev_ms": None}
    return {
        "p50_ms": round(statistics.median(values), 1),
        "p99_ms": round(nearest_rank(values, 0.99), 1),
        "min_ms": round(min(values), 1),
        "max_ms": round(max(values), 1),
        "stdev_ms": round(statistics.pstdev(values), 1),
    }


def main(args: argparse.Namespace) -> int:
    from runtime.daemon.app import Daemon, strip_geometry
    from runtime.daemon.stop_latency import STAGES
    from runtime.detect.manifest import read_manifest

    manifest = read_manifest(args.model)
    stop_classes = _stop_classes(args.stop_classes, list(manifest.classes))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(args, Path(tmp) / "spool.sqlite3", stop_classes)
        syn = config.source.synthetic
        strip_lines, _ = strip_geometry(config, manifest, syn.mm_per_line)
        strip_s = strip_lines * syn.mm_per_line / (syn.speed_m_min * 1000.0 / 60.0)
        daemon = Daemon(config, roll_id="bench-stop-latency")
        t0 = time.perf_counter()
        summary = daemon.run()
        wall = time.perf_counter() - t0
        status = daemon.status()
    per_stop: list[dict[str, Any]] = list(summary.get("stop_latency", {}).get("per_stop", []))
    total = [float(s["latency_ms"]) for s in per_stop]
    stages = {
        s: round(statistics.median([float(p[s]) for p in per_stop]), 1) if per_stop else None for s in STAGES
    }
    dominant = max(STAGES, key=lambda s: stages[s] or 0.0) if per_stop else None
    by_reason: dict[str, dict[str, float | None]] = {}
    for reason in sorted({str(s["reason"]) for s in per_stop}):
        by_reason[reason] = {
            "stops": sum(1 for s in per_stop if s["reason"] == reason),
            **_stats([float(s["latency_ms"]) for s in per_stop if s["reason"] == reason]),
        }
    floor_ms = (FLOOR_BASE_S + strip_s) * 1000.0
    figures = _stats(total)
    result: dict[str, Any] = {
        "speed_m_min": syn.speed_m_min,
        "length_m": args.length_m,
        "strip_lines": strip_lines,
        "strip_s": round(strip_s, 3),
        "stop_classes": stop_classes,
        "stops": len(per_stop),
        "unmeasured": summary.get("stop_latency", {}).get("unmeasured"),
        **figures,
        "stages_p50_ms": stages,
        "dominant_stage": dominant,
        "by_reason": by_reason,
        "floor_ms": round(floor_ms, 1),
        "pass": bool(per_stop) and (figures["p99_ms"] or 0.0) <= floor_ms,
        "strips_dropped": status.get("strips_dropped"),
        "tiles_per_s_mean": status.get("tiles_per_s_mean"),
        "providers": status.get("providers"),
        "wall_s": round(wall, 1),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
        "per_stop": per_stop,
    }
    if not per_stop:
        print(
            f"no stop was measured in {args.length_m} m (stop classes {', '.join(stop_classes)}): run longer"
        )
    else:
        print(
            f"{len(per_stop)} stops at {syn.speed_m_min:g} m/min: median {figures['p50_ms']:.0f} ms, "
            f"p99 {figures['p99_ms']:.0f} ms, spread {figures['min_ms']:.0f}-{figures['max_ms']:.0f} ms "
            f"(stdev {figures['stdev_ms']:.0f}); floor {floor_ms:.0f} ms (1.5 s + one strip of "
            f"{strip_lines} lines = {strip_s:.2f} s) {'PASS' if result['pass'] else 'FAIL'}"
        )
        print(
            "median by stage: "
            + ", ".join(f"{k.removesuffix('_ms')} {v:.0f} ms" for k, v in stages.items() if v is not None)
        )
        print(
            f"dominated by {dominant}; {result['strips_dropped']} strips dropped; load average "
            f"{result['loadavg_before'][0]} before, {result['loadavg_after'][0]} after ({result['cpus']} CPUs)"
        )
        slow = max(per_stop, key=lambda p: float(p["latency_ms"]))
        print(
            f"slowest stop (seq {slow['stop_seq']}, {slow['reason']}): "
            + ", ".join(f"{s.removesuffix('_ms')} {float(slow[s]):.0f} ms" for s in STAGES)
        )
        for reason, row in by_reason.items():
            print(
                f"  {reason}: {row['stops']} stops, median {row['p50_ms']:.0f} ms, max {row['max_ms']:.0f} ms"
            )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0 if result["pass"] else 1
