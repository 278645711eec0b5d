"""How each defect class changes the scene of its rectangle (see `runtime.sim.defect_render`).

Structural defects re-render the rectangle with a changed yarn layout (column or line codes of the
scene lookup table): a broken end removes ends and lets the neighbours close in, a broken pick
removes picks, a float puts a yarn on top of every crossing, a thin place narrows yarns. Surface
defects paint into the scene: a hole cuts the yarns (frayed ends hang into it) and shows the
background, a stain darkens and tints with a soft, mottled edge, a knot is a lumpy twisted lump
with two tails, a slub a spindle-shaped thick place on one yarn, contamination a foreign fibre.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from runtime.sim.defects import DefectPlan
from runtime.sim.lut import COL_NO_WARP, ROW_NO_WEFT, ROW_WEFT_TOP
from runtime.sim.render import Ends, FabricRenderer, Rows
from runtime.sim.streams import generator


class EditContext:
    """What an edit function sees: the float scene of its rectangle and helpers to re-render it."""

    def __init__(self, r: FabricRenderer, plan: DefectPlan, scene: np.ndarray, rows: Rows, sx0: int) -> None:
        self.r, self.plan, self.scene, self.rows, self.sx0 = r, plan, scene, rows, sx0
        self.rng = generator(plan.seed, 11)
        self.n, self.w = scene.shape[0], scene.shape[1]
        self.ys = rows.y
        self.xs = np.arange(sx0, sx0 + self.w)
        self.contrast = float(plan.params.get("contrast", 1.0))

    def fabric_x(self) -> np.ndarray:
        """Fabric x (column centre) of every scene pixel, (n, w)."""
        return (self.xs[None, :] + 0.5 - self.rows.shift[:, None]).astype(np.float64)

    def expand(self, a: np.ndarray) -> np.ndarray:
        return a[..., None] if self.scene.ndim == 3 else a

    def colour(self, c: np.ndarray) -> np.ndarray:
        """Colour `c` (per channel) under this region's brightness drift, broadcastable to the scene."""
        d = self.rows.drift.astype(np.float64)
        return d[:, None, None] * c[None, None, :] if self.scene.ndim == 3 else (d * float(c[0]))[:, None]

    def alt(self, *, col_code: np.ndarray | None = None, row_code: np.ndarray | None = None) -> np.ndarray:
        rows = self.rows if row_code is None else self.rows.with_code(row_code)
        return self.r.scene(rows, self.sx0, self.sx0 + self.w, col_code)

    def blend(self, target: np.ndarray, weight: np.ndarray) -> None:
        """Move the scene toward `target` by `weight` (n, w) times the defect's contrast."""
        wgt = self.expand(np.clip(weight * self.contrast, 0.0, 2.0)).astype(np.float32)
        self.scene += wgt * (np.asarray(target, np.float32) - self.scene)

    def end_near(self, x_img: int, y: int) -> int:
        rows = self.r.rows(y, y + 1)
        xf = x_img - int(rows.shift[0]) + 0.5
        return int(np.argmin(np.abs(self.r.ends.centre - xf)))

    def end_centre_img(self, i: int) -> np.ndarray:
        """Image x of end i's centre on every scene row, (n,)."""
        return self.r.ends.centre[i] + self.rows.shift.astype(np.float64)

    def warp_cover(self) -> np.ndarray:
        xf = self.fabric_x()
        k = np.clip(np.floor(xf).astype(np.int64) + self.r.ext, 0, self.r.col_end.size - 1)
        e = self.r.col_end[k]
        return np.abs(xf - self.r.ends.centre[e]) < 0.45 * self.r.ends.width[e]

    def pick_centre_row(self, pick: int) -> float:
        sel = self.rows.pick == pick
        if not sel.any():
            return float(self.ys[self.n // 2])
        idx = np.flatnonzero(sel)
        return float(self.ys[idx[np.argmin(np.abs(self.rows.d[idx]))]])


def _fibre_alpha(shape: tuple[int, int], pts: np.ndarray, thickness: float) -> np.ndarray:
    """Anti-aliased alpha (0..1) of a polyline through `pts` (x, y in the scene's pixel grid)."""
    canvas = np.zeros(shape, np.uint8)
    scale = 16
    p = np.rint(pts * scale).astype(np.int32).reshape(-1, 1, 2)
    t = max(1, round(thickness))
    cv2.polylines(canvas, [p], False, 255, thickness=t, lineType=cv2.LINE_AA, shift=4)
    alpha = canvas.astype(np.float32) / 255.0
    if thickness < t:
        alpha *= thickness / t
    return alpha


def _curve(rng: np.random.Generator, start: tuple[float, float], length: float, curl: float) -> np.ndarray:
    """A smooth random curve of `length` px from `start` (x, y), as (N, 2) points; `curl` ~ how many
    half-turns it makes (0.3: a gentle arc, 1: a hook)."""
    n = max(4, int(length / 1.5))
    t = np.linspace(0.0, 1.0, n)
    heading = rng.uniform(0, 2 * np.pi) + rng.normal(0, 1) * curl * np.pi * t
    for _ in range(2):
        heading += rng.normal(0, 0.35 * curl) * np.sin(
            2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 6.3)
        )
    step = length / (n - 1)
    xy = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * step, axis=0) - [
        np.cos(heading[0]) * step,
        np.sin(heading[0]) * step,
    ]
    return np.asarray(xy + np.asarray(start))


