"""JSON from the network with limits checked *before* parsing: size, nesting depth, integer range.

`json.loads` recurses once per nesting level, so a few kilobytes of `[[[[...` raise RecursionError
(not ValueError) from deep inside the parser, and a 4,000-digit integer costs quadratic time or
trips Python's int-digit limit. Requests to the replay and control sockets are flat objects, so
`load_request` first measures the nesting depth with a linear scan (strings and escapes
understood) and refuses anything deeper than `max_depth`, then parses, and every failure becomes
`BoundedJSONError` with a message for the client.
"""

from __future__ import annotations

import json
from typing import Any

INT64_MAX = (1 << 63) - 1
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


class BoundedJSONError(ValueError):
    """The bytes are not JSON within the limits; the message says which limit and what to send."""


def nesting_depth(raw: bytes) -> int:
    """The deepest bracket nesting of `raw` (outside strings); linear, never recursive."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif byte in _CLOSE:
            depth -= 1
    return deepest


MAX_INT_DIGITS = 40  # far beyond int64 (19 digits), so range errors name the key; far below slow


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise BoundedJSONError(f"an integer of {len(text)} digits is out of range (at most 64-bit integers)")
    return int(text)


def load_request(raw: bytes, *, max_bytes: int, max_depth: int, example: str) -> Any:
    """Parse one request frame; raises BoundedJSONError naming the limit that was broken."""
    if len(raw) > max_bytes:
        raise BoundedJSONError(f"request is {len(raw)} bytes; at most {max_bytes}")
    if raw.count(b"[") + raw.count(b"{") > max_depth and (depth := nesting_depth(raw)) > max_depth:
        raise BoundedJSONError(f"request is nested {depth} deep; at most {max_depth}; send {example}")
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except BoundedJSONError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError, OverflowError):
        raise BoundedJSONError(f"request is not JSON; send {example}") from None


def _no_constant(name: str) -> Any:
    raise BoundedJSONError(f"{name} is not JSON; send finite numbers")


def int64_at_least_zero(value: Any) -> bool:
    """True for a JSON integer (not a bool) in 0 .. 2**63 - 1, what SQLite's INTEGER holds."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX


def request_id_ok(value: Any) -> bool:
    """A request id: an int64 or a string of at most 64 characters."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -INT64_MAX - 1 <= value <= INT64_MAX
    return isinstance(value, str) and len(value) <= 64


__all__ = [
    "INT64_MAX",
    "BoundedJSONError",
    "int64_at_least_zero",
    "load_request",
    "nesting_depth",
    "request_id_ok",
]
