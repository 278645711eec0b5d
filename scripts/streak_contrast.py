"""How visible a broken end is at the model's resolution, per fabric (the bundled model's limit).

Renders a 200 mm broken end (simulator defaults) and the same web without it, resamples both to
0.4 mm/px as the runtime does, and prints the largest change of a column's mean brightness over
the streak next to the per-pixel texture standard deviation of the fabric.

    python scripts/streak_contrast.py
"""

import cv2
import numpy as np

from runtime.sim.fabric import get_fabric
from runtime.sim.loom import SyntheticLoom


def main() -> None:
    for name in ["plain_gray", "twill_2_1_gray", "twill_3_1_gray", "satin_5_gray", "denim_color"]:
        res = []
        for seed in range(4):
            loom = SyntheticLoom(get_fabric(name), seed=seed, defects_per_m=0)
            t = loom.place_defect("broken_end", y0_line=0, x_center_px=1000 + 37 * seed, length_mm=200)
            b = loom.next_block(2000)
            g = b.pixels if b.pixels.ndim == 2 else cv2.cvtColor(b.pixels, cv2.COLOR_BGR2GRAY)
            clean = SyntheticLoom(get_fabric(name), seed=seed, defects_per_m=0).next_block(2000).pixels
            cg = clean if clean.ndim == 2 else cv2.cvtColor(clean, cv2.COLOR_BGR2GRAY)
            v = cv2.resize(g, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA).astype(float)
            vc = cv2.resize(cg, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA).astype(float)
            x0, x1 = int(t.x0_px // 4), int(np.ceil(t.x1_px / 4))
            d = np.abs((v - vc)[:450, x0 - 1 : x1 + 1].mean(axis=0)).max()  # column-mean change along 180 mm
            noise = v[:450].std(axis=0).mean()  # texture std of a column (per pixel)
            res.append((d, noise))
        r = np.array(res)
        print(
            f"{name:16s} broken end: column-mean change {r[:, 0].mean():5.1f} grey levels; per-pixel texture std {r[:, 1].mean():4.1f}"
        )


if __name__ == "__main__":
    main()
