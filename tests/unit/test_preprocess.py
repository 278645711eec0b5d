from __future__ import annotations

import numpy as np

from runtime.frame import Strip
from runtime.preprocess import Preprocessor, resample_mask


def _strip(pixels: np.ndarray, line0: int = 1000) -> Strip:
    return Strip(pixels=pixels, seq=0, line0=line0, overlap_lines=0, roll_id="r", timestamp_ns=0)


def test_resolution_change_and_exact_inverse_map() -> None:
    pre = Preprocessor(camera_mm_per_px=0.1, camera_mm_per_line=0.1, model_mm_per_px=0.4)
    img = np.full((1000, 2050), 200, np.uint8)
    img[400:440, 1000:1040] = 0  # a 4 x 4 mm dark square
    view = pre(_strip(img))
    assert view.pixels.shape == (250, 512)  # 2050 * 0.25 = 512.5 -> 512
    ys, xs = np.nonzero(view.pixels < 100)
    box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float64)
    web = view.to_web(box)[0]
    np.testing.assert_allclose(web, [1000, 1400, 1040, 1440], atol=4.1)  # within one model pixel


def test_colour_web_becomes_gray_for_a_gray_model() -> None:
    pre = Preprocessor(camera_mm_per_px=0.2, camera_mm_per_line=0.2, model_mm_per_px=0.2)
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 2] = 255  # pure red in BGR
    view = pre(_strip(img))
    assert view.pixels.ndim == 2 and 70 < view.pixels.mean() < 80  # BT.601 luma of red


def test_thin_streak_survives_mask_downsampling() -> None:
    mask = np.zeros((400, 400), bool)
    mask[:, 201] = True  # one camera pixel wide
    small = resample_mask(mask, 0.25, 0.25)
    assert small.shape == (100, 100) and small[:, 50].all() and small.sum() == 100


def test_flat_field_is_applied_before_resampling() -> None:
    class Doubler:
        def apply_flat_field(self, pixels: np.ndarray) -> np.ndarray:
            return np.clip(pixels.astype(np.int32) * 2, 0, 255).astype(np.uint8)

    pre = Preprocessor(
        camera_mm_per_px=0.1, camera_mm_per_line=0.1, model_mm_per_px=0.1, flat_field=Doubler()
    )
    assert pre(_strip(np.full((8, 8), 50, np.uint8))).pixels.mean() == 100
