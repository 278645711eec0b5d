"""Web-level threshold choice: the best F1 after merging, the middle of a tie, untunable classes kept."""

from __future__ import annotations

import pytest

from offline_train.web_tune import choose_edge_masks, choose_thresholds
from runtime.scoring import ScoredBox


def _box(cls: str, x: float, y: float) -> ScoredBox:
    return ScoredBox(cls, x, y, x + 20, y + 20)


def test_the_threshold_lands_between_the_false_alarms_and_the_true_defects() -> None:
    truth = [_box("hole", 100 * i, 0) for i in range(5)]
    reported = [*truth, *(_box("hole", 100 * i, 500) for i in range(5))]  # 5 found, 5 false alarms
    scores = [0.8, 0.85, 0.9, 0.8, 0.95] + [0.3, 0.35, 0.4, 0.45, 0.5]
    chosen = choose_thresholds([(truth, reported, scores)], ["hole"], {"hole": 0.5})["hole"]
    # F1 = 1 from 0.55 to 0.80: the middle of that plateau, not its edge
    assert chosen.tuned and 0.6 <= chosen.threshold <= 0.75
    assert (chosen.precision, chosen.recall, chosen.f1) == (1.0, 1.0, 1.0)


def test_rolls_are_scored_apart_and_add_up() -> None:
    # the same place on two rolls: a report on roll 2 must not find roll 1's defect
    roll1: tuple[list[ScoredBox], list[ScoredBox], list[float]] = ([_box("stain", 0, 0)], [], [])
    roll2: tuple[list[ScoredBox], list[ScoredBox], list[float]] = ([], [_box("stain", 0, 0)], [0.9])
    chosen = choose_thresholds([roll1, roll2], ["stain"], {"stain": 0.5})["stain"]
    assert chosen.n_truth == 1 and not chosen.tuned  # F1 is 0 at every threshold


@pytest.mark.parametrize(("current", "expected"), [(0.3, 0.45), (0.6, 0.6)])
def test_a_class_with_only_false_alarms_is_raised_to_silence_them_never_lowered(
    current: float, expected: float
) -> None:
    truth = [_box("hole", 100 * i, 0) for i in range(3)]
    reported = [*truth, _box("knot", 300, 300)]
    chosen = choose_thresholds([(truth, reported, [0.9, 0.9, 0.9, 0.4])], ["hole", "knot"], {"knot": current})
    assert chosen["knot"].threshold == pytest.approx(expected) and not chosen["knot"].tuned
    assert chosen["hole"].tuned


def test_false_alarms_no_threshold_silences_get_the_quietest_threshold() -> None:
    # a dense model's false floats: peaks from 0.3 up to 1.0, some at 1.0 that no threshold drops
    reported = [_box("float", 100 * i, 0) for i in range(20)]
    scores = [0.3 + 0.035 * i for i in range(18)] + [1.0, 1.0]
    chosen = choose_thresholds([([], reported, scores)], ["float"], {"float": 0.5})["float"]
    assert (
        chosen.threshold == pytest.approx(0.9) and not chosen.tuned
    )  # the first above every peak but the two 1.0s (max 0.895)
    # ... and a class whose false alarms all sit at 1.0 keeps its threshold (nothing is quieter)
    chosen = choose_thresholds([([], reported[:3], [1.0] * 3)], ["float"], {"float": 0.5})["float"]
    assert chosen.threshold == 0.5


def test_a_threshold_that_finds_fewer_than_three_defects_is_not_chosen() -> None:
    # one thin place found at 0.2 among 10 missed: its F1 > 0, but one defect is no evidence
    truth = [_box("thin_place", 100 * i, 0) for i in range(10)]
    chosen = choose_thresholds([(truth, [truth[0]], [0.2])], ["thin_place"], {"thin_place": 0.5})
    assert not chosen["thin_place"].tuned and chosen["thin_place"].threshold == 0.5
    # three found at 0.2 is enough
    chosen = choose_thresholds([(truth, truth[:3], [0.2] * 3)], ["thin_place"], {"thin_place": 0.5})
    assert chosen["thin_place"].tuned and chosen["thin_place"].threshold == pytest.approx(0.2)


def test_a_class_never_seen_keeps_its_threshold() -> None:
    chosen = choose_thresholds([([], [], [])], ["float"], {"float": 0.5})["float"]
    assert chosen.threshold == 0.5 and not chosen.tuned


def _streak(x: float, y: float) -> ScoredBox:
    return ScoredBox("broken_end", x, y, x + 4, y + 2000)


def test_an_edge_mask_covers_the_selvedge_false_alarms_and_stops_short_of_true_defects() -> None:
    # web edges at camera px 100 and 1900 (0.1 mm/px); false broken ends along the selvedge's
    # border 6 mm inside the edges, true ones from 15 mm inward
    edges = (100.0, 1900.0)
    rolls = []
    for k in range(4):
        truth = [_streak(250 + 300 * k, 0), _streak(1000, 3000)]
        false = [_streak(158, 0), _streak(1838, 3000)]
        reported = [*truth, *false]
        rolls.append((truth, reported, [0.9] * len(reported), edges))
    masks = choose_edge_masks(rolls, {"broken_end": 0.5, "hole": 0.5}, mm_per_px=0.1)
    assert set(masks) == {"broken_end"}  # no hole reports at all: no mask for holes
    m = masks["broken_end"]
    assert 7.0 <= m.mask_mm < 15.0  # centres of the false ones are 6.0-6.2 mm inside
    assert m.dropped_false == 8 and m.dropped_true == 0
    assert m.f1_without == pytest.approx(2 * 0.5 / 1.5) and m.f1_with == 1.0


def test_no_edge_mask_when_it_would_cost_as_many_true_defects_or_no_edge_was_seen() -> None:
    truth = [_streak(160, 0), _streak(1000, 0)]  # a true broken end beside the selvedge
    reported = [*truth, _streak(158, 3000)]
    roll = (truth, reported, [0.9] * 3, (100.0, 1900.0))
    assert choose_edge_masks([roll], {"broken_end": 0.5}, mm_per_px=0.1) == {}
    unseen = (truth, [_streak(1000, 0), _streak(158, 3000)], [0.9] * 2, (None, None))
    assert choose_edge_masks([unseen], {"broken_end": 0.5}, mm_per_px=0.1) == {}
