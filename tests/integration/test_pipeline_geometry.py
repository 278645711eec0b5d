"""Runtime geometry end to end, independent of model quality.

The synthetic loom renders a roll with exact defect masks; the frames fed to the daemon carry the
masks themselves (class-coded gray levels), and an oracle detector reports, per tile, one box per
connected region of each code. Everything between camera frames and ZeroMQ events is the real
daemon: assembler (strips with overlap), preprocess, tiler (overlapping tiles, shifted last tile),
batching, merger (cross-tile, cross-strip, open tracks), grader, spool and PUB. With a perfect
detector every true defect must come out exactly once, where it is, and a broken end metres long
must be one event with its full length.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from offline_train.dataset.labels import boxes_from_mask
from runtime.config import parse_config
from runtime.daemon.app import Daemon
from runtime.detect.decode import DecodeStats
from runtime.detect.manifest import MaskOutput, ModelManifest
from runtime.detect.mask_decode import decode_mask
from runtime.detections import Detections
from runtime.frame import Frame
from runtime.scoring import ScoredBox, score_defects
from runtime.sim.defects import DEFECT_CLASSES
from runtime.sim.fabric import FABRICS
from runtime.sim.loom import SyntheticLoom
from runtime.sources.base import SourceStatus

CODE_STEP = 25  # class k is painted as gray level (k + 1) * 25


class LabelSource:
    """The loom's masks as frames: 0 = clean, (class + 1) * 25 inside a defect."""

    def __init__(self, loom: SyntheticLoom, total_lines: int, block_lines: int) -> None:
        self.loom, self.total, self.block = loom, total_lines, block_lines
        self.seq = 0
        self.ids_to_code: dict[int, int] = {}

    live = False  # frames as fast as they are read: the pipeline waits for the inspector
    advance_lines_per_frame = None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    @property
    def finished(self) -> bool:
        return self.loom.lines_emitted >= self.total

    def status(self) -> SourceStatus:
        return SourceStatus(
            state="finished" if self.finished else "running", frames=self.seq, source="labels"
        )

    def read(self, *, timeout_s: float) -> Frame | None:
        if self.finished:
            return None
        n = min(self.block, self.total - self.loom.lines_emitted)
        block = self.loom.next_block(n)
        assert block.labels is not None
        codes = np.zeros(256, np.uint8)
        for t in self.loom.truth:
            if t.defect_id < 256:
                codes[t.defect_id] = (DEFECT_CLASSES.index(t.class_name) + 1) * CODE_STEP
        pixels = codes[np.clip(block.labels, 0, 255)]
        self.seq += 1
        return Frame(pixels, self.seq, time.time_ns(), block.line0, "labels")


