"""Replay requests: what the protocol accepts, and a clear refusal for everything else."""

from __future__ import annotations

import json

import pytest

from runtime.events.bounded_json import INT64_MAX, nesting_depth
from runtime.events.replay import MAX_REQUEST_BYTES, ReplayRequest, RequestError, parse_request


def _req(obj: object) -> list[bytes]:
    return [json.dumps(obj).encode()]


def test_since_seq_and_lvc_requests_parse() -> None:
    assert parse_request(_req({"since_seq": 0})) == ReplayRequest(since_seq=0, lvc=False, age_s=0.0, id=None)
    assert parse_request(_req({"since_seq": 41, "id": 7})).since_seq == 41
    lvc = parse_request(_req({"lvc": True, "age_s": 1.5, "id": "a"}))
    assert lvc.lvc and lvc.age_s == 1.5 and lvc.id == "a" and lvc.since_seq is None


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ([b"a", b"b"], "exactly one frame"),
        ([], "exactly one frame"),
        ([b"\xff\xfe"], "not JSON"),
        ([b"since_seq=3"], "not JSON"),
        (_req([1]), "JSON object"),
        (_req({}), "missing since_seq"),
        (_req({"since_seq": -1}), "from 0 to"),
        (_req({"since_seq": 2**63}), "from 0 to 9223372036854775807"),
        ([b'{"since_seq": 18446744073709551616}'], "from 0 to"),
        ([b'{"since_seq": ' + b"9" * 3000 + b"}"], "out of range"),
        ([b"[" * 2000 + b"]" * 2000], "nested 2000 deep"),
        ([b'{"since_seq": 1, "id": ' + b"[" * 1500 + b"]" * 1500 + b"}"], "nested 1501 deep"),
        ([b'{"since_seq": NaN}'], "NaN is not JSON"),
        (_req({"since_seq": 1, "id": 2**64}), "id must be"),
        (_req({"since_seq": 1.5}), "integer"),
        (_req({"since_seq": True}), "integer"),
        (_req({"since_seq": "3"}), "integer"),
        (_req({"since_seq": 1, "drop": "tables"}), "unknown key"),
        (_req({"since_seq": 1, "id": [1]}), "id must be"),
        (_req({"lvc": "yes"}), "lvc must be"),
        (_req({"lvc": True, "age_s": -2}), "age_s"),
        (_req({"lvc": True, "since_seq": 3}), "either since_seq or lvc"),
        ([b'{"since_seq": 1, "pad": "' + b"x" * MAX_REQUEST_BYTES + b'"}'], "at most 4096"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(frames: list[bytes], needle: str) -> None:
    with pytest.raises(RequestError, match=needle):
        parse_request(frames)


def test_the_largest_int64_is_a_valid_since_seq() -> None:
    assert parse_request(_req({"since_seq": INT64_MAX})).since_seq == INT64_MAX


def test_nesting_depth_ignores_brackets_inside_strings() -> None:
    assert nesting_depth(b'{"a": "[[[[\\"{{{{", "b": [1, {"c": 2}]}') == 3
    assert nesting_depth(b"[[[]]]") == 3
    # brackets in a string do not count, so a flat request with a bracket-heavy id passes
    assert parse_request(_req({"since_seq": 1, "id": "[" * 60})).id == "[" * 60


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,
        b'{"since_seq": ' + b"1" * 4000 + b"}",
        b'{"since_seq": 1e400}',
        b'{"since_seq": -Infinity}',
        b"\x00" * 100,
    ],
)
def test_nothing_but_request_error_escapes_the_parser(raw: bytes) -> None:
    with pytest.raises(RequestError):
        parse_request([raw])
