"""The event wire format: `[topic, json, (optional JPEG crop)]`, schema "loomsight.event/1".

Every JSON body starts with the same header: `schema`, `kind`, `seq`, `epoch`, `ts`, `line_id`,
`roll_id`; the kind's own fields follow. The topic is `<kind>.<line_id>` so that a SUB socket can
filter by kind and line with a prefix. `seq` is the publisher's spool sequence number (strictly
increasing, never reused in one `epoch`); a heartbeat's `seq` is the *next* number the spool will
give, so heartbeats never consume a number and tell a subscriber that events up to `seq - 1` exist.

Bodies are compact UTF-8 JSON without NaN or Infinity (a body that holds one is refused before it is
spooled, so nothing unparseable is ever published). Never pickle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

EVENT_SCHEMA = "loomsight.event/1"
KINDS = ("defect", "stop", "roll", "heartbeat", "status")
# Kinds that go through the spool (recoverable by replay). Heartbeats carry no data to recover.
SPOOLED_KINDS = ("defect", "stop", "roll", "status")
HEADER_KEYS = ("schema", "kind", "seq", "epoch", "ts", "line_id", "roll_id")

MAX_JSON_BYTES = 1 << 20
MAX_CROP_BYTES = 16 << 20
JPEG_MAGIC = b"\xff\xd8"


class EventFormatError(ValueError):
    """Frames that are not a valid loomsight.event/1 message."""


def utc_now_iso() -> str:
    """Now in UTC, ISO-8601 with milliseconds and a `Z`: `2026-05-09T07:35:25.123Z`."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def parse_utc_iso(ts: str) -> datetime:
    """The datetime of a `ts` field; raises EventFormatError unless it is UTC ISO-8601 ending in Z."""
    if not isinstance(ts, str) or not ts.endswith("Z"):
        raise EventFormatError(f"ts {ts!r} is not UTC ISO-8601 ending in 'Z'")
    try:
        return datetime.fromisoformat(ts[:-1] + "+00:00")
    except ValueError:
        raise EventFormatError(f"ts {ts!r} is not UTC ISO-8601 ending in 'Z'") from None


def topic_for(kind: str, line_id: str) -> bytes:
    return f"{kind}.{line_id}".encode("ascii")


def encode_body(body: dict[str, Any]) -> bytes:
    """Compact JSON; raises EventFormatError for NaN/Infinity or values JSON cannot hold."""
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError) as exc:
        raise EventFormatError(f"event body is not plain JSON: {exc}") from None


def _check_finite(value: Any, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise EventFormatError(f"{path} = {value!r}: NaN and Infinity are not allowed in events")


@dataclass(frozen=True)
class Event:
    """One event as it travels: the topic, the JSON body and an optional JPEG crop."""

    topic: bytes
    body: dict[str, Any]
    crop_jpeg: bytes | None = None

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def seq(self) -> int:
        return int(self.body["seq"])

    @property
    def epoch(self) -> str:
        return str(self.body["epoch"])

    @property
    def line_id(self) -> str:
        return str(self.body["line_id"])

    @property
    def roll_id(self) -> str:
        return str(self.body["roll_id"])

    def frames(self) -> list[bytes]:
        """The multipart message: `[topic, json]` or `[topic, json, jpeg]`."""
        parts = [self.topic, encode_body(self.body)]
        if self.crop_jpeg is not None:
            parts.append(self.crop_jpeg)
        return parts

    @classmethod
    def from_frames(cls, frames: Sequence[bytes]) -> Event:
        """Parse and validate a multipart message; raises EventFormatError naming what is wrong."""
        if len(frames) not in (2, 3):
            raise EventFormatError(f"an event has 2 or 3 frames, got {len(frames)}")
        topic, raw = bytes(frames[0]), bytes(frames[1])
        crop = bytes(frames[2]) if len(frames) == 3 else None
        if len(raw) > MAX_JSON_BYTES:
            raise EventFormatError(f"event JSON is {len(raw)} bytes; at most {MAX_JSON_BYTES}")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise EventFormatError(f"event JSON does not parse: {exc}") from None
        if not isinstance(body, dict):
            raise EventFormatError(f"event JSON must be an object, got {type(body).__name__}")
        validate_body(body)
        try:
            topic_text = topic.decode("ascii")
        except UnicodeDecodeError:
            raise EventFormatError(f"topic {topic!r} is not ASCII") from None
        expected = f"{body['kind']}.{body['line_id']}"
        if topic_text != expected:
            raise EventFormatError(f"topic {topic_text!r} does not match the body (expected {expected!r})")
        if crop is not None:
            if len(crop) > MAX_CROP_BYTES:
                raise EventFormatError(f"crop is {len(crop)} bytes; at most {MAX_CROP_BYTES}")
            if not crop.startswith(JPEG_MAGIC):
                raise EventFormatError("third frame is not a JPEG image (no FF D8 start marker)")
        return cls(topic=topic, body=body, crop_jpeg=crop)


def validate_body(body: dict[str, Any]) -> None:
    """Check the common header; raises EventFormatError with the field name."""
    if body.get("schema") != EVENT_SCHEMA:
        raise EventFormatError(f"schema {body.get('schema')!r} is not {EVENT_SCHEMA!r}")
    kind = body.get("kind")
    if kind not in KINDS:
        raise EventFormatError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    seq = body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise EventFormatError(f"seq {seq!r} is not a non-negative integer")
    if kind != "heartbeat" and seq < 1:
        raise EventFormatError(f"seq {seq!r}: spooled events are numbered from 1")
    epoch = body.get("epoch")
    if not isinstance(epoch, str) or not epoch:
        raise EventFormatError(f"epoch {epoch!r} is not a non-empty string")
    parse_utc_iso(body.get("ts"))  # type: ignore[arg-type]
    for key in ("line_id", "roll_id"):
        if not isinstance(body.get(key), str):
            raise EventFormatError(f"{key} {body.get(key)!r} is not a string")
    if not body["line_id"]:
        raise EventFormatError("line_id is empty")
    for key, value in body.items():
        _check_finite(value, key)


def make_body(
    *, kind: str, seq: int, epoch: str, ts: str, line_id: str, roll_id: str, fields: dict[str, Any]
) -> dict[str, Any]:
    """Header first, then the kind's fields. A field may not replace a header key."""
    clash = sorted(set(fields) & set(HEADER_KEYS))
    if clash:
        raise EventFormatError(
            f"event fields may not set header keys {clash}; they are filled in by the publisher"
        )
    body: dict[str, Any] = {
        "schema": EVENT_SCHEMA,
        "kind": kind,
        "seq": seq,
        "epoch": epoch,
        "ts": ts,
        "line_id": line_id,
        "roll_id": roll_id,
    }
    body.update(fields)
    return body
