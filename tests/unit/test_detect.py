"""Model bundles and the ONNX Runtime backend, with real ORT sessions on tiny in-test graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.config import ModelConfig
from runtime.detect.bundle import load_bundle, open_detector
from runtime.detect.decode import DecodeStats, decode_rtdetr
from runtime.errors import ConfigError, ModelError
from tests.helpers.tiny_models import darkness_detector_onnx, write_tiny_bundle


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "bundle", class_bias=[2.0, -2.0, -4.0])


def test_dark_tiles_are_detected_bright_tiles_are_not(bundle: Path) -> None:
    det = open_detector(ModelConfig(bundle=bundle))
    assert det.providers == ["CPUExecutionProvider"]
    tiles = np.stack([np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8)])
    dark, bright = det.infer(tiles)
    assert len(bright) == 0
    assert len(dark) == 5  # every query fires; the merger, not the decoder, folds duplicates
    assert set(dark.class_id.tolist()) == {0}
    np.testing.assert_allclose(dark.xyxy[0], [24, 24, 40, 40], atol=1e-4)  # 0.5 +- 0.125 of 64 px


def test_config_threshold_override_and_unknown_class(bundle: Path) -> None:
    det = open_detector(ModelConfig(bundle=bundle, thresholds={"hole": 0.9999999}))
    assert len(det.infer(np.zeros((1, 64, 64), np.uint8))[0]) == 0
    with pytest.raises(ConfigError, match="nothing_like_this"):
        open_detector(ModelConfig(bundle=bundle, thresholds={"nothing_like_this": 0.5}))


def test_static_batch_model_takes_any_number_of_tiles(tmp_path: Path) -> None:
    b = write_tiny_bundle(tmp_path / "b4", batch=4, class_bias=[2.0, -9.0, -9.0])
    det = open_detector(ModelConfig(bundle=b))
    out = det.infer(np.zeros((6, 64, 64), np.uint8))
    assert len(out) == 6 and all(len(d) == 5 for d in out)


def test_missing_bundle_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_tampered_model_is_refused_by_hash(bundle: Path) -> None:
    with (bundle / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="sha256"):
        load_bundle(bundle)


def test_wrong_schema_is_refused(bundle: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    m["schema"] = "loomsight.model/0"
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="schema"):
        load_bundle(bundle)


def test_corrupt_onnx_with_matching_hash_is_a_clear_model_error(tmp_path: Path) -> None:
    from deploy.bundle import write_bundle
    from tests.helpers.tiny_models import manifest_fields

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf" * 10)
    b = tmp_path / "bad"
    write_bundle(b, {"model.onnx": junk}, manifest_fields(classes=["hole"], size_px=64, num_queries=5))
    with pytest.raises(ModelError, match="cannot load"):
        open_detector(ModelConfig(bundle=b))


def test_input_shape_mismatch_says_which(tmp_path: Path) -> None:
    from deploy.bundle import write_bundle
    from tests.helpers.tiny_models import manifest_fields

    onnx_path = darkness_detector_onnx(tmp_path / "m.onnx", size_px=32, num_classes=3)
    b = tmp_path / "mismatch"
    write_bundle(
        b, {"model.onnx": onnx_path}, manifest_fields(classes=["a", "b", "c"], size_px=64, num_queries=5)
    )
    with pytest.raises(ModelError, match="input shape"):
        open_detector(ModelConfig(bundle=b))


def test_class_count_mismatch_says_which(tmp_path: Path) -> None:
    from deploy.bundle import write_bundle
    from tests.helpers.tiny_models import manifest_fields

    onnx_path = darkness_detector_onnx(tmp_path / "m.onnx", size_px=64, num_classes=2)
    b = tmp_path / "mismatch"
    write_bundle(
        b, {"model.onnx": onnx_path}, manifest_fields(classes=["a", "b", "c"], size_px=64, num_queries=5)
    )
    with pytest.raises(ModelError, match="output shape"):
        open_detector(ModelConfig(bundle=b))


def test_decoder_drops_non_finite_outputs_and_counts_them() -> None:
    out = np.zeros((1, 3, 6), np.float32)
    out[0, :, :4] = [0.5, 0.5, 0.2, 0.2]
    out[0, :, 4] = 0.9
    out[0, 1, 4] = np.nan
    out[0, 2, 0] = np.inf
    stats = DecodeStats()
    (d,) = decode_rtdetr(out, input_size_px=100, thresholds=np.array([0.5, 0.5], np.float32), stats=stats)
    assert len(d) == 1 and stats.non_finite_queries == 2
    np.testing.assert_allclose(d.xyxy[0], [40, 40, 60, 60], atol=1e-4)


def test_decoder_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="expected"):
        decode_rtdetr(np.zeros((1, 3, 7), np.float32), input_size_px=10, thresholds=np.zeros(2, np.float32))
