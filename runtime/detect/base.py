"""What every detector backend offers the pipeline, the base that backends share, and input preparation.

A backend is a `BaseDetector` subclass that says how to run the model (`raw`: uint8 tiles in, the
model's raw output out), which devices it runs on (`providers`) and how to let go of them
(`close`); the base decodes the raw output through the manifest's output format
(runtime/detect/outputs.py), applies the class thresholds and keeps the decode statistics. Backends
are registered by name in runtime/detect/backends.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import numpy as np

from runtime.detect.decode import DecodeStats
from runtime.detect.manifest import InputSpec, ModelManifest
from runtime.detect.outputs import output_format
from runtime.detections import Detections
from runtime.errors import ModelError


class Detector(Protocol):
    """Runs the model on a batch of uint8 tiles and returns one Detections per tile (tile pixels)."""

    manifest: ModelManifest
    decode_stats: DecodeStats

    @property
    def providers(self) -> list[str]: ...

    def warmup(self, runs: int) -> None: ...

    def infer(self, tiles: np.ndarray) -> list[Detections]: ...

    def close(self) -> None: ...


class BaseDetector(ABC):
    """The part of every backend that is not about running the model: thresholds, decoding, warm-up."""

    def __init__(
        self, manifest: ModelManifest, *, thresholds: dict[str, float] | None = None,
        unknown_threshold: float | None = None,
    ) -> None:  # fmt: skip
        self.manifest = manifest
        self.decode_stats = DecodeStats()
        self._thresholds = threshold_vector(manifest, thresholds or {})
        self._format = output_format(manifest)
        if unknown_threshold is not None and not self._format.open_set:
            raise ModelError(
                f"model.unknown_defects is on, but {manifest.name!r} has a {manifest.output.format!r} output, "
                "which has no class-agnostic channel; use a dense (mask) bundle or switch unknown_defects off"
            )
        self._unknown = unknown_threshold

    @property
    @abstractmethod
    def providers(self) -> list[str]:
        """Where the model runs, as the backend reports it (e.g. ONNX Runtime's providers in use)."""

    @abstractmethod
    def raw(self, tiles: np.ndarray) -> np.ndarray:
        """The model's raw output for a batch of uint8 tiles (N, H, W) or (N, H, W, 3)."""

    @abstractmethod
    def close(self) -> None:
        """Release the model and its device memory; idempotent."""

    @property
    def warmup_batch(self) -> int:
        """The batch size warm-up runs use (a backend with a fixed batch says so)."""
        return 1

    def warmup(self, runs: int) -> None:
        size = self.manifest.input.size_px
        dummy = np.full((self.warmup_batch, size, size), 128, np.uint8)
        for _ in range(runs):
            self.infer(dummy)

    def infer(self, tiles: np.ndarray) -> list[Detections]:
        """One `Detections` per tile, in tile pixels, each class at its threshold."""
        if len(tiles) == 0:
            return []
        return self._format.decode(
            self.raw(tiles), self.manifest, self._thresholds, self.decode_stats, self._unknown
        )


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
