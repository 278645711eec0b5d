"""`bench merge` measures cost per box at a constant defect density (more boxes = a longer web)
and reports median and min-max of its runs (a logic test: no timing is asserted)."""

from __future__ import annotations

import numpy as np

from runtime.bench.merge import DENSITY_BOXES_PER_M2, WIDTH_M, synthetic_boxes, time_merge


def test_boxes_keep_their_density_as_their_number_grows() -> None:
    for n in (1000, 4000):
        xyxy, cls, score = synthetic_boxes(n, seed=1)
        assert len(xyxy) == len(cls) == len(score) == n
        length_m = (xyxy[:, 3].max() - xyxy[:, 1].min()) / 1e4
        expected_m = n / (DENSITY_BOXES_PER_M2 * WIDTH_M)
        assert 0.9 * expected_m <= length_m <= 1.1 * expected_m
        assert xyxy[:, 2].max() <= WIDTH_M * 1e4 + 400 and np.all(xyxy[:, 2:] > xyxy[:, :2])


def test_a_timing_reports_median_and_spread() -> None:
    r = time_merge(500, repeats=3)
    assert r["repeats"] == 3 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
    assert 0 < r["defects"] <= 500 and r["web_m2"] == 500 / DENSITY_BOXES_PER_M2
