"""Fabric edge tracking and the selvedge mask: where the web is, and what is dropped there."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from offline_train.evaluate import CollectingPublisher
from runtime.config import parse_config
from runtime.daemon.app import _edge_mask_px
from runtime.daemon.inspector import StripInspector, in_edge_zone
from runtime.daemon.reporter import DefectReporter, WebGeometry
from runtime.detect.decode import DecodeStats
from runtime.detect.manifest import ModelManifest
from runtime.detections import Detections
from runtime.errors import ConfigError
from runtime.frame import Strip
from runtime.grade import RollGrader
from runtime.merge import Merger
from runtime.preprocess import Preprocessor
from runtime.sim.fabric import get_fabric, random_fabric
from runtime.sim.loom import SyntheticLoom
from runtime.web_edges import WebEdges, WebEdgeTracker, find_web_edges
from tests.helpers.tiny_models import manifest_fields

CLASSES = ["hole", "stain", "broken_end"]


def _view(pixels: np.ndarray, factor: float = 0.25) -> np.ndarray:
    gray = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    return cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def test_edges_found_within_a_millimetre_or_two_on_backlit_and_roller_fabrics() -> None:
    rng = np.random.default_rng(11)
    fabrics = [get_fabric("plain_gray"), get_fabric("denim_color"), get_fabric("satin_5_color")]
    fabrics += [random_fabric(rng, color=bool(i % 2)) for i in range(6)]
    backgrounds, checked = set(), 0
    for fabric in fabrics:
        loom = SyntheticLoom(fabric, seed=int(rng.integers(1 << 30)), defects_per_m=4)
        block = loom.next_block(1024)
        view = _view(block.pixels)  # 0.4 mm per view px
        left, right = loom.renderer.fabric_span(block.line0, block.line0 + 1024)
        true_left, true_right = float(np.mean(left)) / 4, float(np.mean(right)) / 4
        edges = find_web_edges(view)
        for found, true, background_px in (
            (edges.left_px, true_left, true_left),
            (edges.right_px, true_right, view.shape[1] - true_right),
        ):
            if background_px < 4:  # the camera barely sees past this edge: "not seen" is right too
                continue
            assert found is not None, (fabric.name, edges, true_left, true_right)
            # the detected edge includes the cut weft fringe (<= 0.8 mm beyond the edge) and one px
            assert abs(found - true) * 0.4 <= 2.0, (fabric.name, edges, true_left, true_right)
            checked += 1
        backgrounds.add(fabric.background)
    assert backgrounds == {"backlight", "roller"} and checked >= 14


def test_no_edge_where_the_camera_does_not_see_past_the_fabric() -> None:
    loom = SyntheticLoom(get_fabric("twill_2_1_gray"), seed=3, defects_per_m=0)
    view = _view(loom.next_block(1024).pixels)
    edges = find_web_edges(view)
    assert edges.left_px is not None and edges.right_px is not None
    inside = view[:, int(edges.left_px) + 20 :]  # cut away the left background and selvedge
    cut = find_web_edges(inside)
    assert cut.left_px is None
    assert cut.right_px == pytest.approx(edges.right_px - (int(edges.left_px) + 20))
    assert find_web_edges(np.full((200, 300), 128, np.uint8)) == WebEdges(None, None)  # flat: unknown


def test_tracker_rides_out_one_bad_strip_and_needs_a_majority_to_see_an_edge() -> None:
    tracker = WebEdgeTracker(window=5)
    for left in (40.0, 41.0, 40.5, 90.0, 41.5):  # a stain at the edge fools one strip
        current = tracker.update(WebEdges(left, 900.0))
    assert current.left_px == pytest.approx(41.0)
    for _ in range(3):
        current = tracker.update(WebEdges(None, 900.0))  # the web moved out of view on the left
    assert current.left_px is None and current.right_px == 900.0
    with pytest.raises(ValueError, match="window"):
        WebEdgeTracker(window=0)


def test_edge_zone_masks_only_named_classes_and_only_seen_sides() -> None:
    xyxy = np.array([[100, 0, 104, 500], [100, 0, 104, 500], [300, 0, 304, 500], [985, 0, 989, 500]], float)
    class_id = np.array([2, 0, 2, 2])
    mask = np.array([0.0, 0.0, 25.0])  # broken_end only
    drop = in_edge_zone(xyxy, class_id, WebEdges(90.0, 1000.0), mask)
    assert drop.tolist() == [True, False, False, True]
    drop = in_edge_zone(xyxy, class_id, WebEdges(None, None), mask)
    assert not drop.any()


class _DarkColumnDetector:
    """Reports a broken_end over every tile column painted exactly 0 (a test marker)."""

    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self.decode_stats = DecodeStats()

    def infer(self, tiles: np.ndarray) -> list[Detections]:
        out = []
        for tile in tiles:
            gray = tile if tile.ndim == 2 else tile[..., 0]
            cols = np.flatnonzero((gray == 0).mean(axis=0) > 0.9)
            boxes = [[c, 0, c + 1, tile.shape[0]] for c in cols]
            n = len(boxes)
            out.append(
                Detections(
                    np.array(boxes, np.float32).reshape(n, 4),
                    np.full(n, 2, np.int32),
                    np.full(n, 0.9, np.float32),
                )
            )
        return out


def _inspect(edge_mask_mm: dict[str, float]) -> tuple[list[int], dict[int, int], WebEdges, float]:
    manifest = ModelManifest.model_validate(
        {
            "schema": "loomsight.model/1",
            "sha256": {"model.onnx": "0" * 64},
            **manifest_fields(classes=CLASSES, size_px=128, num_queries=5),
        }
    )
    loom = SyntheticLoom(get_fabric("plain_gray"), seed=5, defects_per_m=0)
    block = loom.next_block(1024)
    pixels = cv2.cvtColor(block.pixels, cv2.COLOR_BGR2GRAY) if block.pixels.ndim == 3 else block.pixels.copy()
    left = float(np.mean(loom.renderer.fabric_span(0, 1024)[0]))
    near_edge = 4 * int((left + 40) / 4)  # 4 mm inside the fabric edge: the selvedge's border
    pixels[:, near_edge : near_edge + 8] = 0  # (on whole model pixels: 4 camera px each)
    pixels[:, 1000:1008] = 0  # mid-web
    cfg = parse_config({"web": {"edge_mask_mm": edge_mask_mm}})
    inspector = StripInspector(
        _DarkColumnDetector(manifest).infer,
        manifest.tile,
        Preprocessor(camera_mm_per_px=0.1, camera_mm_per_line=0.1, model_mm_per_px=0.4),
        batch_size=4,
        edge_mask_px=_edge_mask_px(cfg, manifest),
    )
    result = inspector.inspect(Strip(pixels, 0, 0, 0, "r", 0))
    centres = sorted({100 * round(float(x0 + x1) / 200) for x0, _, x1, _ in result.xyxy})  # one per streak
    return centres, result.edge_masked, result.edges, left


def test_inspector_drops_a_selvedge_streak_only_when_the_class_is_masked() -> None:
    centres, masked, edges, left = _inspect({})
    assert len(centres) == 2 and not masked
    assert edges.left_px is not None and abs(edges.left_px - left) <= 20  # camera columns, 0.1 mm each
    centres, masked, _, _ = _inspect({"broken_end": 8.0})
    assert centres == [1000]  # the mid-web streak stays
    assert sum(masked.values()) >= 1 and set(masked) == {2}
    centres, masked, _, _ = _inspect({"hole": 8.0})  # another class's mask leaves broken ends alone
    assert len(centres) == 2 and not masked


def test_edge_mask_names_must_be_model_classes_and_widths_non_negative() -> None:
    manifest = ModelManifest.model_validate(
        {
            "schema": "loomsight.model/1",
            "sha256": {"model.onnx": "0" * 64},
            **manifest_fields(classes=CLASSES, size_px=128, num_queries=5),
        }
    )
    with pytest.raises(ConfigError, match=r"'selvage'.*hole, stain, broken_end"):
        _edge_mask_px(parse_config({"web": {"edge_mask_mm": {"selvage": 5}}}), manifest)
    with pytest.raises(ConfigError, match="'selvage'"):  # a misspelt class is caught even with no width
        _edge_mask_px(parse_config({"web": {"edge_mask_mm": {"selvage": 0}}}), manifest)
    with pytest.raises(ConfigError, match="edge_mask_mm"):
        parse_config({"web": {"edge_mask_mm": {"broken_end": -1}}})
    assert _edge_mask_px(parse_config({}), manifest) is None


def test_events_measure_across_from_the_fabric_edge() -> None:
    from tests.unit.test_reporter import _result

    pub = CollectingPublisher()
    rep = DefectReporter(
        classes=CLASSES,
        geometry=WebGeometry(0.1, 0.1, 1000),
        merger=Merger(gap_px=20, gap_lines=20),
        grader=RollGrader(width_mm=100.0),
        publisher=pub,
        roll_id="r1",
        model_name="m",
    )
    result = _result(0, 0, [(300, 200, 350, 260, 0)])
    object.__setattr__(result, "edges", WebEdges(120.0, 950.0))
    rep.on_strip(result)
    d = pub.of_kind("defect")[0]
    assert d["x_mm"] == 30.0 and d["x_from_edge_mm"] == 18.0
    assert rep.web_edges_mm() == [12.0, 95.0]


def test_the_bundles_edge_mask_applies_unless_the_config_sets_its_own() -> None:
    fields = {
        "schema": "loomsight.model/1",
        "sha256": {"model.onnx": "0" * 64},
        **manifest_fields(classes=CLASSES, size_px=128, num_queries=5, mm_per_px=0.4),
        "edge_mask_mm": {"broken_end": 8.0},
    }
    manifest = ModelManifest.model_validate(fields)
    mask = _edge_mask_px(parse_config({}), manifest)
    assert mask is not None and mask.tolist() == [0.0, 0.0, 20.0]  # 8 mm at 0.4 mm per model px
    assert _edge_mask_px(parse_config({"web": {"edge_mask_mm": {}}}), manifest) is None  # off
    mask = _edge_mask_px(parse_config({"web": {"edge_mask_mm": {"hole": 2.0}}}), manifest)
    assert mask is not None and mask.tolist() == [5.0, 0.0, 0.0]  # the config's replaces the bundle's
    with pytest.raises(ValueError, match="edge_mask_mm names classes the model does not have"):
        ModelManifest.model_validate({**fields, "edge_mask_mm": {"selvage": 8.0}})


def test_a_strip_prepared_in_the_acquisition_thread_gives_the_same_boxes() -> None:
    manifest = ModelManifest.model_validate(
        {
            "schema": "loomsight.model/1",
            "sha256": {"model.onnx": "0" * 64},
            **manifest_fields(classes=CLASSES, size_px=128, num_queries=5),
        }
    )
    pixels = np.full((1024, 2048), 120, np.uint8)
    pixels[:, 1000:1008] = 0
    strip = Strip(pixels, 0, 0, 0, "r", 0)

    def inspector() -> StripInspector:
        pre = Preprocessor(camera_mm_per_px=0.1, camera_mm_per_line=0.1, model_mm_per_px=0.4)
        return StripInspector(_DarkColumnDetector(manifest).infer, manifest.tile, pre, batch_size=4)

    direct = inspector().inspect(strip)
    ins = inspector()
    prepared = ins.inspect(ins.prepare(strip))
    assert len(direct.xyxy) > 0 and np.array_equal(direct.xyxy, prepared.xyxy)
    assert direct.tiles == prepared.tiles and prepared.prep_s > 0
