"""Camera faults: the source notices on its own, reports, reconnects with backoff and keeps line0 honest.

Viky cases run the real simulator under `GenicamSource` (destroying its image acquirer mid-run
is an unplug as harvesters sees it); the cases viky cannot produce (only incomplete buffers, a
hung producer, unusable buffers, a camera that stays away) wrap the real device in
`runtime.sources.faults`. Downstream robustness is checked with `FaultInjectingSource` feeding the
real `WebAssembler`.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from runtime.assembler import WebAssembler
from runtime.config import GenicamSourceConfig, ReplaySourceConfig, SourceConfig
from runtime.errors import CameraError
from runtime.frame import Frame, Strip
from runtime.sources.base import SourceStatus
from runtime.sources.factory import open_source
from runtime.sources.faults import DeviceFault, Fault, FaultInjectingSource, FaultyOpener
from runtime.sources.genicam import GenicamSource
from runtime.sources.genicam_device import select_device
from runtime.sources.replay import ReplaySource

HEIGHT = 100
FPS = 100.0


def config(cti: Path, **kw: Any) -> GenicamSourceConfig:
    nodes = {"PixelFormat": "Mono8", "Width": 128, "Height": HEIGHT, "AcquisitionFrameRate": FPS}
    base = {
        "cti_path": cti,
        "serial_number": "0",
        "nodes": nodes,
        "no_progress_timeout_s": 0.4,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.2,
    }
    return GenicamSourceConfig.model_validate({**base, **kw})


def pump(
    src: GenicamSource, n: int, limit_s: float = 10.0, timeout_s: float = 0.05
) -> tuple[list[Frame], list[SourceStatus]]:
    """Read until `n` frames arrived; also return the statuses seen on reads that returned None."""
    frames: list[Frame] = []
    idle: list[SourceStatus] = []
    end = time.monotonic() + limit_s
    while len(frames) < n and time.monotonic() < end:
        f = src.read(timeout_s=timeout_s)
        if f is None:
            idle.append(src.status())
        else:
            frames.append(f)
    assert len(frames) == n, f"only {len(frames)} of {n} frames in {limit_s} s; {src.status()}"
    return frames, idle


def assert_outage_recovered(
    before: list[Frame], after: list[Frame], status: SourceStatus, outage_s: float
) -> None:
    assert status.state == "running"
    assert status.outages == 1 and status.reconnects == 1 and status.retries == 0
    assert status.lost_since_ns is None
    # line0 jumped over the outage; the jump is the recorded gap, sized from the measured line rate.
    expected_next = before[-1].line0 + HEIGHT
    assert after[0].line0 > expected_next
    gap = (expected_next, after[0].line0)
    assert gap in status.gaps_lines
    lost_lines = gap[1] - gap[0]
    rate = FPS * HEIGHT
    assert 0.5 * (outage_s * rate - HEIGHT) <= lost_lines <= 2.0 * (outage_s * rate) + 2 * HEIGHT
    # After the gap the lines are contiguous again.
    assert [f.line0 for f in after] == [after[0].line0 + k * HEIGHT for k in range(len(after))]


@pytest.mark.camera
def test_unplug_destroyed_acquirer_reconnects_and_resumes_the_roll(viky_cti: Path) -> None:
    src = GenicamSource(config(viky_cti, reconnect_initial_s=0.2, reconnect_max_s=0.4))
    src.start()
    try:
        before, _ = pump(src, 10)
        device = src.device
        assert device is not None
        t_unplug = time.monotonic()
        device.acquirer.destroy()  # type: ignore[attr-defined]
        after, idle = pump(src, 5)
        outage_s = time.monotonic() - t_unplug
        status = src.status()
    finally:
        src.stop()
    lost = [s for s in idle if s.state == "lost"]
    assert lost, "status never showed the camera lost"
    assert lost[0].lost_since_ns is not None and lost[0].lost_since_ns <= time.time_ns()
    assert "camera error" in (lost[0].last_error or "")
    assert src.device is None
    assert_outage_recovered(before, after, status, outage_s)
    assert after[0].pixels.shape == (HEIGHT, 128)


@pytest.mark.camera
def test_only_incomplete_buffers_trip_the_no_progress_timer(viky_cti: Path) -> None:
    opener = FaultyOpener([DeviceFault("incomplete_only", after_grabs=10)])
    src = GenicamSource(config(viky_cti), open_device=opener)
    src.start()
    try:
        t0 = time.monotonic()
        before, _ = pump(src, 10)
        t_fault = time.monotonic()
        after, idle = pump(src, 5)
        status = src.status()
        outage_s = time.monotonic() - t_fault
    finally:
        src.stop()
    assert t_fault - t0 < 2.0
    assert status.incomplete >= 20  # ~100 fps for >= 0.4 s, every one incomplete
    lost = [s for s in idle if s.state == "lost"]
    assert lost and "no complete frame" in (lost[0].last_error or "")
    assert len(opener.attempts) == 2
    # The watchdog fired after no_progress_timeout_s, not later.
    assert opener.attempts[1] - t_fault < 0.4 + 0.05 + 0.5
    assert_outage_recovered(before, after, status, outage_s)


@pytest.mark.camera
def test_hung_producer_is_declared_lost_and_timeouts_counted(viky_cti: Path) -> None:
    opener = FaultyOpener([DeviceFault("hang", after_grabs=5)])
    src = GenicamSource(config(viky_cti), open_device=opener)
    src.start()
    try:
        before, _ = pump(src, 5)
        t_fault = time.monotonic()
        after, idle = pump(src, 3)
        status = src.status()
        outage_s = time.monotonic() - t_fault
    finally:
        src.stop()
    assert status.timeouts >= 3  # reads that ended empty while the camera was still "connected"
    assert any(s.state == "lost" for s in idle)
    assert_outage_recovered(before, after, status, outage_s)


@pytest.mark.camera
def test_reconnect_backoff_doubles_up_to_the_cap(viky_cti: Path) -> None:
    refuse = DeviceFault("refuse_open")
    opener = FaultyOpener([None, refuse, refuse, refuse, refuse, refuse])
    src = GenicamSource(config(viky_cti, reconnect_max_s=0.4), open_device=opener)
    src.start()
    try:
        before, _ = pump(src, 3)
        src.device.acquirer.destroy()  # type: ignore[union-attr]
        after, idle = pump(src, 3)
        status = src.status()
    finally:
        src.stop()
    assert len(opener.attempts) == 7
    intervals = np.diff(opener.attempts[1:])
    # initial 0.05 s, doubling, capped at 0.4 s: 0.1, 0.2, 0.4, 0.4, 0.4 between attempts 1..6
    assert np.allclose(intervals, [0.1, 0.2, 0.4, 0.4, 0.4], rtol=0.2, atol=0.03), intervals
    retries_seen = [s.retries for s in idle if s.state in ("lost", "reconnecting")]
    assert max(retries_seen) == 5
    assert any("reconnect attempt 5 failed" in (s.last_error or "") for s in idle)
    assert status.retries == 0 and status.reconnects == 1 and status.state == "running"
    assert after[0].line0 > before[-1].line0 + HEIGHT


@pytest.mark.camera
def test_unusable_buffers_are_counted_and_their_lines_are_a_gap(viky_cti: Path) -> None:
    opener = FaultyOpener([DeviceFault("bad_frames", after_grabs=3)])
    src = GenicamSource(config(viky_cti, no_progress_timeout_s=5.0), open_device=opener)
    src.start()
    try:
        frames, _ = pump(src, 3)
        timeouts_before = src.status().timeouts
        for _ in range(10):
            assert src.read(timeout_s=0.1) is None  # complete but unusable: no frame, camera alive
        status = src.status()
    finally:
        src.stop()
    assert status.timeouts == timeouts_before  # buffers did arrive: not timeouts
    assert status.bad_frames >= 5 and status.outages == 0 and status.state == "running"
    assert "wrong size" in (status.last_error or "")
    assert status.gaps_lines[0][0] == frames[-1].line0 + HEIGHT
    assert status.lost_lines == status.bad_frames * HEIGHT
    assert status.next_line == frames[-1].line0 + HEIGHT * (1 + status.bad_frames)


@pytest.mark.camera
def test_slow_consumer_starves_buffers_without_a_false_outage(viky_cti: Path) -> None:
    """Few buffers and a consumer slower than the camera: frames are dropped by the producer (frame-id
    gaps, recorded as web gaps), the camera is never declared lost."""
    src = GenicamSource(config(viky_cti, num_buffers=2, no_progress_timeout_s=0.4), open_device=None)
    src.start()
    try:
        frames = []
        for _ in range(4):
            f = src.read(timeout_s=1.0)
            assert f is not None
            frames.append(f)
            time.sleep(0.5)  # slower than the watchdog: buffered frames must still count as progress
        status = src.status()
    finally:
        src.stop()
    assert status.outages == 0 and status.state == "running"
    assert status.frame_id_gaps > 0
    ids = [f.meta["frame_id"] for f in frames]
    for a, b in itertools.pairwise(frames):
        assert b.line0 - a.line0 == HEIGHT * (b.meta["frame_id"] - a.meta["frame_id"]), ids
    assert status.lost_lines == HEIGHT * status.frame_id_gaps


# ------------------------------------------------------------------ bad set-up: clear errors, no device needed
def test_missing_cti_names_the_path_and_the_env_var(tmp_path: Path) -> None:
    missing = tmp_path / "vendor" / "producer.cti"
    with pytest.raises(CameraError) as err:
        open_source(SourceConfig.model_validate({"kind": "genicam", "genicam": {"cti_path": str(missing)}}))
    assert str(missing) in str(err.value) and "LOOMSIGHT_CTI" in str(err.value)


def test_no_camera_found_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        CameraError, match=r"no GenICam camera found through .*producer\.cti; check power, cabling"
    ):
        select_device([], GenicamSourceConfig(serial_number="1"), tmp_path / "producer.cti")


# ------------------------------------------------------------------ downstream: injected frame faults
def _replay(tmp_path: Path, lines: int = 2000, width: int = 64) -> tuple[ReplaySource, np.ndarray]:
    idx = np.arange(lines)
    truth = ((idx[:, None] * 3 + np.arange(width)[None, :]) % 256).astype(np.uint8)
    truth[:, 0] = idx % 251
    truth[:, 1] = idx // 251
    cv2.imwrite(str(tmp_path / "web.png"), truth)
    return ReplaySource(ReplaySourceConfig(path=tmp_path / "web.png", block_lines=100)), truth


def test_injected_frame_faults_are_survived_and_never_join_lines(tmp_path: Path) -> None:
    inner, truth = _replay(tmp_path)
    faults = [
        Fault(2, "wrong_size"),
        Fault(4, "truncated"),
        Fault(6, "drop"),
        Fault(8, "wrong_dtype"),
        Fault(10, "corrupt"),
        Fault(12, "hang", duration_s=0.2),
        Fault(16, "exception"),
    ]
    src = FaultInjectingSource(inner, faults)
    asm = WebAssembler(strip_lines=128, overlap_lines=16, roll_id="R")
    src.start()
    strips: list[Strip] = []
    errors = 0
    nones = 0
    t0 = time.monotonic()
    while not src.finished and time.monotonic() - t0 < 10:
        try:
            frame = src.read(timeout_s=0.05)
        except CameraError as exc:
            assert "injected" in str(exc)
            errors += 1
            continue
        if frame is None:
            nones += 1
            continue
        strips.extend(asm.push(frame))
    strips.extend(asm.flush())
    src.stop()

    assert errors == 1 and nones >= 4  # the hang: 0.2 s of 0.05 s reads, then the end of the replay
    assert dict(src.injected) == {
        k: 1 for k in ("wrong_size", "truncated", "drop", "wrong_dtype", "corrupt", "hang", "exception")
    }
    assert asm.stats.skipped_frames == 2  # wrong width, wrong dtype
    # Lines 200-299 (wrong size), 450-499 (truncated half), 600-699 (dropped), 800-899 (dtype) are gaps;
    # read 16 raised, so its frame (lines 1500-1599) was never read: the replay moved on without it.
    assert asm.gaps == [(200, 300), (450, 500), (600, 700), (800, 900)]
    for s in strips:
        rows = truth[s.line0 : s.line_end]
        if s.line0 <= 1000 < s.line_end or 1000 <= s.line0 < 1100:
            continue  # the corrupt frame's lines hold garbage by design
        assert np.array_equal(s.pixels, rows), (s.line0, s.line_end)
        for a, b in asm.gaps:
            assert s.line_end <= a or s.line0 >= b
    assert strips[-1].line_end == 2000
