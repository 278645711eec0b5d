"""Dense bundles: the mask decoder (regions -> boxes, class by mass, score = peak), load-time
checks of the output shape, NaN maps skipped and counted, and a real ONNX Runtime session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.config import ModelConfig
from runtime.detect.bundle import open_detector
from runtime.detect.decode import DecodeStats
from runtime.detect.manifest import MaskOutput, ModelManifest
from runtime.detect.mask_decode import decode_mask
from runtime.errors import ModelError

pytest.importorskip("onnx")
from tests.helpers.tiny_mask_model import mask_manifest_fields, write_tiny_mask_bundle

SPEC = MaskOutput(stride_px=2)


def _map(n_cls: int = 2, size: int = 16) -> np.ndarray:
    return np.zeros((1, 1 + n_cls, size, size), np.float32)


def test_each_region_is_one_box_in_input_pixels_with_its_peak_and_majority_class() -> None:
    out = _map()
    out[0, 0, 2:4, 3:8] = 0.9  # region A: 2 x 5 cells, mostly class 1
    out[0, 2, 2:4, 3:8] = 0.8
    out[0, 1, 2:4, 3:8] = 0.2
    out[0, 0, 10:14, 10:11] = [[0.6], [0.7], [0.95], [0.6]]  # region B: a thin streak, class 0
    out[0, 1, 10:14, 10:11] = 1.0
    (d,) = decode_mask(out, spec=SPEC, thresholds=np.array([0.5, 0.5], np.float32))
    order = np.argsort(d.xyxy[:, 0])
    boxes, cls, score = d.xyxy[order], d.class_id[order], d.score[order]
    np.testing.assert_allclose(boxes, [[6, 4, 16, 8], [20, 20, 22, 28]])  # cells x stride 2
    assert cls.tolist() == [1, 0]
    np.testing.assert_allclose(score, [0.9, 0.95], rtol=1e-6)


def test_a_region_whose_peak_is_below_its_class_threshold_is_not_reported() -> None:
    out = _map()
    out[0, 0, 1:3, 1:3] = 0.6
    out[0, 1, 1:3, 1:3] = 1.0
    out[0, 0, 8:10, 8:10] = 0.6
    out[0, 2, 8:10, 8:10] = 1.0
    (d,) = decode_mask(out, spec=SPEC, thresholds=np.array([0.7, 0.5], np.float32))
    assert d.class_id.tolist() == [1]


def test_a_clean_map_gives_no_detections_and_a_nan_map_is_skipped_and_counted() -> None:
    out = np.concatenate([_map(), _map()])
    out[1, 0, 3, 3] = np.nan
    stats = DecodeStats()
    clean, broken = decode_mask(out, spec=SPEC, thresholds=np.array([0.5, 0.5], np.float32), stats=stats)
    assert len(clean) == 0 and len(broken) == 0
    assert stats.non_finite_tiles == 1


def test_a_map_with_the_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected \(batch, 3, h, w\)"):
        decode_mask(np.zeros((1, 4, 8, 8), np.float32), spec=SPEC, thresholds=np.zeros(2, np.float32))


def test_manifests_without_an_output_format_are_rtdetr_and_mask_manifests_parse() -> None:
    from tests.helpers.tiny_models import manifest_fields

    old = ModelManifest.model_validate({**manifest_fields(classes=["hole"], size_px=64, num_queries=5),
                                        "schema": "loomsight.model/1", "sha256": {"model.onnx": "0"}})  # fmt: skip
    assert old.output.format == "rtdetr"
    dense = ModelManifest.model_validate(
        {
            **mask_manifest_fields(classes=["hole", "stain"]),
            "schema": "loomsight.model/1",
            "sha256": {"model.onnx": "0"},
        }
    )
    assert isinstance(dense.output, MaskOutput) and dense.output.stride_px == 2
    with pytest.raises(ValueError, match="stride_px"):
        ModelManifest.model_validate(
            {**mask_manifest_fields(classes=["hole"], stride_px=3), "schema": "loomsight.model/1",
             "sha256": {"model.onnx": "0"}}
        )  # fmt: skip


def test_onnx_runtime_session_finds_a_bright_patch_where_it_is(tmp_path: Path) -> None:
    bundle = write_tiny_mask_bundle(tmp_path / "b", classes=["hole", "stain"], class_probs=[0.1, 0.9])
    det = open_detector(ModelConfig(bundle=bundle, thresholds={}))
    tiles = np.zeros((2, 64, 64), np.uint8)
    tiles[1, 20:30, 40:46] = 255
    clean, patch = det.infer(tiles)
    assert len(clean) == 0
    assert patch.class_id.tolist() == [1]  # stain: the class with the mass
    np.testing.assert_allclose(patch.xyxy[0], [40, 20, 46, 30])
    assert patch.score[0] == pytest.approx(1.0)


def test_a_bundle_whose_manifest_stride_disagrees_with_the_model_fails_at_load(tmp_path: Path) -> None:
    bundle = write_tiny_mask_bundle(tmp_path / "b", stride_px=2, manifest_stride_px=4)
    with pytest.raises(ModelError, match="stride 4 px"):
        open_detector(ModelConfig(bundle=bundle, thresholds={}))


def test_the_open_set_reports_a_sure_region_that_misses_its_class_threshold_as_class_c() -> None:
    out = _map()
    out[0, 0, 1:3, 1:3] = 0.9  # sure of a defect, not of its class's threshold
    out[0, 1, 1:3, 1:3] = 1.0
    out[0, 0, 8:10, 8:10] = 0.4  # too faint even for the open set
    out[0, 1, 8:10, 8:10] = 1.0
    thresholds = np.array([0.95, 0.95], np.float32)
    (off,) = decode_mask(out, spec=SPEC, thresholds=thresholds)
    (on,) = decode_mask(out, spec=SPEC, thresholds=thresholds, unknown_threshold=0.8)
    assert len(off) == 0
    assert on.class_id.tolist() == [2] and on.score[0] == pytest.approx(0.9)
