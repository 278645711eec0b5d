"""Profiles across the line as a PNG, drawn with OpenCV (no matplotlib on a loom box).

Long lines (thousands of columns) are drawn as a min/max envelope per plot pixel, so a single
dead or hot column still shows as a spike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import CalibrationError

Color = tuple[int, int, int]
FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK: Color = (30, 30, 30)
GRID: Color = (225, 225, 225)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 80, 170, 34, 40


@dataclass
class Series:
    label: str
    values: np.ndarray
    color: Color


@dataclass
class Panel:
    title: str
    y_label: str
    series: list[Series]
    marks: list[tuple[int, Color]] = field(default_factory=list)  # columns to flag with a tick
    hline: float | None = None


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{decimals}f}"


def _envelope(values: np.ndarray, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(0, values.size, pixels + 1).astype(int)
    starts = np.minimum(edges[:-1], values.size - 1)
    return np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)


def _draw_panel(canvas: np.ndarray, panel: Panel, top: int, height: int, columns: int) -> None:
    width = canvas.shape[1]
    x0, x1 = MARGIN_LEFT, width - MARGIN_RIGHT
    y0, y1 = top + MARGIN_TOP, top + height - MARGIN_BOTTOM
    values = np.concatenate([s.values.astype(np.float64).ravel() for s in panel.series])
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if panel.hline is not None:
        low, high = min(low, panel.hline), max(high, panel.hline)
    pad = (high - low) * 0.05 or 1.0
    low, high = low - pad, high + pad

    def y_of(v: np.ndarray | float) -> np.ndarray:
        return np.rint(y1 - (np.asarray(v) - low) / (high - low) * (y1 - y0)).astype(np.int32)

    def x_of(c: np.ndarray | float) -> np.ndarray:
        return np.rint(x0 + np.asarray(c) / max(columns - 1, 1) * (x1 - x0)).astype(np.int32)

    ticks = nice_ticks(low, high)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    for tick in ticks:
        y = int(y_of(tick))
        cv2.line(canvas, (x0, y), (x1, y), GRID, 1)
        cv2.putText(canvas, _label(tick, step), (8, y + 4), FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    for tick in nice_ticks(0, columns - 1, 8):
        x = int(x_of(tick))
        cv2.line(canvas, (x, y0), (x, y1), GRID, 1)
        cv2.putText(canvas, f"{tick:.0f}", (x - 14, y1 + 16), FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (x0, y0), (x1, y1), BLACK, 1)
    cv2.putText(canvas, panel.title, (x0, y0 - 10), FONT, 0.55, BLACK, 1, cv2.LINE_AA)
    cv2.putText(canvas, panel.y_label, (8, y0 - 10), FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    if panel.hline is not None:
        y = int(y_of(panel.hline))
        cv2.line(canvas, (x0, y), (x1, y), (0, 160, 0), 1, cv2.LINE_AA)
    for column, color in panel.marks:
        x = int(x_of(column))
        cv2.line(canvas, (x, y1), (x, y1 - 12), color, 2)
    plot_px = x1 - x0
    for index, series in enumerate(panel.series):
        data = series.values.astype(np.float64).ravel()
        if data.size > plot_px:
            lows, highs = _envelope(data, plot_px)
            xs = np.arange(x0, x0 + plot_px)
            for x, a, b in zip(xs, y_of(lows), y_of(highs), strict=True):
                cv2.line(canvas, (int(x), int(a)), (int(x), int(b)), series.color, 1)
        else:
            points = np.stack([x_of(np.arange(data.size)), y_of(data)], axis=1).reshape(-1, 1, 2)
            cv2.polylines(canvas, [points], False, series.color, 1, cv2.LINE_AA)
        ly = y0 + 16 + 18 * index
        cv2.line(canvas, (x1 + 12, ly - 4), (x1 + 32, ly - 4), series.color, 2)
        cv2.putText(canvas, series.label, (x1 + 38, ly), FONT, 0.4, BLACK, 1, cv2.LINE_AA)


def draw_panels(
    panels: list[Panel], title: str, x_label: str, width: int = 1400, panel_height: int = 300
) -> np.ndarray:
    """One figure: panels stacked, sharing the column axis."""
    columns = max(s.values.shape[0] for p in panels for s in p.series)
    canvas = np.full((40 + panel_height * len(panels) + 24, width, 3), 255, np.uint8)
    cv2.putText(canvas, title, (MARGIN_LEFT, 26), FONT, 0.65, BLACK, 1, cv2.LINE_AA)
    for index, panel in enumerate(panels):
        _draw_panel(canvas, panel, 40 + index * panel_height, panel_height, columns)
    cv2.putText(canvas, x_label, (width // 2 - 60, canvas.shape[0] - 8), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    return canvas


def save_png(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise CalibrationError(f"{path}: OpenCV could not write the PNG")
    return path
