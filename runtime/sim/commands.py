"""`loomsight sim`: write a synthetic web (PNG strips or one tall image), its truth and a gallery.

Output folder:
- `web_<line0>.png` strips of `--strip-lines` lines (file names sort in roll order, so the folder
  replays as one web), or `web.png` with `--single-image`;
- `truth.json`: the fabric spec, the geometry, the strips and every defect (class, box in px and mm);
- `gallery.png` (and `gallery_4x.png`, every crop 4x downsampled): every catalog fabric and every
  defect class with its mask outlined, for a person to look at.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from runtime.commands import Command

log = logging.getLogger(__name__)

TRUTH_SCHEMA = "loomsight.simtruth/1"
# The catalog's names for --help without importing numpy (a unit test keeps this equal to FABRICS).
CATALOG_NAMES = (
    "plain_gray",
    "plain_color",
    "canvas_gray",
    "voile_gray",
    "twill_2_1_gray",
    "twill_2_2_gray",
    "twill_3_1_gray",
    "denim_color",
    "satin_5_gray",
    "satin_5_color",
    "basket_gray",
    "rib_gray",
    "herringbone_gray",
    "herringbone_color",
)


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, every 10 % otherwise)."""

    def __init__(self, total: float, unit: str, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.unit = max(total, 1e-9), unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self._last_decile = -1

    def update(self, done: float, note: str = "") -> None:
        if not self.enabled:
            return
        frac = min(1.0, done / self.total)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        line = f"sim [{bar}] {100 * frac:5.1f}% {done:.2f}/{self.total:.2f} {self.unit} {note}"
        if self.tty:
            self.stream.write("\r" + line)
            self.stream.flush()
        elif int(10 * frac) > self._last_decile:
            self._last_decile = int(10 * frac)
            self.stream.write(line + "\n")

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("out/sim"), help="output folder (created)")
    p.add_argument(
        "--fabric",
        default="plain_gray",
        help="catalog fabric name (see runtime.sim.fabric.FABRICS) or random:SEED (a held-out fabric)",
    )
    p.add_argument("--length-m", type=float, default=2.0, help="length of web to write, metres")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width-px", type=int, default=2048, help="camera line width")
    p.add_argument("--mm-per-px", type=float, default=0.1, help="across the web")
    p.add_argument("--mm-per-line", type=float, default=0.1, help="along the web")
    p.add_argument("--defects-per-m", type=float, default=1.0, help="mean random defects per metre")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--strip-lines", type=int, default=4096, help="lines per PNG strip")
    out.add_argument("--single-image", action="store_true", help="write the web as one tall web.png")
    p.add_argument(
        "--gallery",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write gallery.png and gallery_4x.png",
    )
    p.add_argument("--masks", action="store_true", help="also write 16-bit label PNGs (pixel = defect_id)")


def run_sim(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from runtime.errors import ConfigError
    from runtime.sim.fabric import get_fabric
    from runtime.sim.loom import SyntheticLoom
    from runtime.taxonomy import DEFECT_CLASSES

    fabric = get_fabric(args.fabric)
    if args.length_m <= 0:
        raise ConfigError(f"--length-m {args.length_m} must be > 0")
    if args.strip_lines < 1:
        raise ConfigError(f"--strip-lines {args.strip_lines} must be >= 1")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    loom = SyntheticLoom(
        fabric,
        width_px=args.width_px,
        mm_per_px=args.mm_per_px,
        mm_per_line=args.mm_per_line,
        seed=args.seed,
        defects_per_m=args.defects_per_m,
        with_masks=args.masks,
    )
    total = round(args.length_m * 1000.0 / args.mm_per_line)
    step = total if args.single_image else args.strip_lines
    digits = max(8, len(str(total)))
    progress = Progress(args.length_m, "m", enabled=total * args.width_px > 20_000_000)
    strips: list[dict[str, Any]] = []
    parts: list[np.ndarray] = []
    t0 = time.monotonic()
    while loom.lines_emitted < total:
        n = (
            min(step, total - loom.lines_emitted, 8192)
            if args.single_image
            else min(step, total - loom.lines_emitted)
        )
        block = loom.next_block(n)
        if args.single_image:
            parts.append(block.pixels)
        else:
            name = f"web_{block.line0:0{digits}d}.png"
            cv2.imwrite(str(out / name), block.pixels)
            strips.append({"file": name, "line0": block.line0, "lines": block.n_lines})
            if block.labels is not None:
                cv2.imwrite(str(out / f"labels_{block.line0:0{digits}d}.png"), block.labels.astype(np.uint16))
        progress.update(loom.lines_emitted * args.mm_per_line / 1000.0)
    if args.single_image:
        cv2.imwrite(str(out / "web.png"), np.concatenate(parts))
        strips.append({"file": "web.png", "line0": 0, "lines": total})
    progress.close()
    elapsed = time.monotonic() - t0
    truth = [t for t in loom.truth if t.y0_line < total]
    doc = {
        "schema": TRUTH_SCHEMA,
        "fabric": fabric.to_dict(),
        "seed": args.seed,
        "width_px": args.width_px,
        "mm_per_px": args.mm_per_px,
        "mm_per_line": args.mm_per_line,
        "length_m": args.length_m,
        "lines": total,
        "defects_per_m": args.defects_per_m,
        "classes": list(DEFECT_CLASSES),
        "box_convention": "bbox_px = [x0, y0, x1, y1], end-exclusive; x = camera column, y = line since roll "
        "start; x_mm/y_mm = top-left corner from image column 0 / roll start",
        "strips": strips,
        "defects": [t.to_dict() for t in truth],
    }
    (out / "truth.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    mpx = total * args.width_px / 1e6
    print(
        f"wrote {args.length_m} m of {fabric.name} ({total} lines x {args.width_px} px, {mpx:.1f} Mpx in "
        f"{elapsed:.1f} s) as {len(strips)} image(s), {len(truth)} defect(s) -> {out}"
    )
    if args.gallery:
        from runtime.sim.gallery import make_gallery

        cv2.imwrite(str(out / "gallery.png"), make_gallery(seed=args.seed))
        cv2.imwrite(str(out / "gallery_4x.png"), make_gallery(seed=args.seed, downsample=4))
        print(f"gallery: {out / 'gallery.png'} (and gallery_4x.png: every crop 4x downsampled)")
    return 0


SIM = Command(
    name="sim",
    help="write a synthetic web (PNG strips), truth.json and a gallery of fabrics and defects",
    add_arguments=_add_arguments,
    run=run_sim,
    description=(
        "Write a synthetic web as PNG strips web_<line0>.png (or one web.png with --single-image), "
        "truth.json (fabric spec, geometry, every defect with class and box in px and mm) and "
        "gallery.png / gallery_4x.png (every catalog fabric and defect class, masks outlined; the same "
        "4x downsampled). --fabric takes a catalog name: "
        + ", ".join(CATALOG_NAMES)
        + " (a bare weave name means its gray variant)."
    ),
)
