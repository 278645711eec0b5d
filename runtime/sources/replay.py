"""Replay a recorded web: one tall image, or a folder of images whose rows continue one another.

Images are read with OpenCV as 8-bit gray or BGR (16-bit images are scaled to 8 bits, alpha is
dropped). In a folder, files are taken in name order and are contiguous: the first row of file
`k+1` is the web line after the last row of file `k`. `read` returns blocks of `block_lines`
lines (the last block of a finite replay may be shorter); blocks may span file boundaries.

With `realtime`, a block is released when the camera would have finished acquiring its last line
at `line_rate_hz`, counted from `start()`. With `loop`, the replay starts again at the first file
and `line0` keeps increasing (the web is as if it ran on), so it never finishes.

Problems with the input are errors, not faults to ride out: a missing path, an empty folder, a file
OpenCV cannot read, or an image whose width or colour layout differs from the first one raise
`CameraError` naming the file (from `start()` when they can be seen without decoding everything,
otherwise from the `read()` that reaches the file); those found by `read()` are `SourceInputError`,
which the pipeline does not retry (it stops the daemon at once, naming the file).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from runtime.config import ReplaySourceConfig
from runtime.errors import CameraError, SourceInputError
from runtime.frame import Frame
from runtime.sources.base import SourceState, SourceStatus

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".pgm", ".ppm", ".pnm", ".webp")


def list_replay_files(path: Path) -> list[Path]:
    """The images a replay path stands for, in web order; CameraError when there are none."""
    if not path.exists():
        raise CameraError(
            f"replay path {path} does not exist; set source.replay.path to an image or a folder"
        )
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CameraError(
            f"replay folder {path} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}); "
            "point source.replay.path at a folder of web images or one tall image"
        )
    return files


def _load(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR)
    if image is None or image.size == 0:
        raise SourceInputError(
            f"replay image {path} cannot be read (not an image OpenCV can decode, or truncated)"
        )
    if image.dtype != np.uint8:  # IMREAD_ANYCOLOR already scales to 8 bits; be sure
        image = cv2.convertScaleAbs(image)
    return np.ascontiguousarray(image)


class ReplaySource:
    """A `FrameSource` over recorded images (see module doc)."""

    def __init__(self, config: ReplaySourceConfig) -> None:
        self.config = config
        self._files = list_replay_files(Path(config.path))
        self._stop_event = threading.Event()
        self._state: SourceState = "idle"
        self._frames = 0
        self._seq = 0
        self._next_line = 0
        self._file_index = 0
        self._image: np.ndarray | None = None  # the file being read
        self._row = 0  # next row of `_image`
        self._layout: tuple[int, ...] | None = None  # (width,) or (width, 3)
        self._ready: Frame | None = None  # a block built but not yet due (pacing)
        self._t0 = 0.0
        self._passes = 0

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    @property
    def live(self) -> bool:
        return False

    @property
    def advance_lines_per_frame(self) -> int | None:
        return None

    @property
    def finished(self) -> bool:
        return self._state == "finished"

    def start(self) -> None:
        for f in self._files:
            if not cv2.haveImageReader(str(f)):
                raise CameraError(f"replay image {f} cannot be read: OpenCV has no decoder for its contents")
        first = _load(self._files[0])
        self._layout = tuple(first.shape[1:])
        self._image, self._row, self._file_index = first, 0, 0
        self._stop_event.clear()
        self._state = "running"
        self._t0 = time.monotonic()
        log.info(
            "replay of %d file(s) from %s: %d px wide, %s, blocks of %d lines%s",
            len(self._files),
            self.config.path,
            first.shape[1],
            "gray" if first.ndim == 2 else "BGR",
            self.config.block_lines,
            f", paced at {self.config.line_rate_hz} lines/s" if self.config.realtime else "",
        )

    def stop(self) -> None:
        self._stop_event.set()
        if self._state not in ("finished", "idle"):
            self._state = "stopped"
        self._image = None
        self._ready = None

    def status(self) -> SourceStatus:
        return SourceStatus(
            state=self._state,
            frames=self._frames,
            next_line=self._next_line,
            source=f"replay:{self.config.path}",
        )

    def read(self, *, timeout_s: float) -> Frame | None:
        if self._state == "idle":
            raise CameraError("replay source read before start(); call start() first")
        if self._state != "running":
            return None
        if self._ready is None:
            self._ready = self._next_block()
            if self._ready is None:
                self._state = "finished"
                log.info("replay finished after %d lines in %d frames", self._next_line, self._frames)
                return None
        if self.config.realtime and self.config.line_rate_hz:
            due = self._t0 + (self._ready.line0 + self._ready.height) / self.config.line_rate_hz
            wait_s = due - time.monotonic()
            if wait_s > timeout_s:
                self._stop_event.wait(timeout_s)
                return None
            if wait_s > 0 and self._stop_event.wait(wait_s):
                return None
        block, self._ready = self._ready, None
        block = Frame(
            pixels=block.pixels,
            seq=block.seq,
            timestamp_ns=time.time_ns(),
            line0=block.line0,
            source=block.source,
            meta=block.meta,
        )
        self._frames += 1
        return block

    # ----------------------------------------------------------------------------- internals
    def _advance_file(self) -> bool:
        """Move to the next file (wrapping when looping); False at the end of a finite replay."""
        index = self._file_index + 1
        if index >= len(self._files):
            if not self.config.loop:
                self._image = None
                return False
            index = 0
            self._passes += 1
        path = self._files[index]
        image = self._image if len(self._files) == 1 and self._image is not None else _load(path)
        if tuple(image.shape[1:]) != self._layout:
            raise SourceInputError(
                f"replay image {path} is {_describe(image.shape[1:])} but {self._files[0].name} is "
                f"{_describe(self._layout or ())}; all images of a replay must have the same width and colour"
            )
        self._image, self._row, self._file_index = image, 0, index
        return True

    def _current_rows(self) -> np.ndarray | None:
        """The image with rows left to read (moving on to the next file as needed); None at the end."""
        while self._image is not None and self._row >= len(self._image):
            if not self._advance_file():
                return None
        return self._image

    def _next_block(self) -> Frame | None:
        want = self.config.block_lines
        parts: list[np.ndarray] = []
        if self._current_rows() is None:
            return None
        meta = {"file": self._files[self._file_index].name, "row": self._row, "pass": self._passes}
        got = 0
        while got < want:
            image = self._current_rows()
            if image is None:
                break
            n = min(want - got, len(image) - self._row)
            parts.append(image[self._row : self._row + n])
            self._row += n
            got += n
        pixels = parts[0].copy() if len(parts) == 1 else np.concatenate(parts, axis=0)
        frame = Frame(
            pixels=pixels,
            seq=self._seq,
            timestamp_ns=0,
            line0=self._next_line,
            source=f"replay:{Path(self.config.path).name}",
            meta=meta,
        )
        self._seq += 1
        self._next_line += got
        return frame


def _describe(shape: tuple[int, ...]) -> str:
    if not shape:
        return "unknown"
    return f"{shape[0]} px wide {'gray' if len(shape) == 1 else 'BGR'}"
