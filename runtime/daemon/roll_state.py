"""Rolls left open by a crash: found in the spool at start and closed explicitly.

A roll starts with a `roll` event `{"state": "start"}` (published at its first strip) and ends with
`{"state": "end", ...summary}` (roll change, end of the source, SIGTERM). A `kill -9`, a power cut
or an OOM kill leaves the start without an end. The spool's last-value cache (`lvc` table, the last
`roll` event ever committed; retention never prunes it) says so at the next start, without any
state file of our own: the spool is already the durable record of what subscribers were told.

Choice: close, not resume. After a restart the daemon cannot know where the web is: the line
counter starts again at 0, the camera may have been re-threaded and the operator may have cut the
roll while the daemon was down. Continuing the old `roll_id` would put new defects at wrong `y_mm`
positions in an old roll. So the interrupted roll gets an explicit, honest end event before the
new roll starts:

    {"kind": "roll", "roll_id": OLD, "state": "end", "reason": "interrupted",
     "defects_by_class": {...}, "defects": N, "stops": S, "inspected_m_at_least": L,
     "started_seq": A, "last_seq": B, "next_roll_id": NEW}

The tallies are counted from the roll's events still in the spool (`inspected_m_at_least` is the
far end of the furthest defect seen, a lower bound); `tally_complete` is false when retention has
already pruned the roll's start or the roll is too long to recount (`MAX_TALLY_EVENTS`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

MAX_TALLY_EVENTS = 200_000
PAGE_ROWS = 2_000
INTERRUPTED = "interrupted"


class _RollPublisher(Protocol):
    def publish(
        self, kind: str, fields: dict[str, Any], *, roll_id: str, crop_jpeg: bytes | None = None
    ) -> int: ...


@dataclass(frozen=True)
class OpenRoll:
    """A roll whose last `roll` event in the spool is its start."""

    roll_id: str
    start_seq: int
    started_ts: str
    epoch: str


@dataclass
class RollTally:
    """What the spool still holds about a roll: defect counts, stops, how far it got."""

    defects_by_class: Counter[str] = field(default_factory=Counter)
    stops: int = 0
    last_seq: int = 0
    far_end_mm: float = 0.0
    complete: bool = True

    def to_fields(self) -> dict[str, Any]:
        return {
            "defects_by_class": dict(self.defects_by_class),
            "defects": sum(self.defects_by_class.values()),
            "stops": self.stops,
            "inspected_m_at_least": round(self.far_end_mm / 1000.0, 3),
            "last_seq": self.last_seq,
            "tally_complete": self.complete,
        }


def find_open_roll(spool_path: Path | str) -> OpenRoll | None:
    """The roll the last run started and never ended, or None (clean stop, empty spool)."""
    from runtime.events.spool_reader import SpoolReader

    reader = SpoolReader(spool_path)
    try:
        _, last = reader.bounds()
        for seq, frames in reversed(reader.last_values(last)):
            body = _body(frames)
            if body is None or body.get("kind") != "roll":
                continue
            if body.get("state") != "start":
                return None
            return OpenRoll(
                roll_id=str(body.get("roll_id", "")),
                start_seq=seq,
                started_ts=str(body.get("ts", "")),
                epoch=reader.epoch,
            )
        return None
    finally:
        reader.close()


def tally_roll(spool_path: Path | str, roll: OpenRoll) -> RollTally:
    """Count the roll's defects and stops from its start to the spool's end (bounded work)."""
    from runtime.events.spool_reader import SpoolReader

    tally = RollTally(last_seq=roll.start_seq)
    reader = SpoolReader(spool_path)
    try:
        first, last = reader.bounds()
        tally.complete = first is not None and first <= roll.start_seq
        since, seen = roll.start_seq - 1, 0
        while since < last:
            rows = reader.read_after(since, last, PAGE_ROWS)
            if not rows:
                break
            for seq, frames in rows:
                since = seq
                body = _body(frames)
                if body is None or body.get("roll_id") != roll.roll_id:
                    continue
                tally.last_seq = seq
                if body.get("kind") == "defect":
                    tally.defects_by_class[str(body.get("class"))] += 1
                    y_mm, h_mm = body.get("y_mm"), body.get("h_mm")
                    if isinstance(y_mm, (int, float)) and isinstance(h_mm, (int, float)):
                        tally.far_end_mm = max(tally.far_end_mm, float(y_mm) + float(h_mm))
                elif body.get("kind") == "stop":
                    tally.stops += 1
            seen += len(rows)
            if seen >= MAX_TALLY_EVENTS:
                tally.complete = False
                break
        return tally
    finally:
        reader.close()


def close_interrupted_roll(
    publisher: _RollPublisher, spool_path: Path | str, *, next_roll_id: str
) -> dict[str, Any] | None:
    """Publish the explicit end of a roll the previous run left open; returns its fields (or None)."""
    roll = find_open_roll(spool_path)
    if roll is None:
        return None
    tally = tally_roll(spool_path, roll)
    fields: dict[str, Any] = {
        "state": "end",
        "reason": INTERRUPTED,
        **tally.to_fields(),
        "started_seq": roll.start_seq,
        "started_ts": roll.started_ts,
        "next_roll_id": next_roll_id,
    }
    seq = publisher.publish("roll", fields, roll_id=roll.roll_id)
    log.warning(
        "roll %s was interrupted (the previous run ended without closing it, after seq %d): closed it "
        "explicitly as seq %d with %d defect(s); inspection continues as roll %s",
        roll.roll_id,
        tally.last_seq,
        seq,
        fields["defects"],
        next_roll_id,
    )
    return fields


def _body(frames: list[bytes]) -> dict[str, Any] | None:
    try:
        body = json.loads(frames[1])
    except (IndexError, ValueError):
        return None
    return body if isinstance(body, dict) else None


__all__ = ["INTERRUPTED", "OpenRoll", "RollTally", "close_interrupted_roll", "find_open_roll", "tally_roll"]
