"""Reading calibration captures: one image or a folder of them, reduced to per-column statistics."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import CalibrationError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".pgm", ".ppm", ".jpg", ".jpeg", ".npy")


def image_files(path: Path) -> list[Path]:
    """The image at `path`, or the images in the folder `path`, sorted by name."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise CalibrationError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    raise CalibrationError(f"{path}: no such image or folder")


def read_image(path: Path) -> np.ndarray:
    """HxW gray or HxWx3 BGR uint8 pixels; 16-bit, float or other layouts are refused by name."""
    if path.suffix.lower() == ".npy":
        try:
            pixels = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise CalibrationError(f"{path}: not a plain .npy array ({exc})") from None
    else:
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise CalibrationError(f"{path}: OpenCV cannot read this image")
    if pixels.dtype != np.uint8:
        raise CalibrationError(
            f"{path}: pixels are {pixels.dtype}; the runtime works on 8-bit lines, capture with PixelFormat=Mono8 "
            "(or BGR8) for calibration"
        )
    if pixels.ndim == 1:
        pixels = pixels[None, :]
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2BGR)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise CalibrationError(f"{path}: expected HxW gray or HxWx3 colour pixels, got shape {pixels.shape}")
    return pixels


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def iter_images(path: Path) -> Iterator[tuple[Path, np.ndarray]]:
    for file in image_files(path):
        yield file, read_image(file)


@dataclass
class ColumnStats:
    """Running per-column mean and spread over every line of every image (float64 sums)."""

    label: str
    width_px: int | None = None
    channels: int | None = None
    lines: int = 0
    files: list[dict[str, str | int]] = field(default_factory=list)
    _sum: np.ndarray | None = None
    _sum_sq: np.ndarray | None = None

    def add(self, file: Path, pixels: np.ndarray) -> None:
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        if self.width_px is None:
            self.width_px, self.channels = int(pixels.shape[1]), channels
        if pixels.shape[1] != self.width_px or channels != self.channels:
            raise CalibrationError(
                f"{file}: {pixels.shape[1]} px x {channels} channel(s), but the first {self.label} image was "
                f"{self.width_px} px x {self.channels}; every capture must come from the same camera settings"
            )
        values = pixels.astype(np.float64).reshape(pixels.shape[0], -1)
        if self._sum is None or self._sum_sq is None:
            self._sum = np.zeros(values.shape[1])
            self._sum_sq = np.zeros(values.shape[1])
        self._sum += values.sum(axis=0)
        self._sum_sq += np.square(values).sum(axis=0)
        self.lines += int(pixels.shape[0])
        self.files.append({"file": file.name, "sha256": file_sha256(file), "lines": int(pixels.shape[0])})

    def _shape(self, flat: np.ndarray) -> np.ndarray:
        return flat if self.channels == 1 else flat.reshape(-1, self.channels or 1)

    @property
    def mean(self) -> np.ndarray:
        if self._sum is None:
            raise CalibrationError(f"no {self.label} lines were read")
        return self._shape(self._sum / self.lines)

    @property
    def std(self) -> np.ndarray:
        if self._sum is None or self._sum_sq is None:
            raise CalibrationError(f"no {self.label} lines were read")
        mean = self._sum / self.lines
        return self._shape(np.sqrt(np.maximum(self._sum_sq / self.lines - mean**2, 0.0)))


def column_stats(path: Path, label: str) -> ColumnStats:
    """Average every line of every image under `path`, logging progress per file."""
    files = image_files(path)
    stats = ColumnStats(label)
    for index, file in enumerate(files, 1):
        stats.add(file, read_image(file))
        log.info("%s: %d/%d files, %d lines averaged", label, index, len(files), stats.lines)
    return stats
