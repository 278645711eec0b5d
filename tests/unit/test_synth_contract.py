"""The contract every defect synthesizer keeps, checked over many seeds on gray and colour fabric.

A synthetic defect is only a good training sample when its label is true: every pixel it changed
lies within a small dilation of its mask and inside the boxes the dataset builder draws from that
mask; the output keeps the input's shape and dtype; the same seed gives the same sample; and a
sample too faint to be a defect is dropped (None), never labelled.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest

from offline_train.dataset.labels import boxes_from_mask
from offline_train.synth.base import MASK_DILATION_PX, Synthesizer, SynthResult
from offline_train.synth.blobs import BlobSynthesizer
from offline_train.synth.cutpaste import CutPasteSynthesizer
from offline_train.synth.library import DefectCrop, DefectLibrary
from offline_train.synth.perlin import PerlinSynthesizer
from offline_train.synth.registry import default_synthesizers
from offline_train.synth.streaks import StreakSynthesizer
from runtime.sim.defects import DEFECT_CLASSES

SEEDS = list(range(24))


def weave_tile(
    h: int = 128, w: int = 128, *, seed: int = 0, twill: bool = False, color: bool = False
) -> np.ndarray:
    """A woven-looking tile at model resolution: ~1 px yarns, per-yarn shade, sensor noise, slight blur."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    pattern = (((x - y) % 3) == 0) if twill else ((x + y) % 2 == 0)
    img = (
        rng.uniform(90, 170)
        + 35.0 * (pattern - 0.5)
        + rng.normal(0, 8, w)[None, :]
        + rng.normal(0, 8, h)[:, None]
    )
    img = cv2.GaussianBlur((img + rng.normal(0, 5, (h, w))).astype(np.float32), (3, 3), 0.6)
    gray = np.clip(img, 0, 255).astype(np.uint8)
    if not color:
        return gray
    tint = rng.uniform(0.6, 1.2, 3)
    return np.clip(gray[:, :, None] * tint, 0, 255).astype(np.uint8)


def small_library() -> DefectLibrary:
    """Hand-made crops: a bright hole, a one-yarn broken end, a dark knot (on other fabrics)."""
    crops = []
    base = weave_tile(48, 48, seed=11)
    m = np.zeros((48, 48), np.uint8)
    cv2.ellipse(m, (24, 24), (9, 6), 30, 0, 360, 1, -1)
    hole = base.copy()
    hole[m > 0] = 235
    crops.append(DefectCrop(hole, m > 0, "hole", "test:hole"))
    base = weave_tile(160, 24, seed=12, color=True)
    m2 = np.zeros((160, 24), bool)
    m2[6:154, 11:13] = True
    end = base.copy()
    end[m2] = (30, 30, 30)
    crops.append(DefectCrop(end, m2, "broken_end", "test:end"))
    base = weave_tile(32, 32, seed=13)
    m3 = np.zeros((32, 32), np.uint8)
    cv2.circle(m3, (16, 16), 4, 1, -1)
    knot = base.copy()
    knot[m3 > 0] = 40
    crops.append(DefectCrop(knot, m3 > 0, "knot", "test:knot"))
    return DefectLibrary(crops)


SYNTHS: dict[str, Callable[[], Synthesizer]] = {
    "perlin_stain": lambda: PerlinSynthesizer("stain"),
    "perlin_contamination": lambda: PerlinSynthesizer("contamination"),
    "perlin_contamination_bank": lambda: PerlinSynthesizer(
        "contamination", texture_bank=[weave_tile(64, 80, seed=99, twill=True)], bank_probability=1.0
    ),
    "streak_broken_end": lambda: StreakSynthesizer("broken_end"),
    "streak_broken_pick": lambda: StreakSynthesizer("broken_pick"),
    "cutpaste": lambda: CutPasteSynthesizer(small_library()),
    "blob_knot": lambda: BlobSynthesizer("knot"),
}


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a != b
    return d if d.ndim == 2 else d.any(axis=2)


