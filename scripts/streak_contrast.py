"""How visible a broken end and a broken pick are at a model's resolution, per fabric.

Renders each streak (simulator defaults, 4 seeds) and the same web without it, resamples both as
the runtime does (INTER_AREA) to each `--mm-per-px`, and prints signal/noise per fabric:
signal = the largest mean |change| of one model column (broken end) or row (broken pick) along
the streak, noise = the per-pixel texture std (the web minus its own blur at 1 mm). A ratio that
hardly moves between resolutions says a finer model would see the streak no better per pixel.

    python scripts/streak_contrast.py [--mm-per-px 0.2 0.25 0.3 0.4]
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from runtime.sim.fabric import get_fabric
from runtime.sim.loom import SyntheticLoom

FABRICS = [
    "plain_gray",
    "twill_2_1_gray",
    "twill_3_1_gray",
    "satin_5_gray",
    "rib_gray",
    "voile_gray",
    "denim_color",
]
CAMERA_MM_PER_PX = 0.1


def _gray(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)


def signal_noise(class_name: str, fabric: str, mm_per_px: float, seed: int) -> tuple[float, float]:
    loom = SyntheticLoom(get_fabric(fabric), seed=seed, defects_per_m=0)
    if class_name == "broken_end":
        t = loom.place_defect(class_name, y0_line=0, x_center_px=1000 + 37 * seed, length_mm=200)
    else:
        t = loom.place_defect(class_name, y0_line=800 + 13 * seed, x_center_px=1000)
    web = _gray(loom.next_block(2000).pixels)
    clean = _gray(SyntheticLoom(get_fabric(fabric), seed=seed, defects_per_m=0).next_block(2000).pixels)
    f = CAMERA_MM_PER_PX / mm_per_px
    v = cv2.resize(web, None, fx=f, fy=f, interpolation=cv2.INTER_AREA).astype(np.float64)
    vc = cv2.resize(clean, None, fx=f, fy=f, interpolation=cv2.INTER_AREA).astype(np.float64)
    d = np.abs(v - vc)
    if class_name == "broken_end":
        x0, x1 = int(t.x0_px * f), int(np.ceil(t.x1_px * f))
        signal = d[: int(1800 * f), x0 : x1 + 1].mean(axis=0).max()
    else:
        y0, y1 = int(t.y0_line * f), int(np.ceil(t.y1_line * f))
        signal = d[y0 : y1 + 1, int(t.x0_px * f) : int(t.x1_px * f)].mean(axis=1).max()
    noise = (v - cv2.GaussianBlur(v, (0, 0), 1.0 / mm_per_px)).std()
    return float(signal), float(noise)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mm-per-px", type=float, nargs="+", default=[0.2, 0.25, 0.3, 0.4])
    args = ap.parse_args()
    print("signal/noise (signal grey levels / noise grey levels) per model resolution, mean of 4 seeds")
    print(f"{'class':12s} {'fabric':15s} " + "  ".join(f"{m:>16} mm/px" for m in args.mm_per_px))
    for class_name in ("broken_end", "broken_pick"):
        for fabric in FABRICS:
            cells = []
            for mm in args.mm_per_px:
                s, n = np.mean([signal_noise(class_name, fabric, mm, seed) for seed in range(4)], axis=0)
                cells.append(f"{s / n:4.2f} ({s:5.1f}/{n:4.1f})".rjust(22))
            print(f"{class_name:12s} {fabric:15s} " + "".join(cells))


if __name__ == "__main__":
    main()
