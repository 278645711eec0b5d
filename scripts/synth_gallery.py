"""Contact sheet of synthetic defects: N samples per synthesizer, each shown plain and with its mask outlined.

    .venv/bin/python scripts/synth_gallery.py --out out/synth_gallery.png --samples 4

Clean tiles come from the synthetic loom (defect-free webs of several fabrics, resampled to the
model's resolution as the runtime does) or from a folder of defect-free images (`--clean DIR`, taken
to be at the model's resolution already). Cut-paste uses `--library DIR` (NAME.png + NAME_mask.png +
NAME.json) or a small library rendered on the synthetic loom (`--library-per-class N`, 0 = none).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from offline_train.dataset.labels import boxes_from_mask
from offline_train.synth.base import Synthesizer, SynthResult
from offline_train.synth.library import DefectLibrary
from offline_train.synth.registry import default_synthesizers

log = logging.getLogger("synth_gallery")

OUTLINE_BGR = (0, 0, 255)
BOX_BGR = (0, 255, 255)
TEXT_BGR = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def sim_tiles(count: int, tile_px: int, mm_per_px: float, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` clean tiles from defect-free simulated webs of catalog and random fabrics (gray and colour)."""
    from runtime.preprocess import resample_to_model
    from runtime.sim.fabric import FABRICS, random_fabric
    from runtime.sim.loom import render_web

    camera_mm_per_px = 0.1
    names = sorted(FABRICS)
    tiles: list[np.ndarray] = []
    web = 0
    while len(tiles) < count:
        if web < len(names):
            fabric = FABRICS[names[web]]
        else:
            fabric = random_fabric(rng, color=bool(rng.random() < 0.3))
        web += 1
        length_m = 1.5 * tile_px * mm_per_px / 1000.0
        width_px = int(3 * tile_px * mm_per_px / camera_mm_per_px)
        pixels, _, _ = render_web(
            fabric,
            length_m=length_m,
            width_px=width_px,
            mm_per_px=camera_mm_per_px,
            mm_per_line=camera_mm_per_px,
            seed=int(rng.integers(2**31)),
            defects_per_m=0.0,
            with_masks=True,
        )
        scale = camera_mm_per_px / mm_per_px
        small = resample_to_model(pixels, scale, scale)
        if small.ndim == 3:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)  # tiles are RGB, as the dataset builder makes them
        h, w = small.shape[:2]
        x0 = (w - tile_px) // 2  # the middle of the web: fabric, not background
        y0 = int(rng.integers(0, max(1, h - tile_px + 1)))
        tiles.append(np.ascontiguousarray(small[y0 : y0 + tile_px, x0 : x0 + tile_px]))
    return tiles


