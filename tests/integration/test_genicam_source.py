"""The GenICam source against the genicam wheel's simulated cameras (viky.cti, or $LOOMSIGHT_CTI).

Viky offers three cameras (serials 0, 1, 2: a red, green and blue ball bouncing on white),
Width/Height 100..800, PixelFormat RGBa8 or Mono8, AcquisitionFrameRate 1..200, and no
ExposureTime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.config import GenicamSourceConfig
from runtime.errors import CameraError
from runtime.frame import Frame
from runtime.sources.base import FrameSource
from runtime.sources.genicam import GenicamSource

pytestmark = pytest.mark.camera

FAST = {"Width": 160, "Height": 100, "AcquisitionFrameRate": 100.0}


def config(cti: Path, **kw: Any) -> GenicamSourceConfig:
    nodes = {"PixelFormat": "Mono8", **FAST, **kw.pop("nodes", {})}
    return GenicamSourceConfig.model_validate({"cti_path": cti, "nodes": nodes, **kw})


def read_frames(src: GenicamSource, n: int) -> list[Frame]:
    frames = []
    for _ in range(n * 20):
        f = src.read(timeout_s=1.0)
        if f is not None:
            frames.append(f)
            if len(frames) == n:
                return frames
    raise AssertionError(f"only {len(frames)} of {n} frames arrived; status {src.status()}")


def test_open_by_serial_mono8_frames_with_contiguous_line0(viky_cti: Path) -> None:
    src = GenicamSource(config(viky_cti, serial_number="1"))
    assert isinstance(src, FrameSource)
    src.start()
    try:
        frames = read_frames(src, 5)
        status = src.status()
    finally:
        src.stop()
    for f in frames:
        assert f.pixels.shape == (100, 160) and f.pixels.dtype == np.uint8
        assert f.meta["pixel_format"] == "Mono8"
    assert [f.line0 for f in frames] == [0, 100, 200, 300, 400]
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert frames[0].source == "genicam:1"
    assert status.state == "running" and status.frames == 5 and status.next_line == 500
    assert src.status().state == "stopped"
    src.stop()  # idempotent


@pytest.mark.parametrize("device_id", ["VikyTL_DEV_red"])
def test_rgba8_converted_to_bgr_and_gray(viky_cti: Path, device_id: str) -> None:
    """The red camera's ball must come out red in BGR (channel order right) and as its luma in gray."""
    for output in ("bgr", "gray"):
        src = GenicamSource(
            config(viky_cti, device_id=device_id, output=output, nodes={"PixelFormat": "RGBa8"})
        )
        src.start()
        try:
            frame = read_frames(src, 1)[0]
        finally:
            src.stop()
        assert frame.meta["pixel_format"] == "RGBa8"
        if output == "bgr":
            assert frame.pixels.shape == (100, 160, 3)
            ball = frame.pixels[(frame.pixels != 255).any(axis=2)]
            assert len(ball) > 50
            assert (ball == [0, 0, 255]).all(), np.unique(ball, axis=0)
        else:
            assert frame.pixels.shape == (100, 160)
            ball = frame.pixels[frame.pixels != 255]
            assert len(ball) > 50
            assert abs(int(np.median(ball)) - round(0.299 * 255)) <= 1


def test_wrong_serial_lists_the_cameras_found(viky_cti: Path) -> None:
    src = GenicamSource(config(viky_cti, serial_number="XYZ-404"))
    with pytest.raises(CameraError) as err:
        src.start()
    msg = str(err.value)
    assert "serial_number='XYZ-404'" in msg
    for serial, dev in (("0", "red"), ("1", "green"), ("2", "blue")):
        assert f"serial_number='{serial}'" in msg and f"VikyTL_DEV_{dev}" in msg


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        ({"ExposureTime": 500.0}, r"node 'ExposureTime' does not exist"),
        (
            {"PixelFormat": "BayerRG8"},
            r"node 'PixelFormat' .*rejected 'BayerRG8'.*allowed: one of RGBa8, Mono8",
        ),
        ({"Width": 5000}, r"node 'Width' .*rejected 5000.*allowed: 100 \.\. 800"),
        (
            {"AcquisitionFrameRate": "fast"},
            r"node 'AcquisitionFrameRate' .*rejected 'fast'.*expected a number",
        ),
        ({"PayloadSize": 1}, r"node 'PayloadSize' .*not writable"),
    ],
)
def test_node_errors_name_the_node_value_and_allowed(
    viky_cti: Path, nodes: dict[str, Any], expected: str
) -> None:
    src = GenicamSource(config(viky_cti, serial_number="2", nodes=nodes))
    with pytest.raises(CameraError, match=expected):
        src.start()
    # The device was released: it can be opened again right away.
    ok = GenicamSource(config(viky_cti, serial_number="2"))
    ok.start()
    ok.stop()


def test_pixels_are_owned_after_the_buffer_is_requeued(viky_cti: Path) -> None:
    src = GenicamSource(config(viky_cti, serial_number="0", num_buffers=2))
    src.start()
    try:
        first = read_frames(src, 1)[0]
        snapshot = first.pixels.copy()
        later = read_frames(src, 8)  # the driver has re-used both buffers several times
        assert any(not np.array_equal(f.pixels, snapshot) for f in later), "the ball should move"
        assert np.array_equal(first.pixels, snapshot)
        first.pixels[:] = 7  # writing to a frame touches no driver memory
        more = read_frames(src, 3)
    finally:
        src.stop()
    assert all(not (f.pixels == 7).all() for f in more)
    assert all(f.pixels.flags.owndata or f.pixels.base is None for f in [first, *later])


def test_read_times_out_and_counts_without_losing_the_camera(viky_cti: Path) -> None:
    src = GenicamSource(config(viky_cti, serial_number="1", nodes={"AcquisitionFrameRate": 2.0}))
    src.start()
    try:
        results = [src.read(timeout_s=0.05) for _ in range(4)]
        status = src.status()
    finally:
        src.stop()
    assert results.count(None) >= 3
    assert status.timeouts >= 3
    assert status.state == "running" and status.outages == 0


def test_restart_after_stop(viky_cti: Path) -> None:
    src = GenicamSource(config(viky_cti, serial_number="2"))
    src.start()
    read_frames(src, 1)
    src.stop()
    src.start()
    try:
        assert read_frames(src, 1)[0].line0 >= 100  # line numbering continues
        assert src.status().state == "running"
    finally:
        src.stop()


def test_a_file_that_is_not_a_gentl_producer_is_named_as_such_not_as_a_missing_camera(tmp_path: Path) -> None:
    fake = tmp_path / "producer.cti"
    fake.write_text("this is a text file, not a shared library\n")
    with pytest.raises(
        CameraError, match=r"is not a GenTL producer: a \.cti file is a shared library"
    ) as info:
        GenicamSource(config(fake, serial_number="1")).start()
    assert "cabling" not in str(info.value).split("(nothing")[0]
