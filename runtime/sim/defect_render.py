"""Render a planned defect into the weave and measure its exact mask.

A defect is drawn by editing the *scene* (yarn layout and brightness, before lighting, optics
blur and sensor noise) inside its own rectangle of the roll: a broken end removes warp ends from
the column layout (neighbours close in, the weft floats over the gap), a float puts a yarn on top
of every crossing, a hole cuts the yarns (frayed ends hang into it) and shows the background, and
so on. The rectangle is rendered twice, clean and edited, through the same pipeline as the web;
the mask is every pixel that differs by at least `MIN_DELTA` gray levels, the patch keeps the
edited pixels there, and the loom pastes the patch wherever the rectangle is emitted. So a pixel
outside a mask is exactly the clean pixel, and the truth box is the tight box of the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtime.sim.defect_edits import EDITS, EditContext, blob_reach, contamination_curve, knot_reach
from runtime.sim.defects import DefectPlan
from runtime.sim.render import FabricRenderer, Rows

MIN_DELTA = 2  # gray levels: a pixel belongs to a mask when the defect changed it by at least this


@dataclass(frozen=True)
class RenderedDefect:
    plan: DefectPlan
    x0: int
    y0: int
    patch: np.ndarray  # uint8, the final pixels inside the tight box
    mask: np.ndarray  # bool, the pixels the defect changed

    @property
    def x1(self) -> int:
        return self.x0 + self.mask.shape[1]

    @property
    def y1(self) -> int:
        return self.y0 + self.mask.shape[0]


# ---- rectangles and rendering -------------------------------------------------------------------
def support(r: FabricRenderer, plan: DefectPlan) -> tuple[int, int, int, int]:
    """A rectangle (y0, y1, x0, x1) of the roll that holds every pixel the defect may change."""
    pad = 2 * r.margin + 3
    p, y, x = plan.params, plan.y0_line, plan.x_px
    c = plan.class_name
    pitch_x, pitch_y = r.fabric.warp_pitch_px, r.fabric.weft_pitch_px
    if c in ("hole", "stain"):
        reach = blob_reach(plan)
        y0, y1, xa, xb = y, y + 2 + 2 * reach + 1, x - reach - 1, x + reach + 1
    elif c == "knot":
        reach = knot_reach(plan)
        y0, y1, xa, xb = y, y + 2 + 2 * reach + 1, x - reach - 2 * pitch_x, x + reach + 2 * pitch_x
    elif c == "contamination":
        pts = contamination_curve(plan)
        t = float(p["thickness_px"]) + 2
        y0, y1 = math.floor(pts[:, 1].min() - t), math.ceil(pts[:, 1].max() + t)
        xa, xb = pts[:, 0].min() - t, pts[:, 0].max() + t
    elif c in ("broken_end", "slub", "thin_place", "float") and p.get("direction", "warp") == "warp":
        length = int(p["length_lines"]) + 10
        shift = r.rows(y, y + length).shift
        i0 = int(np.argmin(np.abs(r.ends.centre - (x - int(shift[0]) + 0.5))))
        n = int(p.get("yarns", 1))
        lo, hi = max(0, i0 - 3), min(r.ends.centre.size - 1, i0 + n + 2)
        grow = 2.0 * pitch_x * (1 + float(p.get("thickness", 0.0)))
        y0, y1 = y, y + length
        xa, xb = r.ends.centre[lo] + shift.min() - grow, r.ends.centre[hi] + shift.max() + grow
    else:  # weft-direction defects: one or a few picks across
        n = int(p.get("yarns", 1))
        span = float(p["span_px"]) + 24 if c == "broken_pick" else float(p["length_px"]) + 4
        reach = (n + 2) * 1.6 * pitch_y * (1 + float(p.get("thickness", 0.0)))
        y0, y1, xa, xb = y, int(y + 8 + reach), x - 0.5 * span, x + 0.5 * span
    x0 = max(0, math.floor(xa) - pad)
    x1 = min(r.width_px, math.ceil(xb) + pad)
    return int(y0) - pad, int(y1) + pad, x0, x1


def render_defect(r: FabricRenderer, plan: DefectPlan) -> RenderedDefect | None:
    """Render `plan` into its rectangle; None if it changed no pixel by `MIN_DELTA` or more."""
    y0, y1, x0, x1 = support(r, plan)
    band = 2 * r.margin
    edit_fn = EDITS[plan.class_name]

    def edit(scene: np.ndarray, rows: Rows, sx0: int) -> None:
        before = scene.copy()
        edit_fn(EditContext(r, plan, scene, rows, sx0))
        # Whatever an edit did in the outer band would blur out of the rectangle: undo it there.
        scene[:band] = before[:band]
        scene[-band:] = before[-band:]
        if x0 > 0:
            scene[:, :band] = before[:, :band]
        if x1 < r.width_px:
            scene[:, -band:] = before[:, -band:]
        # Nothing changes beyond the web edges (nor so close that the blur would carry it there).
        xs = np.arange(sx0, sx0 + scene.shape[1])[None, :] - rows.shift[:, None]
        off_web = (xs < r.edge_l + r.margin) | (xs + 1 > r.edge_r - r.margin)
        scene[off_web] = before[off_web]

    clean = r.render(y0, y1, x0, x1)
    dirty = r.render(y0, y1, x0, x1, edit=edit)
    diff = np.abs(dirty.astype(np.int16) - clean.astype(np.int16))
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    mask = diff >= MIN_DELTA
    if not mask.any():
        return None
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    a, b, c, d = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    return RenderedDefect(plan, x0 + c, y0 + a, np.ascontiguousarray(dirty[a:b, c:d]), mask[a:b, c:d].copy())