def _ellipse_r(
    ctx: EditContext, centre: tuple[float, float], radii: tuple[float, float], wobble: float
) -> np.ndarray:
    """Normalised radius of every scene pixel for a wobbly rotated ellipse (boundary at 1)."""
    (cx, cy), (rx, ry) = centre, radii
    rng = ctx.rng
    ang = rng.uniform(0, np.pi)
    dy = (ctx.ys[:, None] + 0.5 - cy).astype(np.float64)
    dx = (ctx.xs[None, :] + 0.5 - cx).astype(np.float64)
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = -dx * np.sin(ang) + dy * np.cos(ang)
    rn = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    theta = np.arctan2(v / ry, u / rx)
    wob = np.zeros_like(theta)
    for k in range(2, 6):
        wob += rng.normal(0, wobble / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.asarray(rn / (1 + np.clip(wob, -0.3, 0.35)))


def blob_reach(plan: DefectPlan) -> float:
    """How far a hole or stain can reach from its centre (wobble and rotation included)."""
    p = plan.params
    return 1.4 * max(0.5 * p["size_px"], 0.5 * p["size_lines"])


def knot_reach(plan: DefectPlan) -> float:
    return 1.2 * max(plan.params["size_px"], plan.params["size_lines"]) + 4.0


def _tail(rng: np.random.Generator, x: float, y: float, length: float) -> np.ndarray:
    """A loose yarn end hanging down from (x, y): mostly along the roll, gently curled."""
    t = np.linspace(0.0, 1.0, max(4, int(length / 2)))
    amp, freq, ph = rng.uniform(1.0, 4.0), rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi)
    xs = x + amp * (np.sin(2 * np.pi * freq * t + ph) - np.sin(ph))
    return np.stack([xs, y + length * t], 1)


