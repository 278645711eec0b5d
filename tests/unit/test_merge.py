from __future__ import annotations

import numpy as np
import pytest

from runtime.merge import Merger, join_labels


def _boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, np.float64)


def test_overlapping_tile_duplicates_become_one() -> None:
    xyxy = _boxes((100, 100, 140, 140), (110, 105, 150, 142), (400, 400, 420, 420))
    labels = join_labels(xyxy, np.array([0, 0, 0]))
    assert labels[0] == labels[1] != labels[2]


def test_classes_do_not_merge_unless_nearly_the_same_box() -> None:
    near = _boxes((100, 100, 140, 140), (120, 100, 160, 140))  # IoS 0.5
    assert len(set(join_labels(near, np.array([0, 1])).tolist())) == 2
    same = _boxes((100, 100, 140, 140), (101, 101, 140, 141))
    assert len(set(join_labels(same, np.array([0, 1])).tolist())) == 1
    assert len(set(join_labels(near, np.array([0, 1]), class_agnostic=True).tolist())) == 1


def test_streak_pieces_join_along_the_streak_but_not_across() -> None:
    # five pieces of a broken end, 6 px wide, tiles of 256 lines overlapping by 32, small gaps
    pieces = _boxes(*[(500, y, 506, y + 256) for y in (0, 224, 448, 700, 924)])  # a 4-line gap at 696..700
    labels = join_labels(pieces, np.zeros(5, int), gap_y=10)
    assert len(set(labels.tolist())) == 1
    # a parallel streak 50 px to the side stays separate
    both = np.concatenate([pieces, pieces + [50, 0, 50, 0]])
    labels = join_labels(both, np.zeros(10, int), gap_y=10, gap_x=10)
    assert len(set(labels.tolist())) == 2
    # IoU-NMS would not have joined two pieces overlapping by 32 of 256 lines
    assert (32 * 6) / (2 * 256 * 6 - 32 * 6) < 0.3


def test_horizontal_streak_joins_across_tiles() -> None:
    pick = _boxes((0, 300, 256, 304), (224, 301, 480, 305), (448, 300, 700, 303))
    assert len(set(join_labels(pick, np.zeros(3, int)).tolist())) == 1


def test_far_boxes_stay_apart_and_transitivity_holds() -> None:
    chain = _boxes(*[(10 * i, 0, 10 * i + 12, 10) for i in range(30)])
    assert len(set(join_labels(chain, np.zeros(30, int)).tolist())) == 1
    far = _boxes((0, 0, 5, 5), (100, 0, 105, 5), (0, 100, 5, 105))
    assert len(set(join_labels(far, np.zeros(3, int), gap_x=3, gap_y=3).tolist())) == 3


@pytest.mark.parametrize("streak_gaps", [False, True])
def test_random_boxes_match_a_brute_force_reference(streak_gaps: bool) -> None:
    rng = np.random.default_rng(3)
    # class 2 may bridge 40 px along y, class 3 40 px along x (the streak gaps)
    gap_x_of = np.array([5.0, 5.0, 5.0, 40.0]) if streak_gaps else np.full(4, 5.0)
    gap_y_of = np.array([5.0, 5.0, 40.0, 5.0]) if streak_gaps else np.full(4, 5.0)
    for _ in range(20):
        n = 60
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.uniform(2, 60, (n, 2))
        xyxy = np.concatenate([xy, xy + wh], axis=1)
        cls = rng.integers(0, 4, n)
        got = join_labels(
            xyxy, cls, gap_x=5, gap_y=5, cross_class_ios=None,
            class_gap_x=gap_x_of if streak_gaps else None, class_gap_y=gap_y_of if streak_gaps else None,
        )  # fmt: skip
        # brute force union-find with the same pair rule
        parent = list(range(n))

        def find(i: int, parent: list[int] = parent) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        for i in range(n):
            for j in range(i + 1, n):
                if cls[i] != cls[j]:
                    continue
                gx, gy = gap_x_of[cls[i]], gap_y_of[cls[i]]
                ox = min(xyxy[i, 2], xyxy[j, 2]) - max(xyxy[i, 0], xyxy[j, 0])
                oy = min(xyxy[i, 3], xyxy[j, 3]) - max(xyxy[i, 1], xyxy[j, 1])
                wi, wj = xyxy[i, 2] - xyxy[i, 0], xyxy[j, 2] - xyxy[j, 0]
                hi, hj = xyxy[i, 3] - xyxy[i, 1], xyxy[j, 3] - xyxy[j, 1]
                ios = max(ox, 0) * max(oy, 0) / min(wi * hi, wj * hj)
                if (
                    ios >= 0.3
                    or (ox >= 0.5 * min(wi, wj) and oy >= -gy)
                    or (oy >= 0.5 * min(hi, hj) and ox >= -gx)
                ):
                    parent[find(i)] = find(j)
        want = np.array([find(i) for i in range(n)])
        # same partition
        assert (
            len(set(zip(got.tolist(), want.tolist(), strict=True)))
            == len(set(got.tolist()))
            == len(set(want.tolist()))
        )


