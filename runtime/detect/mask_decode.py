"""Dense-model output decoding: probability maps -> per-tile Detections in tile pixels.

Input (N, 1 + C, h, w): channel 0 P(defect), channels 1..C P(class | defect), one cell per
`stride_px` input pixels. Per tile: cells with P(defect) >= `region_floor` form regions (8-connected,
OpenCV); a region's class is the one with the largest mass sum(P(defect) * P(class | defect)) over
its cells, its score is its peak P(defect), and it is reported when that score clears the class's
threshold. Its box is the cells' extent in input pixels. With an `unknown_threshold` (the open set),
a region that misses its class's threshold but whose peak reaches that one is reported with class
id C ("unknown": the agnostic channel is sure of a defect that no class is). A tile whose map holds NaN or infinity is
skipped and counted (`DecodeStats.non_finite_tiles`), never published.
"""

from __future__ import annotations

import cv2
import numpy as np

from runtime.detect.decode import DecodeStats
from runtime.detect.manifest import MaskOutput
from runtime.detections import Detections
from runtime.errors import ModelError


def check_mask_shape(
    shape: list[int | str], spec: MaskOutput, *, num_classes: int, input_px: int, where: str
) -> None:
    """A clear error at load when the model's output does not match the manifest."""
    cells = input_px // spec.stride_px
    expected = ["batch", 1 + num_classes, cells, cells]
    ok = len(shape) == 4 and all(
        not isinstance(got, int) or not isinstance(want, int) or got == want
        for got, want in zip(shape[1:], expected[1:], strict=True)
    )
    if not ok:
        raise ModelError(
            f"{where} output shape is {shape}; the manifest (mask output, stride {spec.stride_px} px, "
            f"{num_classes} classes, {input_px} px tiles) needs {expected}: channel 0 P(defect), then one "
            "channel per class. Re-export the bundle, or fix output.stride_px / classes in its manifest"
        )


def decode_mask(
    output: np.ndarray,
    *,
    spec: MaskOutput,
    thresholds: np.ndarray,
    stats: DecodeStats | None = None,
    unknown_threshold: float | None = None,
) -> list[Detections]:
    """Decode a batch. `thresholds` has one threshold on the region's peak P(defect) per class."""
    n_cls = len(thresholds)
    if output.ndim != 4 or output.shape[1] != 1 + n_cls:
        raise ValueError(f"mask output has shape {output.shape}; expected (batch, {1 + n_cls}, h, w)")
    out = output.astype(np.float32, copy=False)
    stride = float(spec.stride_px)
    floor = min(float(spec.region_floor), float(thresholds.min()), unknown_threshold or 1.0)
    results: list[Detections] = []
    for tile in out:
        if not np.isfinite(tile).all():
            if stats is not None:
                stats.non_finite_tiles += 1
            results.append(Detections.empty())
            continue
        p_def = tile[0]
        on = p_def >= floor
        if not on.any():
            results.append(Detections.empty())
            continue
        n, labels, boxes, _ = cv2.connectedComponentsWithStats(on.astype(np.uint8), connectivity=8)
        idx = labels[on]  # region of every "on" cell, 1..n-1
        p_on = p_def[on]
        peak = np.zeros(n, np.float32)
        np.maximum.at(peak, idx, p_on)
        mass = np.stack(
            [np.bincount(idx, weights=p_on * tile[1 + c][on], minlength=n) for c in range(n_cls)], axis=1
        )
        cls = mass[1:].argmax(axis=1)
        score = peak[1:]
        keep = score >= thresholds[cls]
        if unknown_threshold is not None:
            unknown = ~keep & (score >= unknown_threshold)
            cls = np.where(unknown, n_cls, cls)
            keep |= unknown
        b = boxes[1:][keep].astype(np.float32)
        xyxy = np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1) * stride
        results.append(
            Detections(
                xyxy=xyxy.reshape(-1, 4).astype(np.float32),
                class_id=cls[keep].astype(np.int32),
                score=score[keep].astype(np.float32),
            )
        )
    return results
