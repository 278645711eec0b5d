"""Flat-field reference: per-column dark level and gain from dark and bright captures.

Dark: lens capped (or lights off), the camera's offset per column. Bright: a uniform white
reference (or the bare backlight) under production exposure; vignetting and lighting fall-off make
it darker toward the ends of the line. The gain brings every column of the bright reference to
one target level: corrected = (raw - dark) * gain.

Columns are flagged, not silently corrected:
- dead: responds with less than `dead_fraction` of its neighbours' signal (a running median);
- hot: its dark level stands more than `hot_dn` above its neighbours';
- saturated: the bright reference is clipped there (too much exposure: the gain would be wrong).
Dead and hot columns are interpolated from their neighbours at run time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import CalibrationError

log = logging.getLogger(__name__)

FLATFIELD_KIND = "loomsight.flatfield-reference/1"
MIN_SIGNAL_DN = 10.0
HIGH_GAIN_WARNING = 4.0


@dataclass(frozen=True, eq=False)
class FlatFieldResult:
    dark: np.ndarray  # float32 (W,) or (W, C)
    gain: np.ndarray  # float32, same shape; 1.0 on dead/hot columns
    bright: np.ndarray  # float32 mean of the bright reference (for the plot and the audit)
    target_level: float
    dead_columns: tuple[int, ...]
    hot_columns: tuple[int, ...]
    saturated_columns: tuple[int, ...]
    inputs: dict[str, Any] = field(default_factory=dict)
    dark_std: np.ndarray | None = None  # temporal noise per column (std over lines), for the plot
    bright_std: np.ndarray | None = None

    @property
    def width_px(self) -> int:
        return int(self.dark.shape[0])

    @property
    def channels(self) -> int:
        return 1 if self.dark.ndim == 1 else int(self.dark.shape[1])

    @property
    def good(self) -> np.ndarray:
        mask = np.ones(self.width_px, dtype=bool)
        mask[list(self.dead_columns) + list(self.hot_columns)] = False
        return mask

    def corrected_bright(self) -> np.ndarray:
        """The bright reference after correction, bad columns interpolated as the runtime does."""
        corrected = _per_column((self.bright - self.dark) * self.gain).copy()
        good = self.good
        columns = np.arange(self.width_px)
        for channel in range(corrected.shape[1]):
            corrected[~good, channel] = np.interp(columns[~good], columns[good], corrected[good, channel])
        return corrected[:, 0] if self.dark.ndim == 1 else corrected

    def summary(self) -> str:
        gains = self.gain[self.good]
        return (
            f"{self.width_px} px x {self.channels} channel(s), target {self.target_level:.1f} DN, "
            f"gain {gains.min():.3f}..{gains.max():.3f}, dark {self.dark[self.good].mean():.2f} DN mean, "
            f"{len(self.dead_columns)} dead {list(self.dead_columns)[:10]}, "
            f"{len(self.hot_columns)} hot {list(self.hot_columns)[:10]}, "
            f"{len(self.saturated_columns)} saturated"
        )


def running_median(values: np.ndarray, window_px: int) -> np.ndarray:
    """Median over a centred window along the line (edges padded by reflection)."""
    half = window_px // 2
    padded = np.pad(values, half, mode="reflect")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=-1)


def _per_column(values: np.ndarray) -> np.ndarray:
    """(W,) or (W, C) -> (W, C) view for per-channel work."""
    return values[:, None] if values.ndim == 1 else values


def compute_flat_field(
    dark_mean: np.ndarray,
    bright_mean: np.ndarray,
    *,
    target_level: float | None = None,
    dead_fraction: float = 0.5,
    hot_dn: float = 10.0,
    saturation_dn: float = 250.0,
    window_px: int = 51,
    inputs: dict[str, Any] | None = None,
    dark_std: np.ndarray | None = None,
    bright_std: np.ndarray | None = None,
) -> FlatFieldResult:
    """Dark and gain per column from the mean dark and bright lines.

    `target_level` is the level a white reference reads after correction; by default the 95th
    percentile of the good columns' signal (the centre of the line keeps its brightness, the
    vignetted ends are lifted to it).
    """
    if dark_mean.shape != bright_mean.shape:
        raise CalibrationError(
            f"dark captures are {dark_mean.shape} (width x channels), bright ones {bright_mean.shape}: "
            "take both with the same camera settings"
        )
    dark = _per_column(np.asarray(dark_mean, dtype=np.float64))
    bright = _per_column(np.asarray(bright_mean, dtype=np.float64))
    width = dark.shape[0]
    if width < 8:
        raise CalibrationError(f"lines of {width} px are too short for a flat field")
    window = max(3, min(window_px, (width // 2) * 2 - 1) | 1)
    signal = bright - dark
    median_signal = float(np.median(signal))
    if median_signal < MIN_SIGNAL_DN:
        raise CalibrationError(
            f"the bright reference is only {median_signal:.1f} DN above the dark one (need >= {MIN_SIGNAL_DN:g}); "
            "check the lighting and exposure, or whether --dark and --bright are swapped"
        )
    dead = np.zeros(width, dtype=bool)
    hot = np.zeros(width, dtype=bool)
    for channel in range(signal.shape[1]):
        local_signal = running_median(signal[:, channel], window)
        local_dark = running_median(dark[:, channel], window)
        dead |= signal[:, channel] < dead_fraction * local_signal
        hot |= dark[:, channel] - local_dark > hot_dn
    hot &= ~dead
    good = ~(dead | hot)
    saturated = np.any(bright >= saturation_dn, axis=1) & good  # bad columns are interpolated anyway
    if not good.any():
        raise CalibrationError("every column is dead or hot; check the captures")
    if target_level is None:
        target_level = float(np.percentile(signal[good], 95))
    if target_level <= 0 or target_level > 255:
        raise CalibrationError(f"target level {target_level} DN must be in (0, 255]")
    gain = np.ones_like(signal)
    gain[good] = target_level / np.maximum(signal[good], 1e-3)
    dark_out = dark.copy()
    dark_out[~good] = 0.0
    if saturated.any():
        log.warning(
            "bright reference saturated (>= %g DN) in %d columns: lower the exposure and capture again",
            saturation_dn,
            int(saturated.sum()),
        )
    if gain[good].max() > HIGH_GAIN_WARNING:
        log.warning(
            "gain reaches %.1f: noise is amplified that much there; improve the lighting toward the ends of the line",
            float(gain[good].max()),
        )
    squeeze = dark_mean.ndim == 1
    return FlatFieldResult(
        dark=(dark_out[:, 0] if squeeze else dark_out).astype(np.float32),
        gain=(gain[:, 0] if squeeze else gain).astype(np.float32),
        bright=(bright[:, 0] if squeeze else bright).astype(np.float32),
        target_level=float(target_level),
        dead_columns=tuple(int(c) for c in np.flatnonzero(dead)),
        hot_columns=tuple(int(c) for c in np.flatnonzero(hot)),
        saturated_columns=tuple(int(c) for c in np.flatnonzero(saturated)),
        inputs=inputs or {},
        dark_std=None if dark_std is None else np.asarray(dark_std, dtype=np.float32),
        bright_std=None if bright_std is None else np.asarray(bright_std, dtype=np.float32),
    )


def save_reference(result: FlatFieldResult, path: Path) -> Path:
    """The `flatfield` command's output: arrays plus flags and inputs (no pickle)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "kind": FLATFIELD_KIND,
        "target_level": result.target_level,
        "dead_columns": list(result.dead_columns),
        "hot_columns": list(result.hot_columns),
        "saturated_columns": list(result.saturated_columns),
        "inputs": result.inputs,
    }
    with path.open("wb") as handle:
        arrays = {
            "dark": result.dark,
            "gain": result.gain,
            "bright": result.bright,
            "meta": np.array(json.dumps(meta)),
        }
        if result.dark_std is not None and result.bright_std is not None:
            arrays |= {"dark_std": result.dark_std, "bright_std": result.bright_std}
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    return path


