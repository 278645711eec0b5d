"""`loomsight subscribe` (the reference subscriber) and `loomsight keys` (CURVE key pairs).

Light at import: zmq and the event modules are imported inside `run`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.commands import Command
from runtime.errors import ConfigError
from runtime.events.bounded_json import INT64_MAX

if TYPE_CHECKING:
    from runtime.events.schema import Event

_DEFECT_KEYS = ("class", "score", "x_mm", "x_from_edge_mm", "y_mm", "w_mm", "h_mm", "points", "defect_id")
_SKIP_KEYS = ("schema", "kind", "seq", "epoch", "ts", "line_id", "roll_id")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.1f}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"))
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


def format_event(event: Event) -> str:
    """One human line: `#SEQ TS KIND LINE roll=R key=value ...` (defects show class and position first)."""
    body = event.body
    head = f"#{body['seq']} {body['ts']} {body['kind']:<7} {body['line_id']} roll={body['roll_id'] or '-'}"
    keys = [k for k in _DEFECT_KEYS if k in body] if event.kind == "defect" else []
    keys += [k for k in body if k not in _SKIP_KEYS and k not in keys]
    parts = [f"{k}={_fmt(body[k])}" for k in keys]
    if event.crop_jpeg is not None:
        parts.append(f"crop={len(event.crop_jpeg) / 1024:.1f}kB")
    line = " ".join([head, *parts])
    return line if len(line) <= 240 else line[:237] + "..."


def _parse_since(text: str | None) -> tuple[str | None, int] | None:
    if text is None:
        return None
    epoch, sep, seq = text.rpartition(":")
    try:
        value = int(seq) if len(seq.strip()) <= 20 else -1
    except ValueError:
        value = -1
    if not 0 <= value <= INT64_MAX:
        raise ConfigError(
            f"--since {text[:60]!r}: use SEQ or EPOCH:SEQ (as printed in the summary), SEQ from 0 to {INT64_MAX}"
        )
    return (epoch if sep and epoch else None), value


def _add_subscribe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", required=True, metavar="ENDPOINT", help="the publisher's PUB endpoint")
    parser.add_argument(
        "--replay",
        default=None,
        metavar="ENDPOINT",
        help="its replay endpoint: fills gaps, slow-joiner start, LVC",
    )
    parser.add_argument(
        "--topic",
        action="append",
        default=None,
        metavar="T",
        help="topic prefix such as defect. (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line (the event body)")
    parser.add_argument("--count", type=int, default=None, metavar="N", help="exit after N events")
    parser.add_argument(
        "--timeout-s", type=float, default=None, metavar="S", help="exit after S s without events"
    )
    parser.add_argument(
        "--since",
        default=None,
        metavar="EPOCH:SEQ",
        help="resume after this position (printed at exit); --since 0 prints everything the spool holds",
    )
    parser.add_argument("--no-lvc", action="store_true", help="do not print the current roll/status at start")
    parser.add_argument(
        "--dead-after", type=int, default=3, metavar="N", help="missed heartbeats = dead publisher"
    )
    parser.add_argument(
        "--crops-dir", type=Path, default=None, help="write each event's JPEG crop as SEQ.jpg here"
    )
    parser.add_argument(
        "--curve-server-key", type=Path, default=None, metavar="F", help="server public .key file"
    )
    parser.add_argument(
        "--curve-client-key", type=Path, default=None, metavar="F", help="our .key_secret file"
    )


def _run_subscribe(args: argparse.Namespace) -> int:
    from runtime.events.security import load_client_curve
    from runtime.events.subscriber import EventSubscriber

    if (args.curve_server_key is None) != (args.curve_client_key is None):
        raise ConfigError(
            "--curve-server-key and --curve-client-key go together (server .key, our .key_secret)"
        )
    if args.count is not None and args.count < 1:
        raise ConfigError(f"--count {args.count}: must be >= 1")
    curve = None
    if args.curve_server_key is not None:
        curve = load_client_curve(args.curve_server_key, args.curve_client_key)
    if args.crops_dir is not None:
        args.crops_dir.mkdir(parents=True, exist_ok=True)

    def on_state(state: str, message: str) -> None:
        print(f"loomsight subscribe: {message}", file=sys.stderr, flush=True)

    sub = EventSubscriber(
        connect=args.connect,
        replay=args.replay,
        topics=tuple(args.topic or ("",)),
        curve=curve,
        dead_after_heartbeats=args.dead_after,
        since=_parse_since(args.since),
        lvc=not args.no_lvc,
        on_state=on_state,
    )
    received = 0
    try:
        for event in sub.events(timeout_s=args.timeout_s):
            if args.json:
                print(json.dumps(event.body, separators=(",", ":"), ensure_ascii=False), flush=True)
            else:
                print(format_event(event), flush=True)
            if args.crops_dir is not None and event.crop_jpeg is not None:
                (args.crops_dir / f"{event.seq}.jpg").write_bytes(event.crop_jpeg)
            received += 1
            if args.count is not None and received >= args.count:
                break
    finally:
        stats = sub.stats
        epoch, pos = sub.position
        sub.close()
        print(
            f"loomsight subscribe: {stats.delivered} events (live {stats.live}, recovered {stats.recovered}, "
            f"last-value {stats.lvc}), lost {stats.lost}, duplicates dropped {stats.duplicates}, "
            f"heartbeats {stats.heartbeats}; position {epoch}:{pos}",
            file=sys.stderr,
            flush=True,
        )
    if received == 0 and stats.heartbeats == 0 and stats.live_received == 0:
        print(f"loomsight subscribe: no publisher heard on {args.connect}", file=sys.stderr)
        return 3
    return 0


SUBSCRIBE = Command(
    name="subscribe",
    help="print a publisher's events, every one once and in order (gaps filled from replay)",
    add_arguments=_add_subscribe_arguments,
    run=_run_subscribe,
    description=(
        "The reference subscriber. Connects to a PUB endpoint (and its replay endpoint), prints each event "
        "(one line, or --json), fills gaps from replay and reports a dead publisher after --dead-after missed "
        "heartbeats. Exits after --count events or --timeout-s seconds without one."
    ),
)


def _add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the key files")
    parser.add_argument("--name", required=True, help="base name: writes NAME.key and NAME.key_secret")
    parser.add_argument("--force", action="store_true", help="replace existing files of that name")


def _run_keys(args: argparse.Namespace) -> int:
    from runtime.events.security import generate_key_files, read_public_key

    public_path, secret_path = generate_key_files(args.out, args.name, force=args.force)
    public = read_public_key(public_path).decode()
    print(f"public key  {public_path}  ({public})")
    print(f"secret key  {secret_path}  (mode 0600: keep it on this machine, never share it)")
    print(
        "server: set security.server_secret_key to the .key_secret file and give clients the .key file; "
        "client: copy the .key file into the publisher's security.authorized_keys_dir"
    )
    return 0


KEYS = Command(
    name="keys",
    help="generate a CURVE key pair (NAME.key public, NAME.key_secret 0600)",
    add_arguments=_add_keys_arguments,
    run=_run_keys,
)
