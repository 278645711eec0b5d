"""Bad input through the real daemon (issue 5 "Fault and soak tests", issue 3 "Bad input").

Every test runs `Daemon` end to end: synthetic loom frames, assembler, preprocess, tiler, a real
ONNX Runtime session on a tiny in-test graph, merger, grader, the SQLite spool and a PUB socket.
What was published is read back from the spool (every event is committed there before it is
sent) and, where it matters, from a real SUB socket.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import zmq
from onnx import TensorProto, helper, numpy_helper

from deploy.bundle import write_bundle
from runtime.config import LoomsightConfig, parse_config
from runtime.daemon.app import Daemon
from runtime.errors import CameraError, ModelError
from runtime.events.spool_reader import SpoolReader
from runtime.frame import Frame
from runtime.ops.health import HealthState
from runtime.sources.base import SourceStatus
from runtime.sources.faults import Fault, FaultInjectingSource
from runtime.sources.synthetic import SyntheticSource
from tests.helpers.tiny_models import darkness_detector_onnx, manifest_fields, write_tiny_bundle

QUERIES = 4
FIRING: dict[str, Any] = {
    "gain": 0.0,
    "class_bias": [8.0],
}  # the darkness detector scores 0.9997 on every tile


# ----------------------------------------------------------------------------- helpers
def _config(
    tmp_path: Path,
    bundle: Path,
    *,
    endpoint: str = "tcp://127.0.0.1:0",
    length_m: float | None = 2.0,
    retry_load_s: float | None = None,
) -> LoomsightConfig:
    return parse_config(
        {
            "line_id": "faults",
            "source": {
                "kind": "synthetic",
                "synthetic": {"width_px": 512, "block_lines": 256, "realtime": False, "length_m": length_m},
            },
            "model": {"bundle": str(bundle), "batch_size": 8, "retry_load_s": retry_load_s, "warmup_runs": 1},
            "web": {"strip_lines": 512, "overlap_lines": 64},
            "publish": {
                "pub_endpoint": endpoint,
                "replay_endpoint": None,
                "jpeg_crops": False,
                "heartbeat_s": 0.5,
            },
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
        }
    )


def _spooled(tmp_path: Path) -> list[dict[str, Any]]:
    """Every event the daemon committed (and so published), in seq order."""
    reader = SpoolReader(tmp_path / "spool.sqlite3")
    try:
        return [json.loads(frames[1]) for _, frames in reader.read_after(0, 1 << 62, 1_000_000)]
    finally:
        reader.close()


def _bundle(tmp_path: Path, name: str = "bundle", **kwargs: Any) -> Path:
    return write_tiny_bundle(tmp_path / name, classes=["stain"], size_px=64, overlap_px=8, **kwargs)


def _rewrite_hash(bundle: Path) -> None:
    """Make the manifest's sha256 match whatever model.onnx now holds."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["sha256"]["model.onnx"] = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _pattern_model(path: Path, pattern: np.ndarray) -> Path:
    """An RT-DETR-shaped graph whose output is `pattern` (Q, 4 + C) for every image of the batch."""
    q, width = pattern.shape
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", q, width])
    inits = [
        numpy_helper.from_array(pattern.astype(np.float32).reshape(1, q, width), "pattern"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape3"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=1, axes=[1, 2, 3]),
        helper.make_node("Reshape", ["m", "shape3"], ["m3"]),  # (B, 1, 1): carries the batch size
        helper.make_node("Mul", ["m3", "zero"], ["z"]),
        helper.make_node("Add", ["z", "pattern"], ["output0"]),  # (B, Q, 4 + C)
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "pattern", [inp], [out], initializer=inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncate_keep_hash", "ONNX Runtime cannot load"),  # manifest hash updated: the file itself is bad
        ("garbage_keep_hash", "ONNX Runtime cannot load"),
        ("truncate", "does not match the manifest"),  # manifest untouched: the hash check refuses it
    ],
)
def test_a_corrupt_model_is_refused_with_a_clear_error_and_nothing_is_published(
    tmp_path: Path, damage: str, expected: str
) -> None:
    bundle = _bundle(tmp_path, **FIRING)
    onnx_file = bundle / "model.onnx"
    data = onnx_file.read_bytes()
    onnx_file.write_bytes(
        data[: len(data) // 2] if damage.startswith("truncate") else b"\x08\x07garbage" * 64
    )
    if damage.endswith("keep_hash"):
        _rewrite_hash(bundle)
    daemon = Daemon(_config(tmp_path, bundle))
    with pytest.raises(ModelError) as err:
        daemon.run()
    assert expected in str(err.value) and str(onnx_file) in str(err.value)
    assert "re-export" in str(err.value)  # says what to do
    assert _spooled(tmp_path) == []


@pytest.mark.parametrize("mismatch", ["input", "output"])
def test_a_model_of_the_wrong_shape_is_refused_naming_the_mismatch(tmp_path: Path, mismatch: str) -> None:
    onnx_path = darkness_detector_onnx(
        tmp_path / "src.onnx", size_px=64, num_classes=2 if mismatch == "output" else 1, num_queries=QUERIES
    )
    fields = manifest_fields(
        classes=["stain"], size_px=32 if mismatch == "input" else 64, num_queries=QUERIES
    )
    bundle = tmp_path / "bundle"
    write_bundle(bundle, {"model.onnx": onnx_path}, fields)
    with pytest.raises(ModelError) as err:
        Daemon(_config(tmp_path, bundle)).run()
    message = str(err.value)
    if mismatch == "input":
        assert "input shape is ['batch', 3, 64, 64]" in message and "[batch, 3, 32, 32]" in message
    else:
        assert "output shape is ['batch', 4, 6]" in message and "[batch, queries, 5]" in message
    assert _spooled(tmp_path) == []


@pytest.mark.parametrize("finite", [False, True])
def test_non_finite_model_outputs_publish_no_defects_and_are_counted(tmp_path: Path, finite: bool) -> None:
    nan, inf = (0.3, 0.3) if finite else (np.nan, np.inf)
    # every query scores 0.99 for its class; without the finite check each would be a defect
    pattern = np.array(
        [
            [nan, 0.5, 0.2, 0.2, 0.99],
            [0.5, 0.5, 0.2, 0.2, inf],
            [0.5, 0.5, inf, 0.2, 0.99],
            [0.5, -inf, 0.2, 0.2, 0.99],
        ],
        np.float32,
    )
    fields = manifest_fields(classes=["stain"], size_px=64, num_queries=QUERIES)
    bundle = tmp_path / "bundle"
    write_bundle(bundle, {"model.onnx": _pattern_model(tmp_path / "src.onnx", pattern)}, fields)
    daemon = Daemon(_config(tmp_path, bundle, length_m=1.0))
    summary = daemon.run()
    status = daemon.status()
    events = _spooled(tmp_path)
    defects = [e for e in events if e["kind"] == "defect"]
    assert status["tiles"] > 0 and status["strip_errors"] == 0
    assert summary["inspected_m"] == pytest.approx(1.0)
    assert events[-1]["kind"] == "roll" and events[-1]["state"] == "end"
    if finite:  # the same graph with finite numbers does report defects: the check is what stops them
        assert defects and status["non_finite_outputs"] == 0
    else:
        assert defects == [] and summary["defects_by_class"] == {}
        assert status["non_finite_outputs"] >= QUERIES * status["tiles"]


# ----------------------------------------------------------------------------- frames
class _ColourFrameAt:
    """Turns read number `at` into a BGR frame: a camera whose pixel format changed under us."""

    def __init__(self, inner: FaultInjectingSource, at: int) -> None:
        self.inner, self.at, self.reads = inner, at, 0

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
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    def status(self) -> SourceStatus:
        return self.inner.status()

    def read(self, *, timeout_s: float) -> Frame | None:
        frame = self.inner.read(timeout_s=timeout_s)
        self.reads += 1
        if frame is not None and self.reads - 1 == self.at:
            frame = replace(frame, pixels=np.repeat(frame.pixels[..., None], 3, axis=2))
        return frame


def test_frames_of_the_wrong_size_dtype_or_pixel_format_are_counted_and_inspection_goes_on(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, _bundle(tmp_path), length_m=2.0)
    faults = [Fault(10, "wrong_size"), Fault(20, "wrong_dtype"), Fault(30, "truncated")]
    source = _ColourFrameAt(FaultInjectingSource(SyntheticSource(config.source.synthetic), faults), at=40)
    daemon = Daemon(config, source=source)
    summary = daemon.run()
    status = daemon.status()
    asm = status["assembler"]
    assert asm["skipped_frames"] == 3  # wrong width, uint16, BGR in a gray roll
    assert asm["gaps"] == 4 and asm["gap_lines"] == 3 * 256 + 128  # the truncated frame lost half its lines
    assert asm["lines"] == 20_000 - asm["gap_lines"]
    assert status["strip_errors"] == 0 and status["source_errors"] == 0
    assert status["strips_inspected"] == asm["strips"]  # every strip after the faults was inspected
    assert 1 <= status["queue_peaks"]["strips"] <= config.queues.strips  # back-pressure, bounded
    assert summary["inspected_m"] == pytest.approx(2.0) and summary["source"]["state"] == "finished"
    assert [e["state"] for e in _spooled(tmp_path) if e["kind"] == "roll"] == ["start", "end"]


def test_a_source_that_raises_now_and_then_is_survived_and_counted(tmp_path: Path) -> None:
    config = _config(tmp_path, _bundle(tmp_path), length_m=2.0)
    faults = [Fault(10, "exception", count=3), Fault(30, "exception")]
    daemon = Daemon(config, source=FaultInjectingSource(SyntheticSource(config.source.synthetic), faults))
    summary = daemon.run()
    status = daemon.status()
    assert status["source_errors"] == 4
    assert status["assembler"]["gaps"] == 0 and status["assembler"]["lines"] == 20_000  # nothing lost
    assert summary["inspected_m"] == pytest.approx(2.0)


def test_a_source_that_keeps_raising_stops_the_daemon_with_its_error_after_closing_the_roll(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, _bundle(tmp_path), length_m=None)
    source = FaultInjectingSource(
        SyntheticSource(config.source.synthetic), [Fault(6, "exception", count=10**9)]
    )
    daemon = Daemon(config, source=source)
    t0 = time.monotonic()
    with pytest.raises(CameraError, match="injected camera fault"):
        daemon.run()
    elapsed = time.monotonic() - t0
    assert daemon.status()["source_errors"] == 20  # Pipeline.max_source_failures in a row
    assert elapsed < 15.0  # capped backoff: about 10 s of retries, then exit for systemd to restart
    rolls = [e for e in _spooled(tmp_path) if e["kind"] == "roll"]
    assert [r["state"] for r in rolls] == ["start", "end"]  # the roll is closed before exiting


# ----------------------------------------------------------------------------- model retry
def _receive_until(sub: zmq.Socket[Any], until_s: float, want: Any) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + until_s
    while time.monotonic() < deadline:
        if sub.poll(100):
            frames = sub.recv_multipart()
            got.append(json.loads(frames[1]))
            if want(got):
                break
    return got


@pytest.mark.parametrize("initially", ["missing", "corrupt"])
def test_with_retry_a_daemon_without_a_usable_model_stays_live_and_starts_once_a_bundle_appears(
    tmp_path: Path, loopback_endpoint: str, initially: str
) -> None:
    bundle = tmp_path / "bundle"
    if initially == "corrupt":
        _bundle(tmp_path, **FIRING)
        (bundle / "model.onnx").write_bytes(b"not a model")
        _rewrite_hash(bundle)
    config = _config(tmp_path, bundle, endpoint=loopback_endpoint, length_m=1.0, retry_load_s=0.5)
    sub: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(loopback_endpoint)
    health = HealthState(line_id="faults", stale_after_s=10.0)
    daemon = Daemon(config, health=health)
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(daemon.run()), daemon=True)
    runner.start()
    try:
        got = _receive_until(
            sub, 15.0, lambda g: sum(e["kind"] == "status" for e in g) >= 2
        )  # two: a slow-joining SUB may miss the first, and it is retried
        errors = [e for e in got if e["kind"] == "status" and e.get("state") == "model_error"]
        assert errors, got
        reason = errors[-1]["error"]
        assert reason.startswith("model failed to load")
        assert ("does not exist" if initially == "missing" else "ONNX Runtime cannot load") in reason
        assert str(bundle) in reason
        assert runner.is_alive() and not health.ready  # live, not ready
        assert daemon.status()["model"] == {"loaded": False, "error": reason}
        _bundle(tmp_path, **FIRING)  # an atomic rename puts a good bundle at the path
        runner.join(timeout=20)
        assert not runner.is_alive(), "the daemon did not pick up the new bundle"
    finally:
        daemon.stop()
        runner.join(timeout=10)
        sub.close()
    assert result["inspected_m"] == pytest.approx(1.0) and result["defects_by_class"]
    kinds = [e["kind"] for e in _spooled(tmp_path)]
    assert kinds[0] == "status" and "defect" in kinds and kinds[-1] == "roll"
    assert daemon.status()["model"] == {"loaded": True, "error": None}


