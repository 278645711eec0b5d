"""Pipeline efficiency: `loomsight bench pipeline` (floor: >= 0.90 on this machine's CPU).

Runs the whole daemon path (assembler, preprocess, tiler, detector, merger, grader, publisher
with its spool and a PUB socket on loopback) on the synthetic loom with a model bundle, then the
same detector bare (same backend, threads and batch) on tiles cut from the same web, and reports
tiles/s through the pipeline / bare tiles/s.

`--source prerendered` (default) renders the roll before timing and feeds it like a camera whose
frames arrive by DMA: rendering fabric is the simulator's cost, not the pipeline's. `--source
live` renders while running (on a 2-core machine the simulator then competes with the detector).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.frame import Frame
from runtime.sources.base import SourceStatus


class PrerenderedSource:
    """Frames rendered in advance, handed out as fast as they are read (a camera at any line rate)."""

    def __init__(self, frames: list[Frame]) -> None:
        self._frames = frames
        self._i = 0

    live = False  # frames as fast as they are read: the pipeline waits for the inspector
    advance_lines_per_frame = None

    def start(self) -> None:
        self._i = 0

    def stop(self) -> None:
        pass

    @property
    def finished(self) -> bool:
        return self._i >= len(self._frames)

    def read(self, *, timeout_s: float) -> Frame | None:
        if self.finished:
            return None
        frame = self._frames[self._i]
        self._i += 1
        return frame

    def status(self) -> SourceStatus:
        return SourceStatus(
            state="finished" if self.finished else "running", frames=self._i, source="prerendered"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default_bundle = Path(__file__).resolve().parents[2] / "models" / "default"
    parser.add_argument("--model", type=Path, default=default_bundle)
    parser.add_argument("--length-m", type=float, default=20.0)
    parser.add_argument("--width-px", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = default)")
    parser.add_argument("--source", choices=["prerendered", "live"], default="prerendered")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--fabric", default="plain_gray")
    parser.add_argument(
        "--strip-lines",
        default="1024",
        help='web.strip_lines: new lines per strip, or "fit" (fitted to the model)',
    )
    parser.add_argument(
        "--overlap-lines", type=int, default=None, help="web.overlap_lines (default: the model's)"
    )
    parser.add_argument(
        "--no-spinning",
        dest="spinning",
        action="store_false",
        help="model.intra_op_spinning = false: ONNX Runtime's workers sleep between runs",
    )


def _config(args: argparse.Namespace, spool: Path) -> Any:
    from runtime.config import parse_config

    return parse_config(
        {
            "line_id": "bench",
            "source": {
                "kind": "synthetic",
                "synthetic": {
                    "fabric": args.fabric, "width_px": args.width_px, "realtime": False,
                    "seed": args.seed, "length_m": args.length_m,
                },
            },
            "model": {"bundle": str(args.model), "batch_size": args.batch, "intra_op_threads": args.threads, "intra_op_spinning": args.spinning, "retry_load_s": None},
            "publish": {"pub_endpoint": "tcp://127.0.0.1:*", "replay_endpoint": None},
            "spool": {"path": str(spool)},
            "web": {
                "strip_lines": args.strip_lines if args.strip_lines == "fit" else int(args.strip_lines),
                "overlap_lines": args.overlap_lines,
            },
        },
        source="bench",
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from runtime.daemon.app import Daemon
    from runtime.detect.bundle import open_detector
    from runtime.preprocess import Preprocessor
    from runtime.sources.synthetic import SyntheticSource
    from runtime.tiler import Tiler

    with tempfile.TemporaryDirectory() as tmp:
        config = _config(args, Path(tmp) / "spool.sqlite3")
        detector = open_detector(config.model)
        detector.warmup(3)
        syn = config.source.synthetic
        frames: list[Frame] = []
        src = SyntheticSource(syn)
        src.start()
        while (f := src.read(timeout_s=1.0)) is not None:
            frames.append(f)
        src.stop()
        source: Any = PrerenderedSource(frames) if args.source == "prerendered" else SyntheticSource(syn)

        # bare detector on the tiles of the same web
        pre = Preprocessor(
            camera_mm_per_px=syn.mm_per_px, camera_mm_per_line=syn.mm_per_line,
            model_mm_per_px=detector.manifest.mm_per_px, color=detector.manifest.input.color,
        )  # fmt: skip
        from runtime.frame import Strip

        web = np.concatenate([f.pixels for f in frames])
        view = pre(Strip(web, 0, 0, 0, "bench", 0))
        tiler = Tiler(detector.manifest.tile.size_px, detector.manifest.tile.overlap_px)
        tiles = tiler.cut(view.pixels, tiler.layout(view.pixels.shape[1], view.pixels.shape[0]))
        t0 = time.perf_counter()
        for i in range(0, len(tiles), args.batch):
            detector.infer(tiles[i : i + args.batch])
        bare = len(tiles) / (time.perf_counter() - t0)

        daemon = Daemon(config, source=source, detector=detector, roll_id="bench")
        t0 = time.perf_counter()
        daemon.run()
        wall = time.perf_counter() - t0
        status = daemon.status()
    through = status["tiles"] / wall
    ratio = through / bare
    result = {
        "source": args.source,
        "providers": detector.providers,
        "batch": args.batch,
        "threads": args.threads,
        "spinning": args.spinning,
        "tiles_bare": len(tiles),
        "bare_tiles_per_s": round(bare, 2),
        "pipeline_tiles": status["tiles"],
        "pipeline_tiles_per_s": round(through, 2),
        "efficiency": round(ratio, 3),
        "floor": 0.90,
        "pass": ratio >= 0.90,
        "strips_dropped": status["strips_dropped"],
        "web_m_per_min": round(args.length_m / wall * 60.0, 1),
        "tiles_per_m": round(status["tiles"] / args.length_m, 1),
    }
    print(
        f"bare detector {bare:.1f} tiles/s; pipeline {through:.1f} tiles/s ({args.source} source, "
        f"{detector.providers[0]}, batch {args.batch}); efficiency {ratio:.3f} (floor 0.90) "
        f"{'PASS' if result['pass'] else 'FAIL'}; the web at up to {result['web_m_per_min']} m/min "
        f"({result['tiles_per_m']} tiles per metre)"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0 if result["pass"] else 1