# ---- edits ------------------------------------------------------------------------------------
def _hole(ctx: EditContext) -> None:
    p, r = ctx.plan.params, ctx.r
    rx, ry = 0.5 * p["size_px"], 0.5 * p["size_lines"] * p["aspect"]
    cy = ctx.plan.y0_line + 2 + blob_reach(ctx.plan)
    inside = _ellipse_r(ctx, (ctx.plan.x_px, cy), (rx, ry), 0.12) < 1.0
    if not inside.any():
        return
    rng = ctx.rng
    yy = np.arange(ctx.n)[:, None]
    xx = np.arange(ctx.w)[None, :]
    cols_any, rows_any = inside.any(0), inside.any(1)
    top = np.where(cols_any, inside.argmax(0), 0)[None, :]
    bot = np.where(cols_any, ctx.n - 1 - inside[::-1].argmax(0), 0)[None, :]
    left = np.where(rows_any, inside.argmax(1), 0)[:, None]
    right = np.where(rows_any, ctx.w - 1 - inside[:, ::-1].argmax(1), 0)[:, None]
    fray = max(2.0, 0.3 * min(rx, ry))
    f_top, f_bot = rng.uniform(0, fray, (2, 1, ctx.w))
    f_l, f_r = rng.uniform(0, fray, (2, ctx.n, 1))
    warp_left = ((yy - top) < f_top) | ((bot - yy) < f_bot)
    weft_left = ((xx - left) < f_l) | ((right - xx) < f_r)
    weft_cov = (np.abs(ctx.rows.d) < 0.85)[:, None]
    warp_only = ctx.alt(row_code=np.full(ctx.n, r.row_base[ROW_NO_WEFT], np.int32))
    weft_only = ctx.alt(col_code=np.full_like(r.col_code, r.col_base[COL_NO_WARP]))
    target = np.broadcast_to(ctx.colour(r.bg_c), ctx.scene.shape).astype(np.float32)
    target = np.where(ctx.expand(warp_left & ctx.warp_cover()), warp_only, target)
    target = np.where(ctx.expand(weft_left & weft_cov), weft_only, target)
    ctx.blend(target, inside.astype(np.float32))