class OracleDetector:
    """Finds every coded region in a tile: a detector that is never wrong."""

    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self.decode_stats = DecodeStats()

    @property
    def providers(self) -> list[str]:
        return ["oracle"]

    def warmup(self, runs: int) -> None:
        pass

    def close(self) -> None:
        pass

    def infer(self, tiles: np.ndarray) -> list[Detections]:
        out = []
        for tile in tiles:
            xyxy, cls = [], []
            for code in np.unique(tile):
                if code == 0:
                    continue
                for box in boxes_from_mask(tile == code, merge_gap_px=2, min_area_px=1):
                    xyxy.append(box)
                    cls.append(int(code) // CODE_STEP - 1)
            n = len(xyxy)
            out.append(
                Detections(
                    np.array(xyxy, np.float32).reshape(n, 4),
                    np.array(cls, np.int32),
                    np.full(n, 0.9, np.float32),
                )
            )
        return out


class MaskOracleDetector(OracleDetector):
    """The oracle as a dense model would see it: the coded regions painted into a stride-2
    probability map, then the runtime's own mask decoder."""

    def infer(self, tiles: np.ndarray) -> list[Detections]:
        n_cls = len(DEFECT_CLASSES)
        n, h, w = tiles.shape[:3]
        maps = np.zeros((n, 1 + n_cls, h // 2, w // 2), np.float32)
        for i, tile in enumerate(tiles):
            code = tile.reshape(h // 2, 2, w // 2, 2).max(axis=(1, 3))
            on = code > 0
            maps[i, 0][on] = 0.9
            cls = code.astype(np.int32) // CODE_STEP - 1
            for c in np.unique(cls[on]):
                maps[i, 1 + c][on & (cls == c)] = 1.0
        thresholds = np.full(n_cls, 0.5, np.float32)
        return decode_mask(maps, spec=MaskOutput(stride_px=2), thresholds=thresholds, stats=self.decode_stats)


def _manifest() -> ModelManifest:
    return ModelManifest.model_validate(
        {
            "schema": "loomsight.model/1",
            "name": "oracle",
            "classes": list(DEFECT_CLASSES),
            "input": {"size_px": 256, "channels": 3},
            "output": {"num_queries": 100},
            "mm_per_px": 0.1,  # the camera's resolution: no resampling, so codes stay exact
            "tile": {"size_px": 256, "overlap_px": 32},
            "thresholds": {},
            "onnx_opset": 17,
            "sha256": {"model.onnx": "0" * 64},
        }
    )


def _run(
    tmp_path: Path,
    endpoint: str,
    loom: SyntheticLoom,
    total_lines: int,
    detector: type[OracleDetector] = OracleDetector,
) -> list[dict[str, Any]]:
    config = parse_config(
        {
            "line_id": "geo",
            "source": {"kind": "synthetic", "synthetic": {"realtime": False}},
            "model": {"batch_size": 8, "retry_load_s": None},
            "web": {"strip_lines": 1024, "overlap_lines": 128},
            "publish": {"pub_endpoint": endpoint, "replay_endpoint": None, "jpeg_crops": False},
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
        }
    )
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"defect.")
    sub.setsockopt(zmq.SUBSCRIBE, b"roll.")
    sub.connect(endpoint)
    source = LabelSource(loom, total_lines, block_lines=500)  # frames do not align with strips
    daemon = Daemon(config, source=source, detector=detector(_manifest()), roll_id="geo-roll")
    received: list[dict[str, Any]] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            if sub.poll(50):
                topic, body, *_ = sub.recv_multipart()
                received.append(json.loads(body))
                if topic.startswith(b"roll.") and received[-1].get("state") == "end":
                    done.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.3)  # let the SUB connect before the first event (replay covers this in production)
    daemon.run()
    done.wait(10)
    listener.join(timeout=5)
    sub.close()
    return [e for e in received if e["kind"] == "defect"]


@pytest.mark.parametrize("detector", [OracleDetector, MaskOracleDetector], ids=["boxes", "mask-decoder"])
def test_every_defect_is_reported_once_where_it_is(
    tmp_path: Path, loopback_endpoint: str, detector: type[OracleDetector]
) -> None:
    loom = SyntheticLoom(FABRICS["plain_gray"], width_px=2048, seed=21, defects_per_m=8.0, with_masks=True)
    total = 40_000  # 4 m
    events = _run(tmp_path, loopback_endpoint, loom, total, detector)
    truth = [
        ScoredBox(t.class_name, t.x0_px, t.y0_line, t.x1_px, t.y1_line)
        for t in loom.truth
        if t.y0_line < total
    ]
    reported = [ScoredBox(e["class"], *e["bbox_px"]) for e in events]
    scores = score_defects(truth, reported, classes=list(DEFECT_CLASSES))
    assert len(truth) >= 15
    assert scores["all"].recall == 1.0, [truth[i] for i in scores["all"].missed]
    assert scores["all"].duplicates == 0
    assert scores["all"].precision >= 0.95  # only defects closer than the join gap may fold together
    # positions in mm follow from the pixels and the resolution
    for e in events:
        assert abs(e["x_mm"] - e["bbox_px"][0] * 0.1) < 0.06 and abs(e["y_mm"] - e["bbox_px"][1] * 0.1) < 0.06


def test_a_broken_end_metres_long_is_one_event_with_its_full_length(
    tmp_path: Path, loopback_endpoint: str
) -> None:
    loom = SyntheticLoom(FABRICS["twill_2_1_gray"], width_px=2048, seed=5, defects_per_m=0.0, with_masks=True)
    streak = loom.place_defect("broken_end", y0_line=3_000, x_center_px=900, length_mm=3_500)
    events = _run(tmp_path, loopback_endpoint, loom, 45_000)
    ends = [e for e in events if e["class"] == "broken_end"]
    assert len(ends) == 1, ends
    e = ends[0]
    true_len_mm = (streak.y1_line - streak.y0_line) * 0.1
    assert true_len_mm >= 3_000
    assert abs(e["h_mm"] - true_len_mm) <= 1.0  # within a tenth of a line of 0.1 mm... to 1 mm
    assert abs(e["y_mm"] - streak.y0_line * 0.1) <= 0.5
