"""Pixel-format conversion against hand-made buffers: exact values, colour order, Bayer patterns."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import CameraError
from runtime.sources.pixel_formats import SUPPORTED_FORMATS, convert, to_bgr, to_gray

# Four 8x8 patches (BGR): red, green, blue, yellow, laid out 2x2 in a 16x16 image.
PATCHES = {
    (0, 0): (0, 0, 230),  # red
    (0, 1): (0, 210, 0),  # green
    (1, 0): (200, 0, 0),  # blue
    (1, 1): (0, 220, 220),  # yellow
}


def _patch_image() -> np.ndarray:
    img = np.zeros((16, 16, 3), np.uint8)
    for (r, c), bgr in PATCHES.items():
        img[r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] = bgr
    return img


def _mosaic(bgr: np.ndarray, pattern: str) -> np.ndarray:
    """Sample a BGR image through a colour filter array named the PFNC way (first row, first two pixels)."""
    channel = {"R": 2, "G": 1, "B": 0}
    layout = {"RG": "RGGB", "BG": "BGGR", "GR": "GRBG", "GB": "GBRG"}[pattern]
    out = np.empty(bgr.shape[:2], np.uint8)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[dy::2, dx::2] = bgr[dy::2, dx::2, channel[layout[k]]]
    return out


@pytest.mark.parametrize("pattern", ["RG", "BG", "GR", "GB"])
def test_bayer_patterns_recover_known_colour_patches(pattern: str) -> None:
    img = _patch_image()
    mosaic = _mosaic(img, pattern)
    bgr = to_bgr(mosaic.reshape(-1), 16, 16, f"Bayer{pattern}8")
    assert bgr.shape == (16, 16, 3) and bgr.dtype == np.uint8
    for (r, c), want in PATCHES.items():
        # Patch interiors (2 px away from the borders, where demosaicing mixes patches).
        got = bgr[r * 8 + 2 : r * 8 + 6, c * 8 + 2 : c * 8 + 6].reshape(-1, 3).mean(axis=0)
        assert np.allclose(got, want, atol=3), (pattern, (r, c), got, want)
    gray = to_gray(mosaic, 16, 16, f"Bayer{pattern}8")
    assert gray.shape == (16, 16)
    # Gray of the red patch is its luma (0.299 R), not the raw red sample.
    assert abs(float(gray[3, 3]) - 0.299 * 230) < 4


def test_mono8_is_reshaped_and_copied() -> None:
    data = np.arange(12, dtype=np.uint8)
    gray = to_gray(data, 4, 3, "Mono8")
    assert gray.shape == (3, 4)
    assert gray[2, 3] == 11
    assert not np.shares_memory(gray, data)
    data[:] = 0  # the driver re-uses its buffer
    assert gray[2, 3] == 11
    bgr = to_bgr(np.arange(12, dtype=np.uint8), 4, 3, "Mono8")
    assert bgr.shape == (3, 4, 3) and (bgr[1, 2] == 6).all()


@pytest.mark.parametrize(("fmt", "full_scale"), [("Mono10", 1023), ("Mono12", 4095), ("Mono16", 65535)])
def test_deep_mono_scales_by_bit_depth(fmt: str, full_scale: int) -> None:
    bits = {"Mono10": 10, "Mono12": 12, "Mono16": 16}[fmt]
    values = np.array([0, 1 << (bits - 8), full_scale // 2 + 1, full_scale], dtype=np.uint16)
    gray = to_gray(values, 2, 2, fmt)
    assert gray.dtype == np.uint8
    assert gray.reshape(-1).tolist() == [0, 1, 128, 255]
    quarter = np.full(4, full_scale // 4, dtype=np.uint16)
    assert to_gray(quarter, 2, 2, fmt).reshape(-1).tolist() == [64] * 4  # round(255 / 4)


def test_garbage_high_bits_saturate_instead_of_wrapping() -> None:
    values = np.array([4095, 1023], dtype=np.uint16)  # 4095 is out of range for Mono10
    assert to_gray(values, 2, 1, "Mono10").reshape(-1).tolist() == [255, 255]


def test_sixteen_bit_formats_accept_raw_little_endian_bytes() -> None:
    values = np.array([0x0100, 0xFF00, 0x8000, 0x0000], dtype="<u2")
    raw = np.frombuffer(values.tobytes(), dtype=np.uint8)
    # round(v * 255 / 65535): 256 -> 1, 65280 -> 254, 32768 -> 128
    assert to_gray(raw, 2, 2, "Mono16").reshape(-1).tolist() == [1, 254, 128, 0]


def test_packed_colour_orders() -> None:
    # One pixel: R=200, G=100, B=10 in each layout.
    rgb = np.array([200, 100, 10], np.uint8)
    bgr_in = np.array([10, 100, 200], np.uint8)
    rgba = np.array([200, 100, 10, 77], np.uint8)
    bgra = np.array([10, 100, 200, 77], np.uint8)
    for fmt, data in (("RGB8", rgb), ("BGR8", bgr_in), ("RGBa8", rgba), ("BGRa8", bgra)):
        out = to_bgr(np.tile(data, 6), 3, 2, fmt)
        assert out.shape == (2, 3, 3), fmt
        assert out[1, 2].tolist() == [10, 100, 200], fmt
        assert not np.shares_memory(out, data)
        gray = to_gray(np.tile(data, 6), 3, 2, fmt)
        expected = round(0.299 * 200 + 0.587 * 100 + 0.114 * 10)
        assert abs(int(gray[0, 0]) - expected) <= 1, fmt


def test_every_listed_format_converts_a_buffer_of_its_size() -> None:
    sizes = {"RGB8": 3, "BGR8": 3, "RGBa8": 4, "BGRa8": 4}
    for fmt in SUPPORTED_FORMATS:
        if fmt in ("Mono10", "Mono12", "Mono16"):
            data = np.zeros(8 * 4, np.uint16)
        else:
            data = np.zeros(8 * 4 * sizes.get(fmt, 1), np.uint8)
        assert convert(data, 8, 4, fmt, "gray").shape == (4, 8), fmt
        assert convert(data, 8, 4, fmt, "bgr").shape == (4, 8, 3), fmt


def test_unknown_format_names_it_and_the_supported_list() -> None:
    with pytest.raises(CameraError) as err:
        to_gray(np.zeros(16, np.uint8), 4, 4, "YUV422_8")
    msg = str(err.value)
    assert "YUV422_8" in msg
    for fmt in ("Mono8", "Mono12", "BayerRG8", "RGBa8"):
        assert fmt in msg


def test_wrong_buffer_size_says_expected_and_got() -> None:
    with pytest.raises(
        CameraError, match=r"Mono8 100x40 buffer has the wrong size: expected 4000 bytes .*got 3999 bytes"
    ):
        to_gray(np.zeros(3999, np.uint8), 100, 40, "Mono8")
    with pytest.raises(CameraError, match=r"RGBa8 4x3 .*expected 48 bytes.*got 47 bytes"):
        to_bgr(np.zeros(47, np.uint8), 4, 3, "RGBa8")
    with pytest.raises(CameraError, match=r"expected 200 bytes .*got 100 bytes"):
        to_gray(np.zeros(100, np.uint8), 10, 10, "Mono12")
    with pytest.raises(CameraError, match="dtype float32"):
        to_gray(np.zeros(16, np.float32), 4, 4, "Mono8")
    with pytest.raises(CameraError, match="invalid size"):
        to_gray(np.zeros(0, np.uint8), 0, 4, "Mono8")
