"""The event wire format: frames round-trip, and anything off-contract is refused with the field named."""

from __future__ import annotations

import json
import re

import pytest

from runtime.events.schema import (
    EVENT_SCHEMA,
    KINDS,
    Event,
    EventFormatError,
    encode_body,
    make_body,
    topic_for,
    utc_now_iso,
)


def _body(**over: object) -> dict[str, object]:
    body = make_body(
        kind="defect",
        seq=7,
        epoch="abc123",
        ts="2026-05-09T07:35:25.123Z",
        line_id="line-1",
        roll_id="R42",
        fields={"class": "hole", "score": 0.91, "bbox_px": [1, 2, 3, 4]},
    )
    body.update(over)
    return body


def test_utc_now_is_iso_8601_with_z() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", utc_now_iso())


def test_frames_round_trip_with_and_without_crop() -> None:
    jpeg = b"\xff\xd8\xff\xe0" + b"\0" * 20
    for crop in (None, jpeg):
        event = Event(topic_for("defect", "line-1"), _body(), crop)
        frames = event.frames()
        assert len(frames) == (3 if crop else 2)
        assert frames[0] == b"defect.line-1"
        back = Event.from_frames(frames)
        assert back == event
        assert (back.seq, back.epoch, back.kind, back.roll_id) == (7, "abc123", "defect", "R42")


def test_header_comes_first_and_holds_every_contract_key() -> None:
    body = json.loads(Event(topic_for("defect", "line-1"), _body()).frames()[1])
    assert list(body)[:7] == ["schema", "kind", "seq", "epoch", "ts", "line_id", "roll_id"]
    assert body["schema"] == EVENT_SCHEMA
    assert set(KINDS) == {"defect", "stop", "roll", "heartbeat", "status"}


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([b"defect.line-1"], "2 or 3 frames"),
        ([b"defect.line-1", b"{not json"], "does not parse"),
        ([b"defect.line-1", b"[1,2]"], "must be an object"),
        ([b"defect.line-1", json.dumps(_body(schema="x/2")).encode()], "schema"),
        ([b"defect.line-1", json.dumps(_body(kind="alarm")).encode()], "kind"),
        ([b"defect.line-1", json.dumps(_body(seq=-1)).encode()], "seq"),
        ([b"defect.line-1", json.dumps(_body(seq=True)).encode()], "seq"),
        ([b"defect.line-1", json.dumps(_body(seq=0)).encode()], "numbered from 1"),
        ([b"defect.line-1", json.dumps(_body(epoch="")).encode()], "epoch"),
        ([b"defect.line-1", json.dumps(_body(ts="2026-05-09 07:35:25")).encode()], "ts"),
        ([b"defect.line-1", json.dumps(_body(roll_id=None)).encode()], "roll_id"),
        ([b"stop.line-1", json.dumps(_body()).encode()], "does not match"),
        ([b"defect.line-1", json.dumps(_body()).encode(), b"PNG..."], "not a JPEG"),
    ],
)
def test_invalid_frames_are_refused_with_the_reason(frames: list[bytes], needle: str) -> None:
    with pytest.raises(EventFormatError, match=needle):
        Event.from_frames(frames)


def test_heartbeat_may_carry_seq_zero_as_next_seq_never_for_events() -> None:
    hb = make_body(kind="heartbeat", seq=1, epoch="e", ts=utc_now_iso(), line_id="L", roll_id="", fields={})
    assert Event.from_frames([b"heartbeat.L", encode_body(hb)]).seq == 1


def test_nan_and_infinity_are_never_encoded() -> None:
    with pytest.raises(EventFormatError, match="not plain JSON"):
        encode_body(_body(score=float("nan")))
    with pytest.raises(EventFormatError, match="not plain JSON"):
        encode_body(_body(x_mm=float("inf")))
    # a peer that sends NaN anyway is refused on parsing
    raw = json.dumps(_body(score=float("nan"))).encode()
    with pytest.raises(EventFormatError, match="NaN"):
        Event.from_frames([b"defect.line-1", raw])


def test_fields_cannot_overwrite_the_header() -> None:
    with pytest.raises(EventFormatError, match="header keys"):
        make_body(
            kind="defect", seq=1, epoch="e", ts=utc_now_iso(), line_id="L", roll_id="R", fields={"seq": 5}
        )
