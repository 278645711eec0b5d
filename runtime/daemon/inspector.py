"""One strip in, web-coordinate boxes out: preprocess, tile, detect, map back.

This is the code path production uses; `loomsight eval` and `loomsight bench pipeline` call it too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from runtime.detect.base import Detector
from runtime.detections import Detections
from runtime.frame import Strip
from runtime.preprocess import ModelView, Preprocessor
from runtime.tiler import Tiler


@dataclass(frozen=True)
class StripResult:
    """Detections of one strip in web coordinates (x: camera columns, y: roll lines)."""

    strip: Strip
    view: ModelView
    xyxy: np.ndarray  # (N, 4) float64
    class_id: np.ndarray  # (N,) int64
    score: np.ndarray  # (N,) float64
    tiles: int
    infer_s: float
    prep_s: float


class StripInspector:
    def __init__(self, detector: Detector, preprocessor: Preprocessor, *, batch_size: int) -> None:
        spec = detector.manifest.tile
        self.detector = detector
        self.preprocessor = preprocessor
        self.tiler = Tiler(spec.size_px, spec.overlap_px)
        self.batch_size = batch_size

    def inspect(self, strip: Strip) -> StripResult:
        t0 = time.perf_counter()
        view = self.preprocessor(strip)
        windows = self.tiler.layout(view.pixels.shape[1], view.pixels.shape[0])
        tiles = self.tiler.cut(view.pixels, windows)
        t1 = time.perf_counter()
        parts: list[Detections] = []
        for start in range(0, len(windows), self.batch_size):
            batch = tiles[start : start + self.batch_size]
            for win, det in zip(
                windows[start : start + self.batch_size], self.detector.infer(batch), strict=True
            ):
                if len(det):
                    parts.append(Detections(Tiler.to_image(det.xyxy, win), det.class_id, det.score))
        t2 = time.perf_counter()
        merged = Detections.concatenate(parts)
        # boxes from the padded part of a web narrower/shorter than one tile are cut at the web edge
        h, w = view.pixels.shape[:2]
        xyxy = merged.xyxy.astype(np.float64)
        xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, w)
        xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, h)
        return StripResult(
            strip=strip,
            view=view,
            xyxy=view.to_web(xyxy),
            class_id=merged.class_id.astype(np.int64),
            score=merged.score.astype(np.float64),
            tiles=len(windows),
            infer_s=t2 - t1,
            prep_s=t1 - t0,
        )
