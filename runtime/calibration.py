"""Calibration: where pixels become millimetres, and the flat-field correction of each line.

One JSON file written by `loomsight calib write`, read here (the runtime never imports `calib`):

    {
      "schema": "loomsight.calibration/1",
      "width_px": 4096,                      # camera line width the calibration was made for
      "mm_per_px_x": 0.0625,                 # across the web (mean over the line when distortion is given)
      "mm_per_line": 0.0625,                 # along the web
      "distortion": {                        # optional: x_mm = sum(c_k * u**k), u = (px - center_px) / scale_px
        "model": "polynomial", "center_px": 2048.0, "scale_px": 2048.0, "coeffs_mm": [128.0, 128.1, 0.0, -0.1]
      },
      "flat_field": {                        # optional: per-column dark and gain in an .npz beside the JSON
        "file": "calibration.flatfield.npz", "sha256": "...", "target_level": 200.0,
        "dead_columns": [17], "hot_columns": [901]
      },
      "provenance": {"created_utc": "...", "tool": "loomsight calib 0.1.0", "camera_serial": "...", "inputs": {}}
    }

The `.npz` holds `dark` and `gain` (float32, shape (width_px,) or (width_px, channels)). Corrected
pixel = clip(round((raw - dark) * gain)); dead and hot columns are then replaced by linear
interpolation between their nearest good neighbours, because a stuck column looks exactly like a
streak defect running along the web. Pixel coordinates are continuous: pixel i covers [i, i+1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

from runtime.config import CalibrationConfig
from runtime.errors import CalibrationError, ConfigError

log = logging.getLogger(__name__)

SCHEMA = "loomsight.calibration/1"
TOP_LEVEL_KEYS = {
    "schema",
    "width_px",
    "mm_per_px_x",
    "mm_per_line",
    "distortion",
    "flat_field",
    "provenance",
}
FLAT_FIELD_KEYS = {"file", "sha256", "target_level", "dead_columns", "hot_columns"}
DISTORTION_KEYS = {"model", "center_px", "scale_px", "coeffs_mm"}
MEAN_SCALE_TOLERANCE = 0.01  # mm_per_px_x vs the distortion polynomial's mean slope
CHUNK_ROWS = 64  # rows per OpenCV call: the gain block stays in cache


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class LensPolynomial:
    """Across-the-line lens model of a line-scan camera: x_mm = sum(c_k * u**k), u = (px - center_px) / scale_px."""

    coeffs_mm: tuple[float, ...]
    center_px: float
    scale_px: float

    def __call__(self, px: np.ndarray | float) -> np.ndarray:
        u = (np.asarray(px, dtype=np.float64) - self.center_px) / self.scale_px
        return np.asarray(np.polynomial.polynomial.polyval(u, self.coeffs_mm))

    def slope_mm_per_px(self, px: np.ndarray | float) -> np.ndarray:
        u = (np.asarray(px, dtype=np.float64) - self.center_px) / self.scale_px
        derivative = np.polynomial.polynomial.polyder(self.coeffs_mm)
        return np.asarray(np.polynomial.polynomial.polyval(u, derivative)) / self.scale_px

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": "polynomial",
            "center_px": self.center_px,
            "scale_px": self.scale_px,
            "coeffs_mm": list(self.coeffs_mm),
        }


@dataclass(frozen=True, eq=False)
class FlatField:
    """Per-column dark level and gain (float32, shape (W,) or (W, C)) plus the columns to interpolate."""

    dark: np.ndarray
    gain: np.ndarray
    target_level: float
    dead_columns: tuple[int, ...] = ()
    hot_columns: tuple[int, ...] = ()
    _blocks: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _fill: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        bad = self.bad_columns
        if bad:  # bad columns, their left and right good neighbours, the right one's weight
            object.__setattr__(self, "_fill", (np.asarray(bad), *_neighbours(bad, self.width_px)))

    @property
    def width_px(self) -> int:
        return int(self.dark.shape[0])

    @property
    def channels(self) -> int:
        return 1 if self.dark.ndim == 1 else int(self.dark.shape[1])

    @property
    def bad_columns(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.dead_columns) | set(self.hot_columns)))

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Corrected copy of HxW gray or HxWxC uint8 pixels."""
        if pixels.dtype != np.uint8:
            raise CalibrationError(f"flat-field correction needs uint8 pixels, got {pixels.dtype}")
        if pixels.ndim not in (2, 3) or pixels.shape[1] != self.width_px:
            raise CalibrationError(
                f"flat-field correction was calibrated for lines of {self.width_px} px, got pixels of shape "
                f"{pixels.shape}; re-run `loomsight calib flatfield` for this camera width"
            )
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        if self.channels not in (1, channels):
            raise CalibrationError(
                f"flat field has {self.channels} channels, the frame has {channels}; calibrate in the camera's output format"
            )
        src = np.ascontiguousarray(pixels)
        height = src.shape[0]
        flat_src = src.reshape(height, -1)
        gain_block, offset_block = self._block(channels)
        out = np.empty_like(flat_src)
        for row in range(0, height, CHUNK_ROWS):
            rows = min(CHUNK_ROWS, height - row)
            scaled = cv2.multiply(flat_src[row : row + rows], gain_block[:rows], dtype=cv2.CV_32F)
            cv2.subtract(scaled, offset_block[:rows], dst=out[row : row + rows], dtype=cv2.CV_8U)
        result = out.reshape(src.shape)
        self._interpolate_bad_columns(result)
        return result

    def _block(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Gain and dark*gain tiled to CHUNK_ROWS x (W*C), built once per channel count."""
        key = (channels, CHUNK_ROWS)
        cached = self._blocks.get(key)
        if cached is None:
            gain = self.gain if self.gain.ndim == 2 else np.repeat(self.gain[:, None], channels, axis=1)
            dark = self.dark if self.dark.ndim == 2 else np.repeat(self.dark[:, None], channels, axis=1)
            gain_row = gain.reshape(-1).astype(np.float32)
            offset_row = (dark.reshape(-1).astype(np.float32) * gain_row).astype(np.float32)
            cached = (
                np.ascontiguousarray(np.broadcast_to(gain_row, (CHUNK_ROWS, gain_row.size))),
                np.ascontiguousarray(np.broadcast_to(offset_row, (CHUNK_ROWS, offset_row.size))),
            )
            self._blocks[key] = cached
        return cached

    def _interpolate_bad_columns(self, image: np.ndarray) -> None:
        if self._fill is None:
            return
        bad, left, right, weight = self._fill
        w = weight[None, :] if image.ndim == 2 else weight[None, :, None]
        mixed = image[:, left].astype(np.float32) * (1.0 - w) + image[:, right].astype(np.float32) * w
        image[:, bad] = np.rint(mixed).astype(np.uint8)


def _neighbours(bad: tuple[int, ...], width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each bad column: nearest good column to the left and right, and the weight of the right one."""
    good = np.setdiff1d(np.arange(width), np.asarray(bad))
    if good.size == 0:
        raise CalibrationError("flat field marks every column dead or hot; the calibration is unusable")
    cols = np.asarray(bad)
    idx = np.searchsorted(good, cols)
    left = good[np.clip(idx - 1, 0, good.size - 1)]
    right = good[np.clip(idx, 0, good.size - 1)]
    left = np.where(idx == 0, right, left)
    right = np.where(idx == good.size, left, right)
    span = (right - left).astype(np.float32)
    weight = np.where(span > 0, (cols - left) / np.where(span > 0, span, 1), 0.0).astype(np.float32)
    return left, right, weight


@dataclass(frozen=True)
class Calibration:
    """Millimetres per pixel across, per line along, optional lens model and flat field."""

    mm_per_px_x: float
    mm_per_line: float
    width_px: int | None = None
    distortion: LensPolynomial | None = None
    flat_field: FlatField | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    source: Path | None = None

    # -- geometry ---------------------------------------------------------------------------
    def px_to_mm_x(self, px: np.ndarray | float) -> np.ndarray:
        """Across-web position in mm of a (continuous) pixel coordinate."""
        if self.distortion is not None:
            return self.distortion(px)
        return np.asarray(px, dtype=np.float64) * self.mm_per_px_x

    def mm_to_px_x(self, x_mm: np.ndarray | float) -> np.ndarray:
        """Inverse of px_to_mm_x (exact to ~1e-6 px with a lens model)."""
        x = np.asarray(x_mm, dtype=np.float64)
        if self.distortion is None:
            return x / self.mm_per_px_x
        width = self.width_px or 1
        grid = np.linspace(0.0, float(width), 4 * width + 1)
        px = np.interp(x, self.distortion(grid), grid, left=np.nan, right=np.nan)
        outside = np.isnan(px)
        if np.any(outside):  # beyond the line: continue with the local slope at the ends
            edge = np.where(x < self.distortion(0.0), 0.0, float(width))
            px = np.where(
                outside, edge + (x - self.distortion(edge)) / self.distortion.slope_mm_per_px(edge), px
            )
        for _ in range(2):  # Newton steps on the interpolated start
            px = px - (self.distortion(px) - x) / self.distortion.slope_mm_per_px(px)
        return px

    def lines_to_mm(self, lines: np.ndarray | float) -> np.ndarray:
        return np.asarray(lines, dtype=np.float64) * self.mm_per_line

    def mm_to_lines(self, y_mm: np.ndarray | float) -> np.ndarray:
        return np.asarray(y_mm, dtype=np.float64) / self.mm_per_line

    # -- pixels -----------------------------------------------------------------------------
    def check_width(self, width_px: int) -> None:
        """Raise CalibrationError when the camera's line width is not the calibrated one."""
        if self.width_px is not None and width_px != self.width_px:
            where = f" ({self.source})" if self.source else ""
            raise CalibrationError(
                f"calibration{where} was made for lines of {self.width_px} px, the camera delivers {width_px} px; "
                f"set the camera's Width node to {self.width_px} or re-run `loomsight calib` at {width_px} px"
            )

    def apply_flat_field(self, pixels: np.ndarray) -> np.ndarray:
        """Flat-field corrected copy (uint8 in, uint8 out); the pixels unchanged when there is no flat field."""
        if self.flat_field is None:
            return pixels
        return self.flat_field.apply(pixels)

    # -- files ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | str) -> Calibration:
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(
                f"calibration file {path} does not exist; create it with `loomsight calib write` "
                "or remove [calibration] path from the config"
            )
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"{path}: not a JSON calibration file ({exc})") from None
        return _from_document(doc, path)

    def to_document(
        self, flat_field_file: str | None = None, flat_field_sha256: str | None = None
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "width_px": self.width_px,
            "mm_per_px_x": self.mm_per_px_x,
            "mm_per_line": self.mm_per_line,
            "distortion": self.distortion.to_dict() if self.distortion else None,
            "flat_field": None,
            "provenance": dict(self.provenance),
        }
        if self.flat_field is not None:
            doc["flat_field"] = {
                "file": flat_field_file,
                "sha256": flat_field_sha256,
                "target_level": self.flat_field.target_level,
                "dead_columns": list(self.flat_field.dead_columns),
                "hot_columns": list(self.flat_field.hot_columns),
            }
        return doc

    def save(self, path: Path | str) -> Path:
        """Write the JSON (and `<stem>.flatfield.npz` beside it) atomically; returns the JSON path."""
        path = Path(path)
        if self.width_px is None:
            raise CalibrationError("a calibration file needs width_px (the camera line width)")
        _validate(self, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        npz_name = sha = None
        ff = self.flat_field
        if ff is not None:
            npz_name = f"{path.stem}.flatfield.npz"
            npz_path = path.with_name(npz_name)
            _atomic_write(npz_path, lambda f: np.savez(f, dark=ff.dark, gain=ff.gain))
            sha = sha256_of(npz_path)
        text = json.dumps(self.to_document(npz_name, sha), indent=2) + "\n"
        _atomic_write(path, lambda f: f.write(text.encode()))
        return path


def calibration_from_config(config: CalibrationConfig) -> Calibration | None:
    """The calibration a config asks for: its file (which wins), its two numbers, or None."""
    if config.path is not None:
        calibration = Calibration.load(config.path)
        for key in ("mm_per_px_x", "mm_per_line"):
            given = getattr(config, key)
            if given is not None and not math.isclose(given, getattr(calibration, key), rel_tol=1e-6):
                log.warning(
                    "calibration.%s = %s ignored: %s says %s",
                    key,
                    given,
                    config.path,
                    getattr(calibration, key),
                )
        return calibration
    if config.mm_per_px_x is None and config.mm_per_line is None:
        return None
    if config.mm_per_px_x is None or config.mm_per_line is None:
        missing = "mm_per_px_x" if config.mm_per_px_x is None else "mm_per_line"
        raise ConfigError(f"calibration.{missing} is missing: give both numbers, or a calibration.path")
    return Calibration(mm_per_px_x=config.mm_per_px_x, mm_per_line=config.mm_per_line)


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _positive(doc: Mapping[str, Any], key: str, path: Path, what: str) -> float:
    value = doc.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise CalibrationError(f"{path}: {key} = {value!r}: must be a positive number ({what})")
    return float(value)


def _columns(values: Any, key: str, width: int, path: Path) -> tuple[int, ...]:
    if not isinstance(values, list) or not all(isinstance(v, int) and 0 <= v < width for v in values):
        raise CalibrationError(f"{path}: flat_field.{key} must be a list of column indices in [0, {width})")
    return tuple(sorted(set(values)))


def _from_document(doc: Any, path: Path) -> Calibration:
    if not isinstance(doc, dict):
        raise CalibrationError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != SCHEMA:
        raise CalibrationError(
            f"{path}: schema = {doc.get('schema')!r}, expected {SCHEMA!r} (written by `loomsight calib write`)"
        )
    unknown = sorted(set(doc) - TOP_LEVEL_KEYS)
    if unknown:
        raise CalibrationError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    width = doc.get("width_px")
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise CalibrationError(f"{path}: width_px = {width!r}: must be the camera line width in pixels")
    mm_per_px_x = _positive(doc, "mm_per_px_x", path, "millimetres per pixel across the web")
    mm_per_line = _positive(doc, "mm_per_line", path, "millimetres of web per camera line")
    distortion = _distortion(doc.get("distortion"), path)
    flat_field = _flat_field(doc.get("flat_field"), width, path)
    provenance = doc.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise CalibrationError(f"{path}: provenance must be an object")
    calibration = Calibration(mm_per_px_x, mm_per_line, width, distortion, flat_field, provenance, path)
    _validate(calibration, path)
    return calibration


def _distortion(raw: Any, path: Path) -> LensPolynomial | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("model") != "polynomial" or set(raw) - DISTORTION_KEYS:
        raise CalibrationError(
            f"{path}: distortion must be {{'model': 'polynomial', 'center_px', 'scale_px', 'coeffs_mm'}}, got {raw!r}"
        )
    coeffs = raw.get("coeffs_mm")
    if not isinstance(coeffs, list) or len(coeffs) < 2 or not all(isinstance(c, int | float) for c in coeffs):
        raise CalibrationError(f"{path}: distortion.coeffs_mm must be a list of at least 2 numbers")
    center = raw.get("center_px")
    if isinstance(center, bool) or not isinstance(center, int | float):
        raise CalibrationError(f"{path}: distortion.center_px = {center!r}: must be a number of pixels")
    scale = _positive(raw, "scale_px", path, "pixels per unit of the polynomial's variable")
    return LensPolynomial(tuple(float(c) for c in coeffs), float(center), scale)


def _flat_field(raw: Any, width: int, path: Path) -> FlatField | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - FLAT_FIELD_KEYS or not {"file", "sha256"} <= set(raw):
        raise CalibrationError(
            f"{path}: flat_field needs 'file' and 'sha256' (allowed keys: {sorted(FLAT_FIELD_KEYS)})"
        )
    name = raw["file"]
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise CalibrationError(
            f"{path}: flat_field.file = {name!r}: must be a file name beside the JSON, no folders"
        )
    npz = path.with_name(name)
    if not npz.is_file():
        raise CalibrationError(f"{path}: flat-field file {npz} is missing; copy it beside the JSON")
    actual = sha256_of(npz)
    if actual != raw["sha256"]:
        raise CalibrationError(
            f"{npz}: sha256 {actual} does not match {raw['sha256']!r} in {path.name}; the .npz was changed or "
            "belongs to another calibration; re-run `loomsight calib write`"
        )
    try:
        with np.load(npz, allow_pickle=False) as arrays:
            dark = np.asarray(arrays["dark"], dtype=np.float32)
            gain = np.asarray(arrays["gain"], dtype=np.float32)
    except (KeyError, ValueError, OSError) as exc:
        raise CalibrationError(
            f"{npz}: not a flat-field archive with 'dark' and 'gain' arrays ({exc})"
        ) from None
    if dark.shape != gain.shape or dark.ndim not in (1, 2) or dark.shape[0] != width:
        raise CalibrationError(
            f"{npz}: dark {dark.shape} and gain {gain.shape} must both be ({width},) or ({width}, channels)"
        )
    if not (np.all(np.isfinite(dark)) and np.all(np.isfinite(gain)) and np.all(gain > 0)):
        raise CalibrationError(f"{npz}: dark/gain contain NaN, Inf or non-positive gains")
    target = raw.get("target_level", 0.0)
    return FlatField(
        dark,
        gain,
        float(target) if isinstance(target, int | float) else 0.0,
        _columns(raw.get("dead_columns", []), "dead_columns", width, path),
        _columns(raw.get("hot_columns", []), "hot_columns", width, path),
    )


def _validate(calibration: Calibration, path: Path) -> None:
    lens, width = calibration.distortion, calibration.width_px
    if lens is not None and width:
        grid = np.linspace(0.0, float(width), 257)
        if np.any(lens.slope_mm_per_px(grid) <= 0):
            raise CalibrationError(
                f"{path}: the distortion polynomial is not increasing across 0..{width} px"
            )
        mean = float(lens(float(width)) - lens(0.0)) / width
        if abs(mean / calibration.mm_per_px_x - 1) > MEAN_SCALE_TOLERANCE:
            raise CalibrationError(
                f"{path}: mm_per_px_x = {calibration.mm_per_px_x} but the distortion polynomial's mean is "
                f"{mean:.6g} mm/px; they must agree within {MEAN_SCALE_TOLERANCE:.0%}"
            )
    ff = calibration.flat_field
    if ff is not None and width is not None and ff.width_px != width:
        raise CalibrationError(f"{path}: flat field is {ff.width_px} px wide, width_px is {width}")
