"""Replay of recorded webs: blocks hold exactly the recorded lines, pacing holds, input errors are clear."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.config import ReplaySourceConfig, SourceConfig
from runtime.errors import CameraError, SourceInputError
from runtime.frame import Frame
from runtime.sources.base import FrameSource
from runtime.sources.factory import open_source
from runtime.sources.replay import ReplaySource


def web(lines: int, width: int = 40) -> np.ndarray:
    idx = np.arange(lines)
    rows = ((idx[:, None] * 3 + np.arange(width)[None, :] * 5) % 256).astype(np.uint8)
    rows[:, 0] = idx % 251
    return rows


def write_folder(folder: Path, truth: np.ndarray, heights: list[int]) -> None:
    folder.mkdir()
    row = 0
    for i, h in enumerate(heights):
        cv2.imwrite(str(folder / f"web_{i:03d}.png"), truth[row : row + h])
        row += h


def read_all(src: ReplaySource, limit: int = 10_000) -> list[Frame]:
    frames = []
    for _ in range(limit):
        f = src.read(timeout_s=1.0)
        if f is None:
            assert src.finished
            break
        frames.append(f)
    return frames


def make(path: Path, **kw: object) -> ReplaySource:
    return ReplaySource(ReplaySourceConfig.model_validate({"path": path, **kw}))


def test_folder_images_are_contiguous_and_blocks_span_files(tmp_path: Path) -> None:
    truth = web(1000)
    write_folder(tmp_path / "roll", truth, [300, 250, 450])
    src = make(tmp_path / "roll", block_lines=128)
    assert isinstance(src, FrameSource)
    src.start()
    frames = read_all(src)
    assert [f.line0 for f in frames] == list(range(0, 1000, 128))
    assert [f.height for f in frames][-1] == 1000 - 7 * 128
    assert np.array_equal(np.concatenate([f.pixels for f in frames]), truth)
    assert frames[2].meta["file"] == "web_000.png" and frames[2].meta["row"] == 256
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert src.finished and src.status().state == "finished"
    assert src.status().frames == len(frames) and src.status().next_line == 1000
    assert src.read(timeout_s=0.01) is None
    src.stop()
    assert src.status().state == "finished"


def test_one_tall_colour_image(tmp_path: Path) -> None:
    truth = np.stack([web(700), web(700) // 2, 255 - web(700)], axis=-1)
    cv2.imwrite(str(tmp_path / "tall.png"), truth)
    src = make(tmp_path / "tall.png", block_lines=200)
    src.start()
    frames = read_all(src)
    assert [f.height for f in frames] == [200, 200, 200, 100]
    assert frames[0].pixels.shape == (200, 40, 3)
    assert np.array_equal(np.concatenate([f.pixels for f in frames]), truth)


def test_loop_keeps_line0_increasing(tmp_path: Path) -> None:
    truth = web(300)
    write_folder(tmp_path / "roll", truth, [100, 200])
    src = make(tmp_path / "roll", block_lines=120, loop=True)
    src.start()
    frames = [src.read(timeout_s=1.0) for _ in range(10)]
    assert all(f is not None for f in frames)
    got = np.concatenate([f.pixels for f in frames if f is not None])
    assert np.array_equal(got, np.concatenate([truth] * 4)[:1200])
    assert [f.line0 for f in frames if f is not None] == list(range(0, 1200, 120))
    assert not src.finished
    src.stop()
    assert src.status().state == "stopped"
    assert src.read(timeout_s=0.01) is None


def test_realtime_pacing_follows_the_line_rate(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "tall.png"), web(400))
    src = make(tmp_path / "tall.png", block_lines=100, realtime=True, line_rate_hz=2000.0)
    src.start()
    t0 = time.monotonic()
    assert src.read(timeout_s=0.01) is None  # the first block is due 50 ms after start
    frames = read_all(src)
    elapsed = time.monotonic() - t0
    assert len(frames) == 4
    assert 0.19 <= elapsed < 1.0  # 400 lines at 2000 lines/s = 0.2 s


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match=r"does not exist"):
        make(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(CameraError, match=r"holds no images"):
        make(tmp_path / "empty")


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "roll"
    write_folder(folder, web(200), [100, 100])
    (folder / "web_001.png").write_bytes(b"this is not a png")
    src = make(folder)
    with pytest.raises(CameraError, match=r"web_001\.png cannot be read"):
        src.start()
    # Truncated: the header looks right, the decoder fails when the replay reaches it.
    good = (folder / "web_000.png").read_bytes()
    (folder / "web_001.png").write_bytes(good[:60])
    src = make(folder, block_lines=64)
    src.start()
    with pytest.raises(SourceInputError, match=r"web_001\.png cannot be read"):
        read_all(src)


def test_images_of_different_widths_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "roll"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), web(100, width=40))
    cv2.imwrite(str(folder / "b.png"), web(100, width=48))
    src = make(folder, block_lines=50)
    src.start()
    with pytest.raises(SourceInputError, match=r"b\.png is 48 px wide gray but a\.png is 40 px wide gray"):
        read_all(src)


def test_read_before_start_is_an_error(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), web(10))
    with pytest.raises(CameraError, match="start"):
        make(tmp_path / "a.png").read(timeout_s=0.1)


def test_factory_builds_an_unstarted_replay_source(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), web(30))
    cfg = SourceConfig.model_validate(
        {"kind": "replay", "replay": {"path": str(tmp_path / "a.png"), "block_lines": 7}}
    )
    src = open_source(cfg)
    assert isinstance(src, ReplaySource)
    assert src.status().state == "idle"
    src.start()
    assert src.read(timeout_s=0.1) is not None
    assert src.status().to_dict()["frames"] == 1
    with pytest.raises(CameraError, match="does not exist"):
        open_source(
            SourceConfig.model_validate({"kind": "replay", "replay": {"path": str(tmp_path / "b.png")}})
        )
