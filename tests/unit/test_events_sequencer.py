"""The ordering rules on their own: exactly once, in order, gaps waited for or counted lost."""

from __future__ import annotations

import pytest

from runtime.events import sequencer as seq_mod
from runtime.events.schema import Event, make_body, topic_for, utc_now_iso
from runtime.events.sequencer import Sequencer, SubscriberStats


def _ev(seq: int, epoch: str = "E1", kind: str = "defect") -> Event:
    body = make_body(kind=kind, seq=seq, epoch=epoch, ts=utc_now_iso(), line_id="L", roll_id="R", fields={})
    return Event(topic_for(kind, "L"), body)


def _drain(s: Sequencer) -> list[tuple[str, int, str]]:
    out = []
    while (item := s.pop()) is not None:
        out.append((item[0].epoch, item[0].seq, item[1]))
    return out


def test_out_of_order_and_duplicate_arrivals_come_out_once_in_order() -> None:
    s = Sequencer(SubscriberStats())
    s.start_at(0)
    for n in (2, 1, 2, 4):
        s.accept(_ev(n), "live")
    assert [x[1] for x in _drain(s)] == [1, 2]
    assert s.gap  # 3 is missing, 4 waits
    s.accept(_ev(3), "replay")
    s.accept(_ev(1), "replay")
    assert _drain(s) == [("E1", 3, "replay"), ("E1", 4, "live")]
    assert s.stats.duplicates == 2 and not s.gap


def test_heartbeat_reveals_a_tail_gap_and_the_spool_answer_settles_it() -> None:
    s = Sequencer(SubscriberStats())
    s.start_at(0)
    s.accept(_ev(1), "live")
    s.exists_up_to(4)  # heartbeat: next seq is 4, so 2 and 3 exist
    assert [x[1] for x in _drain(s)] == [1] and s.gap
    s.accept(_ev(3), "replay")
    s.spool_answered_up_to(3)  # the spool had 3 but not 2
    assert [x[1] for x in _drain(s)] == [3]
    assert s.stats.lost == 1 and not s.gap


def test_a_new_epoch_flushes_the_old_buffer_and_restarts_at_one() -> None:
    s = Sequencer(SubscriberStats())
    s.start_at(0)
    s.accept(_ev(1), "live")
    s.accept(_ev(3), "live")  # 2 never came
    assert [x[1] for x in _drain(s)] == [1]
    assert s.accept(_ev(2, epoch="E2"), "live") is True
    assert _drain(s) == [("E1", 3, "live")]  # the old history's buffered tail first
    assert s.stats.lost == 1 and s.stats.epoch_changes == 1
    s.accept(_ev(1, epoch="E2"), "replay")
    assert _drain(s) == [("E2", 1, "replay"), ("E2", 2, "live")]


def test_last_value_events_come_first_and_older_live_ones_are_dropped() -> None:
    s = Sequencer(SubscriberStats())
    s.accept(_ev(4), "live")  # arrived before the start was known
    s.accept(_ev(6), "live")
    s.start_at(5, last_seq=6, lvc_events=[_ev(2, kind="roll"), _ev(9, kind="status")])
    assert _drain(s) == [("E1", 2, "lvc"), ("E1", 6, "live")]  # lvc after the start (9) is ignored


def test_giving_up_skips_to_the_next_event_and_counts_the_hole() -> None:
    s = Sequencer(SubscriberStats())
    s.start_at(10)
    s.accept(_ev(14), "live")
    assert _drain(s) == []
    s.give_up_gap("test")
    assert [x[1] for x in _drain(s)] == [14] and s.stats.lost == 3
    quiet = Sequencer(SubscriberStats(), count_lost=False)  # topic filter without replay: gaps are normal
    quiet.start_at(0)
    quiet.accept(_ev(5), "live")
    quiet.give_up_gap("filtered")
    assert [x[1] for x in _drain(quiet)] == [5] and quiet.stats.lost == 0


def test_the_buffer_is_bounded_and_evicts_the_newest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seq_mod, "MAX_PENDING", 3)
    s = Sequencer(SubscriberStats())
    s.start_at(0)
    for n in (5, 4, 3, 9):
        s.accept(_ev(n), "live")
    assert s.pending == 3
    for n in (1, 2):
        s.accept(_ev(n), "replay")
    # 9 was refused and 5, then 4, evicted for lower seqs: they come again by replay later
    assert [x[1] for x in _drain(s)] == [1, 2, 3]
    assert s.gap and s.known_next == 10
