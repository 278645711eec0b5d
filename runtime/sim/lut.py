"""The scene lookup table: brightness of every (line code, column code) pair of a weave.

A column code says which warp end (mod the weave repeat) a column belongs to, where across that end
it lies (one of `Q` bins of the signed distance from the end's centre, in half-widths; beyond +-1 is
the gap to the next end) and the end's brightness level (one of `G`); groups of codes stand for
selvedge ends (plain weave), ends floating over every pick, no warp at all (a broken end) and the
background beyond the web. Line codes do the same for weft picks. From the weave repeat the table
works out which yarn is on top, its cylinder shading, the crimp dip where it dives under its
neighbour, and what shows through the interstices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtime.sim.fabric import FabricSpec

Q = 12  # bins of signed distance from a yarn centre, over [-1.5, 1.5) half-widths
G = 5  # brightness levels per yarn
COL_BODY, COL_SELVEDGE, COL_WARP_TOP, COL_NO_WARP, COL_BACKGROUND = range(5)
ROW_NORMAL, ROW_WEFT_TOP, ROW_NO_WEFT = range(3)


def bins(d: np.ndarray) -> np.ndarray:
    """The distance bin of signed distances `d` (in half-widths) from a yarn centre."""
    return np.clip(np.floor((d + 1.5) * (Q / 3.0)), 0, Q - 1).astype(np.int32)


def bin_centres() -> np.ndarray:
    return (np.arange(Q) + 0.5) * (3.0 / Q) - 1.5


def levels(z: np.ndarray) -> np.ndarray:
    """Brightness level (0..G-1) of standard-normal draws `z`."""
    return np.clip(np.rint(z) + G // 2, 0, G - 1).astype(np.int32)


@dataclass(frozen=True)
class WeaveLUT:
    table: np.ndarray  # float32 (rows, cols) gray or (rows, cols, 3) BGR, +0.5 for rounding
    row_base: dict[int, int]  # first line code of each ROW_* group
    col_base: dict[int, int]  # first column code of each COL_* group
    repeat_picks: int  # line codes repeat every this many picks (even: the selvedge is plain)
    repeat_ends: int


def build_lut(
    f: FabricSpec,
    w: np.ndarray,
    *,
    warp_c: np.ndarray,
    weft_c: np.ndarray,
    bg_c: np.ndarray,
    interstice_c: np.ndarray,
) -> WeaveLUT:
    """The table for fabric `f` with weave repeat `w` and per-channel colours."""
    repeat_picks = math.lcm(w.shape[0], 2)
    repeat_ends = w.shape[1]
    nr_norm = repeat_picks * Q * G
    row_base = {ROW_NORMAL: 0, ROW_WEFT_TOP: nr_norm, ROW_NO_WEFT: nr_norm + Q * G}
    nr = nr_norm + Q * G + 1
    cb = repeat_ends * Q * G
    col_base = {
        COL_BODY: 0,
        COL_SELVEDGE: cb,
        COL_WARP_TOP: cb + 2 * Q * G,
        COL_NO_WARP: cb + 3 * Q * G,
        COL_BACKGROUND: cb + 3 * Q * G + 1,
    }
    nc = cb + 3 * Q * G + 2
    # Attributes of every row code and every column code.
    r = np.arange(nr)
    r_kind = np.where(r < nr_norm, ROW_NORMAL, np.where(r < nr_norm + Q * G, ROW_WEFT_TOP, ROW_NO_WEFT))
    rr = np.where(r_kind == ROW_WEFT_TOP, r - nr_norm, r)
    r_j, r_bin, r_lev = rr // (Q * G), (rr // G) % Q, rr % G
    r_j = np.where(r_kind == ROW_NORMAL, r_j, 0)
    c = np.arange(nc)
    c_kind = np.select(
        [c < cb, c < cb + 2 * Q * G, c < cb + 3 * Q * G, c == cb + 3 * Q * G],
        [COL_BODY, COL_SELVEDGE, COL_WARP_TOP, COL_NO_WARP],
        COL_BACKGROUND,
    )
    cc = np.select([c_kind == COL_SELVEDGE, c_kind == COL_WARP_TOP], [c - cb, c - cb - 2 * Q * G], c)
    c_i, c_bin, c_lev = cc // (Q * G), (cc // G) % Q, cc % G
    centres = bin_centres()
    dr = np.where(r_kind == ROW_NO_WEFT, 0.0, centres[r_bin])[:, None]
    dc = np.where(c_kind >= COL_NO_WARP, 0.0, centres[c_bin])[None, :]
    a = np.sqrt(np.clip(1 - dc**2, 0, 1)) * (c_kind[None, :] < COL_NO_WARP)
    b = np.sqrt(np.clip(1 - dr**2, 0, 1)) * (r_kind[:, None] != ROW_NO_WEFT)
    rj, ci = r_j[:, None], c_i[None, :]
    body = c_kind[None, :] == COL_BODY
    R, C = w.shape

    def pat(j: np.ndarray, i: np.ndarray) -> np.ndarray:
        return np.where(body, w[j % R, i % C], (i + j) % 2 == 0)

    top = pat(rj, ci)
    warp_prev, warp_next = pat(rj - 1, ci), pat(rj + 1, ci)
    weft_prev, weft_next = ~pat(rj, ci - 1), ~pat(rj, ci + 1)
    no_dips_warp = (c_kind[None, :] == COL_WARP_TOP) | (r_kind[:, None] != ROW_NORMAL)
    no_dips_weft = (c_kind[None, :] == COL_NO_WARP) | (r_kind[:, None] == ROW_WEFT_TOP)
    warp_prev, warp_next = warp_prev | no_dips_warp, warp_next | no_dips_warp
    weft_prev, weft_next = weft_prev | no_dips_weft, weft_next | no_dips_weft
    top = np.where(r_kind[:, None] == ROW_WEFT_TOP, False, top)
    top = np.where(r_kind[:, None] == ROW_NO_WEFT, True, top)
    top = np.where(c_kind[None, :] == COL_WARP_TOP, True, top)
    top = np.where(c_kind[None, :] == COL_NO_WARP, False, top)
    dip_w = f.crimp * np.clip(np.abs(dr), 0, 1) ** 2 * np.where(dr < 0, ~warp_prev, ~warp_next)
    dip_f = f.crimp * np.clip(np.abs(dc), 0, 1) ** 2 * np.where(dc < 0, ~weft_prev, ~weft_next)
    gain_c = 1.0 + f.shade_jitter * (c_lev[None, :] - G // 2)
    gain_r = 1.0 + f.shade_jitter * (r_lev[:, None] - G // 2)
    float_boost = np.where(c_kind[None, :] == COL_WARP_TOP, 1.08, 1.0)
    warp_shade = gain_c * (0.62 + 0.38 * a) * (1 - dip_w) * float_boost
    weft_shade = (
        gain_r * (0.62 + 0.38 * b) * (1 - dip_f) * np.where(r_kind[:, None] == ROW_WEFT_TOP, 1.08, 1.0)
    )
    # A yarn with nothing crossing it is not flattened: it covers less (a gap shows through).
    loose_warp = (r_kind[:, None] == ROW_NO_WEFT) & (c_kind[None, :] != COL_BACKGROUND)
    loose_weft = (c_kind[None, :] == COL_NO_WARP) & (r_kind[:, None] != ROW_NO_WEFT)
    cw = np.where(loose_warp, np.clip((a - 0.35) / 0.4, 0, 1), np.clip(a / 0.45, 0, 1))[..., None]
    cf = np.where(loose_weft, np.clip((b - 0.35) / 0.4, 0, 1), np.clip(b / 0.45, 0, 1))[..., None]
    warp_v = warp_shade[..., None] * warp_c
    weft_v = weft_shade[..., None] * weft_c
    under = 0.72
    inter = interstice_c
    v_warp_top = cw * warp_v + (1 - cw) * (cf * weft_v * under + (1 - cf) * inter)
    v_weft_top = cf * weft_v + (1 - cf) * (cw * warp_v * under + (1 - cw) * inter)
    lut = np.where(top[..., None], v_warp_top, v_weft_top)
    lut[:, c_kind == COL_BACKGROUND] = bg_c
    lut += 0.5  # rounding for the float -> uint8 truncation
    table = lut.astype(np.float32) if warp_c.size == 3 else lut[..., 0].astype(np.float32)
    return WeaveLUT(np.ascontiguousarray(table), row_base, col_base, repeat_picks, repeat_ends)
