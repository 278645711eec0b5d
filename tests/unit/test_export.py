"""`loomsight export`: a tiny RT-DETR checkpoint built in-test -> ONNX bundle the runtime loads.

The model is the project's extra-small config with 3 classes and random weights (parity needs no
training), saved by ultralytics' own `Model.save`, with a `loomsight_train.json` beside it as
`loomsight train` writes one. Threshold tuning is tested on hand-made detections and labels.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import pytest

from deploy.onnx_export import compare_outputs
from deploy.thresholds import DEFAULT_GRID, TileLabels, box_iou, match_detections, sweep, tune_thresholds
from runtime.detect.manifest import RtdetrOutput
from runtime.detections import Detections
from runtime.errors import ConfigError, ModelError

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["hole", "stain", "broken_end"]
SIZE = 64

# ---- threshold tuning on hand-made detections (no torch) ----------------------------------------


def _dets(rows: list[tuple[list[float], int, float]]) -> Detections:
    if not rows:
        return Detections.empty()
    return Detections(
        xyxy=np.array([r[0] for r in rows], np.float32),
        class_id=np.array([r[1] for r in rows], np.int32),
        score=np.array([r[2] for r in rows], np.float32),
    )


def _labels(rows: list[tuple[list[float], int]]) -> TileLabels:
    return TileLabels(
        xyxy=np.array([r[0] for r in rows], np.float32).reshape(-1, 4),
        class_id=np.array([r[1] for r in rows], np.int32),
    )


BOX = [10.0, 10.0, 30.0, 30.0]
SHIFTED = [18.0, 10.0, 38.0, 30.0]  # IoU 12/28 = 0.43 with BOX: too far off
ELSEWHERE = [40.0, 40.0, 60.0, 60.0]


def test_tuning_picks_the_f1_optimal_threshold() -> None:
    # 5 hole labels, one per tile. Hole detections: true positives at 0.92, 0.81, 0.74, 0.66; a
    # duplicate of the 0.92 one at 0.71, a box off by too much at 0.52, background at 0.30 and 0.12;
    # the fifth hole is never found. A stain detection lies on a hole (no stain labels at all).
    # By hand: t=0.50 -> P 4/6 R 4/5 F1 .727; t in 0.55..0.65 -> P .8 R .8 F1 .8 (best; lowest wins);
    # t=0.70 -> P 3/4 R 3/5 F1 .667; t=0.75 -> P 1 R .4 F1 .571.
    dets = [
        _dets([(BOX, 0, 0.92), (BOX, 0, 0.71), (ELSEWHERE, 0, 0.30)]),
        _dets([(BOX, 0, 0.81), (ELSEWHERE, 0, 0.12)]),
        _dets([(BOX, 0, 0.74), (BOX, 1, 0.48)]),
        _dets([(BOX, 0, 0.66), (SHIFTED, 0, 0.52)]),
        _dets([]),
    ]
    labels = [_labels([(BOX, 0)]) for _ in range(4)] + [_labels([(ELSEWHERE, 0)])]
    tuned = tune_thresholds(dets, labels, CLASSES)
    hole = tuned["hole"]
    assert hole.tuned and hole.threshold == pytest.approx(0.55)
    assert (hole.precision, hole.recall, hole.f1) == pytest.approx((0.8, 0.8, 0.8))
    assert hole.n_labels == 5
    p, r, f1 = sweep(match_detections(dets, labels, 3)[0])
    at = {round(float(t), 2): i for i, t in enumerate(DEFAULT_GRID)}
    assert f1[at[0.5]] == pytest.approx(2 * (4 / 6) * 0.8 / (4 / 6 + 0.8))
    assert (p[at[0.7]], r[at[0.7]]) == pytest.approx((0.75, 0.6))
    assert f1.max() == pytest.approx(0.8)
    stain = tuned["stain"]
    assert not stain.tuned and stain.threshold == 0.5 and "no labels" in stain.note


def test_a_threshold_found_on_fewer_than_three_true_positives_is_not_tuned() -> None:
    # one stain label, found once at 0.07 with a false alarm at 0.05: the best F1 is at the grid's
    # floor, chosen on one tile; export keeps the default instead (the ">= 3 found" rule of tune)
    dets = [_dets([(BOX, 1, 0.07)]), _dets([(ELSEWHERE, 1, 0.05)])]
    labels = [_labels([(BOX, 1)]), _labels([])]
    stain = tune_thresholds(dets, labels, CLASSES)["stain"]
    assert not stain.tuned and stain.threshold == 0.5 and "fewer than 3" in stain.note
    assert tune_thresholds(dets, labels, CLASSES, min_found=1)["stain"].tuned


def test_sweep_equals_rematching_at_every_threshold() -> None:
    """The one-matching-for-all-thresholds shortcut agrees with matching afresh at each threshold."""
    rng = np.random.default_rng(3)
    dets, labels = [], []
    for _ in range(30):
        gt = rng.uniform(0, 40, (rng.integers(0, 4), 2))
        labels.append(_labels([([x, y, x + 15, y + 15], int(rng.integers(0, 2))) for x, y in gt]))
        rows = []
        for x, y in gt:
            for _ in range(rng.integers(0, 3)):
                dx, dy = rng.normal(0, 3, 2)
                rows.append(
                    (
                        [x + dx, y + dy, x + dx + 15, y + dy + 15],
                        int(rng.integers(0, 2)),
                        float(rng.uniform()),
                    )
                )
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 40, 2)
            rows.append(([x, y, x + 10, y + 10], int(rng.integers(0, 2)), float(rng.uniform())))
        dets.append(_dets(rows))
    fast = [sweep(m) for m in match_detections(dets, labels, 2)]
    for i, t in enumerate(DEFAULT_GRID):
        kept = [d[d.score >= t] for d in dets]
        for c, m in enumerate(match_detections(kept, labels, 2)):
            tp, n = int(m.is_tp.sum()), len(m.is_tp)
            assert fast[c][1][i] == pytest.approx(tp / m.n_labels if m.n_labels else 0.0)
            assert fast[c][0][i] == pytest.approx(tp / n if n else 0.0)


def test_box_iou() -> None:
    iou = box_iou(np.array([BOX]), np.array([BOX, SHIFTED, ELSEWHERE]))
    np.testing.assert_allclose(iou, [[1.0, 240 / 560, 0.0]], atol=1e-9)


def test_parity_accepts_reordered_queries_and_rejects_nan() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(size=(2, 6, 7)).astype(np.float32)
    swapped = ref.copy()
    swapped[1, [0, 3]] = swapped[1, [3, 0]]
    p = compare_outputs(swapped + 1e-6, ref, tolerance=1e-4)
    assert p.max_abs_diff < 1e-5 and p.reordered_tiles == 1
    broken = ref.copy()
    broken[0, 2, 5] = np.nan
    assert compare_outputs(broken, ref, tolerance=1e-3).max_abs_diff == np.inf
    assert compare_outputs(ref + 0.01, ref, tolerance=1e-3).max_abs_diff == pytest.approx(0.01, rel=1e-3)


def test_parity_leaves_out_only_queries_no_threshold_can_reach() -> None:
    ref = np.zeros((1, 4, 7), np.float32)
    ref[0, :, :4] = [[0.1, 0.1, 0.1, 0.1], [0.3, 0.3, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1], [0.7, 0.7, 0.1, 0.1]]
    ref[0, :, 4] = [0.9, 0.6, 0.05, 0.002]
    other = ref.copy()
    other[0, 3, :4] = [0.2, 0.9, 0.3, 0.3]  # a different low-score query got into the top-k
    p = compare_outputs(other, ref, tolerance=1e-3, score_floor=0.01)
    assert p.max_abs_diff == 0.0 and (p.compared_queries, p.ignored_queries) == (3, 1)
    assert compare_outputs(other, ref, tolerance=1e-3, score_floor=0.0).max_abs_diff > 0.1
    other[0, 3, 4] = 0.5  # ... but now it could become a detection: it counts
    assert compare_outputs(other, ref, tolerance=1e-3, score_floor=0.01).max_abs_diff > 0.1


def test_training_record_from_the_sidecar_or_the_checkpoint(tmp_path: Path) -> None:
    from deploy.checkpoint import read_training_record

    pt = tmp_path / "best.pt"
    inside = {"train_args": {"loomsight": {"mm_per_px": 0.25, "tile": {"size_px": 128, "overlap_px": 16}}}}
    rec = read_training_record(pt, inside)
    assert (rec.mm_per_px, rec.tile_px, rec.overlap_px, rec.source) == (
        0.25,
        128,
        16,
        f"{pt}:train_args.loomsight",
    )
    assert read_training_record(pt, {}).mm_per_px is None
    sidecar = {"mm_per_px": 0.4, "tile_px": 256, "overlap_px": 32, "classes": CLASSES, "dataset_sha256": ""}
    (tmp_path / "loomsight_train.json").write_text(json.dumps(sidecar))
    rec = read_training_record(pt, inside)  # the sidecar wins
    assert (rec.mm_per_px, rec.tile_px, rec.classes, rec.dataset_sha256) == (0.4, 256, CLASSES, None)
    (tmp_path / "loomsight_train.json").write_text(json.dumps({"mm_per_px": "fine"}))
    with pytest.raises(ModelError, match="bad value"):
        read_training_record(pt, {})


# ---- the real export (torch + ultralytics) -------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight 3-class RT-DETR at 64 px saved by ultralytics, with a training record beside it."""
    pytest.importorskip("ultralytics")
    from ultralytics import RTDETR

    d = tmp_path_factory.mktemp("run") / "tiny" / "weights"
    d.mkdir(parents=True)
    cfg = d.parent / "tiny-3.yaml"
    cfg.write_text(
        re.sub(
            r"^nc: \d+", "nc: 3", (ROOT / "offline_train/configs/loomsight-xs.yaml").read_text(), flags=re.M
        )
    )
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = RTDETR(str(cfg))
    net = cast(Any, model.model)
    net.names = dict(enumerate(CLASSES))
    # Untrained, every encoder score is nearly equal and float rounding decides RT-DETR's top-k query
    # selection (PyTorch fused vs unfused disagree). Spread the scores apart, as training does.
    with torch.no_grad():
        net.model[-1].enc_score_head.weight.mul_(50.0)
    model.ckpt = {"train_args": {"imgsz": SIZE, "data": "generated"}}
    path = d / "best.pt"
    model.save(str(path))
    record = {
        "schema": "loomsight.train/1",
        "mm_per_px": 0.4,
        "tile_px": SIZE,
        "overlap_px": 16,
        "color": "gray",
        "classes": CLASSES,
        "dataset_sha256": "d" * 64,
    }
    (d / "loomsight_train.json").write_text(json.dumps(record))
    return path


