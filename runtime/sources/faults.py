"""Fault injection for tests and drills: cameras that misbehave on a schedule.

Two layers, because faults happen at two levels:

- `FaultInjectingSource` wraps any `FrameSource` and corrupts what `read` returns: hangs (reads
  return None for a while), exceptions, frames of the wrong width or dtype, truncated
  (incomplete) frames, garbage pixels, dropped frames. Downstream stages (assembler, daemon) are
  tested against it: they must count and survive every one.
- `FaultyDevice` / `FaultyOpener` wrap the `CameraDevice` under `GenicamSource` and reproduce what
  the viky simulator cannot: a camera that sends only incomplete buffers, a producer that hangs
  (no buffers at all), an unplug mid-grab, unusable buffers, and re-open attempts that fail.
  They drive `GenicamSource`'s watchdog and reconnect logic with a real camera underneath.

Nothing here runs unless a test or a drill builds it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from runtime.config import GenicamSourceConfig
from runtime.errors import CameraError
from runtime.frame import Frame
from runtime.sources.base import FrameSource, SourceStatus
from runtime.sources.genicam import OpenDevice
from runtime.sources.genicam_device import CameraDevice, Grab

log = logging.getLogger(__name__)

FrameFaultKind = Literal["hang", "exception", "wrong_size", "wrong_dtype", "corrupt", "truncated", "drop"]
DeviceFaultKind = Literal["incomplete_only", "hang", "unplug", "bad_frames", "refuse_open"]


@dataclass(frozen=True)
class Fault:
    """A fault on `read` calls number `at_read` .. `at_read + count - 1` (0-based).

    - hang: starting at `at_read`, every read returns None (after waiting its timeout) for
      `duration_s` seconds; the inner source is not read meanwhile.
    - exception: the read raises CameraError.
    - wrong_size: the frame comes 8 px narrower; wrong_dtype: as uint16.
    - corrupt: same shape, random pixels; truncated: only the first half of the lines (an
      incomplete frame; `line0` unchanged, so the next frame shows a gap).
    - drop: the frame is read and discarded (its lines are lost).
    """

    at_read: int
    kind: FrameFaultKind
    count: int = 1
    duration_s: float = 0.0


class FaultInjectingSource:
    """A `FrameSource` that passes `inner` through, injecting `faults` on schedule."""

    def __init__(self, inner: FrameSource, faults: Sequence[Fault], *, seed: int = 0) -> None:
        self.inner = inner
        self.faults = list(faults)
        self.injected: Counter[str] = Counter()
        self._reads = 0
        self._hang_until: float | None = None
        self._rng = np.random.default_rng(seed)
        self._stop_event = threading.Event()

    @property
    def finished(self) -> bool:
        return self.inner.finished

    @property
    def live(self) -> bool:
        return self.inner.live

    @property
    def advance_lines_per_frame(self) -> int | None:
        return self.inner.advance_lines_per_frame

    def start(self) -> None:
        self._stop_event.clear()
        self.inner.start()

    def stop(self) -> None:
        self._stop_event.set()
        self.inner.stop()

    def status(self) -> SourceStatus:
        return self.inner.status()

    def _fault_for(self, index: int) -> Fault | None:
        for fault in self.faults:
            if fault.at_read <= index < fault.at_read + max(fault.count, 1):
                return fault
        return None

    def read(self, *, timeout_s: float) -> Frame | None:
        index = self._reads
        self._reads += 1
        now = time.monotonic()
        if self._hang_until is not None:
            if now < self._hang_until:
                self._stop_event.wait(min(timeout_s, self._hang_until - now))
                return None
            self._hang_until = None
        fault = self._fault_for(index)
        if fault is None:
            return self.inner.read(timeout_s=timeout_s)
        self.injected[fault.kind] += 1
        if fault.kind == "hang":
            self._hang_until = now + fault.duration_s
            self._stop_event.wait(min(timeout_s, fault.duration_s))
            return None
        if fault.kind == "exception":
            raise CameraError(f"injected camera fault at read {index}")
        frame = self.inner.read(timeout_s=timeout_s)
        if frame is None:
            return None
        pixels = frame.pixels
        if fault.kind == "drop":
            return None
        if fault.kind == "wrong_size":
            pixels = np.ascontiguousarray(pixels[:, : max(pixels.shape[1] - 8, 1)])
        elif fault.kind == "wrong_dtype":
            pixels = pixels.astype(np.uint16)
        elif fault.kind == "corrupt":
            pixels = self._rng.integers(0, 256, size=pixels.shape, dtype=np.uint8)
        elif fault.kind == "truncated":
            pixels = pixels[: max(pixels.shape[0] // 2, 1)].copy()
        return replace(frame, pixels=pixels, meta={**frame.meta, "injected": fault.kind})


@dataclass(frozen=True)
class DeviceFault:
    """How one opened camera misbehaves after `after_grabs` good frames.

    - incomplete_only: buffers keep arriving but every one is incomplete (discarded, counted);
    - hang: no buffer ever arrives; unplug: grab raises as a removed device does;
    - bad_frames: complete buffers whose pixels cannot be used (wrong size);
    - refuse_open: opening fails (camera absent); `after_grabs` is ignored.
    """

    kind: DeviceFaultKind
    after_grabs: int = 0


class FaultyDevice:
    """A `CameraDevice` over a real one that turns faulty after `fault.after_grabs` grabs."""

    def __init__(self, inner: CameraDevice, fault: DeviceFault) -> None:
        self.inner = inner
        self.fault = fault
        self.grabs = 0
        self._incomplete = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def label(self) -> str:
        return self.inner.label

    @property
    def incomplete(self) -> int:
        return self.inner.incomplete + self._incomplete

    def grab(self, timeout_s: float) -> Grab | None:
        if self.grabs < self.fault.after_grabs:
            grab = self.inner.grab(timeout_s)
            if grab is not None:
                self.grabs += 1
            return grab
        kind = self.fault.kind
        if kind == "hang":
            time.sleep(timeout_s)
            return None
        if kind == "unplug":
            raise CameraError(f"camera {self.name} removed (injected)")
        grab = self.inner.grab(timeout_s)
        if grab is None:
            return None
        if kind == "incomplete_only":
            self._incomplete += 1  # what harvesters does with an incomplete buffer: discard, re-queue
            return None
        return Grab(
            None,
            grab.width,
            grab.height,
            grab.pixel_format,
            grab.frame_id,
            grab.device_timestamp,
            error=f"{grab.pixel_format} buffer has the wrong size (injected)",
        )

    def close(self) -> None:
        self.inner.close()


class FaultyOpener:
    """An `open_device` for `GenicamSource`: the n-th open gets `faults[n]` (None or past the end: healthy).

    `attempts` records the monotonic time of every open attempt (to check the backoff).
    """

    def __init__(self, faults: Sequence[DeviceFault | None], open_device: OpenDevice | None = None) -> None:
        if open_device is None:
            from runtime.sources.genicam_device import HarvesterDevice

            open_device = HarvesterDevice.open
        self._open = open_device
        self.faults = list(faults)
        self.attempts: list[float] = []

    def __call__(self, config: GenicamSourceConfig) -> CameraDevice:
        n = len(self.attempts)
        self.attempts.append(time.monotonic())
        fault = self.faults[n] if n < len(self.faults) else None
        if fault is not None and fault.kind == "refuse_open":
            raise CameraError(f"no camera found (injected, attempt {n})")
        device = self._open(config)
        return device if fault is None else FaultyDevice(device, fault)