def folder_tiles(folder: Path, count: int, tile_px: int, rng: np.random.Generator) -> list[np.ndarray]:
    files = sorted(
        p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".bmp", ".tif", ".tiff", ".jpg")
    )
    if not files:
        raise SystemExit(f"{folder} holds no images")
    tiles = []
    for i in range(count):
        img = cv2.imread(str(files[i % len(files)]), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise SystemExit(f"cannot read {files[i % len(files)]}")
        if img.ndim == 3:
            img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        y0, x0 = int(rng.integers(0, max(1, h - tile_px + 1))), int(rng.integers(0, max(1, w - tile_px + 1)))
        tiles.append(np.ascontiguousarray(img[y0 : y0 + tile_px, x0 : x0 + tile_px]))
    return tiles


def _bgr(tile: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(tile, cv2.COLOR_GRAY2BGR) if tile.ndim == 2 else cv2.cvtColor(tile, cv2.COLOR_RGB2BGR)


def panel(result: SynthResult | None, clean: np.ndarray, scale: int) -> np.ndarray:
    """[sample | sample with the mask outlined (red) and its label boxes (yellow)], upscaled by `scale`."""
    img = _bgr(result.image if result is not None else clean)
    big = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    marked = big.copy()
    if result is None:
        cv2.putText(marked, "None (rejected)", (8, 24), FONT, 0.6, OUTLINE_BGR, 1, cv2.LINE_AA)
    else:
        m = cv2.resize(
            result.mask.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST
        )
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(marked, contours, -1, OUTLINE_BGR, 1)
        for x0, y0, x1, y1 in boxes_from_mask(result.mask):  # the labels the dataset builder draws
            cv2.rectangle(marked, (x0 * scale, y0 * scale), (x1 * scale - 1, y1 * scale - 1), BOX_BGR, 1)
        (tw, th), base = cv2.getTextSize(result.class_name, FONT, 0.5, 1)
        cv2.rectangle(marked, (2, 2), (10 + tw, 10 + th + base), (0, 0, 0), -1)
        cv2.putText(marked, result.class_name, (6, 6 + th), FONT, 0.5, TEXT_BGR, 1, cv2.LINE_AA)
    gap = np.full((big.shape[0], 4, 3), 64, np.uint8)
    return np.hstack([big, gap, marked])


def sheet(
    synths: list[Synthesizer], tiles: list[np.ndarray], samples: int, seed: int, scale: int
) -> tuple[np.ndarray, dict[str, float]]:
    rows: list[np.ndarray] = []
    timing: dict[str, float] = {}
    for k, synth in enumerate(synths):
        rng = np.random.default_rng(seed + k)
        panels = []
        elapsed = 0.0
        for i in range(samples):
            clean = tiles[(k * samples + i) % len(tiles)]
            t0 = time.perf_counter()
            result = synth(clean, rng)
            elapsed += time.perf_counter() - t0
            panels.append(panel(result, clean, scale))
            panels.append(np.full((panels[-1].shape[0], 12, 3), 32, np.uint8))
        timing[synth.name] = 1000.0 * elapsed / samples
        row = np.hstack(panels[:-1])
        banner = np.full((28, row.shape[1], 3), 32, np.uint8)
        cv2.putText(
            banner,
            f"{synth.name}  ({timing[synth.name]:.1f} ms/tile)",
            (8, 20),
            FONT,
            0.6,
            TEXT_BGR,
            1,
            cv2.LINE_AA,
        )
        rows += [banner, row]
    return np.vstack(rows), timing


def bench(synths: list[Synthesizer], tiles: list[np.ndarray], n: int, seed: int) -> None:
    """Per-tile CPU time of each synthesizer on one thread (best of 3 rounds of `n` calls), and how
    often it returned None. CPU time, so other processes on the machine do not inflate it."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for synth in synths:
            rng = np.random.default_rng(seed)
            synth(tiles[0], rng)  # warm-up
            best, rejected = float("inf"), 0
            for _ in range(3):
                rejected = 0
                t0 = time.process_time()
                for i in range(n):
                    rejected += synth(tiles[i % len(tiles)], rng) is None
                best = min(best, (time.process_time() - t0) / n)
            log.info(
                "bench %-24s %6.2f ms/tile CPU (1 thread), %d/%d rejected",
                synth.name,
                1000 * best,
                rejected,
                n,
            )
    finally:
        cv2.setNumThreads(threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/synth_gallery.png"))
    p.add_argument("--samples", type=int, default=4, help="samples per synthesizer")
    p.add_argument("--tile-px", type=int, default=256)
    p.add_argument("--mm-per-px", type=float, default=0.4, help="the model's resolution")
    p.add_argument(
        "--scale", type=int, default=1, help="upscale each tile by this (nearest) to see single yarns"
    )
    p.add_argument(
        "--clean", type=Path, default=None, help="folder of defect-free images at the model's resolution"
    )
    p.add_argument("--library", type=Path, default=None, help="defect library folder for cut-paste")
    p.add_argument(
        "--library-per-class",
        type=int,
        default=3,
        help="else render this many crops per class (0: no cut-paste)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--bench",
        type=int,
        default=0,
        help="also time each synthesizer on this many tiles (one thread, CPU time, best of 3 rounds)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    rng = np.random.default_rng(args.seed)
    n_tiles = max(8, args.samples * 2)
    log.info("clean tiles: %s", args.clean or "synthetic loom")
    tiles = (
        folder_tiles(args.clean, n_tiles, args.tile_px, rng)
        if args.clean
        else sim_tiles(n_tiles, args.tile_px, args.mm_per_px, rng)
    )
    library = None
    if args.library:
        library = DefectLibrary.from_folder(args.library)
    elif args.library_per_class > 0:
        log.info("rendering a defect library (%d per class) on the synthetic loom", args.library_per_class)
        library = DefectLibrary.from_simulator(args.library_per_class, rng, args.mm_per_px, progress=log.info)
    log.info("library: %r", library)
    synths = default_synthesizers(library)
    image, timing = sheet(synths, tiles, args.samples, args.seed, args.scale)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), image):
        raise SystemExit(f"cannot write {args.out}")
    for name, ms in timing.items():
        log.info("%-24s %6.2f ms/tile (gallery samples, including rejections)", name, ms)
    if args.bench > 0:
        bench(synths, tiles, args.bench, args.seed)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
