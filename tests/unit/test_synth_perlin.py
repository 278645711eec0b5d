"""Perlin noise, blob masks and the Perlin stain / contamination synthesizers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from offline_train.synth.perlin import PerlinSynthesizer, grid_shuffle, perlin_field, perlin_noise
from tests.unit.test_synth_contract import weave_tile


def test_noise_is_smooth_bounded_and_reproducible() -> None:
    a = perlin_noise((200, 256), (4, 8), np.random.default_rng(3), angle_deg=30.0)
    b = perlin_noise((200, 256), (4, 8), np.random.default_rng(3), angle_deg=30.0)
    c = perlin_noise((200, 256), (4, 8), np.random.default_rng(4), angle_deg=30.0)
    assert a.shape == (200, 256) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert -1.05 <= a.min() < -0.2 and 0.2 < a.max() <= 1.05
    # smooth: neighbouring pixels differ by a small fraction of the range
    assert np.abs(np.diff(a, axis=0)).max() < 0.1 and np.abs(np.diff(a, axis=1)).max() < 0.1


def test_finer_lattice_gives_finer_noise() -> None:
    rng = np.random.default_rng(0)

    def roughness(res: int) -> float:
        return float(
            np.mean(
                [np.abs(np.diff(perlin_noise((256, 256), (res, res), rng), axis=1)).mean() for _ in range(8)]
            )
        )

    assert roughness(2) < roughness(8) < roughness(32)


def test_rotation_turns_stripes() -> None:
    # One cell down, many across: the field varies mostly along x; rotated 90 degrees, mostly along y.
    rng = np.random.default_rng(1)
    flat = perlin_noise((256, 256), (1, 16), rng, angle_deg=0.0)
    turned = perlin_noise((256, 256), (1, 16), rng, angle_deg=90.0)
    dx, dy = np.abs(np.diff(flat, axis=1)).mean(), np.abs(np.diff(flat, axis=0)).mean()
    tx, ty = np.abs(np.diff(turned, axis=1)).mean(), np.abs(np.diff(turned, axis=0)).mean()
    assert dx > 3 * dy and ty > 3 * tx


def test_thresholded_field_gives_blobs_of_varied_size() -> None:
    rng = np.random.default_rng(2)
    areas = [(perlin_field((256, 256), rng) > 0.5).mean() for _ in range(60)]
    assert np.mean(np.array(areas) > 0) > 0.9  # empty masks are rare (and redrawn)
    assert 0.01 < np.median(areas) < 0.2


def test_grid_shuffle_permutes_cells() -> None:
    img = weave_tile(128, 128, seed=4)
    out = grid_shuffle(img, 16, np.random.default_rng(0))
    assert out.shape == img.shape
    np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(img, axis=None))  # same pixels
    assert not np.array_equal(out, img)
    cells_in = {img[y : y + 16, x : x + 16].tobytes() for y in range(0, 128, 16) for x in range(0, 128, 16)}
    rotations = {
        np.rot90(out[y : y + 16, x : x + 16], k).tobytes()
        for y in range(0, 128, 16)
        for x in range(0, 128, 16)
        for k in range(4)
    }
    assert cells_in <= rotations  # every input cell is somewhere in the output, turned by k * 90 degrees
    odd = grid_shuffle(weave_tile(100, 70, seed=5, color=True), 32, np.random.default_rng(0))
    assert odd.shape == (100, 70, 3)


def test_class_decides_the_default_source() -> None:
    assert PerlinSynthesizer("stain").source == "brightness"
    assert PerlinSynthesizer("contamination").source == "texture"
    assert PerlinSynthesizer("hole", source="brightness").classes == ("hole",)
    with pytest.raises(ValueError, match="unknown defect class"):
        PerlinSynthesizer("smudge")
    with pytest.raises(ValueError, match="delta_range"):
        PerlinSynthesizer("stain", delta_range=(0.0, 1.0))


def test_blobs_respect_area_count_and_size_limits() -> None:
    synth = PerlinSynthesizer("contamination", max_blobs=2, min_area_px=30, max_area_fraction=0.2)
    for seed in range(12):
        tile = weave_tile(seed=seed)
        r = synth(tile, np.random.default_rng(seed))
        if r is None:
            continue
        n, _, stats, _ = cv2.connectedComponentsWithStats(r.mask.astype(np.uint8), connectivity=8)
        assert 1 <= n - 1 <= 2
        assert stats[1:, cv2.CC_STAT_AREA].min() >= 30
        assert r.mask.mean() <= 0.2


def test_stain_keeps_the_weave_visible_and_shifts_brightness() -> None:
    synth = PerlinSynthesizer("stain", delta_range=(1.0, 1.0))
    shifts = []
    for seed in range(10):
        tile = weave_tile(seed=seed, twill=True)
        r = synth(tile, np.random.default_rng(seed))
        if r is None:
            continue
        shifts.append(r.image[r.mask].mean() / tile[r.mask].mean())
        # the weave is still there: the fine texture inside the blob follows the clean fabric's
        inner = cv2.erode(r.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if inner.sum() < 50:
            continue

        def texture(img: np.ndarray) -> np.ndarray:
            f = img.astype(np.float32)
            return f - cv2.GaussianBlur(f, (5, 5), 1.5)

        assert np.corrcoef(texture(tile)[inner], texture(r.image)[inner])[0, 1] > 0.7
    assert shifts and all(s < 0.92 or s > 1.08 for s in shifts)


def test_texture_bank_supplies_the_foreign_texture() -> None:
    # A flat bank texture: with full opacity the blob interior becomes (almost) flat.
    flat = np.full((40, 40), 200, np.uint8)
    synth = PerlinSynthesizer(
        "contamination", texture_bank=[flat], bank_probability=1.0, delta_range=(1.0, 1.0)
    )
    tile = weave_tile(seed=1)
    r = synth(tile, np.random.default_rng(0))
    assert r is not None
    inside = r.image[r.mask]
    _, counts = np.unique(inside, return_counts=True)
    assert counts.max() > 0.8 * inside.size  # one flat (jittered) level, apart from the blob's rim