@pytest.fixture(scope="module")
def val_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "images/val").mkdir(parents=True)
    (root / "labels/val").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(6):
        img = rng.normal(140, 10, (SIZE, SIZE)).clip(0, 255).astype(np.uint8)
        img[16:32, 20:40] = 30
        cv2.imwrite(str(root / f"images/val/t{i}.png"), img)
        (root / f"labels/val/t{i}.txt").write_text(f"{i % 3} 0.46875 0.375 0.3125 0.25\n")
    y = root / "data.yaml"
    y.write_text(
        f"path: {root}\ntrain: images/val\nval: images/val\nnames:\n  0: hole\n  1: stain\n  2: broken_end\n"
    )
    return y


@pytest.mark.train
def test_export_bundle_loads_in_the_runtime_and_matches_pytorch(
    checkpoint: Path, val_yaml: Path, tmp_path: Path
) -> None:
    import onnx

    from deploy.checkpoint import load_checkpoint
    from deploy.export import ExportOptions, export_bundle
    from deploy.onnx_export import reference_output
    from runtime.config import ModelConfig
    from runtime.detect.base import prepare_batch
    from runtime.detect.bundle import load_bundle, open_detector
    from runtime.detect.onnx_backend import OnnxDetector

    out = tmp_path / "bundle"
    res = export_bundle(
        ExportOptions(
            checkpoint=checkpoint, out=out, static_batch=2, tune_on=val_yaml, latency_runs=2, command="test"
        )
    )
    m = load_bundle(out, verify=["model.onnx", "model_b2.onnx"]).manifest
    assert isinstance(m.output, RtdetrOutput) and m.output.num_queries == 20
    assert m.classes == CLASSES and m.input.size_px == SIZE
    assert (m.mm_per_px, m.tile.overlap_px, m.input.color, m.onnx_opset) == (0.4, 16, "gray", 17)
    assert m.name == "tiny"
    assert set(m.sha256) == {"model.onnx", "model_b2.onnx"}
    assert set(m.thresholds) == set(CLASSES) and all(0 < t <= 1 for t in m.thresholds.values())
    assert m.provenance["dataset_sha256"] == "d" * 64
    assert m.provenance["packages"]["ultralytics"] and m.provenance["command"] == "test"
    assert m.metrics["parity"]["model.onnx"]["max_abs_diff"] <= 1e-3
    assert set(m.metrics["validation"]["per_class"]) == set(CLASSES)
    assert m.metrics["ort_cpu_latency"]["batch_1_ms_per_tile"] > 0
    assert res.file_bytes["model.onnx"] == (out / "model.onnx").stat().st_size

    proto = onnx.load(str(out / "model.onnx"))
    assert proto.opset_import[0].version == 17
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, SIZE, SIZE]

    # Independent check: the runtime's ORT session against the checkpoint model in PyTorch.
    rng = np.random.default_rng(5)
    tiles = rng.integers(0, 256, (5, SIZE, SIZE), dtype=np.uint8)
    det = open_detector(ModelConfig(bundle=out))
    ref = reference_output(load_checkpoint(checkpoint).model, prepare_batch(tiles, m.input))
    got = det.raw(tiles)  # type: ignore[attr-defined]
    assert got.shape == (5, 20, 7)
    assert compare_outputs(got, ref, tolerance=1e-3).max_abs_diff <= 1e-3
    static = OnnxDetector(out / "model_b2.onnx", m)
    assert static.static_batch == 2
    np.testing.assert_allclose(static.raw(tiles), got, atol=1e-4)

    dets = det.infer(tiles)
    assert len(dets) == 5
    for d in dets:
        assert d.xyxy.shape == (len(d), 4) and d.xyxy.dtype == np.float32
        assert ((d.xyxy >= 0) & (d.xyxy <= SIZE)).all()
        assert ((d.class_id >= 0) & (d.class_id < 3)).all()
        assert (d.score >= min(m.thresholds.values())).all()


