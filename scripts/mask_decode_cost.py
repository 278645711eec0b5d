"""What the mask decoder costs against the dense model's own inference, per tile (issue 11: <= 15 %).

    python scripts/mask_decode_cost.py BUNDLE DATASET [--tiles 256] [--repeats 5]

Times ONNX Runtime (`raw`) and the decoder (`decode_mask` at the bundle's thresholds) on the same
validation tiles, batch 8, interleaved; prints the medians and min-max per tile and the ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from runtime.config import ModelConfig
from runtime.detect.bundle import open_detector
from runtime.detect.decode import DecodeStats
from runtime.detect.mask_decode import decode_mask


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("bundle", type=Path)
    p.add_argument("dataset", type=Path)
    p.add_argument("--tiles", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    det = open_detector(ModelConfig(bundle=a.bundle, batch_size=8))
    m = det.manifest
    files = sorted((a.dataset / "images" / "val").glob("*.png"))[: a.tiles]
    tiles = np.stack([np.asarray(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)) for f in files])
    thr = np.array([m.threshold_for(c) for c in m.classes], np.float32)
    raw_s, dec_s = [], []
    for _ in range(a.repeats):
        t_raw = t_dec = 0.0
        for i in range(0, len(tiles), 8):
            t0 = time.perf_counter()
            out = det.raw(tiles[i : i + 8])  # type: ignore[attr-defined]
            t1 = time.perf_counter()
            decode_mask(out, spec=m.output, thresholds=thr, stats=DecodeStats())  # type: ignore[arg-type]
            t2 = time.perf_counter()
            t_raw, t_dec = t_raw + t1 - t0, t_dec + t2 - t1
        raw_s.append(1000 * t_raw / len(tiles))
        dec_s.append(1000 * t_dec / len(tiles))
    r, d = np.median(raw_s), np.median(dec_s)
    print(f"{len(tiles)} tiles x {a.repeats}: model {r:.2f} ms/tile (min-max {min(raw_s):.2f}-{max(raw_s):.2f}), "
          f"decoder {d:.3f} ms/tile (min-max {min(dec_s):.3f}-{max(dec_s):.3f}): {100 * d / r:.1f} % of the model")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
