"""Per-class score thresholds tuned on a labelled validation set for the best F-measure.

Detections (as the runtime decodes them) are matched to labels per tile and class, greedily in
descending score order, at IoU >= 0.5: each label is found at most once; a detection that finds
no unmatched label of its class is a false positive (duplicates included). Because the matching
runs in score order, the matches of every threshold are a prefix of the matches at the lowest one,
so one matching serves the whole sweep (0.05 .. 0.95 by default). The threshold with the highest
F1 wins; ties go to the lowest threshold (more recall for the same F1). A class with no labels in
the validation set keeps the default threshold, and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runtime.detections import Detections

DEFAULT_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


@dataclass(frozen=True)
class TileLabels:
    """Ground truth of one tile: `xyxy` (K, 4) pixels and `class_id` (K,)."""

    xyxy: np.ndarray
    class_id: np.ndarray


@dataclass(frozen=True)
class ClassMatches:
    """Every detection of one class over the set: its score and whether it found a label."""

    scores: np.ndarray
    is_tp: np.ndarray
    n_labels: int


@dataclass(frozen=True)
class ClassTuning:
    class_name: str
    threshold: float
    precision: float
    recall: float
    f1: float
    n_labels: int
    tuned: bool
    note: str = ""

    def as_dict(self) -> dict[str, float | int | bool | str]:
        d: dict[str, float | int | bool | str] = {
            "threshold": self.threshold,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "labels": self.n_labels,
            "tuned": self.tuned,
        }
        if self.note:
            d["note"] = self.note
        return d


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xyxy boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float64)
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_detections(
    detections: Sequence[Detections],
    labels: Sequence[TileLabels],
    num_classes: int,
    *,
    iou_min: float = 0.5,
) -> list[ClassMatches]:
    """Greedy score-ordered matching per tile and class (see the module docstring)."""
    if len(detections) != len(labels):
        raise ValueError(f"{len(detections)} tiles of detections but {len(labels)} tiles of labels")
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    hits: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    n_labels = np.zeros(num_classes, np.int64)
    for det, lab in zip(detections, labels, strict=True):
        for c in range(num_classes):
            gt = lab.xyxy[lab.class_id == c]
            n_labels[c] += len(gt)
            mine = det.class_id == c
            if not mine.any():
                continue
            s = det.score[mine]
            order = np.argsort(-s, kind="stable")
            s = s[order]
            iou = box_iou(det.xyxy[mine][order], gt)
            taken = np.zeros(len(gt), bool)
            tp = np.zeros(len(s), bool)
            for i in range(len(s)):
                if not len(gt):
                    break
                cand = np.where(taken, -1.0, iou[i])
                j = int(cand.argmax())
                if cand[j] >= iou_min:
                    taken[j] = True
                    tp[i] = True
            scores[c].append(s)
            hits[c].append(tp)
    return [
        ClassMatches(
            scores=np.concatenate(scores[c]) if scores[c] else np.zeros(0, np.float32),
            is_tp=np.concatenate(hits[c]) if hits[c] else np.zeros(0, bool),
            n_labels=int(n_labels[c]),
        )
        for c in range(num_classes)
    ]


def sweep(m: ClassMatches, grid: np.ndarray = DEFAULT_GRID) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 at every threshold of `grid` (a detection counts when score >= t)."""
    kept = m.scores[None, :] >= grid[:, None]
    tp = (kept & m.is_tp[None, :]).sum(axis=1).astype(np.float64)
    n_kept = kept.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, n_kept, out=np.zeros_like(tp), where=n_kept > 0)
    recall = tp / m.n_labels if m.n_labels else np.zeros_like(tp)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def tune_thresholds(
    detections: Sequence[Detections],
    labels: Sequence[TileLabels],
    classes: Sequence[str],
    *,
    iou_min: float = 0.5,
    grid: np.ndarray = DEFAULT_GRID,
    default: float = 0.5,
    min_found: int = 3,
) -> dict[str, ClassTuning]:
    """The F1-optimal threshold per class; `detections` must be decoded at or below min(grid).
    A class whose best threshold finds fewer than `min_found` true positives keeps `default`: a
    threshold chosen on one or two tiles is noise (the rule `loomsight tune` applies at web level)."""
    out: dict[str, ClassTuning] = {}
    matches = match_detections(detections, labels, len(classes), iou_min=iou_min)
    for name, m in zip(classes, matches, strict=True):
        if m.n_labels == 0:
            p, r, f = _at(m, default)
            out[name] = ClassTuning(
                name, default, p, r, f, 0, False, "no labels of this class in the validation set"
            )
            continue
        precision, recall, f1 = sweep(m, grid)
        best = int(np.argmax(f1))  # first maximum = lowest threshold among ties
        if f1[best] <= 0.0:
            p, r, f = _at(m, default)
            out[name] = ClassTuning(
                name, default, p, r, f, m.n_labels, False, "no true positive at any threshold"
            )
            continue
        found = round(float(recall[best]) * m.n_labels)
        if found < min_found:
            p, r, f = _at(m, default)
            out[name] = ClassTuning(
                name, default, p, r, f, m.n_labels, False,
                f"its best threshold ({grid[best]:.2f}) finds {found} true positive(s), fewer than {min_found}",
            )  # fmt: skip
            continue
        out[name] = ClassTuning(
            name,
            float(grid[best]),
            float(precision[best]),
            float(recall[best]),
            float(f1[best]),
            m.n_labels,
            True,
        )
    return out


def _at(m: ClassMatches, threshold: float) -> tuple[float, float, float]:
    p, r, f = sweep(m, np.array([threshold]))
    return float(p[0]), float(r[0]), float(f[0])
