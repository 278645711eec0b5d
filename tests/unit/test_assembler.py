"""Web assembly: strips hold exactly the right web lines, overlaps repeat, gaps are never papered over."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from runtime.assembler import WebAssembler
from runtime.frame import Frame, Strip

WIDTH = 24


def web(lines: int, width: int = WIDTH) -> np.ndarray:
    """A web whose every row says which line it is (col 0: line % 251, col 1: line // 251)."""
    idx = np.arange(lines)
    rows = np.zeros((lines, width), np.uint8)
    rows[:, 0] = idx % 251
    rows[:, 1] = idx // 251
    rows[:, 2:] = (idx[:, None] * 7 + np.arange(width - 2)[None, :]) % 256
    return rows


def frame(pixels: np.ndarray, line0: int, seq: int = 0) -> Frame:
    return Frame(pixels=pixels.copy(), seq=seq, timestamp_ns=1_000 + line0, line0=line0, source="test")


def line_scan(truth: np.ndarray, block: int, start: int = 0, stop: int | None = None) -> list[Frame]:
    stop = len(truth) if stop is None else stop
    return [frame(truth[a : min(a + block, stop)], a, i) for i, a in enumerate(range(start, stop, block))]


def run(asm: WebAssembler, frames: list[Frame], flush: bool = True) -> list[Strip]:
    strips: list[Strip] = []
    for f in frames:
        strips.extend(asm.push(f))
    if flush:
        strips.extend(asm.flush())
    return strips


def assert_strips_match(strips: list[Strip], truth: np.ndarray, offset: int = 0) -> None:
    for s in strips:
        assert np.array_equal(s.pixels, truth[s.line0 + offset : s.line_end + offset]), (s.seq, s.line0)


@pytest.mark.parametrize("block", [1, 37, 100, 256, 1000])
def test_line_scan_strips_cover_the_web_once_with_exact_overlap(block: int) -> None:
    truth = web(3000)
    asm = WebAssembler(strip_lines=256, overlap_lines=32, roll_id="R1")
    strips = run(asm, line_scan(truth, block))

    assert_strips_match(strips, truth)
    assert strips[0].line0 == 0 and strips[0].overlap_lines == 0 and strips[0].height == 256
    for prev, cur in itertools.pairwise(strips):
        assert cur.overlap_lines == 32
        assert cur.line0 == prev.line_end - 32
        assert np.array_equal(cur.pixels[:32], prev.pixels[-32:])
        assert cur.seq == prev.seq + 1
    full = strips[:-1]
    assert all(s.height == 256 + (32 if s.overlap_lines else 0) for s in full)
    # 3000 = 256 + 10 * 256 + 184: the flushed strip holds the last 184 new lines plus overlap.
    assert strips[-1].line_end == 3000
    assert strips[-1].height == 184 + 32
    assert asm.stats.lines == 3000 and asm.stats.gaps == 0 and asm.stats.skipped_frames == 0
    assert all(s.roll_id == "R1" for s in strips)


def test_strips_own_their_pixels() -> None:
    truth = web(600)
    asm = WebAssembler(strip_lines=100, overlap_lines=10, roll_id="R")
    frames = line_scan(truth, 50)
    strips = run(asm, frames)
    for f in frames:
        f.pixels[:] = 0  # producer re-uses its memory
    assert_strips_match(strips, truth)
    strips[0].pixels[:] = 255  # a consumer scribbles on a strip
    assert np.array_equal(strips[1].pixels, truth[strips[1].line0 : strips[1].line_end])


def test_one_frame_can_complete_several_strips() -> None:
    truth = web(1000)
    asm = WebAssembler(strip_lines=100, overlap_lines=20, roll_id="R")
    strips = asm.push(frame(truth, 0))
    assert [s.line0 for s in strips] == [0, 80, 180, 280, 380, 480, 580, 680, 780, 880]
    assert_strips_match(strips, truth)
    assert asm.flush() == []  # nothing new after the last full strip


def test_gap_ends_the_strip_and_the_next_starts_without_overlap(caplog: pytest.LogCaptureFixture) -> None:
    truth = web(2000)
    frames = [f for f in line_scan(truth, 100) if f.line0 not in (500, 600)]  # lines 500..699 lost
    asm = WebAssembler(strip_lines=256, overlap_lines=32, roll_id="R")
    with caplog.at_level(logging.WARNING, logger="runtime.assembler"):
        strips = run(asm, frames)

    assert_strips_match(strips, truth)
    assert asm.gaps == [(500, 700)]
    assert asm.stats.gaps == 1 and asm.stats.gap_lines == 200
    assert "[500, 700)" in caplog.text
    for s in strips:  # no strip spans the hole
        assert s.line_end <= 500 or s.line0 >= 700
    before = [s for s in strips if s.line_end <= 500]
    after = [s for s in strips if s.line0 >= 700]
    assert before[-1].line_end == 500  # the partial strip up to the gap was emitted
    assert after[0].line0 == 700 and after[0].overlap_lines == 0
    new_lines = sum(s.height - s.overlap_lines for s in strips)
    assert new_lines == 2000 - 200


def test_wrong_width_or_dtype_is_counted_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    truth = web(600)
    asm = WebAssembler(strip_lines=100, overlap_lines=0, roll_id="R")
    frames = line_scan(truth, 100)
    bad_width = frame(web(100, width=WIDTH + 8), 200, seq=2)
    bad_dtype = Frame(truth[300:400].astype(np.uint16), 3, 0, 300, "test")
    frames[2], frames[3] = bad_width, bad_dtype
    with caplog.at_level(logging.WARNING, logger="runtime.assembler"):
        strips = run(asm, frames)
    assert asm.stats.skipped_frames == 2
    assert f"expected width {WIDTH}, got {WIDTH + 8}" in caplog.text
    assert "uint16" in caplog.text
    assert asm.gaps == [(200, 400)]
    assert_strips_match(strips, truth)
    assert [s.line0 for s in strips] == [0, 100, 400, 500]


def test_colour_frames_and_a_grey_frame_in_a_colour_roll() -> None:
    truth = np.stack([web(300), web(300) // 2, web(300) // 3], axis=-1)
    asm = WebAssembler(strip_lines=64, overlap_lines=8, roll_id="R")
    frames = line_scan(truth, 50)
    frames.insert(3, frame(web(50), 150))  # gray frame at the same place as a colour one
    strips = run(asm, frames)
    assert asm.stats.skipped_frames == 1
    assert all(s.pixels.shape[1:] == (WIDTH, 3) for s in strips)
    assert_strips_match(strips, truth)
    assert strips[-1].line_end == 300


def test_repeated_lines_are_dropped_not_duplicated() -> None:
    truth = web(500)
    frames = [
        frame(truth[0:200], 0),
        frame(truth[150:300], 150),
        frame(truth[100:200], 100),
        frame(truth[300:500], 300),
    ]
    asm = WebAssembler(strip_lines=100, overlap_lines=10, roll_id="R")
    strips = run(asm, frames)
    assert_strips_match(strips, truth)
    assert asm.stats.duplicate_lines == 50 + 100
    assert asm.stats.lines == 500
    assert strips[-1].line_end == 500 and not asm.gaps


def test_start_roll_flushes_the_old_roll_and_renumbers_from_line0() -> None:
    truth = web(1000)
    asm = WebAssembler(strip_lines=128, overlap_lines=16, roll_id="A")
    strips_a = run(asm, line_scan(truth, 100, 0, 450), flush=False)
    tail_a = asm.start_roll("B")
    assert [s.roll_id for s in strips_a + tail_a] == ["A"] * len(strips_a + tail_a)
    assert tail_a[-1].line_end == 450

    # The source keeps counting (its line0 continues at 450); roll B starts at 0.
    strips_b = run(asm, line_scan(truth, 100, 450, 1000))
    assert all(s.roll_id == "B" for s in strips_b)
    assert strips_b[0].line0 == 0 and strips_b[0].overlap_lines == 0
    assert strips_b[-1].line_end == 550
    assert_strips_match(strips_b, truth, offset=450)
    seqs = [s.seq for s in strips_a + tail_a + strips_b]
    assert seqs == list(range(len(seqs)))

    # Resuming a roll after a restart: numbering starts where the roll was.
    asm.start_roll("B", line0=550)
    resumed = run(asm, line_scan(truth, 100, 0, 300))
    assert resumed[0].line0 == 550 and resumed[-1].line_end == 850


@pytest.mark.parametrize(("height", "advance"), [(100, 60), (100, 100), (64, 1)])
def test_area_scan_takes_the_first_advance_lines_and_the_last_tail_at_flush(
    height: int, advance: int
) -> None:
    frames_n = 40
    truth = web(advance * (frames_n - 1) + height)
    frames = [frame(truth[k * advance : k * advance + height], k * advance, k) for k in range(frames_n)]
    asm = WebAssembler(strip_lines=128, overlap_lines=16, roll_id="R", advance_lines_per_frame=advance)
    strips = run(asm, frames)
    assert_strips_match(strips, truth)
    assert strips[-1].line_end == len(truth)  # the last frame's unseen tail is kept at roll end
    assert asm.stats.lines == len(truth) and not asm.gaps
    for prev, cur in itertools.pairwise(strips):
        assert cur.line0 == prev.line_end - 16


def test_area_scan_frame_shorter_than_the_advance_leaves_a_gap() -> None:
    truth = web(1000)
    frames = [frame(truth[k * 100 : k * 100 + 80], k * 100, k) for k in range(5)]
    asm = WebAssembler(strip_lines=64, overlap_lines=0, roll_id="R", advance_lines_per_frame=100)
    strips = run(asm, frames)
    assert asm.gaps == [(80, 100), (180, 200), (280, 300), (380, 400)]
    assert_strips_match(strips, truth)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap_lines"):
        WebAssembler(strip_lines=100, overlap_lines=100, roll_id="R")
    with pytest.raises(ValueError, match="strip_lines"):
        WebAssembler(strip_lines=0, overlap_lines=0, roll_id="R")
    with pytest.raises(ValueError, match="advance_lines_per_frame"):
        WebAssembler(strip_lines=10, overlap_lines=0, roll_id="R", advance_lines_per_frame=0)
