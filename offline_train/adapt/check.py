"""Thresholds without a real defect: false alarms on held-back clean fabric, recall on synthetic ones.

False alarms: the held-back images (never trained on) run through the real daemon path (the
runtime's resampling, strips, tiler, merger and web-edge tracking; `runtime.inspect`'s image
source and in-memory event collector), each image one roll, every class at a low threshold; a
class's false alarms at threshold t are its defect events scoring >= t, per m^2 of held-back web.
(A first version counted detections on non-overlapping tiles: it saw none where `loomsight eval`
saw ten per m^2 on the same fabric, because the daemon sees every place in several overlapping
tiles and strips and merges their boxes.) `loomsight adapt` starts every class at the grid's
floor (0.2) and `choose_thresholds` raises the noisiest class one grid step at a time until the
total is within the target: the lowest thresholds the clean fabric allows. (Starting from the
source bundle's thresholds and never lowering them was tried first: a fine-tuned model's scores
are lower than the one it started from, and on random:1 that lost recall the fine-tune had won:
class-agnostic recall 0.35 at the kept thresholds, 0.61 at the lowest ones the clean web allowed,
precision 0.83 and 0.58, 12 eval rolls.)

Synthetic recall: the non-learned synthesizers put defects on held-back tiles at the model's
resolution (a fixed seed, so before and after see the same defects) and the bundle's detector
runs on those tiles; a defect is found when a detection at its class's threshold overlaps its box
(IoU >= 0.1, or its centre lies in the box), of any class (class-agnostic) or of its own
(class-aware).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deploy.thresholds import box_iou
from offline_train.dataset.labels import boxes_from_mask
from offline_train.dataset.webs import LabelledWeb
from runtime.preprocess import resample_to_model, to_gray

log = logging.getLogger(__name__)

SCORE_FLOOR = 0.05  # tile detections kept for the synthetic-recall check
EVENT_FLOOR = 0.2  # defect events kept for the false-alarm sweep (the grid's first value)
GRID = (
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.55,
    0.6,
    0.65,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.95,
    0.97,
    0.98,
    0.99,
)


@dataclass
class HeldOut:
    """Clean held-back tiles at model resolution, synthetic defects placed on copies of them, and
    the held-back webs' area (what false alarms are counted against)."""

    clean: np.ndarray  # (N, T, T[, 3]) uint8
    area_m2: float  # of the held-back webs
    synthetic: list[tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]] = field(
        default_factory=list
    )


def held_out_tiles(webs: Sequence[LabelledWeb], *, mm_per_px: float, tile_px: int, color: str) -> np.ndarray:
    """Non-overlapping full tiles of `webs` at the model's resolution (for the synthetic defects)."""
    tiles: list[np.ndarray] = []
    for web in webs:
        px = to_gray(web.pixels) if color == "gray" else cv2.cvtColor(_bgr(web.pixels), cv2.COLOR_BGR2RGB)
        small = resample_to_model(px, web.mm_per_px / mm_per_px, web.mm_per_line / mm_per_px)
        for y in range(0, small.shape[0] - tile_px + 1, tile_px):
            for x in range(0, small.shape[1] - tile_px + 1, tile_px):
                tiles.append(small[y : y + tile_px, x : x + tile_px])
    shape = (0, tile_px, tile_px) if color == "gray" else (0, tile_px, tile_px, 3)
    return np.stack(tiles) if tiles else np.zeros(shape, np.uint8)


