"""What every detector backend offers the pipeline, and the shared input preparation."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from runtime.detect.decode import DecodeStats
from runtime.detect.manifest import InputSpec, ModelManifest
from runtime.detections import Detections


class Detector(Protocol):
    """Runs the model on a batch of uint8 tiles and returns one Detections per tile (tile pixels)."""

    manifest: ModelManifest
    decode_stats: DecodeStats

    @property
    def providers(self) -> list[str]: ...

    def warmup(self, runs: int) -> None: ...

    def infer(self, tiles: np.ndarray) -> list[Detections]: ...

    def close(self) -> None: ...


def prepare_batch(tiles: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 tiles (N, H, W) gray or (N, H, W, 3) RGB -> the model's NCHW tensor, normalised."""
    if tiles.dtype != np.uint8:
        raise ValueError(f"tiles must be uint8, got {tiles.dtype}")
    if tiles.ndim == 3:
        x = tiles[:, None, :, :]
        if spec.channels == 3:
            x = np.repeat(x, 3, axis=1)
    elif tiles.ndim == 4 and tiles.shape[3] in (1, 3):
        x = tiles.transpose(0, 3, 1, 2)
        if x.shape[1] != spec.channels:
            x = np.repeat(x[:, :1], spec.channels, axis=1)
    else:
        raise ValueError(f"tiles must be (N, H, W) or (N, H, W, 3), got {tiles.shape}")
    if x.shape[2] != spec.size_px or x.shape[3] != spec.size_px:
        raise ValueError(
            f"tiles are {x.shape[2]}x{x.shape[3]} px; the model takes {spec.size_px}x{spec.size_px}"
        )
    if spec.dtype == "uint8":
        return np.ascontiguousarray(x)
    norm = spec.normalization
    dtype = np.float16 if spec.dtype == "float16" else np.float32
    out = x.astype(np.float32) * np.float32(norm.scale)
    if any(norm.mean) or any(s != 1.0 for s in norm.std):
        mean = np.asarray(norm.mean[: spec.channels], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(norm.std[: spec.channels], np.float32).reshape(1, -1, 1, 1)
        out = (out - mean) / std
    return np.ascontiguousarray(out.astype(dtype, copy=False))


def threshold_vector(manifest: ModelManifest, overrides: dict[str, float]) -> np.ndarray:
    """One threshold per class: config overrides win over the manifest's tuned values."""
    unknown = sorted(set(overrides) - set(manifest.classes))
    if unknown:
        from runtime.errors import ConfigError

        raise ConfigError(
            f"model.thresholds names classes the model does not have: {unknown}; the model's classes are "
            f"{manifest.classes}"
        )
    return np.array(
        [overrides.get(c, manifest.threshold_for(c)) for c in manifest.classes],
        dtype=np.float32,
    )
