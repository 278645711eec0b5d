"""The roll's defect map as PNG pages (OpenCV drawing, Hershey fonts: nothing to download).

Layout: A4 portrait at 150 dpi (1240 x 1754 px). The roll runs down the page, in panels side by
side: a panel holds at most `PANEL_M` (50) metres and a page at most `PANELS_PER_PAGE` (4), so a
page covers up to 200 m; a 100 m roll is one page of two 50 m panels (30 px per metre), a 3,000 m
roll fifteen pages at the same scale. Page 1 is `ROLL_ID.png`, page k `ROLL_ID_pKK.png`. A roll
shorter than a panel fills one panel. Every panel on every page uses one scale along the web.

In each panel: length down, metres marked on the left; width across, millimetres marked on top
(0 = the camera's first pixel, as the events' `x_mm`); the fabric (light) between its edges (dark
green lines) when the spool knows them, the camera's view beyond them darker. Each defect is its
class's marker (shape and colour, in the legend) at its centre; a defect that is at least
`MIN_DRAWN_PX` long or wide at this scale (a broken end, a broken pick) is also drawn as its box
at its true extent. Stops are red lines across the web at the defect that caused them (a
points stop, which has none: where the web was when it fired); gaps (nothing inspected) are grey
hatched bands. The title gives the roll, its length and width,
points per 100 sq yd and PASS/FAIL against the acceptance.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

PAGE_W_PX, PAGE_H_PX = 1240, 1754  # A4 at 150 dpi
PANEL_M = 50.0
PANELS_PER_PAGE = 4
TITLE_H_PX = 120
LEGEND_H_PX = 120
AXIS_LEFT_PX = 58
AXIS_TOP_PX = 34
PANEL_GAP_PX = 14
MIN_DRAWN_PX = 6
MARKER_PX = 12
FONT = cv2.FONT_HERSHEY_SIMPLEX

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
FABRIC = (238, 238, 238)
OFF_FABRIC = (190, 190, 190)
EDGE = (0, 110, 0)
STOP = (0, 0, 230)
GAP = (150, 150, 150)
PASS_COLOUR = (0, 140, 0)
FAIL_COLOUR = (0, 0, 210)

CIRCLE = -1  # filled circle (cv2 has no circle marker)
CLASS_STYLE: dict[str, tuple[int, tuple[int, int, int]]] = {
    "hole": (CIRCLE, (0, 0, 220)),
    "stain": (cv2.MARKER_SQUARE, (20, 90, 170)),
    "broken_end": (cv2.MARKER_TRIANGLE_UP, (200, 90, 0)),
    "broken_pick": (cv2.MARKER_TRIANGLE_DOWN, (170, 0, 170)),
    "knot": (cv2.MARKER_DIAMOND, (0, 130, 0)),
    "slub": (cv2.MARKER_STAR, (0, 140, 255)),
    "thin_place": (cv2.MARKER_TILTED_CROSS, (140, 140, 0)),
    "float": (cv2.MARKER_CROSS, (200, 0, 255)),
    "contamination": (cv2.MARKER_SQUARE, (60, 60, 60)),
    "unknown": (cv2.MARKER_CROSS, (110, 110, 110)),
}
_FALLBACK_MARKERS = (cv2.MARKER_DIAMOND, cv2.MARKER_STAR, cv2.MARKER_TRIANGLE_UP, cv2.MARKER_SQUARE)
_FALLBACK_COLOURS = ((90, 40, 140), (40, 140, 90), (140, 90, 40), (40, 90, 140))


def class_style(name: str) -> tuple[int, tuple[int, int, int]]:
    if name in CLASS_STYLE:
        return CLASS_STYLE[name]
    h = sum(name.encode()) % 16
    return _FALLBACK_MARKERS[h % 4], _FALLBACK_COLOURS[h // 4]


@dataclass(frozen=True)
class MapLayout:
    """Where the roll's metres go: panels of `panel_m`, `panels` in all, `pages` pages."""

    length_m: float
    panel_m: float
    panels: int
    pages: int

    @classmethod
    def for_length(cls, length_m: float) -> MapLayout:
        length_m = max(length_m, 0.001)
        panel_m = min(PANEL_M, _nice_ceil(length_m))
        panels = max(1, math.ceil(length_m / panel_m - 1e-9))
        return cls(length_m, panel_m, panels, math.ceil(panels / PANELS_PER_PAGE))


