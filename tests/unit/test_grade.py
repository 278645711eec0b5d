from __future__ import annotations

import pytest

from runtime.grade import RollGrader, defect_points


@pytest.mark.parametrize(
    ("cls", "w", "h", "points"),
    [
        ("stain", 10, 70, 1),  # 2.8 in
        ("stain", 10, 80, 2),  # 3.1 in
        ("slub", 160, 2, 3),  # 6.3 in across
        ("broken_pick", 300, 3, 4),
        ("hole", 5, 5, 2),
        ("hole", 30, 10, 4),
        ("broken_end", 2, 3000, 16),  # 3.28 yd -> 4 yards x 4
    ],
)
def test_four_point_table(cls: str, w: float, h: float, points: int) -> None:
    assert defect_points(cls, w, h) == points


def test_no_yard_carries_more_than_four_points_and_score_formula() -> None:
    g = RollGrader(width_mm=1524.0)  # 60 in
    for _ in range(5):
        g.add("hole", y_mm=100, w_mm=30, h_mm=30)  # 5 x 4 points in yard 0
    g.add("stain", y_mm=2000, w_mm=10, h_mm=10)  # yard 2: 1 point
    assert g.total_points == 5
    # 10 yards x 60 in: 5 * 3600 / 600 = 30 points per 100 yd²
    assert g.points_per_100_sq_yd(10 * 914.4) == pytest.approx(30.0)


def test_stop_rules() -> None:
    g = RollGrader(width_mm=1000, stop_points_per_100_sq_yd=10, stop_min_inspected_mm=1000)
    assert g.stop_for_closed("hole", 7) is not None and g.stop_for_closed("stain", 8) is None
    assert g.stop_for_open("broken_end", 3, 999) is None
    assert g.stop_for_open("broken_end", 3, 1000) is not None
    g.add("stain", 0, 300, 300)
    assert g.stop_for_points(500) is None  # not enough web inspected yet
    first = g.stop_for_points(2000)
    assert first is not None and first.reason == "points"
    assert g.stop_for_points(3000) is None  # sent once per roll
