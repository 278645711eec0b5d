"""Defect library files and cut-paste with Poisson blending."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from offline_train.synth.cutpaste import CutPasteSynthesizer, transform_crop
from offline_train.synth.library import DefectCrop, DefectLibrary
from runtime.errors import ConfigError
from tests.unit.test_synth_contract import small_library, weave_tile


def test_library_round_trips_through_a_folder(tmp_path: Path) -> None:
    lib = small_library()
    written = lib.save(tmp_path / "lib")
    assert len(written) == 3
    assert sorted(p.name for p in (tmp_path / "lib").iterdir())[:3] == [
        "broken_end_00000.json",
        "broken_end_00000.png",
        "broken_end_00000_mask.png",
    ]
    back = DefectLibrary.from_folder(tmp_path / "lib")
    assert back.counts() == {"hole": 1, "broken_end": 1, "knot": 1}
    by_origin = {c.origin: c for c in back}
    for crop in lib:
        twin = by_origin[crop.origin]
        assert twin.class_name == crop.class_name
        np.testing.assert_array_equal(twin.image, crop.image)  # PNG is lossless; colour stays BGR
        np.testing.assert_array_equal(twin.mask, crop.mask)


def test_user_folder_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        DefectLibrary.from_folder(tmp_path / "nope")
    folder = tmp_path / "real"
    folder.mkdir()
    with pytest.raises(ConfigError, match="no defect crops"):
        DefectLibrary.from_folder(folder)
    img = weave_tile(32, 32)
    cv2.imwrite(str(folder / "a.png"), img)
    with pytest.raises(ConfigError, match=r"a_mask\.png"):
        DefectLibrary.from_folder(folder)
    mask = np.zeros((32, 32), np.uint8)
    mask[10:20, 10:20] = 255
    cv2.imwrite(str(folder / "a_mask.png"), mask)
    (folder / "a.json").write_text(json.dumps({"class": "smudge"}))
    with pytest.raises(ConfigError, match="smudge"):
        DefectLibrary.from_folder(folder)
    (folder / "a.json").write_text(json.dumps({"class": "hole"}))
    cv2.imwrite(str(folder / "a_mask.png"), np.zeros((32, 32), np.uint8))
    with pytest.raises(ConfigError, match="all zero"):
        DefectLibrary.from_folder(folder)
    cv2.imwrite(str(folder / "a_mask.png"), mask)
    lib = DefectLibrary.from_folder(folder)
    assert lib.counts() == {"hole": 1} and lib.crops[0].mask.sum() == 100


def test_crop_validation() -> None:
    img = weave_tile(16, 16)
    with pytest.raises(ValueError, match="empty"):
        DefectCrop(img, np.zeros((16, 16), bool), "hole")
    with pytest.raises(ValueError, match="mask"):
        DefectCrop(img, np.ones((8, 8), bool), "hole")
    with pytest.raises(ValueError, match="unknown defect class"):
        DefectCrop(img, np.ones((16, 16), bool), "smudge")
    with pytest.raises(ValueError, match="non-empty"):
        CutPasteSynthesizer(DefectLibrary())


def test_pasted_mask_is_the_crops_mask_when_not_scaled() -> None:
    # Unit scale and no tilt: a broken end is only flipped, so its mask is pasted pixel for pixel.
    lib = DefectLibrary([c for c in small_library() if c.class_name == "broken_end"])
    synth = CutPasteSynthesizer(lib, scale_range=(1.0, 1.0), max_tilt_deg=0.0, min_contrast=0.0)
    crop = lib.crops[0]
    ys, xs = np.nonzero(crop.mask)
    for seed in range(8):
        r = synth(weave_tile(192, 96, seed=seed), np.random.default_rng(seed))
        assert r is not None and r.class_name == "broken_end"
        assert r.mask.sum() == crop.mask.sum()
        rys, rxs = np.nonzero(r.mask)
        assert (np.ptp(rys), np.ptp(rxs)) == (np.ptp(ys), np.ptp(xs))  # still vertical: never turned


def test_direction_bound_classes_never_turn_and_others_do() -> None:
    lib = small_library()
    end, hole = lib.of_class("broken_end")[0], lib.of_class("hole")[0]
    rng = np.random.default_rng(0)
    angles_seen = set()
    for _ in range(40):
        _, m = transform_crop(end, rng, (0.75, 1.33), 3.0)
        ys, xs = np.nonzero(m)
        assert int(np.ptp(ys)) > 10 * max(1, int(np.ptp(xs)) - 8)  # tilted at most a few degrees
        _, mh = transform_crop(hole, rng, (1.0, 1.0), 3.0)
        mo = cv2.moments(mh.astype(np.uint8), binaryImage=True)
        axis_deg = np.degrees(0.5 * np.arctan2(2 * mo["mu11"], mo["mu20"] - mo["mu02"]))  # in (-90, 90]
        angles_seen.add(int((axis_deg + 90) // 30))
    assert len(angles_seen) >= 3  # the hole's ellipse lands at many orientations


@pytest.mark.parametrize("mixed", [False, True], ids=["normal", "mixed"])
def test_defect_survives_poisson_blending(mixed: bool) -> None:
    lib = DefectLibrary([c for c in small_library() if c.class_name == "hole"])
    synth = CutPasteSynthesizer(lib, mixed_clone_probability=1.0 if mixed else 0.0, scale_range=(1.0, 1.0))
    for seed in range(6):
        tile = weave_tile(seed=seed)
        r = synth(tile, np.random.default_rng(seed))
        assert r is not None
        ring = cv2.dilate(r.mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~r.mask
        # the pasted hole is brighter than the fabric around it by a clear margin
        assert r.image[r.mask].mean() - r.image[ring].mean() > 25


def test_colour_crops_paste_on_gray_tiles_and_back() -> None:
    lib = DefectLibrary([c for c in small_library() if c.class_name == "broken_end"])  # a BGR crop
    synth = CutPasteSynthesizer(lib)
    gray = synth(weave_tile(seed=1), np.random.default_rng(0))
    colour = synth(weave_tile(seed=1, color=True), np.random.default_rng(0))
    assert gray is not None and gray.image.ndim == 2
    assert colour is not None and colour.image.shape[2] == 3


def test_defect_larger_than_the_tile_is_cut_to_fit() -> None:
    lib = DefectLibrary([c for c in small_library() if c.class_name == "broken_end"])  # 148 px long
    synth = CutPasteSynthesizer(lib, scale_range=(1.0, 1.0))
    r = synth(weave_tile(64, 64, seed=2), np.random.default_rng(0))
    assert r is not None
    ys, _ = np.nonzero(r.mask)
    assert ys.min() == 0 and ys.max() == 63  # runs through the whole tile