def _nice_ceil(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= x."""
    exp = 10 ** math.floor(math.log10(x))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * exp >= x - 1e-9:
            return m * exp
    return 10.0 * exp


def _nice_step(span: float, max_labels: int) -> float:
    raw = span / max(1, max_labels)
    exp = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * exp >= raw:
            return m * exp
    return 10.0 * exp


def page_names(roll_file_stem: str, pages: int) -> list[str]:
    return [f"{roll_file_stem}.png" if k == 0 else f"{roll_file_stem}_p{k + 1:02d}.png" for k in range(pages)]


def draw_map(report: dict[str, Any]) -> list[np.ndarray]:
    """The map pages (BGR images) of a report made by `build_report`."""
    roll, grading = report["roll"], report["grading"]
    layout = MapLayout.for_length(float(roll["length_inspected_m"]))
    width_mm = float(roll["width_mm"]) or max((d["x_mm"] + d["w_mm"] for d in report["defects"]), default=1.0)
    plot_h = PAGE_H_PX - TITLE_H_PX - LEGEND_H_PX - AXIS_TOP_PX - 10
    px_per_m = plot_h / layout.panel_m
    pages = []
    for page in range(layout.pages):
        img = np.full((PAGE_H_PX, PAGE_W_PX, 3), 255, np.uint8)
        first = page * PANELS_PER_PAGE
        n = min(PANELS_PER_PAGE, layout.panels - first)
        panel_w = (PAGE_W_PX - 20 - (PANELS_PER_PAGE - 1) * PANEL_GAP_PX) // PANELS_PER_PAGE
        if n < PANELS_PER_PAGE:  # fewer panels: wider, but no wider than two slots
            panel_w = min(2 * panel_w, (PAGE_W_PX - 20 - (n - 1) * PANEL_GAP_PX) // n)
        for i in range(n):
            x0 = 10 + i * (panel_w + PANEL_GAP_PX)
            m0 = (first + i) * layout.panel_m
            panel = Panel(x0, panel_w, m0, layout.panel_m, px_per_m, width_mm)
            _draw_panel(img, report, panel)
        _draw_title(img, roll, grading, page, layout)
        _draw_legend(img, report)
        pages.append(img)
    return pages


@dataclass(frozen=True)
class Panel:
    """One column of the map: page pixels from `x0_px`, roll metres from `m0`."""

    x0_px: int
    width_px: int
    m0: float
    panel_m: float
    px_per_m: float
    width_mm: float


def _draw_panel(img: np.ndarray, report: dict[str, Any], panel: Panel) -> None:
    m0, panel_m, px_per_m, width_mm = panel.m0, panel.panel_m, panel.px_per_m, panel.width_mm
    left = panel.x0_px + AXIS_LEFT_PX
    right = panel.x0_px + panel.width_px - 4
    top = TITLE_H_PX + AXIS_TOP_PX
    length_m = float(report["roll"]["length_inspected_m"])
    m1 = min(m0 + panel_m, max(length_m, m0))
    bottom = top + round((m1 - m0) * px_per_m)
    px_per_mm_x = (right - left) / width_mm

    def X(mm: float) -> int:
        return round(left + mm * px_per_mm_x)

    def Y(m: float) -> int:
        return round(top + (m - m0) * px_per_m)

    cv2.rectangle(img, (left, top), (right, bottom), OFF_FABRIC, -1)
    edges = report["roll"].get("web_edges_mm") or [None, None]
    e_left = edges[0] if edges and edges[0] is not None else 0.0
    e_right = edges[1] if len(edges) > 1 and edges[1] is not None else width_mm
    cv2.rectangle(img, (X(e_left), top), (X(e_right), bottom), FABRIC, -1)
    for e in edges or []:
        if e is not None:
            cv2.line(img, (X(e), top), (X(e), bottom), EDGE, 2)
    cv2.rectangle(img, (left, top), (right, bottom), BLACK, 1)

    # metres down the left
    minor = 1.0 if px_per_m >= 6 else 5.0
    label = _nice_step(panel_m, 10)
    k = math.ceil(m0 / minor - 1e-9)
    while k * minor <= m1 + 1e-9:
        m = k * minor
        y = Y(m)
        major = abs(m / label - round(m / label)) < 1e-6
        cv2.line(img, (left - (9 if major else 4), y), (left, y), BLACK, 1)
        if major:
            text = f"{m:g} m"
            (tw, th), _ = cv2.getTextSize(text, FONT, 0.42, 1)
            cv2.putText(img, text, (left - 11 - tw, y + th // 2), FONT, 0.42, BLACK, 1, cv2.LINE_AA)
        k += 1

    # millimetres across the top
    step = _nice_step(width_mm, max(2, (right - left) // 70))
    k = 0
    while k * step <= width_mm + 1e-9:
        x = X(k * step)
        cv2.line(img, (x, top - 5), (x, top), BLACK, 1)
        text = f"{k * step:g}"
        (tw, _), _ = cv2.getTextSize(text, FONT, 0.38, 1)
        cv2.putText(img, text, (x - tw // 2, top - 8), FONT, 0.38, BLACK, 1, cv2.LINE_AA)
        k += 1
    cv2.putText(img, "mm", (right - 22, top - 22), FONT, 0.38, BLACK, 1, cv2.LINE_AA)

    for gap in report["gaps"]["spans"]:
        a, b = max(gap["start_m"], m0), min(gap["end_m"], m1)
        if b < a:
            continue
        ya, yb = Y(a), max(Y(b), Y(a) + 3)
        band = img[ya:yb, left + 1 : right]  # a view: drawing on it draws on the page, clipped
        band[:] = GAP
        for xx in range(-(yb - ya), band.shape[1], 10):  # hatching
            cv2.line(band, (xx, yb - ya), (xx + yb - ya, 0), WHITE, 1)

    for d in report["defects"]:
        y_c = (d["y_mm"] + d["h_mm"] / 2) / 1000.0
        centre_here = m0 <= y_c < m0 + panel_m
        if not centre_here and not (d["y_mm"] / 1000.0 < m1 and (d["y_mm"] + d["h_mm"]) / 1000.0 > m0):
            continue  # neither its centre nor any of its length is in this panel
        marker, colour = class_style(d["class"])
        h_px, w_px = d["h_mm"] / 1000.0 * px_per_m, d["w_mm"] * px_per_mm_x
        if h_px >= MIN_DRAWN_PX or w_px >= MIN_DRAWN_PX:  # long or wide: drawn at its extent
            ya = max(top, Y(d["y_mm"] / 1000.0))
            yb = min(bottom, Y((d["y_mm"] + d["h_mm"]) / 1000.0))
            xa, xb = X(d["x_mm"]), X(d["x_mm"] + d["w_mm"])
            cv2.rectangle(img, (xa, ya), (max(xb, xa + 2), max(yb, ya + 2)), colour, -1 if w_px < 4 else 2)
        if centre_here:
            _marker(img, (X(d["x_mm"] + d["w_mm"] / 2), Y(y_c)), marker, colour)

    for stop in report["stops"]:
        at = stop["defect_y_m"] if stop["defect_y_m"] is not None else stop["inspected_m"]
        if at is None or not (m0 <= at <= m1):
            continue
        y = Y(at)
        cv2.line(img, (left - 2, y), (right, y), STOP, 2)
        text = f"STOP {stop['reason']}"
        (tw, th), _ = cv2.getTextSize(text, FONT, 0.4, 1)
        ty = y - 4 if y - th - 4 > top else y + th + 5  # below the line at the panel's top edge
        cv2.putText(img, text, (right - tw - 2, ty), FONT, 0.4, STOP, 1, cv2.LINE_AA)


def _marker(img: np.ndarray, centre: tuple[int, int], marker: int, colour: tuple[int, int, int]) -> None:
    if marker == CIRCLE:
        cv2.circle(img, centre, MARKER_PX // 2, colour, -1, cv2.LINE_AA)
        cv2.circle(img, centre, MARKER_PX // 2, BLACK, 1, cv2.LINE_AA)
    else:
        cv2.drawMarker(img, centre, colour, marker, MARKER_PX, 2, cv2.LINE_AA)


def _draw_title(
    img: np.ndarray, roll: dict[str, Any], grading: dict[str, Any], page: int, layout: MapLayout
) -> None:
    title = f"Roll {roll['roll_id']}   line {roll['line_id']}"
    if layout.pages > 1:
        title += f"   page {page + 1}/{layout.pages}"
    cv2.putText(img, title, (14, 36), FONT, 0.85, BLACK, 2, cv2.LINE_AA)
    passed = grading["result"] == "pass"
    verdict = (
        f"{grading['points_per_100_sq_yd']:.1f} points/100 sq yd ({grading['points']} points): "
        f"{'PASS' if passed else 'FAIL'} (limit {grading['accept_points_per_100_sq_yd']:g})"
    )
    cv2.putText(img, verdict, (14, 72), FONT, 0.8, PASS_COLOUR if passed else FAIL_COLOUR, 2, cv2.LINE_AA)
    length = f"{roll['length_inspected_m']:.1f} m" + (" (at least)" if roll["length_is_lower_bound"] else "")
    model = (roll.get("model") or {}).get("name", "?")
    info = (
        f"{length} x {roll['width_mm']:.0f} mm   {roll['state']}   {roll['start_ts']} - {roll['end_ts'] or '...'}"
        f"   model {model}   {layout.panel_m:g} m per panel"
    )
    cv2.putText(img, info, (14, 102), FONT, 0.45, BLACK, 1, cv2.LINE_AA)


def _draw_legend(img: np.ndarray, report: dict[str, Any]) -> None:
    y0 = PAGE_H_PX - LEGEND_H_PX + 22
    cv2.line(img, (10, y0 - 16), (PAGE_W_PX - 10, y0 - 16), BLACK, 1)
    items = [(name, t["defects"], t["points"]) for name, t in report["totals_by_class"].items()]
    x, y = 24, y0 + 10
    for name, count, points in items:
        marker, colour = class_style(name)
        _marker(img, (x, y - 5), marker, colour)
        text = f"{name} {count} ({points} pt)"
        cv2.putText(img, text, (x + 14, y), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
        x += 24 + cv2.getTextSize(text, FONT, 0.45, 1)[0][0] + 18
        if x > PAGE_W_PX - 220:
            x, y = 24, y + 26
    if not items:
        cv2.putText(img, "no defects", (x, y), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    y = PAGE_H_PX - 30
    cv2.line(img, (24, y - 5), (54, y - 5), STOP, 2)
    cv2.putText(img, f"stop ({len(report['stops'])})", (60, y), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(img, (170, y - 11), (200, y + 1), GAP, -1)
    gaps = report["gaps"]
    gap_text = (
        f"gap, not inspected ({gaps['count']}, {gaps['total_m']:g} m)" if gaps["known"] else "gaps unknown"
    )
    cv2.putText(img, gap_text, (206, y), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    cv2.line(img, (520, y - 12), (520, y + 2), EDGE, 2)
    cv2.putText(img, "fabric edge", (528, y), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    cv2.putText(img, "boxes: defects drawn at their size", (680, y), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
