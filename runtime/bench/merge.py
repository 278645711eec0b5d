"""Merging throughput: `loomsight bench merge` (floors: 1,000 boxes <= 2 ms, 10,000 boxes <= 30 ms).

The boxes imitate a busy web: clusters of duplicates from overlapping tiles around each defect,
long streaks cut into tile-sized pieces, and scattered singletons, over a 2 m wide web, at a
constant density (`DENSITY_BOXES_PER_M2`, about ten times the demo roll's): more boxes means a
longer web, not a more crowded one, so the figures measure the merger's cost per box and not
how crowding grows. The merger runs as the daemon configures it by default: 3 mm join gap, and
150 mm along-streak gaps for broken ends (class 2, along the web) and broken picks (class 3,
across), at 0.1 mm/px. Each size is timed `--repeats` times: median and min-max are printed.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from runtime.merge import Merger, join_labels

FLOORS_MS: dict[int, float | None] = {1000: 2.0, 10000: 30.0, 50000: None}  # 50k: linearity only
DENSITY_BOXES_PER_M2 = 25.0
WIDTH_M = 2.0


def synthetic_boxes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    length_m = n / (DENSITY_BOXES_PER_M2 * WIDTH_M)
    width, length = WIDTH_M * 1e4, length_m * 1e4  # at 0.1 mm/px and 0.1 mm/line
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


def time_merge(n: int, repeats: int) -> dict[str, Any]:
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
        "web_m2": round(n / DENSITY_BOXES_PER_M2, 1),
        "defects": groups,
        "repeats": repeats,
        "median_ms": float(np.median(arr)),
        "min_ms": float(arr.min()),
        "max_ms": float(arr.max()),
        "p90_ms": float(np.percentile(arr, 90)),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=50)


def main(args: argparse.Namespace) -> int:
    results: list[dict[str, Any]] = []
    ok = True
    for n, floor in FLOORS_MS.items():
        r: dict[str, Any] = dict(time_merge(n, max(3, args.repeats // max(1, n // 10000))))
        r["floor_ms"] = floor
        r["us_per_box"] = round(1000 * r["median_ms"] / n, 3)
        verdict = "(no floor)"
        if floor is not None:
            r["pass"] = r["median_ms"] <= floor
            ok &= bool(r["pass"])
            verdict = f"(floor {floor} ms) {'PASS' if r['pass'] else 'FAIL'}"
        results.append(r)
        print(
            f"merge {n:>6} boxes ({r['web_m2']:g} m2) -> {r['defects']:>5} defects: median {r['median_ms']:.2f} ms, "
            f"min-max {r['min_ms']:.2f}-{r['max_ms']:.2f} ms over {r['repeats']} runs, "
            f"{r['us_per_box']:.2f} us/box {verdict}"
        )
    per_box = [r["us_per_box"] for r in results]
    print(f"cost per box from {FLOORS_MS and min(FLOORS_MS):,} to {max(FLOORS_MS):,} boxes: x{per_box[-1] / per_box[0]:.2f} "
          "(1.00 = linear)")  # fmt: skip
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump({"merge": results}, fh, indent=2)
    return 0 if ok else 1
