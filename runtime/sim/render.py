"""Fast fabric rendering: any rectangle of the roll, identical however the roll is cut.

How a pixel is made (all functions of its absolute line `y` and column `x`):

1. Scene. Each column belongs to a warp end (nearest end centre, in fabric coordinates that wander
   across the image with the web) and each line to a weft pick. A column *code* says which end
   (mod the weave repeat), where across that end the column lies (one of `Q` bins of the signed
   distance from its centre in half-widths) and the end's brightness level; a line code says the
   same for the pick. A small lookup table `lut[row_code, col_code]`, built once from the weave
   repeat, gives the scene brightness: which yarn is on top, its cylinder shading, the crimp dip
   where it dives under, interstices showing the background. A block is then one table gather per
   run of lines with the same lateral shift, plus along-yarn irregularity from two noise banks.
2. Lighting: vignetting, gradient and faint streaks across; slow drift along.
3. Optics blur (OpenCV's bit-exact 8-bit Gaussian), then sensor noise from a pre-generated bank.

Defects edit the scene (step 1) inside their own rectangle; steps 2-3 then run the same way, so a
defect changes exactly the pixels its mask says.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from runtime.sim.fabric import FabricSpec
from runtime.sim.lut import (
    COL_BACKGROUND,
    COL_BODY,
    COL_NO_WARP,
    COL_SELVEDGE,
    COL_WARP_TOP,
    ROW_NO_WEFT,
    ROW_NORMAL,
    ROW_WEFT_TOP,
    G,
    Q,
    bins,
    build_lut,
    levels,
)
from runtime.sim.streams import IndexedNoise, generator, smooth
from runtime.sim.weaves import weave_pattern

NOISE_BANK = 1 << 20
_LUMA = np.array([0.114, 0.587, 0.299])
# Stream tags (never reuse one for two purposes).
_T_PICK_POS, _T_PICK_JIT, _T_PICK_WIDTH, _T_PICK_LEVEL, _T_DRIFT, _T_WANDER, _T_PICK_BANK, _T_FRINGE = range(
    8
)


def _cyclic_smooth(noise: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian smoothing with wrap-around (so a bank repeats without a seam)."""
    n = noise.shape[axis]
    f = np.fft.rfftfreq(n)
    gain = np.exp(-2.0 * (math.pi * f * sigma) ** 2)
    shape = [1] * noise.ndim
    shape[axis] = -1
    out = np.fft.irfft(np.fft.rfft(noise, axis=axis) * gain.reshape(shape), n=n, axis=axis)
    return np.asarray(out / max(float(out.std()), 1e-9), dtype=np.float32)


@dataclass(frozen=True)
class Rows:
    """Per-line state for lines `y` (absolute line indices)."""

    y: np.ndarray  # int64
    pick: np.ndarray  # int64 weft pick index
    d: np.ndarray  # float64 signed distance from the pick centre, in half-widths
    code: np.ndarray  # int32 lookup-table row
    drift: np.ndarray  # float32 brightness drift
    shift: np.ndarray  # int64 lateral web shift, px (image x = fabric x + shift)
    bank_row: np.ndarray  # int64 row of the weft irregularity bank
    fringe_px: np.ndarray  # float64 length of the cut weft end beyond each edge
    noise_off: np.ndarray  # int64 offset into the sensor-noise bank

    def with_code(self, code: np.ndarray) -> Rows:
        return replace(self, code=code)


@dataclass
class Ends:
    """Warp ends in fabric coordinates (left to right)."""

    centre: np.ndarray  # float64 px
    width: np.ndarray  # float64 px
    group: np.ndarray  # int32 COL_BODY or COL_SELVEDGE
    level: np.ndarray  # int32 brightness level


