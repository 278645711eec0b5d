from __future__ import annotations

import itertools

import numpy as np
import pytest

from runtime.tiler import Tiler, TileWindow, axis_starts


@pytest.mark.parametrize("length", [256, 257, 300, 480, 481, 1000, 4096])
def test_tiles_cover_every_pixel_and_stay_inside(length: int) -> None:
    starts = axis_starts(length, 256, 32)
    covered = np.zeros(length, bool)
    for s in starts:
        assert s >= 0 and s + 256 <= length
        covered[s : s + 256] = True
    assert covered.all()
    # neighbours overlap by at least the configured overlap (the last one may overlap more)
    assert all(b - a <= 256 - 32 for a, b in itertools.pairwise(starts))


def test_last_tile_shifts_inward_instead_of_padding() -> None:
    assert axis_starts(500, 256, 32) == [0, 224, 244]


def test_small_image_is_padded_to_one_tile() -> None:
    tiler = Tiler(64, 8)
    img = np.arange(40 * 50, dtype=np.uint8).reshape(40, 50)
    wins = tiler.layout(50, 40)
    assert wins == [TileWindow(0, 0, 64)]
    tiles = tiler.cut(img, wins)
    assert tiles.shape == (1, 64, 64)
    np.testing.assert_array_equal(tiles[0, :40, :50], img)
    np.testing.assert_array_equal(tiles[0, 45, :50], img[34])  # mirrored: row 40 + k shows row 39 - k
    np.testing.assert_array_equal(tiles[0, :40, 55], img[:, 44])


def test_inverse_map_is_exact() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (600, 900), dtype=np.uint8)
    tiler = Tiler(256, 32)
    wins = tiler.layout(900, 600)
    tiles = tiler.cut(img, wins)
    for tile, win in zip(tiles, wins, strict=True):
        # a box around a single pixel in tile coords maps onto the same pixel in the image
        ty, tx = rng.integers(0, 256, 2)
        box = np.array([[tx, ty, tx + 1, ty + 1]], np.float32)
        x0, y0, _, _ = Tiler.to_image(box, win)[0].astype(int)
        assert img[y0, x0] == tile[ty, tx]


def test_colour_tiles_keep_channels() -> None:
    img = np.zeros((300, 300, 3), np.uint8)
    img[..., 2] = 7
    tiles = Tiler(128, 16).cut(img, Tiler(128, 16).layout(300, 300))
    assert tiles.shape[1:] == (128, 128, 3) and (tiles[..., 2] == 7).all()


def test_bad_overlap_is_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="overlap_px"):
        Tiler(64, 64)


def test_batches() -> None:
    wins = Tiler(64, 0).layout(64 * 5, 64)
    assert [len(b) for b in Tiler.batches(wins, 2)] == [2, 2, 1]
