"""Boxes from overlapping tiles and consecutive strips become one physical defect.

Two boxes join when they are of the same class (or, with `cross_class_ios`, nearly the same box
with another class) and either
- overlap by at least `min_overlap_ratio` of the smaller box (intersection over smaller), or
- lie along each other: they share at least half of the smaller one's extent across, and the gap
  between them along the other axis is at most the join gap. This is what keeps a broken end
  that runs through twenty tiles and five strips one defect; IoU-NMS would split it.
  Streak classes may have a longer join gap of their own along their direction
  (`class_gap_y` along the web for broken ends, `class_gap_x` across for broken picks): a
  missing yarn goes on where the detector lost it for a tile or so, so those pieces are
  one defect, not several.

Joining is transitive (connected components over the pairs), found with a sweep over boxes sorted
by their top line and label propagation in numpy: no Python loop per box.

`Merger` keeps defects open while they may still grow: a defect that reaches the lines the next
strip will look at again stays open and is emitted once, when it ends, with its full extent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def _pairs_by_sweep(
    xyxy: np.ndarray, reach_x: float, reach_y: float, bucket_px: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (i < j) whose boxes come within (reach_x, reach_y) of each other.

    Boxes go into columns of `bucket_px` (a box joins every column it spans, widened by
    `reach_x`); inside a column a sweep over top lines finds the boxes within `reach_y`. One
    sort and one searchsorted over all columns at once; pairs seen in two columns are deduplicated.
    """
    n = len(xyxy)
    x0, y0, x1, y1 = xyxy[:, 0], xyxy[:, 1], xyxy[:, 2], xyxy[:, 3]
    if bucket_px is None:
        bucket_px = max(64.0, 4.0 * float(np.median(x1 - x0)) + 2 * reach_x)
    c0 = np.floor((x0 - reach_x) / bucket_px).astype(np.int64)
    c1 = np.floor((x1 + reach_x) / bucket_px).astype(np.int64)
    span = c1 - c0 + 1
    idx = np.repeat(np.arange(n), span)
    col = np.repeat(c0, span) + (np.arange(len(idx)) - np.repeat(np.cumsum(span) - span, span))
    col -= col.min()
    # composite key: column first, then top line; y is shifted to be non-negative and < stride
    y_base = float(y0.min())
    stride = float(y1.max() - y_base + reach_y + 1.0)
    key = col * stride + (y0[idx] - y_base)
    order = np.argsort(key, kind="stable")
    skey = key[order]
    reach_key = col[order] * stride + (y1[idx[order]] - y_base + reach_y)
    hi = np.searchsorted(skey, reach_key, side="right")
    start = np.arange(len(order)) + 1
    counts = np.maximum(hi - start, 0)
    total = int(counts.sum())
    if total == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    a = np.repeat(np.arange(len(order)), counts)
    b = np.repeat(start, counts) + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
    ia, ib = idx[order[a]], idx[order[b]]
    lo, hi_ = np.minimum(ia, ib), np.maximum(ia, ib)
    keep = lo != hi_
    pair = np.unique(lo[keep] * n + hi_[keep])
    return pair // n, pair % n


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label (the smallest member index) of every node."""
    labels = np.arange(n)
    if len(a) == 0:
        return labels
    while True:
        prev = labels.copy()
        low = np.minimum(labels[a], labels[b])
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        labels = labels[labels]  # pointer jumping
        labels = labels[labels]
        if np.array_equal(labels, prev):
            return labels


def _pair_gap(
    class_gap: np.ndarray | None, gap: float, class_id: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray | float:
    if class_gap is None:
        return gap
    return np.maximum(gap, np.minimum(class_gap[class_id[a]], class_gap[class_id[b]]))


def _with_streak_pairs(
    xyxy: np.ndarray,
    class_id: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    gap_x: float,
    gap_y: float,
    class_gap_x: np.ndarray | None,
    class_gap_y: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Add the candidate pairs that only the longer streak gaps reach: a second sweep over the
    boxes of streak classes alone, so the common case pays nothing for the long reach."""
    gx = np.zeros(len(xyxy)) if class_gap_x is None else class_gap_x[class_id]
    gy = np.zeros(len(xyxy)) if class_gap_y is None else class_gap_y[class_id]
    streak = np.flatnonzero((gx > gap_x) | (gy > gap_y))
    if len(streak) < 2:
        return a, b
    sa, sb = _pairs_by_sweep(
        xyxy[streak].astype(np.float64),
        max(gap_x, float(gx[streak].max())),
        max(gap_y, float(gy[streak].max())),
    )
    if len(sa) == 0:
        return a, b
    n = len(xyxy)
    lo, hi = np.minimum(streak[sa], streak[sb]), np.maximum(streak[sa], streak[sb])
    pair = np.unique(np.concatenate([a * n + b, lo * n + hi]))
    return pair // n, pair % n


