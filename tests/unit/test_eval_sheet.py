"""The eval review sheet: every miss, false alarm and duplicate, cropped from the re-rendered roll."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from offline_train.eval_sheet import REPORTED_BGR, TRUE_BGR, review_items, write_review_sheet
from offline_train.evaluate import RollResult
from runtime.config import SyntheticSourceConfig
from runtime.scoring import ScoredBox
from runtime.sim.defects import DEFECT_CLASSES
from runtime.sources.synthetic import SyntheticSource


def _roll() -> RollResult:
    config = SyntheticSourceConfig(
        fabric="plain_gray", width_px=512, realtime=False, seed=7, length_m=1.0, defects_per_m=6.0
    )
    source = SyntheticSource(config)
    source.start()
    while source.read(timeout_s=1.0) is not None:
        pass
    truth = [ScoredBox(d.class_name, d.x0_px, d.y0_line, d.x1_px, d.y1_line) for d in source.truth]
    assert len(truth) >= 3
    first = truth[0]
    dup = ScoredBox(first.class_name, first.x0 + 1, first.y0 + 1, first.x1 - 1, first.y1 - 1)
    false = ScoredBox("hole", 5, 9_000, 40, 9_030)  # nothing there on this roll
    assert all(t.y1 < 9_000 or t.y0 > 9_030 or t.x0 > 40 for t in truth)
    # truth[0] reported twice (the second a duplicate), truth[1] missed, the last report false
    reported = [first, *truth[2:], dup, false]
    events = [{"score": 0.5 + 0.01 * i} for i in range(len(reported))]
    return RollResult(7, "plain_gray", 1.0, truth, reported, events, 0.0, config)


def test_items_name_the_miss_the_false_alarm_and_the_duplicate() -> None:
    roll = _roll()
    items = review_items([roll], DEFECT_CLASSES)
    kinds = sorted(it.kind for it in items)
    assert kinds == ["DUP", "FALSE", "MISS"]
    miss = next(it for it in items if it.kind == "MISS")
    assert miss.box == roll.truth[1] and miss.score is None
    false = next(it for it in items if it.kind == "FALSE")
    assert false.box == roll.reported[-1] and false.score == roll.events[-1]["score"]


def test_sheet_shows_each_item_from_the_same_pixels_with_its_boxes(tmp_path: Path) -> None:
    roll = _roll()
    out = tmp_path / "review" / "sheet.png"
    items = write_review_sheet([roll], DEFECT_CLASSES, out, columns=4, cell_px=160)
    assert len(items) == 3
    sheet = cv2.imread(str(out))
    assert sheet is not None and sheet.shape[1] == 4 * 160
    # the miss comes first, with its true box drawn in green; the false alarm second, in red
    miss_cell, false_cell = sheet[:160, :160], sheet[:160, 160:320]
    assert (np.abs(miss_cell.astype(int) - TRUE_BGR).sum(axis=2) == 0).sum() > 20
    assert (np.abs(false_cell.astype(int) - REPORTED_BGR).sum(axis=2) == 0).sum() > 20
    # the fabric itself is there (not a blank cell): the re-rendered web has texture
    assert false_cell[:, :, 1].std() > 5


def test_nothing_to_review_still_writes_a_sheet_that_says_so(tmp_path: Path) -> None:
    roll = _roll()
    perfect = RollResult(7, "plain_gray", 1.0, roll.truth, list(roll.truth), [], 0.0, roll.source_config)
    out = tmp_path / "sheet.jpg"
    assert write_review_sheet([perfect], DEFECT_CLASSES, out) == []
    assert cv2.imread(str(out)) is not None


def test_a_full_sheet_keeps_room_for_false_alarms_when_misses_abound(tmp_path: Path) -> None:
    roll = _roll()
    many_misses = RollResult(
        7, "plain_gray", 1.0, roll.truth, [roll.reported[-1]], [{"score": 0.4}], 0.0, roll.source_config
    )
    items = write_review_sheet(
        [many_misses], DEFECT_CLASSES, tmp_path / "s.png", max_items=2, columns=2, cell_px=120
    )
    assert sum(it.kind == "MISS" for it in items) >= 3
    sheet = cv2.imread(str(tmp_path / "s.png"))
    assert sheet is not None
    # one miss (green) and the false alarm (red) are both on the two-cell sheet
    assert (np.abs(sheet[:120, :120].astype(int) - TRUE_BGR).sum(axis=2) == 0).sum() > 10
    assert (np.abs(sheet[:120, 120:].astype(int) - REPORTED_BGR).sum(axis=2) == 0).sum() > 10
