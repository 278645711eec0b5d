"""`loomsight bench sim`: synthetic loom throughput in Mpx/s of grayscale web on ONE core.

The floor (issue 2) is 20 Mpx/s with random defects at the default rate included, so that the
simulator can feed a realistic line. One core means single-threaded OpenCV, OpenMP and BLAS; the
thread-count variables only take effect before numpy is imported, so the measurement runs in a
fresh interpreter (`python -m runtime.bench.sim --worker ...`) started with
`OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1` and `cv2.setNumThreads(1)`.

Timed: `SyntheticLoom.next_block` over `--lines` lines after one warm-up block (defect placement
and rendering included). Not timed: building the loom (`init_s` is reported separately).
Exit status 0 when the floor holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fabric", default="plain_gray", help="catalog fabric (a gray one for the floor)")
    parser.add_argument("--width-px", type=int, default=2048)
    parser.add_argument("--lines", type=int, default=60000, help="lines rendered in the timed run")
    parser.add_argument("--block-lines", type=int, default=1024)
    parser.add_argument("--defects-per-m", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best is the figure")
    parser.add_argument("--floor-mpx-s", type=float, default=20.0)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    import cv2

    cv2.setNumThreads(1)
    from runtime.sim.fabric import get_fabric
    from runtime.sim.loom import SyntheticLoom

    fabric = get_fabric(args.fabric)
    runs = []
    init_s = 0.0
    defects = 0
    for r in range(args.repeat):
        t0 = time.perf_counter()
        loom = SyntheticLoom(
            fabric, width_px=args.width_px, seed=args.seed + r, defects_per_m=args.defects_per_m
        )
        init_s = time.perf_counter() - t0
        loom.next_block(args.block_lines)  # warm-up
        t0 = time.perf_counter()
        done = 0
        while done < args.lines:
            done += loom.next_block(min(args.block_lines, args.lines - done)).n_lines
        elapsed = time.perf_counter() - t0
        defects = len(loom.truth)
        runs.append(done * args.width_px / elapsed / 1e6)
    return {
        "topic": "sim",
        "fabric": fabric.name,
        "width_px": args.width_px,
        "lines": args.lines,
        "block_lines": args.block_lines,
        "defects_per_m": args.defects_per_m,
        "defects_in_last_run": defects,
        "threads": {"cv2": cv2.getNumThreads(), **{v: os.environ.get(v) for v in THREAD_VARS}},
        "init_s": round(init_s, 3),
        "mpx_s_runs": [round(v, 2) for v in runs],
        "mpx_s": round(max(runs), 2),
        "floor_mpx_s": args.floor_mpx_s,
    }


def main(args: argparse.Namespace) -> int:
    cmd = [sys.executable, "-m", "runtime.bench.sim", "--worker"]
    for key in (
        "fabric",
        "width_px",
        "lines",
        "block_lines",
        "defects_per_m",
        "seed",
        "repeat",
        "floor_mpx_s",
    ):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    env = {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}
    print(
        f"bench sim: {args.lines} lines x {args.width_px} px of {args.fabric}, one core, best of {args.repeat} ..."
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 2
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    ok = result["mpx_s"] >= args.floor_mpx_s
    result["floor_met"] = ok
    print(
        f"sim: {result['mpx_s']:.1f} Mpx/s on one core (runs {result['mpx_s_runs']}; floor {args.floor_mpx_s} Mpx/s "
        f"{'met' if ok else 'NOT met'}); {result['defects_in_last_run']} defect(s) in the last run; "
        f"loom built in {result['init_s']} s"
    )
    if getattr(args, "json_out", None):
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


def _worker() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    add_arguments(parser)
    print(json.dumps(_measure(parser.parse_args())))
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker())
