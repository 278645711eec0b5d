"""Grading: the four-point system (ASTM D5430) and the rule that stops the loom.

Points by the defect's longest extent: up to 3 in -> 1, 3-6 in -> 2, 6-9 in -> 3, over 9 in -> 4;
holes and openings: up to 1 in -> 2, over 1 in -> 4. A defect running along the web scores 4
points for every yard it spans, and no linear yard of the roll carries more than 4 points. The roll
score is points per 100 square yards: points x 3600 / (yards inspected x width in inches).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from runtime.taxonomy import HOLE_CLASSES

MM_PER_INCH = 25.4
MM_PER_YARD = 914.4


def defect_points(class_name: str, w_mm: float, h_mm: float) -> int:
    """Four-point score of one defect (`h_mm` along the web, `w_mm` across)."""
    if class_name in HOLE_CLASSES:
        return 2 if max(w_mm, h_mm) <= MM_PER_INCH else 4
    if h_mm > MM_PER_YARD:  # a continuous defect: 4 points per yard it runs
        return 4 * math.ceil(h_mm / MM_PER_YARD)
    inches = max(w_mm, h_mm) / MM_PER_INCH
    if inches <= 3:
        return 1
    if inches <= 6:
        return 2
    if inches <= 9:
        return 3
    return 4


@dataclass(frozen=True)
class StopDecision:
    reason: str  # "class", "open_length", "points"
    detail: str
    defect_id: int | None = None


@dataclass
class RollGrader:
    """Accumulates a roll's points and decides when the loom must stop."""

    width_mm: float
    stop_points_per_100_sq_yd: float = 40.0
    stop_classes: frozenset[str] = frozenset({"hole"})
    stop_open_length_mm: float = 1000.0
    stop_min_inspected_mm: float = 5000.0
    _yard_points: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    defects_by_class: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _points_stop_sent: bool = False

    def add(self, class_name: str, y_mm: float, w_mm: float, h_mm: float) -> int:
        """Record a closed defect; returns its points (before the per-yard cap)."""
        pts = defect_points(class_name, w_mm, h_mm)
        self.defects_by_class[class_name] += 1
        first_yard = int(y_mm // MM_PER_YARD)
        last_yard = int((y_mm + h_mm) // MM_PER_YARD)
        if h_mm > MM_PER_YARD:
            for yard in range(first_yard, last_yard + 1):
                self._yard_points[yard] += 4
        else:
            self._yard_points[first_yard] += pts
        return pts

    @property
    def total_points(self) -> int:
        return sum(min(4, p) for p in self._yard_points.values())

    def points_per_100_sq_yd(self, inspected_mm: float) -> float:
        if inspected_mm <= 0 or self.width_mm <= 0:
            return 0.0
        yards = inspected_mm / MM_PER_YARD
        width_in = self.width_mm / MM_PER_INCH
        return self.total_points * 3600.0 / (yards * width_in)

    def stop_for_closed(self, class_name: str, defect_id: int) -> StopDecision | None:
        if class_name in self.stop_classes:
            return StopDecision("class", f"{class_name} found", defect_id)
        return None

    def stop_for_open(self, class_name: str, defect_id: int, length_mm: float) -> StopDecision | None:
        if length_mm >= self.stop_open_length_mm:
            return StopDecision(
                "open_length", f"{class_name} still running after {length_mm:.0f} mm", defect_id
            )
        return None

    def stop_for_points(self, inspected_mm: float) -> StopDecision | None:
        if self._points_stop_sent or inspected_mm < self.stop_min_inspected_mm:
            return None
        score = self.points_per_100_sq_yd(inspected_mm)
        if score > self.stop_points_per_100_sq_yd:
            self._points_stop_sent = True
            return StopDecision(
                "points", f"{score:.1f} points/100 yd² exceeds {self.stop_points_per_100_sq_yd:g}"
            )
        return None

    def summary(self, inspected_mm: float) -> dict[str, object]:
        return {
            "inspected_m": round(inspected_mm / 1000.0, 3),
            "width_mm": round(self.width_mm, 1),
            "points": self.total_points,
            "points_per_100_sq_yd": round(self.points_per_100_sq_yd(inspected_mm), 2),
            "defects_by_class": dict(self.defects_by_class),
        }
