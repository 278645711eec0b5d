"""Random sequences addressed by index, so any stretch of the roll can be rendered on its own.

Everything that varies along the web (pick spacing, brightness drift, edge wander, defect
placement) is a function of an integer index (line, pick or chunk) drawn from these streams, never
from a generator that advances with each call. That is why the same seed gives the same web
however it is cut into blocks.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

PAGE = 4096


def _page_key(page: int) -> int:
    """Pages may be negative (lines before the roll start); spawn keys must not."""
    return 2 * page if page >= 0 else -2 * page - 1


def generator(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for (seed, key...)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=tuple(key))))


class IndexedNoise:
    """Standard-normal (or uniform [0, 1)) values at integer indices, generated page by page."""

    def __init__(self, seed: int, tag: int, *, uniform: bool = False, cache_pages: int = 8) -> None:
        self.seed = seed
        self.tag = tag
        self.uniform = uniform
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_pages = cache_pages

    def _page(self, page: int) -> np.ndarray:
        arr = self._cache.get(page)
        if arr is None:
            rng = generator(self.seed, self.tag, _page_key(page))
            arr = rng.random(PAGE) if self.uniform else rng.standard_normal(PAGE)
            self._cache[page] = arr
            if len(self._cache) > self._cache_pages:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(page)
        return arr

    def values(self, start: int, stop: int) -> np.ndarray:
        """Values at indices [start, stop) (float64)."""
        if stop <= start:
            return np.zeros(0)
        p0, p1 = start // PAGE, (stop - 1) // PAGE
        parts = [self._page(p) for p in range(p0, p1 + 1)]
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
        off = start - p0 * PAGE
        return flat[off : off + (stop - start)]


def smooth(noise: IndexedNoise, start: int, stop: int, stride: float) -> np.ndarray:
    """A smooth random curve at [start, stop): knots every `stride` indices, smoothstep between."""
    pos = np.arange(start, stop, dtype=np.float64) / stride
    k = np.floor(pos).astype(np.int64)
    t = pos - k
    t = t * t * (3.0 - 2.0 * t)
    if k.size == 0:
        return pos
    knots = noise.values(int(k[0]), int(k[-1]) + 2)
    kk = k - k[0]
    return knots[kk] * (1.0 - t) + knots[kk + 1] * t
