from __future__ import annotations

import math

from runtime.scoring import ScoredBox, score_defects


def test_found_missed_false_positive_and_duplicate() -> None:
    truth = [
        ScoredBox("hole", 0, 0, 10, 10),
        ScoredBox("stain", 100, 100, 150, 150),
        ScoredBox("hole", 500, 500, 510, 510),
    ]
    reported = [
        ScoredBox("hole", 1, 1, 11, 11),  # finds truth 0
        ScoredBox("hole", 2, 2, 9, 9),  # duplicate of it
        ScoredBox("stain", 110, 110, 160, 160),  # finds truth 1
        ScoredBox("hole", 300, 300, 310, 310),  # false positive
    ]
    s = score_defects(truth, reported)
    assert s["hole"].found == 1 and s["hole"].n_truth == 2 and s["hole"].recall == 0.5
    assert s["hole"].true_positives == 1 and s["hole"].duplicates == 1 and s["hole"].precision == 1 / 3
    assert s["stain"].recall == 1.0 and s["stain"].precision == 1.0
    assert s["all"].found == 2 and s["all"].n_reported == 4 and s["all"].duplicates == 1


def test_wrong_class_counts_only_class_agnostic() -> None:
    truth = [ScoredBox("broken_end", 100, 0, 104, 5000)]
    reported = [ScoredBox("float", 95, 100, 110, 4900)]
    assert score_defects(truth, reported)["broken_end"].recall == 0.0
    assert score_defects(truth, reported, class_aware=False)["all"].recall == 1.0


def test_thin_streak_reported_wider_counts_by_centre() -> None:
    truth = [ScoredBox("broken_end", 100, 0, 102, 1000)]  # 2 px wide
    reported = [ScoredBox("broken_end", 90, 0, 115, 1000)]  # IoU 0.08, centre inside
    assert score_defects(truth, reported)["broken_end"].recall == 1.0


def test_empty_inputs_give_nan_not_errors() -> None:
    s = score_defects([], [])
    assert s["all"].n_truth == 0 and math.isnan(s["all"].recall)
    assert s["all"].to_dict()["recall"] is None