def load_reference(path: Path) -> FlatFieldResult:
    if not path.is_file():
        raise CalibrationError(
            f"{path}: no such flat-field reference; make one with `loomsight calib flatfield`"
        )
    try:
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            dark, gain, bright = (np.asarray(arrays[k], dtype=np.float32) for k in ("dark", "gain", "bright"))
            stds = [
                np.asarray(arrays[k], np.float32) if k in arrays else None for k in ("dark_std", "bright_std")
            ]
    except (KeyError, ValueError, OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(
            f"{path}: not a flat-field reference from `loomsight calib flatfield` ({exc})"
        ) from None
    if meta.get("kind") != FLATFIELD_KIND:
        raise CalibrationError(f"{path}: kind {meta.get('kind')!r}, expected {FLATFIELD_KIND!r}")
    return FlatFieldResult(
        dark,
        gain,
        bright,
        float(meta["target_level"]),
        tuple(meta["dead_columns"]),
        tuple(meta["hot_columns"]),
        tuple(meta["saturated_columns"]),
        meta.get("inputs", {}),
        stds[0],
        stds[1],
    )


CHANNEL_COLORS = [(200, 90, 0), (0, 150, 0), (0, 0, 200)]  # B, G, R
DEAD_COLOR = (0, 0, 230)
HOT_COLOR = (0, 140, 255)
SATURATED_COLOR = (200, 0, 200)


def plot_flat_field(result: FlatFieldResult, path: Path, title: str = "Flat-field reference") -> Path:
    """PNG of the dark and bright levels, the gain, and the corrected bright reference across the line."""
    from calib.plot import Panel, Series, draw_panels, save_png

    def series(values: np.ndarray, label: str, gray: tuple[int, int, int]) -> list[Series]:
        per = _per_column(values)
        if per.shape[1] == 1:
            return [Series(label, per[:, 0], gray)]
        return [Series(f"{label} {'BGR'[c]}", per[:, c], CHANNEL_COLORS[c % 3]) for c in range(per.shape[1])]

    marks = (
        [(c, DEAD_COLOR) for c in result.dead_columns]
        + [(c, HOT_COLOR) for c in result.hot_columns]
        + [(c, SATURATED_COLOR) for c in result.saturated_columns]
    )
    panels = [
        Panel(
            "Mean level of the captures (green: target)",
            "DN",
            series(result.bright, "bright", (0, 110, 230)) + series(result.dark, "dark", (90, 60, 20)),
            hline=result.target_level,
        ),
        Panel(
            f"Gain (red ticks: {len(result.dead_columns)} dead, orange: {len(result.hot_columns)} hot, "
            f"magenta: {len(result.saturated_columns)} saturated)",
            "gain",
            series(result.gain, "gain", (120, 40, 120)),
            marks=marks,
            hline=1.0,
        ),
        Panel(
            "Bright reference after correction (dead and hot columns interpolated)",
            "DN",
            series(np.clip(result.corrected_bright(), 0, 255), "corrected", (60, 60, 60)),
            hline=result.target_level,
        ),
    ]
    if result.dark_std is not None and result.bright_std is not None:
        panels[-1] = Panel(
            "Noise over lines (std; a raised bright curve means flicker or a moving reference)",
            "DN",
            series(result.bright_std, "bright", (0, 110, 230))
            + series(result.dark_std, "dark", (90, 60, 20)),
        )
    return save_png(draw_panels(panels, f"{title}: {result.summary()}", "column (px)"), path)
