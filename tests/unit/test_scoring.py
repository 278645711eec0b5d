from __future__ import annotations

import math

from runtime.scoring import ClassScore, ScoredBox, score_defects


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


def test_wilson_interval_matches_published_values_and_reaches_the_report() -> None:
    from runtime.scoring import wilson_interval

    assert wilson_interval(0, 0) is None
    for (k, n), (lo, hi) in {
        (5, 10): (0.2366, 0.7634),
        (0, 10): (0.0, 0.2775),
        (10, 10): (0.7225, 1.0),
    }.items():
        got = wilson_interval(k, n)
        assert got is not None and abs(got[0] - lo) < 1e-4 and abs(got[1] - hi) < 1e-4
    # more defects, narrower interval around the same recall
    small, big = wilson_interval(9, 10), wilson_interval(90, 100)
    assert small is not None and big is not None and big[1] - big[0] < small[1] - small[0]
    d = ClassScore(n_truth=18, found=11, n_reported=13, true_positives=11).to_dict()
    assert d["recall_ci95"] == [0.3862, 0.797] and d["precision_ci95"][1] <= 1.0
    assert ClassScore().to_dict()["precision_ci95"] is None