def assert_label_true(tile: np.ndarray, result: SynthResult) -> None:
    """Every changed pixel is near the mask and inside a box the dataset builder draws from it."""
    assert result.image.shape == tile.shape and result.image.dtype == tile.dtype == np.uint8
    assert result.mask.dtype == np.bool_ and result.mask.shape == tile.shape[:2]
    assert result.mask.any()
    diff = changed(tile, result.image)
    k = 2 * MASK_DILATION_PX + 1
    near = cv2.dilate(result.mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    assert not (diff & ~near).any(), "pixels changed outside the dilated mask"
    covered = np.zeros_like(diff)
    for x0, y0, x1, y1 in boxes_from_mask(result.mask):  # the builder's defaults
        covered[y0:y1, x0:x1] = True
    assert not (diff & ~covered).any(), "pixels changed outside every label box"
    assert diff.any(), "a defect that changes nothing"


@pytest.mark.parametrize("color", [False, True], ids=["gray", "colour"])
@pytest.mark.parametrize("which", sorted(SYNTHS))
def test_changes_stay_inside_the_label_over_many_seeds(which: str, color: bool) -> None:
    synth = SYNTHS[which]()
    made = 0
    for seed in SEEDS:
        tile = weave_tile(112, 144, seed=seed, twill=bool(seed % 2), color=color)
        before = tile.copy()
        result = synth(tile, np.random.default_rng(seed))
        np.testing.assert_array_equal(tile, before)  # the input is never modified
        if result is None:
            continue
        made += 1
        assert_label_true(tile, result)
        assert result.class_name in synth.classes and result.class_name in DEFECT_CLASSES
        assert result.synthesizer == synth.name
    assert made >= 0.8 * len(SEEDS), f"{which}: only {made}/{len(SEEDS)} samples on ordinary fabric"


@pytest.mark.parametrize("which", sorted(SYNTHS))
def test_same_seed_same_sample_and_other_seeds_differ(which: str) -> None:
    synth = SYNTHS[which]()
    tile = weave_tile(seed=5, color=True)
    a = synth(tile, np.random.default_rng(1234))
    b = synth(tile, np.random.default_rng(1234))
    c = synth(tile, np.random.default_rng(4321))
    assert a is not None and b is not None and c is not None
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.class_name == b.class_name
    assert not np.array_equal(a.mask, c.mask)


@pytest.mark.parametrize("which", ["perlin_stain", "perlin_contamination", "cutpaste", "blob_knot"])
def test_every_kept_blob_is_above_the_contrast_floor(which: str) -> None:
    synth = SYNTHS[which]()
    rng = np.random.default_rng(0)
    kept = 0
    for seed in SEEDS[:12]:
        tile = weave_tile(seed=seed)
        if seed % 3 == 0:  # busy fabric: a change of a few gray levels hides in it
            tile = np.clip(tile + rng.normal(0, 30, tile.shape), 0, 255).astype(np.uint8)
        result = synth(tile, np.random.default_rng(seed))
        if result is None:
            continue
        kept += 1
        floor = synth.min_contrast  # type: ignore[attr-defined]
        if which.startswith(("perlin", "blob")):
            floor = max(floor, synth.relative_contrast * tile.std())  # type: ignore[attr-defined]
        diff = np.abs(result.image.astype(int) - tile.astype(int))
        n, labels = cv2.connectedComponents(result.mask.astype(np.uint8), connectivity=8)
        for k in range(1, n):  # each blob is a box of its own: each must show
            assert diff[labels == k].mean() >= floor
    assert kept >= 6


def test_streak_core_is_above_the_contrast_floor_on_busy_fabric() -> None:
    synth = StreakSynthesizer("broken_end", halo_probability=0.0, width_px_range=(2.0, 3.0))
    rng = np.random.default_rng(1)
    for seed in range(12):
        tile = np.clip(weave_tile(seed=seed) + rng.normal(0, 30, (128, 128)), 0, 255).astype(np.uint8)
        result = synth(tile, np.random.default_rng(seed))
        if result is None:
            continue
        core = cv2.erode(result.mask.astype(np.uint8), np.ones((1, 3), np.uint8)).astype(bool)
        diff = np.abs(result.image.astype(int) - tile.astype(int))
        assert diff[core].mean() >= 0.5 * tile.std()


def test_faint_samples_are_rejected_not_labelled() -> None:
    black = np.zeros((128, 128), np.uint8)  # a stain cannot darken black, nor a gain lighten it
    assert all(PerlinSynthesizer("stain")(black, np.random.default_rng(s)) is None for s in range(6))
    # A floor no blend can reach: every try is rejected.
    tile = weave_tile(seed=3)
    assert PerlinSynthesizer("contamination", min_contrast=300.0)(tile, np.random.default_rng(0)) is None
    assert StreakSynthesizer("broken_pick", min_contrast=300.0)(tile, np.random.default_rng(0)) is None
    assert CutPasteSynthesizer(small_library(), min_contrast=300.0)(tile, np.random.default_rng(0)) is None


def test_default_set_names_classes_and_protocol() -> None:
    plain = default_synthesizers()
    names = [s.name for s in plain]
    assert names == [
        "perlin_stain",
        "perlin_contamination",
        "streak_broken_end",
        "streak_broken_pick",
        "blob_knot",
    ]
    with_lib = default_synthesizers(small_library())
    assert [s.name for s in with_lib] == [*names, "cutpaste"]
    assert with_lib[-1].classes == ("hole", "broken_end", "knot")
    for s in with_lib:
        assert isinstance(s, Synthesizer)
        assert set(s.classes) <= set(DEFECT_CLASSES)
    assert [s.name for s in default_synthesizers(DefectLibrary())] == names  # an empty library adds nothing


@pytest.mark.parametrize(
    "bad", [np.zeros((64, 64), np.float32), np.zeros((64, 64, 4), np.uint8), np.zeros((4, 64), np.uint8)]
)
def test_bad_tiles_are_refused_with_the_reason(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"tile|uint8"):
        PerlinSynthesizer("stain")(bad, np.random.default_rng(0))


def test_blobs_are_a_few_pixels_across_like_knots_and_neps() -> None:
    synth = BlobSynthesizer("knot", size_px_range=(2.0, 6.0), cluster_probability=0.0)
    areas = []
    for seed in SEEDS:
        r = synth(weave_tile(seed=seed), np.random.default_rng(seed))
        if r is not None:
            x0, y0, x1, y1 = boxes_from_mask(r.mask, min_area_px=1)[0]
            areas.append(int(r.mask.sum()))
            assert max(x1 - x0, y1 - y0) <= 8 and r.class_name == "knot"
    assert len(areas) >= 0.8 * len(SEEDS) and max(areas) <= 50