def test_a_stop_while_waiting_for_the_model_is_a_clean_exit(tmp_path: Path) -> None:
    daemon = Daemon(_config(tmp_path, tmp_path / "absent", retry_load_s=30.0))
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(daemon.run()), daemon=True)
    runner.start()
    deadline = time.monotonic() + 10
    while not _spooled_exists(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    t0 = time.monotonic()
    daemon.stop()
    runner.join(timeout=5)
    assert not runner.is_alive() and time.monotonic() - t0 < 3.0
    assert result["state"] == "not_started" and "stopped before the model could be loaded" in result["reason"]


def _spooled_exists(tmp_path: Path) -> bool:
    try:
        return any(e["kind"] == "status" for e in _spooled(tmp_path))
    except Exception:
        return False


def test_replay_images_of_mixed_widths_stop_the_daemon_at_the_first_error_naming_the_file(
    tmp_path: Path,
) -> None:
    import cv2

    from runtime.config import ReplaySourceConfig
    from runtime.errors import SourceInputError
    from runtime.sources.replay import ReplaySource

    folder = tmp_path / "web"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "a.png"), rng.integers(90, 160, (600, 512), dtype=np.uint8))
    cv2.imwrite(str(folder / "b.png"), rng.integers(90, 160, (600, 480), dtype=np.uint8))
    config = _config(tmp_path, _bundle(tmp_path), length_m=None)
    source = ReplaySource(ReplaySourceConfig(path=folder, block_lines=256))
    daemon = Daemon(config, source=source)
    with pytest.raises(SourceInputError, match=r"b\.png is 480 px wide gray but a\.png is 512 px wide gray"):
        daemon.run()
    assert daemon.status()["source_errors"] == 1  # not retried 20 times: it cannot clear
