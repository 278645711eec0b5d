"""Warp and weft streaks: broken end runs along the machine direction (rows), broken pick across."""

from __future__ import annotations

import numpy as np
import pytest

from offline_train.synth.streaks import StreakSynthesizer
from tests.unit.test_synth_contract import weave_tile


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("color", [False, True])
def test_broken_end_is_a_long_thin_vertical_line(color: bool) -> None:
    synth = StreakSynthesizer("broken_end")
    for seed in range(16):
        tile = weave_tile(160, 128, seed=seed, color=color)
        r = synth(tile, np.random.default_rng(seed))
        assert r is not None and r.class_name == "broken_end"
        x0, y0, x1, y1 = _box(r.mask)
        assert y1 - y0 >= 0.5 * 160  # over most or all of the tile
        assert x1 - x0 <= 3 + 2 + 2 * 2.0 + 2  # width + halo + waviness + tilt
        per_row = r.mask.sum(axis=1)
        rows = per_row[per_row > 0]
        assert rows.max() <= 6 and rows.min() >= 1


def test_broken_pick_is_the_same_line_across() -> None:
    synth = StreakSynthesizer("broken_pick")
    for seed in range(16):
        tile = weave_tile(128, 160, seed=seed)
        r = synth(tile, np.random.default_rng(seed))
        assert r is not None and r.class_name == "broken_pick"
        x0, y0, x1, y1 = _box(r.mask)
        assert x1 - x0 >= 0.5 * 160 and y1 - y0 <= 11


def test_line_shows_against_the_weave_on_its_core() -> None:
    synth = StreakSynthesizer("broken_end", halo_probability=0.0, width_px_range=(1.0, 1.0))
    lighter = darker = 0
    for seed in range(20):
        tile = weave_tile(seed=seed)
        r = synth(tile, np.random.default_rng(seed))
        assert r is not None
        d = r.image.astype(int) - tile.astype(int)
        core = d[r.mask]
        assert np.abs(core).mean() >= 0.5 * synth.min_contrast  # mask edges have partial cover
        lighter += int(core.mean() > 0)
        darker += int(core.mean() < 0)
    assert lighter and darker  # both a lighter backing and a darker gap occur


def test_direction_follows_the_class_or_is_given() -> None:
    assert StreakSynthesizer("broken_end").direction == "warp"
    assert StreakSynthesizer("broken_pick").direction == "weft"
    assert StreakSynthesizer("thin_place", direction="weft").classes == ("thin_place",)
    with pytest.raises(ValueError, match="direction"):
        StreakSynthesizer("thin_place")


def test_too_narrow_tile_returns_none() -> None:
    narrow = weave_tile(128, 8, seed=0)
    assert (
        StreakSynthesizer("broken_end", width_px_range=(3.0, 3.0))(narrow, np.random.default_rng(0)) is None
    )
