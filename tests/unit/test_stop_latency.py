"""Stop latency: line acquisition times from frames, and each stop timed from its last line to PUB."""

from __future__ import annotations

import time

import numpy as np

from offline_train.evaluate import CollectingPublisher
from runtime.assembler import WebAssembler
from runtime.daemon.inspector import StripResult
from runtime.daemon.reporter import CropOptions, DefectReporter, WebGeometry
from runtime.daemon.stop_latency import StopLatencyLog, nearest_rank, stop_timing
from runtime.frame import Frame, Strip
from runtime.grade import RollGrader
from runtime.line_clock import LineClock
from runtime.merge import Merger
from runtime.preprocess import ModelView

MS = 1_000_000


def test_line_times_are_interpolated_between_frame_arrivals() -> None:
    clock = LineClock()
    clock.add([(100, 1000 * MS), (200, 2000 * MS)])  # lines 0-99 arrived at 1 s, 100-199 at 2 s
    assert clock.acquired_ns(99) == 1000 * MS
    assert clock.acquired_ns(199) == 2000 * MS
    assert clock.acquired_ns(149) == 1500 * MS  # half-way through the second frame
    assert clock.acquired_ns(10) == 1000 * MS  # before the first known point: its time (never earlier)
    assert clock.acquired_ns(200) is None  # not acquired yet
    clock.add([(200, 9999 * MS)])  # the same frame again (a strip's overlap): ignored
    assert clock.acquired_ns(199) == 2000 * MS


def test_strips_carry_the_arrival_times_of_their_frames() -> None:
    asm = WebAssembler(strip_lines=150, overlap_lines=20, roll_id="r")
    strips: list[Strip] = []
    for k in range(4):
        frame = Frame(np.zeros((100, 8), np.uint8), k, (k + 1) * 1000 * MS, k * 100, "test")
        strips.extend(asm.push(frame))
    assert [(s.line0, s.line_end) for s in strips] == [(0, 150), (130, 300)]
    assert strips[0].line_times == ((100, 1000 * MS), (200, 2000 * MS))
    assert strips[0].timestamp_ns == 2000 * MS  # the strip was complete when the frame with line 149 came
    clock = LineClock()
    for s in strips:
        clock.add(s.line_times)
    assert clock.acquired_ns(299) == 3000 * MS and clock.acquired_ns(249) == 2500 * MS


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert nearest_rank(values, 0.5) == 51.0 and nearest_rank(values, 0.99) == 100.0
    log = StopLatencyLog()
    assert log.summary()["p99_ms"] is None
    for v in (300.0, 100.0, 200.0):
        log.add(
            stop_timing(
                stop_seq=1, reason="class", evidence_line=0, line_ns=0, strip_ns=int(v * MS / 2),
                prep_s=0.0, infer_s=0.0, inspected_ns=int(v * MS / 2), sent_ns=int(v * MS),
            )
        )  # fmt: skip
    log.add(None)
    summary = log.summary()
    assert (summary["p50_ms"], summary["p99_ms"], summary["min_ms"]) == (200.0, 300.0, 100.0)
    assert summary["stops"] == 3 and summary["unmeasured"] == 1
    assert summary["stages_p50_ms"]["accumulate_ms"] == 100.0


def test_a_stop_is_timed_from_its_last_camera_line_and_reported_in_status() -> None:
    pub = CollectingPublisher()
    rep = DefectReporter(
        classes=["hole"],
        geometry=WebGeometry(0.1, 0.1, 1000),
        merger=Merger(gap_px=20, gap_lines=20),
        grader=RollGrader(width_mm=100.0),
        publisher=pub,
        roll_id="r1",
        model_name="m",
        crops=CropOptions(enabled=False),
    )
    now = time.time_ns()
    # lines 0-499 arrived 3 s ago, 500-999 2 s ago; the hole ends at line 259 (acquired 3 s ago)
    strip = Strip(
        np.full((1000, 1000), 180, np.uint8), 0, 0, 0, "r1", now - 2000 * MS,
        line_times=((500, now - 3000 * MS), (1000, now - 2000 * MS)),
    )  # fmt: skip
    result = StripResult(
        strip=strip,
        view=ModelView(strip.pixels, 0, 1.0, 1.0),
        xyxy=np.array([[100.0, 200.0, 150.0, 260.0]]),
        class_id=np.array([0]),
        score=np.array([0.9]),
        tiles=4,
        infer_s=0.5,
        prep_s=0.1,
        inspected_ns=now - 1000 * MS,
    )
    rep.on_strip(result)
    (stop,) = pub.of_kind("stop")
    assert stop["reason"] == "class"
    (status,) = pub.of_kind("status")
    last = status["last_stop"]
    assert last["evidence_line"] == 259 and last["accumulate_ms"] == 1000.0
    assert (last["prepare_ms"], last["infer_ms"], last["wait_ms"]) == (100.0, 500.0, 400.0)
    assert 3000.0 <= last["latency_ms"] < 3000.0 + 60_000.0
    assert last["report_ms"] >= 1000.0
    assert status["stop_latency"]["stops"] == 1 and status["stop_latency"]["p99_ms"] == last["latency_ms"]
    summary = rep.end_roll()
    assert summary["stop_latency"]["per_stop"] == [last]


def test_a_stop_without_acquisition_times_is_counted_unmeasured_and_no_status_goes_out() -> None:
    pub = CollectingPublisher()
    rep = DefectReporter(
        classes=["hole"],
        geometry=WebGeometry(0.1, 0.1, 1000),
        merger=Merger(gap_px=20, gap_lines=20),
        grader=RollGrader(width_mm=100.0),
        publisher=pub,
        roll_id="r1",
        model_name="m",
        crops=CropOptions(enabled=False),
    )
    strip = Strip(np.full((1000, 1000), 180, np.uint8), 0, 0, 0, "r1", 0)  # images: no camera clock
    rep.on_strip(
        StripResult(
            strip=strip, view=ModelView(strip.pixels, 0, 1.0, 1.0), xyxy=np.array([[100.0, 200.0, 150.0, 260.0]]),
            class_id=np.array([0]), score=np.array([0.9]), tiles=1, infer_s=0.0, prep_s=0.0,
        )
    )  # fmt: skip
    assert len(pub.of_kind("stop")) == 1 and pub.of_kind("status") == []
    latency = rep.end_roll()["stop_latency"]
    assert (latency["stops"], latency["unmeasured"], latency["p99_ms"]) == (0, 1, None)