@pytest.mark.train
def test_opset_18_exports_and_19_is_refused_with_the_reason(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deploy.export import ExportOptions, export_bundle
    from runtime.cli import main

    m = export_bundle(
        ExportOptions(checkpoint=checkpoint, out=tmp_path / "b18", opset=18, latency_runs=0, parity_tiles=2)
    ).manifest
    assert m.onnx_opset == 18 and m.metrics["parity"]["model.onnx"]["max_abs_diff"] <= 1e-3
    with pytest.raises(ConfigError, match="GridSample"):
        export_bundle(ExportOptions(checkpoint=checkpoint, out=tmp_path / "b19", opset=19))
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "b19"), "--opset", "19"]) == 2
    err = capsys.readouterr().err
    assert "--opset 19" in err and "GridSample" in err and "CPU" in err
    assert not (tmp_path / "b19").exists()


@pytest.mark.train
def test_cli_export_with_given_thresholds_then_tampering_is_refused(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runtime.cli import main
    from runtime.config import ModelConfig
    from runtime.detect.bundle import open_detector

    out = tmp_path / "b"
    argv = ["export", str(checkpoint), "--out", str(out), "--thresholds", '{"hole": 0.3}']
    assert main([*argv, "--latency-runs", "0", "--parity-tiles", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"bundle {out}" in printed and "parity model.onnx" in printed and "model.onnx:" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["thresholds"] == {"hole": 0.3, "stain": 0.5, "broken_end": 0.5}
    assert manifest["provenance"]["command"].startswith("loomsight ")
    data = bytearray((out / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        open_detector(ModelConfig(bundle=out))


@pytest.mark.train
def test_bad_checkpoints_and_missing_resolution_are_clear_errors(checkpoint: Path, tmp_path: Path) -> None:
    from ultralytics import YOLO

    from deploy.export import ExportOptions, export_bundle

    with pytest.raises(ModelError, match=r"does not exist.*Nothing is ever downloaded"):
        export_bundle(ExportOptions(checkpoint=tmp_path / "rtdetr-l.pt", out=tmp_path / "o"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all" * 50)
    with pytest.raises(ModelError, match="not a PyTorch checkpoint"):
        export_bundle(ExportOptions(checkpoint=junk, out=tmp_path / "o"))
    yolo = tmp_path / "yolo.pt"
    YOLO("yolov8n.yaml").save(str(yolo))
    with pytest.raises(ModelError, match="not an RT-DETR checkpoint"):
        export_bundle(ExportOptions(checkpoint=yolo, out=tmp_path / "o"))
    bare = tmp_path / "bare" / "model.pt"  # the same weights without loomsight_train.json beside them
    bare.parent.mkdir()
    bare.write_bytes(checkpoint.read_bytes())
    with pytest.raises(ConfigError, match="--mm-per-px"):
        export_bundle(ExportOptions(checkpoint=bare, out=tmp_path / "o"))
    with pytest.raises(ConfigError, match="nope"):
        export_bundle(
            ExportOptions(checkpoint=bare, out=tmp_path / "o", mm_per_px=0.4, thresholds={"nope": 0.3})
        )
    assert not (tmp_path / "o").exists()
