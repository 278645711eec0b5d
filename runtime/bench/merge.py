"""Merging throughput: `loomsight bench merge` (floors: 1,000 boxes <= 2 ms, 10,000 boxes <= 30 ms).

The boxes imitate a busy web: clusters of duplicates from overlapping tiles around each defect,
long streaks cut into tile-sized pieces, and scattered singletons, over a 2 m wide web. The
merger runs as the daemon configures it by default: 3 mm join gap, and 150 mm along-streak gaps
for broken ends (class 2, along the web) and broken picks (class 3, across), at 0.1 mm/px.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from runtime.merge import Merger, join_labels

FLOORS_MS = {1000: 2.0, 10000: 30.0}


def synthetic_boxes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    width, length = 20000.0, 200000.0  # 2 m at 0.1 mm/px, 20 m of lines
    boxes: list[np.ndarray] = []
    while sum(len(b) for b in boxes) < n:
        kind = rng.random()
        if kind < 0.15:  # a streak cut into tile pieces
            x = rng.uniform(0, width)
            y = rng.uniform(0, length)
            k = int(rng.integers(3, 12))
            ys = y + np.arange(k) * 900.0
            boxes.append(np.stack([np.full(k, x), ys, np.full(k, x + 8), ys + 1024], axis=1))
        else:  # a compact defect seen by 1-6 overlapping tiles / queries
            cx, cy = rng.uniform(0, width), rng.uniform(0, length)
            w, h = rng.uniform(10, 300, 2)
            k = int(rng.integers(1, 7))
            jitter = rng.normal(0, 0.1, (k, 4)) * [w, h, w, h]
            boxes.append(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) + jitter)
    xyxy = np.concatenate(boxes)[:n]
    xyxy[:, 2:] = np.maximum(xyxy[:, 2:], xyxy[:, :2] + 1)
    cls = rng.integers(0, 9, n)
    score = rng.uniform(0.3, 1.0, n)
    return xyxy, cls, score


def time_merge(n: int, repeats: int) -> dict[str, float]:
    xyxy, cls, score = synthetic_boxes(n)
    join_labels(xyxy, cls, gap_x=30, gap_y=30)  # warm up
    times = []
    groups = 0
    for _ in range(repeats):
        m = Merger(gap_px=30, gap_lines=30, streak_gap_px={3: 1500.0}, streak_gap_lines={2: 1500.0})
        t0 = time.perf_counter()
        closed = m.update(xyxy, cls, score, strip_seq=0, next_line0=float("inf"))
        times.append(time.perf_counter() - t0)
        groups = len(closed)
    arr = np.array(times) * 1e3
    return {
        "boxes": n,
        "defects": groups,
        "median_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=50)


def main(args: argparse.Namespace) -> int:
    results = []
    ok = True
    for n, floor in FLOORS_MS.items():
        r = time_merge(n, args.repeats)
        r["floor_ms"] = floor
        r["pass"] = r["median_ms"] <= floor
        ok &= bool(r["pass"])
        results.append(r)
        print(
            f"merge {n:>6} boxes -> {r['defects']:>5} defects: median {r['median_ms']:.2f} ms, "
            f"p90 {r['p90_ms']:.2f} ms (floor {floor} ms) {'PASS' if r['pass'] else 'FAIL'}"
        )
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump({"merge": results}, fh, indent=2)
    return 0 if ok else 1
