"""One strip in, web-coordinate boxes out: preprocess, tile, detect, map back.

This is the code path production uses; `loomsight eval` and `loomsight bench pipeline` call it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from runtime.detect.manifest import TileSpec
from runtime.detections import Detections
from runtime.frame import Strip
from runtime.preprocess import ModelView, Preprocessor
from runtime.tiler import Tiler, TileWindow
from runtime.web_edges import WebEdges, WebEdgeTracker, find_web_edges


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
    edges: WebEdges = field(default_factory=lambda: WebEdges(None, None))  # fabric edges, camera columns
    edge_masked: dict[int, int] = field(default_factory=dict)  # class id -> boxes dropped by the edge mask
    inspected_ns: int = 0  # wall clock (time.time_ns) when inspection ended, for the stop latency


@dataclass(frozen=True)
class PreparedStrip:
    """A strip resampled and cut into tiles, ready for the detector (made in the acquisition thread,
    so that this work overlaps the detector's instead of preceding it)."""

    strip: Strip
    view: ModelView
    windows: list[TileWindow]
    tiles: np.ndarray
    prep_s: float


class StripInspector:
    """`edge_mask_px[class_id]`: drop that class's boxes whose centre lies within this many model
    pixels inside a seen web edge, or beyond it (0 = no mask; see runtime/web_edges.py)."""

    def __init__(
        self,
        infer: Callable[[np.ndarray], list[Detections]],
        tile: TileSpec,
        preprocessor: Preprocessor,
        *,
        batch_size: int,
        edge_mask_px: np.ndarray | None = None,
    ) -> None:
        spec = tile
        self.infer = infer  # uint8 tiles (N, H, W[, 3]) in, one Detections per tile (tile pixels) out
        self.preprocessor = preprocessor
        self.tiler = Tiler(spec.size_px, spec.overlap_px)
        self.batch_size = batch_size
        self.edge_mask_px = edge_mask_px
        self.edges = WebEdgeTracker()

    def prepare(self, strip: Strip) -> PreparedStrip:
        """Preprocess and tile (thread-safe: it touches no state of the inspector)."""
        t0 = time.perf_counter()
        view = self.preprocessor(strip)
        windows = self.tiler.layout(view.pixels.shape[1], view.pixels.shape[0])
        tiles = self.tiler.cut(view.pixels, windows)
        return PreparedStrip(strip, view, windows, tiles, time.perf_counter() - t0)

    def inspect(self, item: Strip | PreparedStrip) -> StripResult:
        prepared = item if isinstance(item, PreparedStrip) else self.prepare(item)
        strip, view, windows, tiles = prepared.strip, prepared.view, prepared.windows, prepared.tiles
        t1 = time.perf_counter()
        parts: list[Detections] = []
        for start in range(0, len(windows), self.batch_size):
            batch = tiles[start : start + self.batch_size]
            for win, det in zip(windows[start : start + self.batch_size], self.infer(batch), strict=True):
                if len(det):
                    parts.append(Detections(Tiler.to_image(det.xyxy, win), det.class_id, det.score))
        t2 = time.perf_counter()
        merged = Detections.concatenate(parts)
        # boxes from the padded part of a web narrower/shorter than one tile are cut at the web edge
        h, w = view.pixels.shape[:2]
        xyxy = merged.xyxy.astype(np.float64)
        xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, w)
        xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, h)
        class_id = merged.class_id.astype(np.int64)
        score = merged.score.astype(np.float64)
        edges = self.edges.update(find_web_edges(view.pixels))
        masked: dict[int, int] = {}
        if self.edge_mask_px is not None and len(class_id):
            drop = in_edge_zone(xyxy, class_id, edges, self.edge_mask_px)
            if drop.any():
                ids, counts = np.unique(class_id[drop], return_counts=True)
                masked = {int(i): int(c) for i, c in zip(ids, counts, strict=True)}
                xyxy, class_id, score = xyxy[~drop], class_id[~drop], score[~drop]
        return StripResult(
            strip=strip,
            view=view,
            xyxy=view.to_web(xyxy),
            class_id=class_id,
            score=score,
            tiles=len(windows),
            infer_s=t2 - t1,
            prep_s=prepared.prep_s,
            edges=edges.scaled(1.0 / view.scale_x),
            edge_masked=masked,
            inspected_ns=time.time_ns(),
        )


def in_edge_zone(xyxy: np.ndarray, class_id: np.ndarray, edges: WebEdges, mask_px: np.ndarray) -> np.ndarray:
    """Boxes whose class has a mask and whose centre lies within that mask inside a seen edge (or beyond)."""
    cx = 0.5 * (xyxy[:, 0] + xyxy[:, 2])
    margin = mask_px[class_id]
    drop = np.zeros(len(cx), bool)
    if edges.left_px is not None:
        drop |= cx < edges.left_px + margin
    if edges.right_px is not None:
        drop |= cx > edges.right_px - margin
    return drop & (margin > 0)
