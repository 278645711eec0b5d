"""The defect library from the synthetic loom, and every synthesizer on the simulator's own fabric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from offline_train.synth.cutpaste import CutPasteSynthesizer
from offline_train.synth.library import DefectCrop, DefectLibrary
from offline_train.synth.registry import default_synthesizers
from runtime.preprocess import resample_to_model
from runtime.sim.fabric import FABRICS
from runtime.sim.loom import render_web
from tests.unit.test_synth_contract import assert_label_true

MODEL_MM_PER_PX = 0.4


@pytest.fixture(scope="module")
def sim_library() -> DefectLibrary:
    return DefectLibrary.from_simulator(
        1,
        np.random.default_rng(7),
        MODEL_MM_PER_PX,
        classes=("hole", "broken_end", "thin_place", "contamination"),
        width_px=768,
        length_m=0.4,
        defects_per_m=25.0,
        max_webs=30,
    )


@pytest.fixture(scope="module")
def sim_tiles() -> list[np.ndarray]:
    """Defect-free 128 px tiles of the simulator's fabrics (gray and colour) at the model's resolution."""
    tiles = []
    for k, name in enumerate(("plain_gray", "twill_2_2_gray", "denim_color", "satin_5_gray")):
        pixels, _, truth = render_web(FABRICS[name], length_m=0.06, width_px=768, seed=k, defects_per_m=0.0)
        assert not truth
        small = resample_to_model(pixels, 0.1 / MODEL_MM_PER_PX, 0.1 / MODEL_MM_PER_PX)
        x0 = (small.shape[1] - 128) // 2  # fabric, not the background beyond the web edge
        tiles.append(np.ascontiguousarray(small[:128, x0 : x0 + 128]))
    return tiles


def test_simulator_crops_are_at_model_resolution_with_their_own_contrast(sim_library: DefectLibrary) -> None:
    assert sim_library.counts() == {"hole": 1, "broken_end": 1, "thin_place": 1, "contamination": 1}
    for crop in sim_library:
        assert crop.origin.startswith("sim:")
        assert crop.mask.any() and crop.mask.shape == crop.image.shape[:2]
        # cut with a margin of fabric around the defect, never longer than max_crop_px (256)
        ys, xs = np.nonzero(crop.mask)
        assert ys.min() >= 1 or xs.min() >= 1
        assert max(crop.image.shape[:2]) <= 256 + 8
        assert crop.contrast is not None and crop.contrast > 0.5
    end = sim_library.of_class("broken_end")[0]
    ys, xs = np.nonzero(end.mask)
    assert np.ptp(ys) > 4 * max(1, int(np.ptp(xs)))  # a broken end stays a thin vertical line at 0.4 mm/px


def test_simulator_library_round_trips_with_contrast(sim_library: DefectLibrary, tmp_path: Path) -> None:
    sim_library.save(tmp_path)
    back = DefectLibrary.from_folder(tmp_path)
    assert back.counts() == sim_library.counts()
    by_origin = {c.origin: c for c in back}
    for a in sim_library:
        b = by_origin[a.origin]
        assert a.class_name == b.class_name
        assert b.contrast == pytest.approx(a.contrast, abs=1e-3)
        np.testing.assert_array_equal(a.image, b.image)


def test_quiet_crops_are_judged_against_their_own_contrast() -> None:
    img = np.full((16, 16), 100, np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    lib = DefectLibrary([DefectCrop(img, mask, "thin_place")])
    synth = CutPasteSynthesizer(lib, min_contrast=8.0, keep_fraction=0.5, contrast_floor=2.0)
    assert synth.required_contrast(DefectCrop(img, mask, "thin_place", contrast=5.0)) == 2.5
    assert synth.required_contrast(DefectCrop(img, mask, "thin_place", contrast=2.0)) == 2.0
    assert synth.required_contrast(DefectCrop(img, mask, "hole", contrast=60.0)) == 8.0
    assert synth.required_contrast(DefectCrop(img, mask, "hole")) == 8.0


def test_every_default_synthesizer_keeps_the_contract_on_simulated_fabric(
    sim_library: DefectLibrary, sim_tiles: list[np.ndarray]
) -> None:
    for synth in default_synthesizers(sim_library):
        made = 0
        for seed in range(12):
            tile = sim_tiles[seed % len(sim_tiles)]
            result = synth(tile, np.random.default_rng(seed))
            if result is None:
                continue
            made += 1
            assert_label_true(tile, result)
            assert result.class_name in synth.classes
        assert made >= 9, f"{synth.name}: only {made}/12 samples on simulated fabric"