def _bgr(pixels: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if pixels.ndim == 2 else pixels


def place_synthetic(
    clean: np.ndarray, synthesizers: Sequence[Any], *, per_tile: int, seed: int
) -> list[tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]]:
    """`per_tile` synthetic defects on copies of each clean tile (the same seed, the same defects)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]] = []
    if not synthesizers:
        return out
    for tile in clean:
        for _ in range(per_tile):
            synth = synthesizers[int(rng.integers(len(synthesizers)))]
            result = synth(np.ascontiguousarray(tile), rng)
            if result is None:
                continue
            boxes = [
                (result.class_name, b) for b in boxes_from_mask(result.mask, merge_gap_px=2, min_area_px=4)
            ]
            if boxes:
                out.append((result.image, boxes))
    return out


@dataclass(frozen=True)
class Scores:
    """Per-class defect-event scores on the held-back webs, and tile detections on each synthetic tile."""

    clean: dict[str, np.ndarray]
    synthetic: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per synthetic tile: xyxy, class_id, score


def clean_event_scores(
    bundle: Path, webs: Sequence[LabelledWeb], *, batch: int = 8
) -> dict[str, list[float]]:
    """Scores of the defect events the daemon reports on `webs` (strips of one web joined into one
    roll, other images each a roll of their own), every class at `EVENT_FLOOR`."""
    from runtime.daemon.app import Daemon
    from runtime.detect.bundle import load_bundle, open_detector
    from runtime.inspect.images import EventCollector, ImageSource, image_run_config

    classes = load_bundle(bundle).manifest.classes
    out: dict[str, list[float]] = {c: [] for c in classes}
    detector = None
    for i, web in enumerate(rolls_of(webs)):
        config = image_run_config(bundle, mm_per_px=web.mm_per_px, mm_per_line=web.mm_per_line,
                                  thresholds=dict.fromkeys(classes, EVENT_FLOOR), batch_size=batch,
                                  line_id="adapt-check")  # fmt: skip
        if detector is None:
            detector = open_detector(config.model)
        collector = EventCollector()
        Daemon(config, source=ImageSource(web.pixels, web.name), detector=detector, publisher=collector,
               roll_id=f"check-{i:04d}").run()  # fmt: skip
        for e in collector.events:
            if e["kind"] == "defect" and e.get("class") in out:
                out[e["class"]].append(float(e["score"]))
    if detector is not None:
        detector.close()
    return out


def rolls_of(webs: Sequence[LabelledWeb]) -> list[LabelledWeb]:
    """Consecutive webs of one width, channels and scale joined into one (strips of one web)."""
    rolls: list[LabelledWeb] = []
    for w in webs:
        last = rolls[-1] if rolls else None
        if last is not None and last.pixels.shape[1:] == w.pixels.shape[1:] and (
            last.mm_per_px, last.mm_per_line) == (w.mm_per_px, w.mm_per_line):  # fmt: skip
            rolls[-1] = LabelledWeb(name=last.name, pixels=np.vstack([last.pixels, w.pixels]),
                                    mm_per_px=w.mm_per_px, mm_per_line=w.mm_per_line, fabric=w.fabric)  # fmt: skip
        else:
            rolls.append(w)
    return rolls


def run_detector(bundle: Path, held: HeldOut, webs: Sequence[LabelledWeb], *, batch: int = 8) -> Scores:
    """Defect-event scores on the held-back webs and tile detections on the synthetic tiles."""
    from runtime.detect.bundle import load_bundle
    from runtime.detect.onnx_backend import OnnxDetector

    clean = clean_event_scores(bundle, webs, batch=batch)
    b = load_bundle(bundle)
    det = OnnxDetector(b.onnx_path, b.manifest, thresholds={c: SCORE_FLOOR for c in b.manifest.classes})
    try:
        synthetic = []
        images = [img for img, _ in held.synthetic]
        for i in range(0, len(images), batch):
            for d in det.infer(np.ascontiguousarray(np.stack(images[i : i + batch]))):
                synthetic.append((d.xyxy.copy(), d.class_id.copy(), d.score.copy()))
    finally:
        det.close()
    return Scores({c: np.asarray(v, np.float32) for c, v in clean.items()}, synthetic)


def false_alarms_per_m2(scores: Scores, thresholds: dict[str, float], area_m2: float) -> dict[str, float]:
    return {c: float((s >= thresholds[c]).sum()) / area_m2 for c, s in scores.clean.items()}


def choose_thresholds(
    scores: Scores, start: dict[str, float], area_m2: float, target_per_m2: float
) -> tuple[dict[str, float], bool]:
    """From `start`, raise the noisiest class a grid step at a time until the total false
    alarms/m^2 <= target (nothing is lowered below `start`). Returns the thresholds and whether
    the target was met."""
    t = dict(start)
    while True:
        fa = false_alarms_per_m2(scores, t, area_m2)
        if sum(fa.values()) <= target_per_m2:
            return t, True
        raisable = [c for c in fa if fa[c] > 0 and t[c] < GRID[-1]]
        if not raisable:
            return t, False
        worst = max(raisable, key=lambda c: fa[c])
        t[worst] = next(g for g in GRID if g > t[worst] + 1e-9)


def synthetic_recall(
    held: HeldOut, scores: Scores, classes: Sequence[str], thresholds: dict[str, float]
) -> dict[str, Any]:
    """Class-agnostic and class-aware recall of the synthetic defects, overall and per class."""
    per: dict[str, list[int]] = {}  # class -> [n, agnostic found, aware found]
    cut = np.array([thresholds[c] for c in classes], np.float32)
    for (_, boxes), (all_xyxy, all_cid, score) in zip(held.synthetic, scores.synthetic, strict=True):
        keep = score >= cut[all_cid] if len(all_cid) else np.zeros(0, bool)
        xyxy, cid = all_xyxy[keep], all_cid[keep]
        cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2
        for name, b in boxes:
            row = per.setdefault(name, [0, 0, 0])
            row[0] += 1
            hit = (box_iou(xyxy, np.asarray([b]))[:, 0] >= 0.1) | (
                (cx >= b[0]) & (cx <= b[2]) & (cy >= b[1]) & (cy <= b[3])
            )
            row[1] += int(hit.any())
            row[2] += int((hit & (cid == classes.index(name))).any()) if name in classes else 0
    n = sum(r[0] for r in per.values())
    return {
        "defects": n,
        "agnostic_recall": round(sum(r[1] for r in per.values()) / n, 4) if n else None,
        "aware_recall": round(sum(r[2] for r in per.values()) / n, 4) if n else None,
        "per_class": {
            c: {
                "defects": r[0],
                "agnostic_recall": round(r[1] / r[0], 4),
                "aware_recall": round(r[2] / r[0], 4),
            }
            for c, r in sorted(per.items())
        },
    }
