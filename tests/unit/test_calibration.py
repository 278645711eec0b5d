"""Calibration: the runtime's reader and flat-field correction, and the calib package's measurements,
checked against synthetic captures with known truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calib.along import from_encoder, from_speed
from calib.flatfield import compute_flat_field
from calib.scale import find_edges, line_profile, scale_from_edges, scale_from_stripes, stripe_pitch_px
from calib.synthetic import SyntheticCamera, bar_target, make_camera, stripe_target
from runtime.calibration import SCHEMA, Calibration, FlatField, LensPolynomial, calibration_from_config
from runtime.config import CalibrationConfig
from runtime.errors import CalibrationError, ConfigError

W = 2048
DEAD = (100, 1500)
HOT = (700,)


@pytest.fixture(scope="module")
def camera() -> SyntheticCamera:
    return make_camera(W, dead_columns=DEAD, hot_columns=HOT, noise_dn=1.0, seed=3)


@pytest.fixture(scope="module")
def flat(camera: SyntheticCamera) -> FlatField:
    dark = camera.capture(np.zeros(W), 400).astype(np.float64).mean(axis=0)
    bright = camera.capture(np.ones(W), 400, 1).astype(np.float64).mean(axis=0)
    result = compute_flat_field(dark, bright, target_level=200.0)
    return FlatField(result.dark, result.gain, result.target_level, result.dead_columns, result.hot_columns)


def lens_truth(px: np.ndarray | float) -> np.ndarray:
    """A line-scan lens with 0.05 mm/px in the centre and cubic (barrel) distortion toward the ends."""
    u = (np.asarray(px, dtype=np.float64) - 2048) / 2048
    return 0.05 * np.asarray(px, dtype=np.float64) + 0.6 * u**3 + 0.6


# -- flat field: measurement --------------------------------------------------------------------


def test_flat_field_recovers_gain_dark_and_flags_columns(camera: SyntheticCamera) -> None:
    dark = camera.capture(np.zeros(W), 400).astype(np.float64).mean(axis=0)
    bright = camera.capture(np.ones(W), 400, 1).astype(np.float64).mean(axis=0)
    result = compute_flat_field(dark, bright)
    assert result.dead_columns == DEAD and result.hot_columns == HOT
    good = result.good
    true_gain = result.target_level / camera.response_dn
    assert np.max(np.abs(result.gain[good] / true_gain[good] - 1)) < 0.005
    assert np.max(np.abs(result.dark[good] - camera.dark_dn[good])) < 0.3
    # default target: the 95th percentile of the signal keeps the centre's brightness
    assert 205 < result.target_level < 235
    assert result.gain[good].max() > 1.6  # the vignetted ends are lifted


def test_flat_field_refuses_swapped_or_mismatched_captures(camera: SyntheticCamera) -> None:
    dark = camera.capture(np.zeros(W), 50).astype(np.float64).mean(axis=0)
    bright = camera.capture(np.ones(W), 50, 1).astype(np.float64).mean(axis=0)
    with pytest.raises(CalibrationError, match="swapped"):
        compute_flat_field(bright, dark)
    with pytest.raises(CalibrationError, match="same camera settings"):
        compute_flat_field(dark, bright[:1024])


def test_colour_flat_field_per_channel() -> None:
    cam = make_camera(512, channels=3, dead_columns=(40,), noise_dn=0.5, seed=5)
    dark = cam.capture(np.zeros(512), 200).astype(np.float64).mean(axis=0)
    bright = cam.capture(np.ones(512), 200, 1).astype(np.float64).mean(axis=0)
    result = compute_flat_field(dark, bright, target_level=190.0)
    assert result.gain.shape == (512, 3) and result.dead_columns == (40,)
    good = result.good
    assert np.max(np.abs(result.gain[good] / (190.0 / cam.response_dn[good]) - 1)) < 0.01


# -- flat field: application ----------------------------------------------------------------------


def test_apply_flat_field_makes_the_scene_uniform(camera: SyntheticCamera, flat: FlatField) -> None:
    rng = np.random.default_rng(9)
    scene = 0.3 + 0.4 * rng.random((300, W))
    raw = camera.capture(scene, 300, 7)
    before = raw.copy()
    out = Calibration(0.05, 0.05, W, flat_field=flat).apply_flat_field(raw)
    assert out.dtype == np.uint8 and out.shape == raw.shape and out is not raw
    assert np.array_equal(raw, before)  # input untouched
    good = np.setdiff1d(np.arange(W), DEAD + HOT)
    expected = np.clip(np.rint((raw.astype(np.float64) - flat.dark) * flat.gain), 0, 255)
    assert np.max(np.abs(out[:, good] - expected[:, good])) <= 1  # exact up to rounding
    # against the true scene: only the camera noise times the gain remains
    error = out[:, good].astype(np.float64) - scene[:, good] * 200.0
    assert abs(error.mean()) < 0.5 and error.std() < 3.0
    # a dead column looks like a streak defect unless interpolated from its neighbours
    for column in DEAD + HOT:
        neighbours = (out[:, column - 1].astype(np.float64) + out[:, column + 1]) / 2
        assert np.max(np.abs(out[:, column] - neighbours)) <= 1


def test_apply_flat_field_colour_and_gray_reference_on_colour_frames(flat: FlatField) -> None:
    cam = make_camera(256, channels=3, noise_dn=0.0, vignetting=0.3, seed=2)
    dark = cam.capture(np.zeros(256), 10).astype(np.float64).mean(axis=0)
    bright = cam.capture(np.ones(256), 10, 1).astype(np.float64).mean(axis=0)
    result = compute_flat_field(dark, bright, target_level=180.0)
    colour = FlatField(result.dark, result.gain, 180.0)
    frame = cam.capture(np.full(256, 0.5), 70, 3)
    out = colour.apply(frame)
    assert out.shape == (70, 256, 3)
    assert np.all(np.abs(out.astype(int) - 90) <= 2)
    gray_ref = FlatField(np.zeros(256, np.float32), np.full(256, 2.0, np.float32), 200.0)
    doubled = gray_ref.apply(np.full((5, 256, 3), 60, np.uint8))
    assert np.all(doubled == 120)
    with pytest.raises(CalibrationError, match="3 channels"):
        colour.apply(np.zeros((4, 256), np.uint8))


def test_apply_flat_field_checks_its_input(flat: FlatField) -> None:
    with pytest.raises(CalibrationError, match="uint8"):
        flat.apply(np.zeros((4, W), np.uint16))
    with pytest.raises(CalibrationError, match=f"lines of {W} px"):
        flat.apply(np.zeros((4, 1024), np.uint8))
    strided = np.full((20, W), 100, np.uint8)[::2]  # not contiguous
    assert flat.apply(strided).shape == (10, W)
    saturating = FlatField(np.zeros(8, np.float32), np.full(8, 3.0, np.float32), 200.0)
    assert np.all(saturating.apply(np.full((2, 8), 200, np.uint8)) == 255)
    below_dark = FlatField(np.full(8, 50, np.float32), np.ones(8, np.float32), 200.0)
    assert np.all(below_dark.apply(np.full((2, 8), 10, np.uint8)) == 0)


def test_no_flat_field_returns_pixels_unchanged() -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert Calibration(0.1, 0.1).apply_flat_field(pixels) is pixels


# -- geometry ---------------------------------------------------------------------------------------


def test_linear_geometry() -> None:
    cal = Calibration(mm_per_px_x=0.0625, mm_per_line=0.1, width_px=4096)
    assert cal.px_to_mm_x(4096) == pytest.approx(256.0)
    assert cal.mm_to_px_x(128.0) == pytest.approx(2048.0)
    assert cal.lines_to_mm(1000) == pytest.approx(100.0)
    assert cal.mm_to_lines(50.0) == pytest.approx(500.0)


def test_lens_polynomial_geometry_round_trips() -> None:
    px = np.linspace(0, 4096, 41)
    coeffs = np.polynomial.polynomial.polyfit((px - 2048) / 2048, lens_truth(px) - lens_truth(0), 3)
    lens = LensPolynomial(tuple(coeffs), 2048.0, 2048.0)
    mean = float(lens(4096.0) - lens(0.0)) / 4096
    cal = Calibration(mean, 0.05, 4096, distortion=lens)
    probe = np.array([0.0, 1.5, 1000.25, 2048.0, 4095.5, 4096.0])
    assert np.allclose(cal.px_to_mm_x(probe), lens_truth(probe) - lens_truth(0), atol=1e-9)
    assert np.allclose(cal.mm_to_px_x(cal.px_to_mm_x(probe)), probe, atol=1e-6)
    assert np.isfinite(cal.mm_to_px_x(-1.0)) and float(cal.mm_to_px_x(-1.0)) < 0  # beyond the line


# -- files --------------------------------------------------------------------------------------------


def saved(tmp_path: Path, flat: FlatField) -> Path:
    px = np.linspace(0, W, 41)
    coeffs = np.polynomial.polynomial.polyfit(
        (px - 1024) / 1024, 0.05 * px + 0.2 * ((px - 1024) / 1024) ** 3, 3
    )
    coeffs[0] -= np.polynomial.polynomial.polyval(-1.0, coeffs)
    lens = LensPolynomial(tuple(coeffs), 1024.0, 1024.0)
    mean = float(lens(float(W)) - lens(0.0)) / W
    cal = Calibration(mean, 0.0625, W, lens, flat, {"camera_serial": "40123456"})
    return cal.save(tmp_path / "calibration.json")


def test_save_and_load_round_trip(tmp_path: Path, flat: FlatField) -> None:
    path = saved(tmp_path, flat)
    doc = json.loads(path.read_text())
    assert doc["schema"] == SCHEMA and doc["flat_field"]["file"] == "calibration.flatfield.npz"
    assert doc["flat_field"]["dead_columns"] == list(DEAD) and len(doc["flat_field"]["sha256"]) == 64
    loaded = Calibration.load(path)
    assert loaded.width_px == W and loaded.mm_per_line == 0.0625 and loaded.source == path
    assert loaded.provenance["camera_serial"] == "40123456"
    assert loaded.flat_field is not None and np.array_equal(loaded.flat_field.gain, flat.gain)
    assert loaded.flat_field.bad_columns == tuple(sorted(DEAD + HOT))
    frame = np.full((8, W), 120, np.uint8)
    assert np.array_equal(loaded.apply_flat_field(frame), flat.apply(frame))
    assert loaded.distortion is not None and float(loaded.px_to_mm_x(0.0)) == pytest.approx(0.0, abs=1e-9)


def test_check_width(tmp_path: Path, flat: FlatField) -> None:
    loaded = Calibration.load(saved(tmp_path, flat))
    loaded.check_width(W)
    with pytest.raises(CalibrationError, match=f"made for lines of {W} px, the camera delivers 4096 px"):
        loaded.check_width(4096)
    Calibration(0.1, 0.1).check_width(1234)  # no width known: nothing to check


def edit(path: Path, **changes: object) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema": "loomsight.calibration/0"}, "schema = 'loomsight.calibration/0'"),
        ({"mm_per_pixel_x": 0.1}, r"unknown key\(s\) \['mm_per_pixel_x'\]"),
        ({"mm_per_px_x": -0.05}, "mm_per_px_x = -0.05: must be a positive number"),
        ({"mm_per_line": "0.1"}, "mm_per_line = '0.1'"),
        ({"width_px": 0}, "width_px = 0"),
        ({"mm_per_px_x": 0.06}, "distortion polynomial's mean"),
        (
            {"distortion": {"model": "polynomial", "center_px": 0, "scale_px": 1, "coeffs_mm": [0, -0.05]}},
            "not increasing",
        ),
    ],
)
def test_bad_calibration_files_are_named(
    tmp_path: Path, flat: FlatField, changes: dict, message: str
) -> None:
    path = saved(tmp_path, flat)
    edit(path, **changes)
    with pytest.raises(CalibrationError, match=message):
        Calibration.load(path)


def test_flat_field_file_problems(tmp_path: Path, flat: FlatField) -> None:
    path = saved(tmp_path, flat)
    npz = tmp_path / "calibration.flatfield.npz"
    original = npz.read_bytes()
    npz.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(CalibrationError, match="does not match"):
        Calibration.load(path)
    npz.unlink()
    with pytest.raises(CalibrationError, match="is missing"):
        Calibration.load(path)
    npz.write_bytes(original)
    doc = json.loads(path.read_text())
    edit(path, flat_field={**doc["flat_field"], "file": "../elsewhere.npz"})
    with pytest.raises(CalibrationError, match="no folders"):
        Calibration.load(path)
    edit(path, flat_field=doc["flat_field"], width_px=W // 2, mm_per_px_x=0.1, distortion=None)
    with pytest.raises(CalibrationError, match=rf"must both be \({W // 2},\)"):
        Calibration.load(path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"does not exist.*loomsight calib write"):
        Calibration.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match="not a JSON calibration file"):
        Calibration.load(bad)


def test_calibration_from_config(tmp_path: Path, flat: FlatField) -> None:
    path = saved(tmp_path, flat)
    from_file = calibration_from_config(CalibrationConfig(path=path, mm_per_px_x=0.5))
    assert from_file is not None and from_file.width_px == W and from_file.mm_per_px_x != 0.5
    numbers = calibration_from_config(CalibrationConfig(mm_per_px_x=0.1, mm_per_line=0.2))
    assert numbers is not None and numbers.lines_to_mm(10) == pytest.approx(2.0)
    assert calibration_from_config(CalibrationConfig()) is None
    with pytest.raises(ConfigError, match=r"calibration\.mm_per_line is missing"):
        calibration_from_config(CalibrationConfig(mm_per_px_x=0.1))


# -- scale across ---------------------------------------------------------------------------------------


def stripes_image(distorted: bool, seed: int = 1) -> np.ndarray:
    cam = make_camera(4096, vignetting=0.3, noise_dn=3.0, seed=seed)
    mapping = lens_truth if distorted else (lambda px: 0.05 * np.asarray(px))
    return cam.capture(stripe_target(4096, 2.0, mapping), 100, 2)


def test_stripe_pitch_by_fft() -> None:
    profile = line_profile(stripes_image(distorted=False))
    assert stripe_pitch_px(profile) == pytest.approx(40.0, rel=0.003)


def test_stripe_scale_without_distortion() -> None:
    result = scale_from_stripes(line_profile(stripes_image(distorted=False)), 2.0)
    assert result.mm_per_px_x == pytest.approx(0.05, rel=2e-4)
    assert result.distortion is None and result.width_px == 4096


def test_stripe_scale_recovers_lens_distortion() -> None:
    result = scale_from_stripes(line_profile(stripes_image(distorted=True)), 2.0, distortion_degree=3)
    true_mean = float(lens_truth(4096) - lens_truth(0)) / 4096
    assert result.mm_per_px_x == pytest.approx(true_mean, rel=2e-4)
    assert result.distortion is not None
    grid = np.linspace(0, 4096, 200)
    error = result.distortion(grid) - (lens_truth(grid) - lens_truth(0))
    assert np.max(np.abs(error)) < 0.01  # mm, over the whole line
    assert result.details["max_deviation_from_linear_mm"] > 0.1  # the distortion is real and reported


def test_stripe_target_that_covers_too_little_is_refused() -> None:
    cam = make_camera(4096, noise_dn=2.0, seed=4)
    reflectance = stripe_target(4096, 2.0, lambda px: 0.05 * np.asarray(px))
    reflectance[600:] = 0.5
    with pytest.raises(CalibrationError, match="covers too little"):
        scale_from_stripes(line_profile(cam.capture(reflectance, 50)), 2.0)


def test_bar_edges_to_a_fraction_of_a_pixel() -> None:
    cam = make_camera(4096, vignetting=0.3, noise_dn=2.0, seed=6)
    image = cam.capture(bar_target(4096, 1000.3, 3000.7), 60)
    left, right = find_edges(line_profile(image))
    assert left == pytest.approx(1000.3, abs=0.1) and right == pytest.approx(3000.7, abs=0.1)
    result = scale_from_edges(line_profile(image), 100.0)
    assert result.mm_per_px_x == pytest.approx(100.0 / 2000.4, rel=1e-4)
    manual = scale_from_edges(line_profile(image), 100.0, (1000.0, 3000.0))
    assert manual.mm_per_px_x == pytest.approx(0.05) and manual.details["edges"] == "manual"


def test_flat_line_has_no_edges() -> None:
    cam = make_camera(1024, noise_dn=2.0, seed=8)
    with pytest.raises(CalibrationError, match="no clear edge"):
        find_edges(line_profile(cam.capture(np.full(1024, 0.5), 40)))


# -- scale along ----------------------------------------------------------------------------------------


def test_along_from_speed_and_encoder() -> None:
    assert from_speed(30.0, 8000.0).mm_per_line == pytest.approx(0.0625)
    assert from_encoder(0.5, pulses_per_mm=20.0).mm_per_line == pytest.approx(0.1)
    wheel = from_encoder(1.0, pulses_per_rev=2000, wheel_circumference_mm=500.0)
    assert wheel.mm_per_line == pytest.approx(0.25) and wheel.details["pulses_per_mm"] == pytest.approx(4.0)
    assert "line rate of 8000.0 Hz" in from_speed(30.0, 8000.0).advice(0.0625)
    with pytest.raises(CalibrationError, match="--line-rate-hz"):
        from_speed(30.0, 0.0)
    with pytest.raises(CalibrationError, match="wheel-circumference"):
        from_encoder(1.0)