def _stain(ctx: EditContext) -> None:
    p, rng = ctx.plan.params, ctx.rng
    rx, ry = 0.5 * p["size_px"], 0.5 * p["size_lines"] * p["aspect"]
    cy = ctx.plan.y0_line + 2 + blob_reach(ctx.plan)
    rn = _ellipse_r(ctx, (ctx.plan.x_px, cy), (rx, ry), 0.15)
    soft = 0.45
    t = np.clip((1.0 - rn) / soft, 0, 1)
    alpha = t * t * (3 - 2 * t)
    ring = np.exp(-(((rn - 0.8) / 0.08) ** 2)) * (rn < 1) * float(rng.uniform(0, 0.35))
    coarse = rng.standard_normal((max(2, ctx.n // 6), max(2, ctx.w // 6))).astype(np.float32)
    mottle = cv2.resize(cv2.GaussianBlur(coarse, (0, 0), 1.5), (ctx.w, ctx.n), interpolation=cv2.INTER_LINEAR)
    alpha = np.clip(alpha * (0.85 + 0.25 * mottle / max(float(mottle.std()), 1e-6)) + ring, 0, 1)
    tints = np.array([[0.75, 0.55, 0.45], [0.9, 0.6, 0.3], [0.3, 0.6, 0.8], [0.6, 0.6, 0.6]])
    tint = tints[int(rng.integers(len(tints)))] if ctx.scene.ndim == 3 else np.array([0.6])
    trans = 1.0 - float(p["darkness"]) * tint / max(float(tint.mean()), 1e-6)
    target = ctx.scene * (
        np.clip(trans, 0.05, 1.0).astype(np.float32) if ctx.scene.ndim == 3 else float(trans[0])
    )
    ctx.blend(target, alpha)


def _yarn_body(ctx: EditContext, dist: np.ndarray, half: np.ndarray, colour: np.ndarray, gain: float) -> None:
    """Paint a round yarn of half-width `half` at signed distance `dist` from its axis."""
    inside = np.clip(half - np.abs(dist) + 0.5, 0, 1)
    h = np.sqrt(np.clip(1 - (dist / np.maximum(half, 1e-3)) ** 2, 0, 1))
    val = ctx.colour(colour) * ctx.expand(gain * (0.66 + 0.42 * h))
    ctx.blend(val, inside)


def _knot(ctx: EditContext) -> None:
    """A lump of tied yarn on one yarn: two or three overlapping twisted lobes, a shadow, two tails."""
    p, r, rng = ctx.plan.params, ctx.r, ctx.rng
    size = p["size_px"]
    cy = ctx.plan.y0_line + 2 + knot_reach(ctx.plan)
    if p["direction"] == "warp":
        cx = float(ctx.end_centre_img(ctx.end_near(ctx.plan.x_px, int(cy)))[np.argmin(np.abs(ctx.ys - cy))])
        colour, ang = r.warp_c, np.pi / 2
    else:
        rows = r.rows(int(cy) - 8, int(cy) + 9)
        cy = float(rows.y[np.argmin(np.abs(rows.d))]) + 0.5
        cx, colour, ang = float(ctx.plan.x_px), r.weft_c, 0.0
    dy = ctx.ys[:, None] + 0.5 - cy
    dx = ctx.xs[None, :] + 0.5 - cx
    u = dx * np.cos(ang) + dy * np.sin(ang)  # along the yarn
    v = -dx * np.sin(ang) + dy * np.cos(ang)  # across
    height = np.zeros((ctx.n, ctx.w))
    for _ in range(int(rng.integers(2, 4))):
        ou, ov = rng.uniform(-0.25, 0.25) * size, rng.uniform(-0.12, 0.12) * size
        au, av = rng.uniform(0.25, 0.4) * size + 0.8, rng.uniform(0.2, 0.32) * size + 0.8
        height = np.maximum(height, 1 - ((u - ou) / au) ** 2 - ((v - ov) / av) ** 2)
    lobe = np.clip(height, 0, 1)
    alpha = np.clip(height * 4, 0, 1)
    shadow = np.clip(np.roll(np.roll(alpha, 1, 0), 1, 1) - alpha, 0, 1)
    ctx.blend(ctx.scene * 0.5, 0.7 * shadow)
    twist = 0.88 + 0.12 * np.sin(2 * np.pi * (0.8 * u + 0.6 * v) / 2.4 + rng.uniform(0, 6.3))
    ctx.blend(ctx.colour(colour) * ctx.expand((0.75 + 0.45 * np.sqrt(lobe)) * twist), alpha)
    for _ in range(2):
        pts = _curve(rng, (cx - ctx.sx0, cy - ctx.ys[0]), rng.uniform(0.6, 1.0) * size, 0.5)
        ctx.blend(ctx.colour(colour) * 1.1, 0.9 * _fibre_alpha((ctx.n, ctx.w), pts, 1.2))


def _slub(ctx: EditContext) -> None:
    p, r = ctx.plan.params, ctx.r
    thick = float(p["thickness"])
    if p["direction"] == "warp":
        i = ctx.end_near(ctx.plan.x_px, ctx.plan.y0_line)
        length = p["length_lines"]
        t = np.clip((ctx.ys + 0.5 - ctx.plan.y0_line - 4) / length, 0, 1)
        half = 0.5 * r.ends.width[i] * (1 + thick * np.sin(np.pi * t) ** 0.8)
        dist = ctx.xs[None, :] + 0.5 - ctx.end_centre_img(i)[:, None]
        _yarn_body(ctx, dist, half[:, None] * (t[:, None] > 0) * (t[:, None] < 1), r.warp_c, 1.08)
    else:
        length = p["length_px"]
        cy = ctx.pick_centre_row(int(r.rows(ctx.plan.y0_line + 8, ctx.plan.y0_line + 9).pick[0])) + 0.5
        t = np.clip((ctx.xs + 0.5 - (ctx.plan.x_px - 0.5 * length)) / length, 0, 1)
        half = 0.5 * r.fabric.weft_pitch_px * r.fabric.weft_fill * (1 + thick * np.sin(np.pi * t) ** 0.8)
        dist = ctx.ys[:, None] + 0.5 - cy
        _yarn_body(ctx, dist, half[None, :] * (t[None, :] > 0) * (t[None, :] < 1), r.weft_c, 1.08)


def _taper(pos: np.ndarray, start: float, length: float, ramp: float) -> np.ndarray:
    t = (pos - start) / max(length, 1.0)
    ramp = max(ramp / max(length, 1.0), 1e-3)
    return np.clip(np.minimum(t / ramp, (1 - t) / ramp), 0, 1) * ((t >= 0) & (t <= 1))


def _ends_window(ctx: EditContext, i0: int, n: int) -> tuple[int, int]:
    r = ctx.r
    lo = max(0, i0 - 3)
    hi = min(r.ends.centre.size - 1, i0 + n + 2)
    k0 = max(0, math.floor(r.ends.centre[lo]) + r.ext)
    k1 = min(r.col_code.size, math.ceil(r.ends.centre[hi]) + r.ext + 1)
    return k0, k1


def _warp_codes(
    ctx: EditContext,
    i0: int,
    n: int,
    *,
    width_scale: float = 1.0,
    missing: bool = False,
    floating: bool = False,
) -> np.ndarray:
    r = ctx.r
    e = r.ends
    ends = Ends(e.centre.copy(), e.width.copy(), e.group, e.level)
    sel = np.zeros(e.centre.size, bool)
    sel[i0 : i0 + n] = True
    ends.width[sel] *= width_scale
    if missing:
        p = r.fabric.warp_pitch_px
        ends.centre[i0 - 1] += 0.15 * p
        ends.centre[i0 + n] -= 0.15 * p
        ends.width[[i0 - 1, i0 + n]] *= 1.08
    k0, k1 = _ends_window(ctx, i0, n)
    codes = r.col_code.copy()
    codes[k0:k1] = r.column_codes(
        ends, k0, k1, missing=sel if missing else None, floating=sel if floating else None
    )
    return codes


def _warp_structural(
    ctx: EditContext,
    *,
    width_scale: float = 1.0,
    missing: bool = False,
    floating: bool = False,
    ramp_frac: float = 0.0,
) -> None:
    p = ctx.plan.params
    n = int(p.get("yarns", 1))
    i0 = ctx.end_near(ctx.plan.x_px, ctx.plan.y0_line)
    codes = _warp_codes(ctx, i0, n, width_scale=width_scale, missing=missing, floating=floating)
    alt = ctx.alt(col_code=codes)
    if width_scale < 1.0:
        # Less fibre: the thinner yarns let the background through (brighter on a backlight).
        xf = ctx.fabric_x()
        k = np.clip(np.floor(xf).astype(np.int64) + ctx.r.ext, 0, ctx.r.col_end.size - 1)
        on = (ctx.r.col_end[k] >= i0) & (ctx.r.col_end[k] < i0 + n)
        alt = _toward_interstice(ctx, alt, on, width_scale)
    length = p["length_lines"]
    wy = _taper(ctx.ys + 0.5, ctx.plan.y0_line + 2, length, ramp_frac * length)
    ctx.blend(alt, np.broadcast_to(wy[:, None], (ctx.n, ctx.w)))
    if missing:
        # The broken yarn's loose end curls at the break.
        rng = ctx.rng
        x = float(ctx.end_centre_img(i0)[min(ctx.n - 1, 4)]) - ctx.sx0
        pts = _tail(rng, x, ctx.plan.y0_line + 3.0 - ctx.ys[0], rng.uniform(15, 45))
        ctx.blend(ctx.colour(ctx.r.warp_c), _fibre_alpha((ctx.n, ctx.w), pts, 1.5))


def _weft_picks(ctx: EditContext) -> tuple[np.ndarray, int, int]:
    n = int(ctx.plan.params.get("yarns", 1))
    j0 = int(ctx.r.rows(ctx.plan.y0_line + 6, ctx.plan.y0_line + 7).pick[0])
    return np.isin(ctx.rows.pick, np.arange(j0, j0 + n)), j0, n


def _weft_structural(ctx: EditContext, kind: str) -> None:
    p, r, rows = ctx.plan.params, ctx.r, ctx.rows
    sel, j0, n = _weft_picks(ctx)
    code = rows.code.copy()
    if kind == "thin":
        code[sel] = r.row_codes(rows.pick[sel], rows.d[sel] / float(p["thinness"]), rows.with_code(code[sel]))
        length = p["length_px"]
        wx = _taper(ctx.xs + 0.5, ctx.plan.x_px - 0.5 * length, length, 0.15 * length)
        weight = np.where(sel[:, None], wx[None, :], 0.0)
    elif kind == "float":
        code[sel] = r.row_codes(rows.pick[sel], rows.d[sel], rows.with_code(code[sel]), kind=ROW_WEFT_TOP)
        length = p["length_px"]
        wx = _taper(ctx.xs + 0.5, ctx.plan.x_px - 0.5 * length, length, 1.0)
        weight = np.where(sel[:, None], wx[None, :], 0.0)
    else:  # missing picks; the neighbouring picks close in a little
        reach = 0.15 * r.fabric.weft_pitch_px
        before = sel & (np.cumsum(sel) <= reach)
        after = sel & (np.cumsum(sel[::-1])[::-1] <= reach)
        code[sel] = r.row_base[ROW_NO_WEFT]
        if before.any():
            code[before] = r.row_codes(
                rows.pick[before] * 0 + j0 - 1, np.full(before.sum(), 0.95), rows.with_code(code[before])
            )
        if after.any():
            code[after] = r.row_codes(
                rows.pick[after] * 0 + j0 + n, np.full(after.sum(), -0.95), rows.with_code(code[after])
            )
        touched = sel
        span = p["span_px"]
        rng = ctx.rng
        xa = ctx.plan.x_px - 0.5 * span + rng.uniform(0, 12, ctx.n)
        xb = ctx.plan.x_px + 0.5 * span - rng.uniform(0, 12, ctx.n)
        x = ctx.xs[None, :] + 0.5
        weight = (touched[:, None] & (x >= xa[:, None]) & (x < xb[:, None])).astype(np.float32)
    alt = ctx.alt(row_code=code)
    if kind == "thin":
        alt = _toward_interstice(
            ctx, alt, np.broadcast_to(sel[:, None], (ctx.n, ctx.w)), float(p["thinness"])
        )
    ctx.blend(alt, weight)


def _toward_interstice(ctx: EditContext, alt: np.ndarray, on: np.ndarray, thinness: float) -> np.ndarray:
    k = ctx.expand(np.where(on, 0.5 * (1.0 - thinness), 0.0)).astype(np.float32)
    return np.asarray(alt * (1 - k) + k * ctx.colour(ctx.r.interstice_c).astype(np.float32))


def _broken_end(ctx: EditContext) -> None:
    _warp_structural(ctx, missing=True)


def _broken_pick(ctx: EditContext) -> None:
    _weft_structural(ctx, "missing")


def _thin_place(ctx: EditContext) -> None:
    if ctx.plan.params["direction"] == "warp":
        _warp_structural(ctx, width_scale=float(ctx.plan.params["thinness"]), ramp_frac=0.15)
    else:
        _weft_structural(ctx, "thin")


def _float(ctx: EditContext) -> None:
    if ctx.plan.params["direction"] == "warp":
        _warp_structural(ctx, floating=True)
    else:
        _weft_structural(ctx, "float")


def _contamination(ctx: EditContext) -> None:
    p, r = ctx.plan.params, ctx.r
    pts = contamination_curve(ctx.plan)
    pts = pts - np.array([ctx.sx0, ctx.ys[0]])
    alpha = _fibre_alpha((ctx.n, ctx.w), pts, float(p["thickness_px"]))
    rng = ctx.rng
    if r.channels == 3 and rng.random() < 0.6:
        colour = rng.choice(np.array([[40.0, 40, 190], [170, 60, 30], [30, 150, 40], [20, 20, 20]]))
    else:
        dark = r.mean_level > 90
        colour = np.full(r.channels, 25.0 if dark else 235.0)
    colour = colour if r.channels == 3 else np.array([float(np.mean(colour))])
    ctx.blend(ctx.colour(colour), alpha)


def contamination_curve(plan: DefectPlan) -> np.ndarray:
    """The fibre's centre line in image/roll coordinates (x, y)."""
    rng = generator(plan.seed, 12)
    length = float(plan.params["length_px"])
    pts = _curve(rng, (0.0, 0.0), length, float(rng.uniform(0.15, 0.7)))
    pts[:, 1] *= float(plan.params["length_lines"]) / max(length, 1.0)
    pts -= pts.min(0)
    span = pts.max(0)
    return pts + np.array([plan.x_px - 0.5 * span[0], plan.y0_line + 4.0])


EDITS: dict[str, Callable[[EditContext], None]] = {
    "hole": _hole,
    "stain": _stain,
    "broken_end": _broken_end,
    "broken_pick": _broken_pick,
    "knot": _knot,
    "slub": _slub,
    "thin_place": _thin_place,
    "float": _float,
    "contamination": _contamination,
}
