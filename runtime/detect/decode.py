"""RT-DETR output decoding: (N, queries, 4 + classes) -> per-tile Detections in tile pixels.

RT-DETR is NMS-free: each query predicts one box (cx, cy, w, h normalised to the input) and a
probability per class. A query becomes a detection when its best class clears that class's
threshold. Non-finite outputs are dropped and counted, never published.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.detections import Detections


@dataclass
class DecodeStats:
    non_finite_queries: int = 0  # RT-DETR queries dropped for NaN/inf
    non_finite_tiles: int = 0  # dense-model tiles skipped for a NaN/inf map


def decode_rtdetr(
    output: np.ndarray,
    *,
    input_size_px: int,
    thresholds: np.ndarray,
    stats: DecodeStats | None = None,
) -> list[Detections]:
    """Decode a batch. `thresholds` has one score threshold per class (shape (C,))."""
    if output.ndim != 3 or output.shape[2] != 4 + len(thresholds):
        raise ValueError(
            f"RT-DETR output has shape {output.shape}; expected (batch, queries, {4 + len(thresholds)}) "
            f"for {len(thresholds)} classes"
        )
    out = output.astype(np.float32, copy=False)
    boxes = out[..., :4]
    scores = out[..., 4:]
    finite: np.ndarray = np.asarray(np.isfinite(out).all(axis=2))
    if stats is not None:
        stats.non_finite_queries += int((~finite).sum())
    scores = np.where(finite[..., None], scores, 0.0)
    class_id = scores.argmax(axis=2)
    best = np.take_along_axis(scores, class_id[..., None], axis=2)[..., 0]
    keep = finite & (best >= thresholds[class_id])
    size = float(input_size_px)
    results: list[Detections] = []
    for i in range(out.shape[0]):
        k = keep[i]
        b = boxes[i, k]
        cx, cy, w, h = b[:, 0], b[:, 1], np.abs(b[:, 2]), np.abs(b[:, 3])
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) * size
        np.clip(xyxy, 0.0, size, out=xyxy)
        valid = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        results.append(
            Detections(
                xyxy=xyxy[valid].astype(np.float32),
                class_id=class_id[i, k][valid].astype(np.int32),
                score=best[i, k][valid].astype(np.float32),
            )
        )
    return results