def test_merger_keeps_a_long_streak_open_and_emits_it_once() -> None:
    m = Merger(gap_px=10, gap_lines=10)
    closed_all = []
    strip_lines, overlap = 1000, 100
    for s in range(8):  # a broken end from line 0 to line 6000, then clean
        line0 = s * (strip_lines - overlap)
        line_end = line0 + strip_lines
        boxes = []
        if line0 < 6000:
            boxes.append((700, line0, 706, min(line_end, 6000)))
        xyxy = np.array(boxes, np.float64).reshape(-1, 4)
        closed = m.update(
            xyxy,
            np.zeros(len(xyxy), int),
            np.full(len(xyxy), 0.8),
            strip_seq=s,
            next_line0=line_end - overlap,
        )
        closed_all += closed
    assert len(closed_all) == 1
    d = closed_all[0]
    assert (d.y0, d.y1) == (0, 6000) and d.hits == 7 and not d.is_open


def test_defect_in_the_overlap_is_reported_once() -> None:
    m = Merger(gap_px=5, gap_lines=5)
    box = np.array([[50, 950, 60, 960]], np.float64)
    c1 = m.update(box, np.array([2]), np.array([0.9]), strip_seq=0, next_line0=900)
    assert c1 == [] and len(m.open_defects) == 1
    # the next strip (lines 900..1900) sees the same defect again, slightly differently boxed
    c2 = m.update(box + [1, 1, 1, 1], np.array([2]), np.array([0.7]), strip_seq=1, next_line0=1800)
    assert len(c2) == 1 and c2[0].hits == 2 and c2[0].score == 0.9 and m.flush() == []


def test_flush_closes_open_defects() -> None:
    m = Merger()
    m.update(
        np.array([[0, 90, 10, 100]], np.float64), np.array([0]), np.array([0.5]), strip_seq=0, next_line0=50
    )
    out = m.flush()
    assert len(out) == 1 and not out[0].is_open and m.open_defects == ()


def test_a_streak_class_bridges_a_longer_detection_gap_along_its_own_direction_only() -> None:
    # a broken end (class 2) the detector lost for 150 lines, and the same boxes as class 0
    pieces = _boxes((300, 0, 306, 2000), (301, 2150, 307, 4000))
    gap_y = np.array([0.0, 0.0, 500.0])
    assert len(set(join_labels(pieces, np.array([2, 2]), gap_y=30).tolist())) == 2
    assert len(set(join_labels(pieces, np.array([2, 2]), gap_y=30, class_gap_y=gap_y).tolist())) == 1
    assert len(set(join_labels(pieces, np.array([0, 0]), gap_y=30, class_gap_y=gap_y).tolist())) == 2
    # two parallel broken ends side by side stay two; a gap beyond the class gap stays split
    side = _boxes((300, 0, 306, 2000), (340, 2150, 346, 4000))
    assert len(set(join_labels(side, np.array([2, 2]), gap_y=30, class_gap_y=gap_y).tolist())) == 2
    far = _boxes((300, 0, 306, 2000), (300, 2600, 306, 4000))
    assert len(set(join_labels(far, np.array([2, 2]), gap_y=30, class_gap_y=gap_y).tolist())) == 2
    # along y only: two short broken picks (class 3) 150 lines apart are not one pick
    picks = _boxes((0, 100, 800, 104), (0, 250, 800, 254))
    gap_x = np.array([0.0, 0.0, 0.0, 500.0])
    assert len(set(join_labels(picks, np.array([3, 3]), gap_y=30, class_gap_x=gap_x).tolist())) == 2
    # ... but a pick lost for 200 px across the web is one
    pick = _boxes((0, 100, 800, 104), (1000, 101, 1800, 105))
    assert len(set(join_labels(pick, np.array([3, 3]), gap_x=30, class_gap_x=gap_x).tolist())) == 1


def test_merger_keeps_a_streak_class_open_across_its_gap_and_emits_one_defect() -> None:
    m = Merger(gap_px=30, gap_lines=30, streak_gap_lines={2: 500.0})
    one = np.ones(1)
    # strip 1 sees the broken end up to line 2000; the next strip starts at 2100 (its overlap)
    closed = m.update(_boxes((300, 0, 306, 2000)), np.array([2]), one, strip_seq=1, next_line0=2100)
    assert closed == [] and len(m.open_defects) == 1  # a plain class would have closed here
    # strip 2 finds the streak again 150 lines later; then it ends for good
    closed = m.update(_boxes((301, 2150, 307, 3000)), np.array([2]), one, strip_seq=2, next_line0=3100)
    assert closed == []
    closed = m.update(np.zeros((0, 4)), np.zeros(0, int), np.zeros(0), strip_seq=3, next_line0=3600)
    assert len(closed) == 1
    assert (closed[0].y0, closed[0].y1) == (0, 3000)
    # a hole in the same place closes at once: the longer wait is the streak class's alone
    m2 = Merger(gap_px=30, gap_lines=30, streak_gap_lines={2: 500.0})
    assert len(m2.update(_boxes((300, 0, 340, 40)), np.array([0]), one, strip_seq=1, next_line0=100)) == 1
