"""Strip detections -> defect, stop and roll events (merge, grade, crops, millimetres)."""

from __future__ import annotations

import cv2
import numpy as np

from offline_train.evaluate import CollectingPublisher
from runtime.daemon.inspector import StripResult
from runtime.daemon.reporter import CropOptions, DefectReporter, WebGeometry
from runtime.frame import Strip
from runtime.grade import RollGrader
from runtime.merge import Merger
from runtime.preprocess import ModelView

CLASSES = ["hole", "stain", "broken_end"]


def _reporter(
    pub: CollectingPublisher, geometry: WebGeometry | None = None, **grader: float
) -> DefectReporter:
    return DefectReporter(
        classes=CLASSES,
        geometry=geometry or WebGeometry(0.1, 0.1, 1000),
        merger=Merger(gap_px=20, gap_lines=20),
        grader=RollGrader(width_mm=100.0, stop_open_length_mm=grader.get("stop_open_length_mm", 1000.0)),
        publisher=pub,
        roll_id="r1",
        model_name="m",
        crops=CropOptions(enabled=True, max_px=64),
    )


def _result(
    seq: int, line0: int, boxes: list[tuple[float, float, float, float, int]], height: int = 1000
) -> StripResult:
    pixels = np.full((height, 1000), 180, np.uint8)
    for x0, y0, x1, y1, _ in boxes:
        pixels[int(y0) - line0 : int(y1) - line0, int(x0) : int(x1)] = 20
    strip = Strip(pixels, seq, line0, 100 if seq else 0, "r1", 0)
    xyxy = np.array([b[:4] for b in boxes], np.float64).reshape(-1, 4)
    return StripResult(
        strip=strip,
        view=ModelView(pixels, line0, 1.0, 1.0),
        xyxy=xyxy,
        class_id=np.array([b[4] for b in boxes], np.int64),
        score=np.full(len(boxes), 0.8),
        tiles=1,
        infer_s=0.0,
        prep_s=0.0,
    )


def test_defect_event_fields_crop_and_hole_stop() -> None:
    pub = CollectingPublisher()
    rep = _reporter(pub)
    rep.on_strip(_result(0, 0, [(100, 200, 150, 260, 0)]))  # a 5 x 6 mm hole, far from the strip end
    defects = pub.of_kind("defect")
    assert len(defects) == 1
    d = defects[0]
    assert d["class"] == "hole" and d["bbox_px"] == [100, 200, 150, 260]
    assert (d["x_mm"], d["y_mm"], d["w_mm"], d["h_mm"]) == (10.0, 20.0, 5.0, 6.0)
    assert d["points"] == 2 and d["defect_id"] == "r1-1"
    crop = next(c for k, _, c in pub.events if k == "defect")
    assert crop is not None
    image = cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.max() > 100
    stops = pub.of_kind("stop")
    assert len(stops) == 1 and stops[0]["reason"] == "class" and stops[0]["defect_id"] == "r1-1"
    assert pub.of_kind("roll")[0]["state"] == "start"


def test_a_running_streak_stops_the_loom_once_and_is_reported_at_its_end() -> None:
    pub = CollectingPublisher()
    rep = _reporter(pub, stop_open_length_mm=150.0)
    for s in range(4):  # a broken end through four strips of 1000 lines overlapping by 100
        line0 = s * 900
        rep.on_strip(_result(s, line0, [(500, line0, 504, line0 + 1000, 2)]))
    assert pub.of_kind("defect") == []  # still open: it touches the newest strip
    stops = pub.of_kind("stop")
    assert len(stops) == 1 and stops[0]["reason"] == "open_length"
    summary = rep.end_roll()
    (d,) = pub.of_kind("defect")
    assert d["class"] == "broken_end" and d["h_mm"] == 370.0 and d["hits"] == 4
    assert summary["state"] == "end" and summary["defects_by_class"] == {"broken_end": 1}


def test_a_lens_model_sets_the_millimetres_across() -> None:
    pub = CollectingPublisher()
    rep = _reporter(pub, WebGeometry(0.1, 0.1, 1000, px_to_mm_x=lambda px: 5.0 + 0.1 * px + 1e-5 * px**2))
    rep.on_strip(_result(0, 0, [(100, 200, 150, 260, 1)]))
    d = pub.of_kind("defect")[0]
    assert d["x_mm"] == round(5.0 + 10.0 + 0.1, 2)
    assert d["w_mm"] == round((5 + 15 + 0.225) - (5 + 10 + 0.1), 2)
