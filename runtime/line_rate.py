"""`loomsight line-rate`: what a line needs (camera line and pixel rate, model tiles per second)
and, with `--measure`, whether this box keeps up with the bundle's model.

Tiles per metre come from the runtime's own strip geometry and tiler: strips of
`web.strip_lines` camera lines plus the repeated overlap, resampled to the model's mm/px and
tiled at its size and overlap, against the minimum that covers each metre once.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.commands import Command
from runtime.errors import ConfigError
from runtime.tiler import axis_starts


@dataclass(frozen=True)
class LineNeeds:
    width_m: float
    speed_m_min: float
    mm_per_px: float
    mm_per_line: float
    line_rate_hz: float
    pixels_per_line: int
    pixel_rate_mpx_s: float
    model: str
    model_mm_per_px: float
    strip_lines: int
    overlap_lines: int
    tiles_per_m: float
    minimal_tiles_per_m: float
    tiles_per_s: float


def line_needs(
    *, width_m: float, speed_m_min: float, mm_per_px: float, mm_per_line: float, manifest: Any,
    strip_lines: int | str = 1024, overlap_lines: int | None = None,
) -> LineNeeds:  # fmt: skip
    from runtime.config import parse_config
    from runtime.daemon.app import strip_geometry

    for name, v in (("--width-m", width_m), ("--speed-m-min", speed_m_min), ("--mm-per-px", mm_per_px),
                    ("--mm-per-line", mm_per_line)):  # fmt: skip
        if not v > 0:
            raise ConfigError(f"{name} must be > 0, got {v}")
    cfg = parse_config({"web": {"strip_lines": strip_lines, "overlap_lines": overlap_lines}})
    strip, overlap = strip_geometry(cfg, manifest, mm_per_line)
    tile, tile_overlap = manifest.tile.size_px, manifest.tile.overlap_px
    scale_y = mm_per_line / manifest.mm_per_px
    width_model_px = max(tile, round(width_m * 1000 / manifest.mm_per_px))
    cols = len(axis_starts(width_model_px, tile, tile_overlap))
    strip_rows = max(tile, round((strip + overlap) * scale_y))
    tiles_per_strip = cols * len(axis_starts(strip_rows, tile, tile_overlap))
    strips_per_m = 1000.0 / (strip * mm_per_line)
    minimal = cols * (1000.0 / manifest.mm_per_px) / (tile - tile_overlap)
    speed_m_s = speed_m_min / 60.0
    tiles_per_m = tiles_per_strip * strips_per_m
    return LineNeeds(
        width_m=width_m, speed_m_min=speed_m_min, mm_per_px=mm_per_px, mm_per_line=mm_per_line,
        line_rate_hz=speed_m_s * 1000 / mm_per_line, pixels_per_line=math.ceil(width_m * 1000 / mm_per_px),
        pixel_rate_mpx_s=speed_m_s * 1000 / mm_per_line * width_m * 1000 / mm_per_px / 1e6,
        model=manifest.name, model_mm_per_px=manifest.mm_per_px, strip_lines=strip, overlap_lines=overlap,
        tiles_per_m=round(tiles_per_m, 1), minimal_tiles_per_m=round(minimal, 1),
        tiles_per_s=round(tiles_per_m * speed_m_s, 1),
    )  # fmt: skip


def measure_tiles_per_s(
    bundle: Path, *, seconds: float = 5.0, batch: int = 8, runs: int = 3
) -> dict[str, float]:
    """The bare detector's sustained tiles/s on this box: `runs` timed runs, median and min-max."""
    from runtime.config import ModelConfig
    from runtime.detect.bundle import open_detector

    det = open_detector(ModelConfig(bundle=bundle, batch_size=batch))
    size = det.manifest.input.size_px
    rng = np.random.default_rng(0)
    tiles = rng.integers(90, 160, (batch, size, size), dtype=np.uint8)
    det.warmup(2)
    rates = []
    for _ in range(runs):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / runs:
            det.infer(tiles)
            n += batch
        rates.append(n / (time.perf_counter() - t0))
    det.close()
    return {
        "median": float(np.median(rates)),
        "min": float(min(rates)),
        "max": float(max(rates)),
        "runs": runs,
    }


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width-m", type=float, required=True, help="web width seen by the camera(s)")
    p.add_argument("--speed-m-min", type=float, required=True, help="web speed")
    p.add_argument("--mm-per-px", type=float, required=True, help="camera resolution across")
    p.add_argument("--mm-per-line", type=float, default=None, help="resolution along (default: --mm-per-px)")
    p.add_argument("--bundle", type=Path, default=Path("models/default"), help="model bundle")
    p.add_argument("--strip-lines", default="1024", help='web.strip_lines: a number or "fit"')
    p.add_argument("--measure", action="store_true", help="time the bundle's model on this box (about 5 s)")
    p.add_argument("--json", dest="json_out", type=Path, default=None)


def _run(args: argparse.Namespace) -> int:
    from runtime.detect.bundle import load_bundle

    manifest = load_bundle(args.bundle).manifest
    strip: int | str = args.strip_lines if args.strip_lines == "fit" else int(args.strip_lines)
    needs = line_needs(
        width_m=args.width_m, speed_m_min=args.speed_m_min, mm_per_px=args.mm_per_px,
        mm_per_line=args.mm_per_line or args.mm_per_px, manifest=manifest, strip_lines=strip,
    )  # fmt: skip
    print(
        f"camera: {needs.line_rate_hz:,.0f} lines/s x {needs.pixels_per_line:,} px = {needs.pixel_rate_mpx_s:.1f} Mpx/s"
    )
    print(f"model {needs.model} at {needs.model_mm_per_px} mm/px: {needs.tiles_per_m} tiles per metre with strips of "
          f"{needs.strip_lines} + {needs.overlap_lines} lines (the minimum that covers a metre once: "
          f"{needs.minimal_tiles_per_m}), so {needs.tiles_per_s} tiles/s")  # fmt: skip
    out: dict[str, Any] = {"needs": asdict(needs)}
    code = 0
    if args.measure:
        rate = measure_tiles_per_s(args.bundle)
        headroom = rate["median"] / needs.tiles_per_s if needs.tiles_per_s else math.inf
        fastest = needs.speed_m_min * headroom
        out["measured_tiles_per_s"], out["headroom"], out["fastest_m_min"] = rate, headroom, fastest
        print(f"this box: {rate['median']:.0f} tiles/s (min-max {rate['min']:.0f}-{rate['max']:.0f} over {rate['runs']} "
              f"runs, bare detector): headroom x{headroom:.2f}, keeps up to about {fastest:.0f} m/min")  # fmt: skip
        if headroom < 1.0:
            code = 1
            tips = []
            if needs.tiles_per_m > 1.15 * needs.minimal_tiles_per_m:
                tips.append(
                    f'--strip-lines fit (web.strip_lines = "fit": {needs.minimal_tiles_per_m} tiles/m is the floor)'
                )
            tips += ["a larger model.batch_size", "a GPU provider (CUDA or TensorRT) in model.providers",
                     "a coarser camera resolution or a model trained at a coarser mm/px"]  # fmt: skip
            print("short of the line's need; try: " + "; ".join(tips))
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return code


LINE_RATE = Command(
    name="line-rate",
    help="camera line/pixel rate and model tiles/s a line needs; --measure: does this box keep up",
    add_arguments=_args,
    run=_run,
)
