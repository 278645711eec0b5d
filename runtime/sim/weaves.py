"""Weave structures as interlacing repeats.

A weave is a boolean matrix `W[pick % R, end % C]`: True where the warp yarn (running along the
machine direction, one per group of columns) lies over the weft yarn (running across the web, one
per group of lines). Rows are picks (weft yarns), columns are ends (warp yarns).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _plain() -> np.ndarray:
    j, i = np.mgrid[0:2, 0:2]
    return np.asarray((i + j) % 2 == 0)


def _twill(over: int, under: int) -> Callable[[], np.ndarray]:
    """Warp over `over` picks and under `under`, stepping one end per pick (a Z twill)."""

    def make() -> np.ndarray:
        n = over + under
        j, i = np.mgrid[0:n, 0:n]
        return np.asarray((i - j) % n < over)

    return make


def _satin5() -> np.ndarray:
    """Warp-faced 5-end satin, move 2: one weft-over crossing per pick, scattered."""
    j, i = np.mgrid[0:5, 0:5]
    return np.asarray(i != (2 * j) % 5)


def _basket() -> np.ndarray:
    """2/2 basket (hopsack): pairs of ends and pairs of picks interlace as one."""
    j, i = np.mgrid[0:4, 0:4]
    return np.asarray((i // 2 + j // 2) % 2 == 0)


def _rib() -> np.ndarray:
    """Warp rib 2/2: each end goes over two picks and under two; ribs run across the web."""
    j, i = np.mgrid[0:4, 0:2]
    return np.asarray((i + j // 2) % 2 == 0)


def _herringbone() -> np.ndarray:
    """2/2 twill that reverses direction every 8 ends (a broken twill, repeat 16 ends): vertical
    bands of opposite diagonals meeting in chevrons."""
    j, i = np.mgrid[0:4, 0:16]
    z = (i - j) % 4 < 2
    s = (i + j + 1) % 4 < 2
    return np.asarray(np.where(i < 8, z, s))


WEAVES: dict[str, Callable[[], np.ndarray]] = {
    "plain": _plain,
    "twill_2_1": _twill(2, 1),
    "twill_2_2": _twill(2, 2),
    "twill_3_1": _twill(3, 1),
    "satin_5": _satin5,
    "basket": _basket,
    "rib": _rib,
    "herringbone": _herringbone,
}


def weave_pattern(name: str) -> np.ndarray:
    """The interlacing repeat of weave `name` (bool, picks x ends)."""
    try:
        make = WEAVES[name]
    except KeyError:
        raise ValueError(f"unknown weave {name!r}; choose one of {', '.join(WEAVES)}") from None
    return make().astype(bool)