def join_labels(
    xyxy: np.ndarray,
    class_id: np.ndarray,
    *,
    min_overlap_ratio: float = 0.3,
    gap_x: float = 0.0,
    gap_y: float = 0.0,
    class_agnostic: bool = False,
    cross_class_ios: float | None = 0.7,
    class_gap_x: np.ndarray | None = None,
    class_gap_y: np.ndarray | None = None,
) -> np.ndarray:
    """A component label per box; boxes with the same label are one defect.

    `class_gap_x` / `class_gap_y`, indexed by class id, widen the along-streak join gap for
    those classes (a pair uses the smaller gap of its two classes; never below `gap_x`/`gap_y`).
    """
    n = len(xyxy)
    if n < 2:
        return np.arange(n)
    x0, y0, x1, y1 = (xyxy[:, k].astype(np.float64) for k in range(4))
    a, b = _pairs_by_sweep(xyxy.astype(np.float64), gap_x, gap_y)
    if class_gap_x is not None or class_gap_y is not None:
        a, b = _with_streak_pairs(
            xyxy, class_id, a, b, gap_x=gap_x, gap_y=gap_y, class_gap_x=class_gap_x, class_gap_y=class_gap_y
        )
    if len(a) == 0:
        return np.arange(n)
    # overlap along each axis (negative = gap)
    ox = np.minimum(x1[a], x1[b]) - np.maximum(x0[a], x0[b])
    oy = np.minimum(y1[a], y1[b]) - np.maximum(y0[a], y0[b])
    wa, wb = x1[a] - x0[a], x1[b] - x0[b]
    ha, hb = y1[a] - y0[a], y1[b] - y0[b]
    inter = np.clip(ox, 0, None) * np.clip(oy, 0, None)
    smaller = np.maximum(np.minimum(wa * ha, wb * hb), 1e-9)
    ios = inter / smaller
    gx, gy = _pair_gap(class_gap_x, gap_x, class_id, a, b), _pair_gap(class_gap_y, gap_y, class_id, a, b)
    along_y = (ox >= 0.5 * np.minimum(wa, wb)) & (oy >= -gy)  # vertical streak pieces
    along_x = (oy >= 0.5 * np.minimum(ha, hb)) & (ox >= -gx)  # horizontal streak pieces
    joins = (ios >= min_overlap_ratio) | along_y | along_x
    if not class_agnostic:
        same = class_id[a] == class_id[b]
        joins &= same | (ios >= cross_class_ios if cross_class_ios is not None else False)
    return _components(n, a[joins], b[joins])


@dataclass
class Defect:
    """One physical defect in roll coordinates (x: camera columns, y: lines since roll start)."""

    defect_id: int
    class_id: int
    score: float
    x0: float
    y0: float
    x1: float
    y1: float
    hits: int
    first_strip: int
    last_strip: int
    is_open: bool = True
    stop_sent: bool = False

    @property
    def length_lines(self) -> float:
        return self.y1 - self.y0


