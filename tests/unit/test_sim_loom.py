"""The synthetic loom's contract: same pixels however the roll is cut, exact masks, tight boxes."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from runtime.errors import ConfigError
from runtime.sim.defect_render import MIN_DELTA
from runtime.sim.defects import DEFECT_CLASSES
from runtime.sim.fabric import FABRICS
from runtime.sim.loom import SyntheticLoom, TruthDefect, render_web

WIDTH = 512


def _roll(block: int, *, lines: int, fabric: str = "plain_gray", seed: int = 5, rate: float = 30.0):
    loom = SyntheticLoom(FABRICS[fabric], width_px=WIDTH, seed=seed, defects_per_m=rate, with_masks=True)
    pixels: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    while loom.lines_emitted < lines:
        b = loom.next_block(min(block, lines - loom.lines_emitted))
        assert b.line0 == loom.lines_emitted - b.n_lines
        assert b.labels is not None
        pixels.append(b.pixels)
        labels.append(b.labels)
    return loom, np.concatenate(pixels), np.concatenate(labels)


@pytest.mark.parametrize("fabric", ["plain_gray", "denim_color"])
def test_same_seed_same_web_whatever_the_block_size(fabric: str) -> None:
    lines = 4000
    loom_a, px_a, lab_a = _roll(100, lines=lines, fabric=fabric)
    loom_b, px_b, lab_b = _roll(777, lines=lines, fabric=fabric)
    assert np.array_equal(px_a, px_b)
    assert np.array_equal(lab_a, lab_b)
    assert loom_a.truth == loom_b.truth
    assert len(loom_a.truth) >= 3, "the test needs defects to straddle block boundaries"
    straddling = [t for t in loom_a.truth if t.y0_line // 100 != (t.y1_line - 1) // 100]
    assert straddling, "no defect crossed a 100-line block boundary"


def test_different_seeds_differ() -> None:
    _, a, _ = _roll(1000, lines=1000, seed=1, rate=0)
    _, b, _ = _roll(1000, lines=1000, seed=2, rate=0)
    assert not np.array_equal(a, b)


def test_masks_are_exact_and_boxes_tight() -> None:
    lines = 6000
    loom, dirty, labels = _roll(1500, lines=lines, seed=11, rate=25.0)
    clean = (
        SyntheticLoom(FABRICS["plain_gray"], width_px=WIDTH, seed=11, defects_per_m=0.0)
        .next_block(lines)
        .pixels
    )
    diff = np.abs(dirty.astype(np.int16) - clean.astype(np.int16))
    # Outside every mask the web is exactly the clean web; inside, each pixel moved by >= MIN_DELTA.
    assert not diff[labels == 0].any()
    assert (diff[labels > 0] >= MIN_DELTA).all()
    truth = {t.defect_id: t for t in loom.truth}
    assert set(np.unique(labels)) - {0} <= set(truth)
    for t in truth.values():
        ys, xs = np.nonzero(labels == t.defect_id)
        if t.y1_line > lines:  # runs past the end of this web
            continue
        assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (t.y0_line, t.y1_line, t.x0_px, t.x1_px)
        assert t.x_mm == pytest.approx(t.x0_px * 0.1) and t.y_mm == pytest.approx(t.y0_line * 0.1)
        assert t.w_mm == pytest.approx((t.x1_px - t.x0_px) * 0.1)
        assert t.h_mm == pytest.approx((t.y1_line - t.y0_line) * 0.1)


@pytest.mark.parametrize("fabric", ["plain_gray", "twill_3_1_gray"])
def test_defects_stay_on_the_fabric(fabric: str) -> None:
    lines = 8000
    loom, _, labels = _roll(2000, lines=lines, fabric=fabric, seed=3, rate=40.0)
    left, right = loom.renderer.fabric_span(0, lines)
    ys, xs = np.nonzero(labels)
    assert ys.size > 0
    assert (xs >= left[ys]).all() and (xs < right[ys]).all(), "a defect pixel lies in the background"


def _place(cls: str, fabric: str = "plain_gray", seed: int = 4, **params):
    loom = SyntheticLoom(FABRICS[fabric], width_px=WIDTH, seed=seed, defects_per_m=0.0, with_masks=True)
    t = loom.place_defect(cls, y0_line=100, x_center_px=WIDTH // 2, **params)
    block = loom.next_block(t.y1_line + 50)
    clean = SyntheticLoom(FABRICS[fabric], width_px=WIDTH, seed=seed, defects_per_m=0.0).next_block(
        t.y1_line + 50
    )
    return loom, t, block, clean.pixels


def test_broken_end_is_long_along_and_thin_across() -> None:
    _, t, _, _ = _place("broken_end", length_mm=500.0)
    assert t.class_name == "broken_end"
    assert t.h_mm == pytest.approx(500.0, rel=0.05)
    assert t.w_mm < 3.0


def test_broken_pick_is_wide_across_and_thin_along() -> None:
    loom, t, _, _ = _place("broken_pick", width_frac=0.9)
    lo, hi = loom.renderer.interior_x()
    assert t.x1_px - t.x0_px > 0.8 * (hi - lo)
    assert t.h_mm < 2.5


@pytest.mark.parametrize("cls", DEFECT_CLASSES)
def test_every_class_renders_into_the_web(cls: str) -> None:
    params: dict[str, Any] = {"length_mm": 60.0} if cls == "broken_end" else {}
    _, t, block, clean = _place(cls, **params)
    assert block.labels is not None
    mask = block.labels == t.defect_id
    assert mask.sum() >= 10
    assert t.x0_px < t.x1_px and t.y0_line < t.y1_line
    changed = block.pixels != clean
    assert changed.any() and not changed[~mask].any()


def _visible_after_4x(block_px: np.ndarray, clean: np.ndarray, t: TruthDefect) -> float:
    """The largest change of the 4x INTER_AREA downsampled web around the defect (gray levels)."""
    y0, y1 = max(0, t.y0_line - 8), min(block_px.shape[0], t.y0_line + min(t.y1_line - t.y0_line, 400) + 8)
    x0, x1 = max(0, t.x0_px - 8), t.x1_px + 8

    def small(a: np.ndarray) -> np.ndarray:
        crop = a[y0:y1, x0:x1]
        crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
        return cv2.resize(crop, ((x1 - x0) // 4, (y1 - y0) // 4), interpolation=cv2.INTER_AREA).astype(
            np.float32
        )

    return float(np.abs(small(block_px) - small(clean)).max())


@pytest.mark.parametrize("fabric", ["plain_gray", "twill_3_1_gray", "satin_5_gray", "denim_color"])
@pytest.mark.parametrize("cls", ["hole", "stain", "broken_end", "broken_pick"])
def test_loud_defects_stay_visible_after_4x_downsample(cls: str, fabric: str) -> None:
    params = (
        {"length_mm": 80.0, "yarns": 1}
        if cls == "broken_end"
        else {"yarns": 1}
        if cls == "broken_pick"
        else {}
    )
    for seed in (1, 2):
        _, t, block, clean = _place(cls, fabric=fabric, seed=seed, **params)
        assert _visible_after_4x(block.pixels, clean, t) >= 15, f"{cls} on {fabric} (seed {seed}) fades at 4x"


def test_contrast_parameter_scales_a_defect() -> None:
    _, _, b_lo, clean = _place("stain", contrast=0.3)
    _, _, b_hi, _ = _place("stain", contrast=1.0)
    n = min(b_lo.n_lines, b_hi.n_lines)
    d_lo = np.abs(b_lo.pixels[:n].astype(int) - clean[:n]).sum()
    d_hi = np.abs(b_hi.pixels[:n].astype(int) - clean[:n]).sum()
    assert d_hi > 2 * d_lo > 0


def test_defect_straddles_blocks_and_is_reported_before_it_is_emitted() -> None:
    loom = SyntheticLoom(FABRICS["plain_gray"], width_px=WIDTH, seed=2, defects_per_m=0.0, with_masks=True)
    t = loom.place_defect("broken_end", y0_line=300, x_center_px=250, length_mm=200.0)
    assert loom.truth == []  # nothing of it emitted yet
    assert loom.defects_between(0, 400) == [t]
    assert loom.defects_between(0, 250) == []
    seen = 0
    for _ in range(6):
        b = loom.next_block(500)
        assert b.labels is not None
        seen += int((b.labels == t.defect_id).any())
    assert seen >= 4  # lines 300..2300 span blocks 0-4
    assert loom.truth == [t]


def test_place_defect_refuses_lines_already_emitted_and_bad_input() -> None:
    loom = SyntheticLoom(FABRICS["plain_gray"], width_px=WIDTH, seed=2, defects_per_m=0.0)
    loom.next_block(1000)
    with pytest.raises(ConfigError, match="already emitted"):
        loom.place_defect("hole", y0_line=500, x_center_px=250)
    with pytest.raises(ConfigError, match="unknown defect class"):
        loom.place_defect("tear", y0_line=2000)
    with pytest.raises(ConfigError, match="interior"):
        loom.place_defect("hole", y0_line=2000, x_center_px=2)
    with pytest.raises(ConfigError, match="unknown parameter"):
        loom.place_defect("hole", y0_line=2000, colour="red")


def test_defect_rate_and_class_choice() -> None:
    loom = SyntheticLoom(
        FABRICS["plain_gray"], width_px=WIDTH, seed=9, defects_per_m=20.0, defect_classes=("hole", "knot")
    )
    found = loom.defects_between(0, 50_000)  # 5 m, not emitted: placed ahead
    assert 60 <= len(found) <= 140  # Poisson(100) minus the few dropped to keep defects apart
    assert {t.class_name for t in found} == {"hole", "knot"}
    none = SyntheticLoom(FABRICS["plain_gray"], width_px=WIDTH, seed=9, defects_per_m=0.0)
    assert none.defects_between(0, 50_000) == []


def test_render_web_matches_the_loom() -> None:
    pixels, labels, truth = render_web(
        FABRICS["plain_color"], length_m=0.3, width_px=WIDTH, seed=6, defects_per_m=20.0, with_masks=True
    )
    assert pixels.shape == (3000, WIDTH, 3) and pixels.dtype == np.uint8
    assert labels is not None and labels.shape == (3000, WIDTH) and labels.dtype == np.int32
    assert all(t.y0_line < 3000 for t in truth)
    assert {int(v) for v in np.unique(labels)} - {0} <= {t.defect_id for t in truth}
    assert truth[0].to_dict()["bbox_px"] == [
        truth[0].x0_px,
        truth[0].y0_line,
        truth[0].x1_px,
        truth[0].y1_line,
    ]
