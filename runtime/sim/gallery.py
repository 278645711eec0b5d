"""A contact sheet of the synthetic loom for a person to look at.

Top: every fabric of the catalog (a crop across its left web edge and a 3x zoom of its weave).
Below: every defect class (rows) on a few fabrics (columns), each crop at camera resolution with
the exact mask outlined. `downsample=4` makes the same sheet with every crop shrunk 4x
(INTER_AREA, as the detector sees the web) and blown back up, without outlines, to check that a
defect is still visible at the model's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from runtime.sim.fabric import FABRICS, FabricSpec
from runtime.sim.loom import SyntheticLoom
from runtime.taxonomy import DEFECT_CLASSES

CELL = 240
LABEL_W = 150
HEAD_H = 26
FONT = cv2.FONT_HERSHEY_SIMPLEX
GALLERY_FABRICS = ("plain_gray", "twill_3_1_gray", "satin_5_gray", "denim_color", "herringbone_color")
_SPACING = 700  # lines between the gallery's defects along its roll
_GALLERY_PARAMS: dict[str, dict[str, float]] = {"broken_end": {"length_mm": 150.0}}


def _bgr(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img


def _text(
    img: np.ndarray,
    text: str,
    org: tuple[int, int],
    scale: float = 0.5,
    colour: tuple[int, int, int] = (20, 20, 20),
) -> None:
    cv2.putText(img, text, org, FONT, scale, colour, 1, cv2.LINE_AA)


def _shrink_view(img: np.ndarray, factor: int) -> np.ndarray:
    """What the detector sees at `factor` x coarser resolution, blown back up for the eye."""
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_NEAREST
    return cv2.resize(img, (size, size), interpolation=interp)


def fabric_tiles(fabric: FabricSpec, *, seed: int, downsample: int = 1) -> list[np.ndarray]:
    """Two tiles: the left web edge at camera resolution, and a 3x zoom of the weave."""
    loom = SyntheticLoom(fabric, width_px=1024, seed=seed, defects_per_m=0.0)
    web = _bgr(loom.next_block(CELL + 40).pixels[20 : 20 + CELL])
    x_edge = max(0, int(loom.renderer.edge_l) - CELL // 5)
    edge = web[:, x_edge : x_edge + CELL]
    z = CELL // 3
    zoom = cv2.resize(web[:z, 512 : 512 + z], (CELL, CELL), interpolation=cv2.INTER_NEAREST)
    if downsample > 1:
        edge = _shrink_view(edge, downsample)
        zoom = _shrink_view(cv2.resize(web[:z, 512 : 512 + z], (z, z)), downsample)
        zoom = cv2.resize(zoom, (CELL, CELL), interpolation=cv2.INTER_NEAREST)
    return [edge, zoom]


def defect_cells(
    fabric: FabricSpec, classes: Sequence[str], *, seed: int, downsample: int = 1
) -> list[np.ndarray]:
    """One crop per class on `fabric`, centred on the defect, mask outlined (not when downsampled)."""
    loom = SyntheticLoom(fabric, width_px=1024, seed=seed, defects_per_m=0.0, with_masks=True)
    truths = []
    y = 200
    for c in classes:
        t = loom.place_defect(c, y0_line=y, x_center_px=512, **_GALLERY_PARAMS.get(c, {}))
        truths.append(t)
        y = t.y1_line + _SPACING
    block = loom.next_block(y)
    assert block.labels is not None
    pixels = _bgr(block.pixels)
    cells = []
    for t in truths:
        w, h = t.x1_px - t.x0_px, t.y1_line - t.y0_line
        # Blobs are shown whole (shrunk if big); streaks at camera resolution (a window on them).
        side = CELL if max(w, h) > 3 * min(w, h) else max(CELL, min(int(1.3 * max(w, h)), 480))
        cx = (t.x0_px + t.x1_px) // 2
        cy = (t.y0_line + t.y1_line) // 2 if t.y1_line - t.y0_line < side else t.y0_line + side // 3
        x0 = int(np.clip(cx - side // 2, 0, loom.width_px - side))
        y0 = int(np.clip(cy - side // 2, 0, block.n_lines - side))
        crop = pixels[y0 : y0 + side, x0 : x0 + side].copy()
        mask = (block.labels[y0 : y0 + side, x0 : x0 + side] == t.defect_id).astype(np.uint8)
        if downsample > 1:
            cells.append(_fit(_shrink_view(crop, downsample), CELL))
            continue
        crop = _fit(crop, CELL)
        mask = cv2.resize(mask, (CELL, CELL), interpolation=cv2.INTER_NEAREST)
        # Outline just outside the mask so a one-yarn streak stays visible under its outline.
        ring = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=2)
        contours, _ = cv2.findContours(ring, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(crop, contours, -1, (0, 200, 255), 1, cv2.LINE_8)
        cells.append(crop)
    return cells


def make_gallery(
    *,
    fabrics: Sequence[str] | None = None,
    defect_fabrics: Sequence[str] = GALLERY_FABRICS,
    classes: Sequence[str] = DEFECT_CLASSES,
    seed: int = 1,
    downsample: int = 1,
) -> np.ndarray:
    """The contact sheet as one BGR image."""
    names = list(FABRICS) if fabrics is None else list(fabrics)
    gap = 6
    per_row = 4  # fabrics per row, two tiles each
    fab_w = 2 * CELL + gap
    width = max(LABEL_W + len(defect_fabrics) * (CELL + gap), per_row * (fab_w + gap)) + gap
    title = "Loomsight synthetic loom" + (
        f" - every crop {downsample}x downsampled (INTER_AREA)" if downsample > 1 else ""
    )
    sections: list[np.ndarray] = []
    head = np.full((40, width, 3), 245, np.uint8)
    _text(head, title, (gap, 28), 0.75)
    sections.append(head)
    # Fabrics.
    for start in range(0, len(names), per_row):
        row = np.full((HEAD_H + CELL + gap, width, 3), 245, np.uint8)
        for k, name in enumerate(names[start : start + per_row]):
            x = gap + k * (fab_w + gap)
            edge, zoom = fabric_tiles(FABRICS[name], seed=seed, downsample=downsample)
            _text(row, f"{name}  (edge | 3x zoom)", (x, HEAD_H - 8), 0.45)
            row[HEAD_H : HEAD_H + CELL, x : x + CELL] = edge
            row[HEAD_H : HEAD_H + CELL, x + CELL + gap : x + 2 * CELL + gap] = zoom
        sections.append(row)
    # Defects.
    head = np.full((2 * HEAD_H + 12, width, 3), 245, np.uint8)
    _text(
        head,
        "defect classes (rows) on fabrics (columns); mask outlined"
        if downsample == 1
        else "defect classes (rows) on fabrics (columns)",
        (gap, HEAD_H + 4),
        0.6,
    )
    for k, name in enumerate(defect_fabrics):
        _text(head, name, (LABEL_W + k * (CELL + gap) + 4, 2 * HEAD_H + 4), 0.45)
    sections.append(head)
    columns = [
        defect_cells(FABRICS[n], classes, seed=seed + 10 * k, downsample=downsample)
        for k, n in enumerate(defect_fabrics)
    ]
    for i, c in enumerate(classes):
        row = np.full((CELL + gap, width, 3), 245, np.uint8)
        _text(row, c, (gap, CELL // 2), 0.55)
        for k, cells in enumerate(columns):
            x = LABEL_W + k * (CELL + gap)
            row[:CELL, x : x + CELL] = cells[i]
        sections.append(row)
    return np.vstack(sections)