def reduce_groups(
    labels: np.ndarray, xyxy: np.ndarray, class_id: np.ndarray, score: np.ndarray, hits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per component: its first member's index, union box, the best box's class, max score, hit count."""
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    box = xyxy[order]
    union = np.stack(
        [
            np.minimum.reduceat(box[:, 0], starts),
            np.minimum.reduceat(box[:, 1], starts),
            np.maximum.reduceat(box[:, 2], starts),
            np.maximum.reduceat(box[:, 3], starts),
        ],
        axis=1,
    )
    sc = score[order]
    best = np.maximum.reduceat(sc, starts)
    # class of the highest-scoring member of each group
    is_best = sc == np.repeat(best, np.diff(np.r_[starts, len(sc)]))
    first_best = np.minimum.reduceat(np.where(is_best, np.arange(len(sc)), len(sc)), starts)
    cls = class_id[order][first_best]
    total_hits = np.add.reduceat(hits[order], starts)
    return order[starts], union, cls, best, total_hits, order


def _gap_table(gaps: Mapping[int, float] | None) -> np.ndarray | None:
    if not gaps:
        return None
    table = np.zeros(max(gaps) + 1, np.float64)
    for class_id, gap in gaps.items():
        table[class_id] = gap
    return table


def _fit(table: np.ndarray | None, class_id: np.ndarray) -> np.ndarray | None:
    """The gap table long enough to be indexed by every class id present (missing ids: 0)."""
    if table is None or len(class_id) == 0 or int(class_id.max()) < len(table):
        return table
    return np.pad(table, (0, int(class_id.max()) + 1 - len(table)))


class Merger:
    """Keeps defects open across strips and closes each once, when it can no longer grow."""

    def __init__(
        self,
        *,
        min_overlap_ratio: float = 0.3,
        gap_px: float = 30.0,
        gap_lines: float = 30.0,
        class_agnostic: bool = False,
        cross_class_ios: float | None = 0.7,
        streak_gap_px: Mapping[int, float] | None = None,
        streak_gap_lines: Mapping[int, float] | None = None,
    ) -> None:
        """`streak_gap_px` / `streak_gap_lines`: class id -> a longer join gap across / along the
        web for that class (broken picks / broken ends); a defect of such a class stays open
        that much longer, waiting for its continuation."""
        self.min_overlap_ratio = min_overlap_ratio
        self.gap_px = gap_px
        self.gap_lines = gap_lines
        self._class_gap_x = _gap_table(streak_gap_px)
        self._class_gap_y = _gap_table(streak_gap_lines)
        self._close_gap_lines = dict(streak_gap_lines or {})
        self.class_agnostic = class_agnostic
        self.cross_class_ios = cross_class_ios
        self._open: list[Defect] = []
        self._next_id = 1
        self.boxes_in = 0

    @property
    def open_defects(self) -> Sequence[Defect]:
        return tuple(self._open)

    def update(
        self, xyxy: np.ndarray, class_id: np.ndarray, score: np.ndarray, *, strip_seq: int, next_line0: float
    ) -> list[Defect]:
        """Add a strip's boxes (web coordinates); return the defects that closed.

        `next_line0` is the first line the next strip will contain (its overlap included): a
        defect ending more than the join gap above it cannot grow any more.
        """
        self.boxes_in += len(xyxy)
        n_open = len(self._open)
        if n_open:
            old = np.array([[d.x0, d.y0, d.x1, d.y1] for d in self._open], np.float64)
            all_xyxy = np.concatenate([old, xyxy.astype(np.float64)])
            all_cls = np.concatenate([np.array([d.class_id for d in self._open]), class_id.astype(np.int64)])
            all_score = np.concatenate([np.array([d.score for d in self._open]), score.astype(np.float64)])
            all_hits = np.concatenate([np.array([d.hits for d in self._open]), np.ones(len(xyxy), np.int64)])
        else:
            all_xyxy = xyxy.astype(np.float64)
            all_cls, all_score = class_id.astype(np.int64), score.astype(np.float64)
            all_hits = np.ones(len(xyxy), np.int64)
        if len(all_xyxy) == 0:
            return []
        labels = join_labels(
            all_xyxy,
            all_cls,
            min_overlap_ratio=self.min_overlap_ratio,
            gap_x=self.gap_px,
            gap_y=self.gap_lines,
            class_agnostic=self.class_agnostic,
            cross_class_ios=self.cross_class_ios,
            class_gap_x=_fit(self._class_gap_x, all_cls),
            class_gap_y=_fit(self._class_gap_y, all_cls),
        )
        firsts, union, cls, best, hits, order = reduce_groups(labels, all_xyxy, all_cls, all_score, all_hits)
        starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
        has_new = np.maximum.reduceat((order >= n_open).astype(np.int8), starts).astype(bool)
        closed: list[Defect] = []
        still_open: list[Defect] = []
        rows = zip(
            firsts.tolist(),
            union.tolist(),
            cls.tolist(),
            best.tolist(),
            hits.tolist(),
            has_new.tolist(),
            strict=True,
        )
        for first, (x0, y0, x1, y1), c, sc, h, new in rows:
            # a group holding open defects continues the oldest of them (members are in index
            # order, so `first` is it); the others have been folded into it
            if first < n_open:
                d = self._open[first]
                d.x0, d.y0, d.x1, d.y1, d.class_id, d.score, d.hits = x0, y0, x1, y1, c, sc, h
                if new:
                    d.last_strip = strip_seq
            else:
                d = Defect(
                    self._next_id, c, sc, x0, y0, x1, y1, h, first_strip=strip_seq, last_strip=strip_seq
                )
                self._next_id += 1
            if d.y1 + max(self.gap_lines, self._close_gap_lines.get(d.class_id, 0.0)) < next_line0:
                d.is_open = False
                closed.append(d)
            else:
                still_open.append(d)
        self._open = still_open
        return sorted(closed, key=lambda d: (d.y0, d.x0))

    def flush(self) -> list[Defect]:
        """Close every open defect (end of roll, shutdown)."""
        closed, self._open = self._open, []
        for d in closed:
            d.is_open = False
        return sorted(closed, key=lambda d: (d.y0, d.x0))