class FabricRenderer:
    """Renders rectangles of the roll for one fabric, geometry and seed."""

    def __init__(
        self, fabric: FabricSpec, *, width_px: int, mm_per_px: float, mm_per_line: float, seed: int
    ) -> None:
        self.fabric = fabric
        self.width_px = int(width_px)
        self.mm_per_px = float(mm_per_px)
        self.mm_per_line = float(mm_per_line)
        self.seed = int(seed)
        self.channels = 3 if fabric.color else 1
        self.pattern = weave_pattern(fabric.weave)
        self.repeat_picks = math.lcm(self.pattern.shape[0], 2)
        self.repeat_ends = self.pattern.shape[1]
        self.blur_ksize = 3 if fabric.blur_px < 0.7 else 5
        self.margin = self.blur_ksize // 2
        self.wander_px = round(fabric.edge_wander_mm / mm_per_px)
        self.fringe_px = max(0.0, fabric.fringe_mm / mm_per_px)
        self.ext = self.wander_px + math.ceil(self.fringe_px) + 8  # fabric columns beyond the image
        self._streams = {
            t: IndexedNoise(seed, 100 + t, uniform=t in (_T_PICK_BANK, _T_FRINGE)) for t in range(8)
        }
        self._build_colours()
        lut = build_lut(
            fabric,
            self.pattern,
            warp_c=self.warp_c,
            weft_c=self.weft_c,
            bg_c=self.bg_c,
            interstice_c=self.interstice_c,
        )
        self.lut, self.row_base, self.col_base = lut.table, lut.row_base, lut.col_base
        self._build_ends()
        self._build_banks()

    # ---- construction -------------------------------------------------------------------------
    def _colour(self, bgr: tuple[int, int, int]) -> np.ndarray:
        c = np.asarray(bgr, dtype=np.float64)
        return c if self.channels == 3 else np.array([float(c @ _LUMA)])

    def _build_colours(self) -> None:
        f = self.fabric
        self.warp_c = self._colour(f.warp_bgr)
        self.weft_c = self._colour(f.weft_bgr)
        self.bg_c = self._colour(f.background_bgr)
        fabric_mean = 0.5 * (self.warp_c + self.weft_c)
        fuzz = 0.55 * fabric_mean if f.background == "backlight" else 0.45 * fabric_mean
        self.interstice_c = (1.0 - f.hairiness) * self.bg_c + f.hairiness * fuzz
        self.mean_level = float(np.mean(fabric_mean))

    def _build_ends(self) -> None:
        f, W, E = self.fabric, self.width_px, self.ext
        rng = generator(self.seed, 1)
        margin = f.edge_margin_frac * W
        if margin <= 0:
            self.edge_l, self.edge_r = -E - 40.0, W + E + 40.0
        else:
            self.edge_l, self.edge_r = margin, W - margin
        self.selvedge_px = f.selvedge_mm / self.mm_per_px
        p, ps = f.warp_pitch_px, max(1.6, 0.72 * f.warp_pitch_px)
        n_s = max(1, round(self.selvedge_px / ps))
        left = self.edge_l + ps * (0.5 + np.arange(n_s))
        body0, body1 = left[-1] + 0.5 * ps + 0.5 * p, self.edge_r - n_s * ps - 0.5 * p
        n_b = max(1, math.floor((body1 - body0) / p) + 1)
        body = body0 + p * np.arange(n_b)
        right = body[-1] + 0.5 * p + ps * (0.5 + np.arange(n_s))
        centre = np.concatenate([left, body, right])
        group = np.concatenate(
            [np.full(n_s, COL_SELVEDGE), np.full(n_b, COL_BODY), np.full(n_s, COL_SELVEDGE)]
        )
        pitch = np.where(group == COL_BODY, p, ps)
        centre = centre + pitch * np.clip(f.tension_jitter * rng.standard_normal(centre.size), -0.3, 0.3)
        fill = np.where(group == COL_BODY, f.warp_fill, min(1.05, f.warp_fill * 1.12))
        width = pitch * fill * np.clip(1 + f.thickness_jitter * rng.standard_normal(centre.size), 0.5, 1.6)
        level = levels(rng.standard_normal(centre.size))
        self.ends = Ends(centre, width, group.astype(np.int32), level)
        self.col_code = self.column_codes(self.ends, 0, W + 2 * E)
        xs = np.arange(W + 2 * E) - E + 0.5
        self.in_fabric = (xs >= self.edge_l) & (xs < self.edge_r)
        self.col_end = self._nearest_end(self.ends.centre, xs)

    @staticmethod
    def _nearest_end(centre: np.ndarray, xs: np.ndarray) -> np.ndarray:
        mids = 0.5 * (centre[:-1] + centre[1:])
        return np.searchsorted(mids, xs).astype(np.int64)

    def column_codes(
        self,
        ends: Ends,
        k0: int,
        k1: int,
        *,
        missing: np.ndarray | None = None,
        floating: np.ndarray | None = None,
    ) -> np.ndarray:
        """Lookup-table column codes for extended columns [k0, k1) (fabric x = k - ext).

        `missing` (bool per end) removes ends (the weft shows over the background there);
        `floating` (bool per end) puts those ends on top of every pick (a warp float).
        """
        xs = np.arange(k0, k1) - self.ext + 0.5
        keep = np.ones(ends.centre.size, bool) if missing is None else ~missing
        idx_keep = np.flatnonzero(keep)
        near = idx_keep[self._nearest_end(ends.centre[idx_keep], xs)]
        d = (xs - ends.centre[near]) / (0.5 * ends.width[near])
        group = ends.group[near]
        if floating is not None:
            group = np.where(floating[near], COL_WARP_TOP, group)
        reps = np.where(group == COL_BODY, self.repeat_ends, np.where(group == COL_SELVEDGE, 2, 1))
        base = np.select(
            [group == COL_BODY, group == COL_SELVEDGE],
            [self.col_base[COL_BODY], self.col_base[COL_SELVEDGE]],
            self.col_base[COL_WARP_TOP],
        )
        code = base + (((near % reps) * Q + bins(d)) * G + ends.level[near])
        if missing is not None:
            # Columns of a missing end not reached by its (shifted) neighbours show the weft alone.
            nearest_all = self._nearest_end(ends.centre, xs)
            gap = missing[nearest_all] & (np.abs(d) > 1.0)
            code = np.where(gap, self.col_base[COL_NO_WARP], code)
        outside = (xs < self.edge_l) | (xs >= self.edge_r)
        return np.where(outside, self.col_base[COL_BACKGROUND], code).astype(np.int32)

    def _add_hairs(self, rng: np.random.Generator) -> None:
        """Stray surface fibres (hairiness): short thin curved strokes, darker against a backlight."""
        f = self.fabric
        P, n_cols = self.cloud.shape
        count = int(f.hairiness * P * n_cols / 2500)
        if count == 0:
            return
        canvas = np.zeros((P, n_cols), np.uint8)
        length = rng.uniform(6, 30, count)
        start = np.stack([rng.uniform(0, n_cols, count), rng.uniform(0, P, count)], 1)
        heading = rng.uniform(0, np.pi, count)
        bend = rng.normal(0, 0.6, count)
        t = np.linspace(0, 1, 6)[None, :, None]
        ang = heading[:, None] + bend[:, None] * t[..., 0]
        steps = np.stack([np.cos(ang), np.sin(ang)], -1) * (length[:, None, None] / 5)
        pts = start[:, None, :] + np.cumsum(steps, axis=1) - steps[:, :1]
        polys = [np.rint(p * 16).astype(np.int32).reshape(-1, 1, 2) for p in pts]
        cv2.polylines(canvas, polys, False, 255, thickness=1, lineType=cv2.LINE_AA, shift=4)
        sign = -1.0 if f.background == "backlight" else 1.0
        strength = sign * 0.12 * self.mean_level * rng.uniform(0.4, 1.0)
        self.cloud += (canvas.astype(np.float32) * (strength / 255.0)) * self.in_fabric[None, :]

    def _build_banks(self) -> None:
        f, E = self.fabric, self.ext
        n_cols = self.width_px + 2 * E
        rng = generator(self.seed, 2)
        amp = f.slubs * self.mean_level
        # Warp irregularity: per end, smooth along the roll; repeats every `cloud_period` lines.
        self.cloud_period = int(np.clip((1 << 22) // n_cols, 257, 2039)) | 1
        per_end = _cyclic_smooth(
            rng.standard_normal((self.cloud_period, self.ends.centre.size)), 2.5 * f.weft_pitch_px, axis=0
        )
        xs = np.arange(n_cols) - E + 0.5
        d = (xs - self.ends.centre[self.col_end]) / (0.5 * self.ends.width[self.col_end])
        cover = np.clip(np.sqrt(np.clip(1 - d**2, 0, 1)) / 0.45, 0, 1)
        weight = (amp * cover * self.in_fabric).astype(np.float32)
        self.cloud = np.ascontiguousarray(per_end[:, self.col_end] * weight[None, :])
        self._add_hairs(rng)
        # Weft irregularity: one smooth row per pick (picked at random from the bank).
        self.pick_bank = np.ascontiguousarray(
            _cyclic_smooth(rng.standard_normal((509, n_cols)), 4.0 * f.warp_pitch_px, axis=1)
            * (amp * self.in_fabric).astype(np.float32)[None, :]
        )
        # Lighting across the line (image columns).
        W = self.width_px
        u = (np.arange(W) + 0.5) / W - 0.5
        illum = (1 - f.vignetting * (2 * u) ** 2) * (1 + f.illumination_gradient * u)
        streak = np.zeros(W)
        for _ in range(max(1, W // 160)):
            c, s = rng.uniform(0, W), rng.uniform(1.0, 12.0)
            streak += rng.normal(0, 1) * np.exp(-0.5 * ((np.arange(W) - c) / s) ** 2)
        self.illum = (illum * (1 + f.streaks * streak)).astype(np.float32)
        if self.channels == 3:
            self.illum = np.repeat(self.illum[:, None], 3, axis=1)
        # Sensor noise: a bank of signed values split into the part to add and the part to subtract.
        n = np.rint(rng.normal(0, f.noise_sigma, NOISE_BANK + W * self.channels))
        self.noise_add = np.clip(n, 0, 255).astype(np.uint8)
        self.noise_sub = np.clip(-n, 0, 255).astype(np.uint8)
        self._noise_span = NOISE_BANK

    # ---- per-line state -----------------------------------------------------------------------
    def rows(self, y0: int, y1: int) -> Rows:
        f, s = self.fabric, self._streams
        y = np.arange(y0, y1, dtype=np.int64)
        p = f.weft_pitch_px
        disp = 0.6 * f.tension_jitter * p * smooth(s[_T_PICK_POS], y0, y1, 3.0 * p)
        phase = (y + 0.5 + disp) / p
        pick = np.floor(phase).astype(np.int64)
        lo, hi = (int(pick.min()), int(pick.max()) + 1) if pick.size else (0, 1)
        jit = np.clip(f.tension_jitter * s[_T_PICK_JIT].values(lo, hi), -0.3, 0.3)[pick - lo]
        width = p * f.weft_fill * np.clip(1 + f.thickness_jitter * s[_T_PICK_WIDTH].values(lo, hi), 0.5, 1.6)
        d = (phase - pick - 0.5 - jit) * p / (0.5 * width[pick - lo])
        level = levels(s[_T_PICK_LEVEL].values(lo, hi))[pick - lo]
        code = ((pick % self.repeat_picks) * Q + bins(d)) * G + level
        lines_per_m = 1000.0 / self.mm_per_line
        drift = (1 + 0.5 * f.drift * smooth(s[_T_DRIFT], y0, y1, 0.7 * lines_per_m)).astype(np.float32)
        wander = np.clip(smooth(s[_T_WANDER], y0, y1, 0.4 * lines_per_m), -2, 2) * 0.5 * self.wander_px
        bank_row = (s[_T_PICK_BANK].values(lo, hi) * self.pick_bank.shape[0]).astype(np.int64)[pick - lo]
        fringe = (s[_T_FRINGE].values(lo, hi) * self.fringe_px)[pick - lo]
        h = (y.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(self.seed)) >> np.uint64(29)
        noise_off = (h % np.uint64(self._noise_span)).astype(np.int64)
        return Rows(
            y,
            pick,
            d,
            code.astype(np.int32),
            drift,
            np.rint(wander).astype(np.int64),
            bank_row,
            fringe,
            noise_off,
        )

    def row_codes(
        self, pick: np.ndarray, d: np.ndarray, level_from: Rows, kind: int = ROW_NORMAL
    ) -> np.ndarray:
        """Row codes for picks at signed distances `d` (levels taken from `level_from`'s codes)."""
        level = level_from.code % G
        if kind == ROW_NO_WEFT:
            return np.full(pick.shape, self.row_base[ROW_NO_WEFT], np.int32)
        if kind == ROW_WEFT_TOP:
            return (self.row_base[ROW_WEFT_TOP] + bins(d) * G + level).astype(np.int32)
        return (((pick % self.repeat_picks) * Q + bins(d)) * G + level).astype(np.int32)

    # ---- rendering ----------------------------------------------------------------------------
    def scene(self, rows: Rows, x0: int, x1: int, col_code: np.ndarray | None = None) -> np.ndarray:
        """Float32 scene brightness for `rows` x image columns [x0, x1) (before lighting, blur, noise)."""
        codes = self.col_code if col_code is None else col_code
        n, w, E = rows.y.size, x1 - x0, self.ext
        lut_rows = self.lut[rows.code]
        lut_rows *= rows.drift.reshape((n,) + (1,) * (lut_rows.ndim - 1))
        out = np.empty((n, w) + ((3,) if self.channels == 3 else ()), np.float32)
        cuts = np.flatnonzero(np.diff(rows.shift)) + 1
        bounds = [0, *cuts.tolist(), n]
        for r0, r1 in itertools.pairwise(bounds):
            s = int(rows.shift[r0])
            k0, k1 = x0 - s + E, x1 - s + E
            np.take(lut_rows[r0:r1], codes[k0:k1], axis=1, out=out[r0:r1])
            extra = self._cloud_rows(rows.y[r0], r1 - r0, k0, k1)
            extra += self.pick_bank[rows.bank_row[r0:r1], k0:k1]
            out[r0:r1] += extra if self.channels == 1 else extra[..., None]
            self._fringe(out[r0:r1], lut_rows[r0:r1], rows, rows_=(r0, r1), cols=(k0, k1))
        return out

    def _cloud_rows(self, y_first: int, n: int, k0: int, k1: int) -> np.ndarray:
        P = self.cloud_period
        a = int(y_first) % P
        if a + n <= P:
            return self.cloud[a : a + n, k0:k1].copy()
        idx = (a + np.arange(n)) % P
        return self.cloud[idx, k0:k1]

    def _fringe(
        self,
        out: np.ndarray,
        lut_rows: np.ndarray,
        rows: Rows,
        *,
        rows_: tuple[int, int],
        cols: tuple[int, int],
    ) -> None:
        """Cut weft ends sticking out beyond each web edge (one length per pick)."""
        (r0, r1), (k0, k1) = rows_, cols
        if self.fringe_px <= 0 or self.edge_l < -self.ext:
            return
        covered = np.abs(rows.d[r0:r1]) < 0.6
        flen = rows.fringe_px[r0:r1]
        weft = lut_rows[:, self.col_base[COL_NO_WARP]]
        for edge, sign in ((self.edge_l, -1), (self.edge_r, 1)):
            e = math.floor(edge) + self.ext
            b0, b1 = (e - int(self.fringe_px) - 1, e) if sign < 0 else (e, e + int(self.fringe_px) + 1)
            b0, b1 = max(b0, k0), min(b1, k1)
            if b1 <= b0:
                continue
            xs = np.arange(b0, b1) - self.ext + 0.5
            dist = (edge - xs) if sign < 0 else (xs - edge)
            mask = covered[:, None] & (dist[None, :] >= 0) & (dist[None, :] < flen[:, None])
            if not mask.any():
                continue
            band = out[:, b0 - k0 : b1 - k0]
            vals = np.broadcast_to(weft[:, None], band.shape)
            band[mask] = vals[mask]

    def finish(
        self, scene: np.ndarray, rows: Rows, x0: int, *, margins: tuple[int, int, int, int]
    ) -> np.ndarray:
        """Lighting, blur and noise; returns the uint8 image without its margins."""
        m_top, m_bottom, m_left, m_right = margins
        W = self.width_px
        xs0 = x0 - m_left
        scene *= self.illum[xs0 : xs0 + scene.shape[1]]
        np.clip(scene, 0, 255, out=scene)
        k = self.blur_ksize
        img: np.ndarray = cv2.GaussianBlur(
            scene.astype(np.uint8),
            (k, k),
            sigmaX=self.fabric.blur_px,
            sigmaY=0.85 * self.fabric.blur_px,
            borderType=cv2.BORDER_REFLECT_101,
        )
        n, w = img.shape[0] - m_top - m_bottom, img.shape[1] - m_left - m_right
        img = np.ascontiguousarray(img[m_top : m_top + n, m_left : m_left + w])
        ch = self.channels
        offs = rows.noise_off[m_top : m_top + n]
        cols = np.arange(x0 * ch, (x0 + w) * ch)
        idx = offs[:, None] + cols[None, :] if w * ch < W * ch // 4 else None
        if idx is None:
            win_add = np.lib.stride_tricks.sliding_window_view(self.noise_add, W * ch)
            win_sub = np.lib.stride_tricks.sliding_window_view(self.noise_sub, W * ch)
            add = win_add[offs, x0 * ch : (x0 + w) * ch]
            sub = win_sub[offs, x0 * ch : (x0 + w) * ch]
        else:
            add, sub = self.noise_add[idx], self.noise_sub[idx]
        shape = img.shape
        flat = img.reshape(n, w * ch)
        cv2.add(flat, np.ascontiguousarray(add), dst=flat)
        cv2.subtract(flat, np.ascontiguousarray(sub), dst=flat)
        return flat.reshape(shape)

    def render(
        self,
        y0: int,
        y1: int,
        x0: int = 0,
        x1: int | None = None,
        edit: Callable[[np.ndarray, Rows, int], None] | None = None,
    ) -> np.ndarray:
        """Final uint8 pixels of lines [y0, y1) x columns [x0, x1). `edit(scene, rows, sx0)` may
        change the float scene (which spans the requested rectangle plus blur margins, its first
        column being image column `sx0`) before lighting, blur and noise."""
        x1 = self.width_px if x1 is None else x1
        m = self.margin
        ml, mr = min(m, x0), min(m, self.width_px - x1)
        rows = self.rows(y0 - m, y1 + m)
        scene = self.scene(rows, x0 - ml, x1 + mr)
        if edit is not None:
            edit(scene, rows, x0 - ml)
        return self.finish(scene, rows, x0, margins=(m, m, ml, mr))

    # ---- geometry -----------------------------------------------------------------------------
    def fabric_span(self, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        """Image columns of the web's left and right edge (selvedge outside) for lines [y0, y1)."""
        shift = self.rows(y0, y1).shift
        return self.edge_l + shift, self.edge_r + shift

    def interior_x(self) -> tuple[int, int]:
        """Image columns where a defect can be placed on any line (inside the selvedges, any wander)."""
        lo = max(0.0, self.edge_l) + self.selvedge_px + self.wander_px + 4
        hi = min(float(self.width_px), self.edge_r) - self.selvedge_px - self.wander_px - 4
        return math.ceil(lo), math.floor(hi)
