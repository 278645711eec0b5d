"""The operator's live page, served by the health server (runtime/ops/health.py): read-only.

Routes (GET and HEAD only; the server answers nothing else):

- `/` and `/operator`: the page (`operator_page.html`, plain HTML and JavaScript, package data).
  Nothing on it loads from anywhere but this server (a Content-Security-Policy says so too).
- `/operator/live.json?since=SEQ`: what the page polls every second: the daemon's state (ready or
  why not, camera state, tiles/s, metres inspected, line speed from the camera's lines, stop latency),
  the alarms (disk full, camera lost, model not ready, detector behind, status stale) and the
  roll's `roll`, `defect` and `stop` events after SEQ, read from the event spool (the durable
  record subscribers get; read-only connection). Without `since`, from the current roll's start.
- `/operator/crop/SEQ.jpg`: the JPEG crop the spool keeps with defect event SEQ.

Who may see it (`health.operator_page`): "local" (default) answers the page only to clients on
this machine, even where `health.host` opens `/metrics` to the network; "network" answers anyone
who reaches `health.host` (set that to the plant-network address too); "off" serves no page.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import sqlite3
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger(__name__)

MAX_EVENTS = 500  # events per poll; the page asks again at once while `more` is true
STALE_AFTER_S = 5.0
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class PageResponse:
    code: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


def _json(doc: dict[str, Any], code: int = 200) -> PageResponse:
    return PageResponse(code, json.dumps(doc, allow_nan=False).encode(), "application/json")


def is_local(client_host: str) -> bool:
    """A client on this machine: 127.0.0.0/8, ::1, or 127.x seen through a dual-stack socket."""
    try:
        ip = ipaddress.ip_address(client_host.split("%", maxsplit=1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


class OperatorPage:
    """Answers the page's routes from the health state (`HealthState`) and the spool."""

    def __init__(self, state: Any, spool_path: Path | str, *, allow_network: bool = False) -> None:
        self.state = state
        self.spool_path = Path(spool_path)
        self.allow_network = allow_network
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._html: bytes | None = None

    # -- routing ----------------------------------------------------------------------------
    def respond(self, path: str, query: str, client_host: str) -> PageResponse | None:
        """The answer for one of the page's routes, or None when `path` is not one of them."""
        if not (path in ("/", "/operator") or path.startswith("/operator/")):
            return None
        if not self.allow_network and not is_local(client_host):
            return _json({"error": "the operator page answers this machine only (health.operator_page)"}, 403)
        if path in ("/", "/operator"):
            return PageResponse(
                200, self._page(), "text/html; charset=utf-8", (("Content-Security-Policy", CSP),)
            )
        if path == "/operator/live.json":
            since = parse_qs(query).get("since", [""])[0]
            return _json(self.live(int(since) if since.isdigit() else None))
        if path.startswith("/operator/crop/") and path.endswith(".jpg"):
            seq = path.removeprefix("/operator/crop/").removesuffix(".jpg")
            crop = self.crop(int(seq)) if seq.isdigit() else None
            if crop is None:
                return _json({"error": f"no crop for event {seq!r}"}, 404)
            return PageResponse(200, crop, "image/jpeg", (("Cache-Control", "max-age=86400"),))
        return _json({"error": f"no such page {path!r}"}, 404)

    def _page(self) -> bytes:
        if self._html is None:
            self._html = resources.files("runtime.ops").joinpath("operator_page.html").read_bytes()
        return self._html

    # -- the live document ------------------------------------------------------------------
    def live(self, since: int | None) -> dict[str, Any]:
        doc = self.state.snapshot()
        status: dict[str, Any] = doc.get("status") or {}
        roll_id = str(status.get("roll_id") or "")
        inspected = _num(status.get("inspected_m"))
        source = status.get("source") or {}
        out: dict[str, Any] = {
            "line_id": doc.get("line_id") or status.get("line_id"),
            "roll_id": roll_id,
            "ready": doc.get("ready"),
            "reason": doc.get("reason"),
            "status_age_s": doc.get("status_age_s"),
            "stats": {
                "speed_m_min": status.get("line_speed_m_min"),
                "tiles_per_s": status.get("tiles_per_s"),
                "inspected_m": inspected,
                "camera_state": source.get("state"),
                "open_defects": status.get("open_defects"),
                "strips_dropped": status.get("strips_dropped"),
                "defects_by_class": status.get("defects_by_class") or {},
                "stop_latency": status.get("stop_latency"),
                "web_edges_mm": status.get("web_edges_mm"),
            },
            "alarms": alarms(doc),
        }
        try:
            out.update(self._events(since))
        except sqlite3.Error as exc:
            self._reset()
            out.update({"events": [], "next_since": since or 0, "more": False, "spool_error": str(exc)})
        return out

    def _events(self, since: int | None) -> dict[str, Any]:
        with self._lock:
            conn = self._connect()
            if conn is None:
                return {"events": [], "next_since": since or 0, "more": False}
            if since is None:
                since = _current_roll_start(conn) - 1
            rows = conn.execute(
                "SELECT seq, kind, body, crop IS NOT NULL FROM events WHERE seq > ? "
                "AND kind IN ('roll', 'defect', 'stop') ORDER BY seq LIMIT ?",
                (since, MAX_EVENTS),
            ).fetchall()
            last = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        events = [e for e in (_event(int(s), str(k), b, bool(c)) for s, k, b, c in rows) if e]
        next_since = int(rows[-1][0]) if rows else max(since, 0)
        if len(rows) < MAX_EVENTS:
            next_since = max(next_since, int(last))
        return {"events": events, "next_since": next_since, "more": len(rows) == MAX_EVENTS}

    def crop(self, seq: int) -> bytes | None:
        with self._lock:
            try:
                conn = self._connect()
                row = None if conn is None else conn.execute(
                    "SELECT crop FROM events WHERE seq = ? AND kind = 'defect'", (seq,)
                ).fetchone()  # fmt: skip
            except sqlite3.Error:
                self._reset()
                return None
        return None if row is None or row[0] is None else bytes(row[0])

    def _connect(self) -> sqlite3.Connection | None:
        """The page's own read-only connection (opened at the first request the spool exists for)."""
        if self._conn is None:
            if not self.spool_path.is_file():
                return None
            uri = f"{self.spool_path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=2.0)
            conn.execute("PRAGMA query_only = 1")
            self._conn = conn
        return self._conn

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._reset()


def alarms(doc: dict[str, Any]) -> list[dict[str, str]]:
    """What the operator must see at once, from a `/healthz` document."""
    status: dict[str, Any] = doc.get("status") or {}
    out: list[dict[str, str]] = []
    model = status.get("model") or {}
    if model.get("error") or (not doc.get("ready") and "model" in str(doc.get("reason", ""))):
        out.append({"kind": "model_not_ready", "text": str(model.get("error") or doc.get("reason"))})
    camera = (status.get("source") or {}).get("state")
    if camera in ("lost", "reconnecting"):
        error = (status.get("source") or {}).get("last_error")
        out.append({"kind": "camera_lost", "text": f"camera {camera}" + (f": {error}" if error else "")})
    spool_alarm = (status.get("publisher") or {}).get("alarm")
    if spool_alarm:
        text = {"disk_full": "disk full: events are held in memory", "disk_low": "disk almost full"}
        out.append({"kind": str(spool_alarm), "text": text.get(str(spool_alarm), f"spool: {spool_alarm}")})
    if (status.get("strips_dropped") or 0) > 0:
        out.append(
            {
                "kind": "detector_behind",
                "text": f"{status['strips_dropped']} strips not inspected (detector behind)",
            }
        )
    age = doc.get("status_age_s")
    if isinstance(age, (int, float)) and age > STALE_AFTER_S:
        out.append({"kind": "status_stale", "text": f"no status from the daemon for {age:.0f} s"})
    if not doc.get("ready") and not any(a["kind"] == "model_not_ready" for a in out):
        out.append({"kind": "not_inspecting", "text": f"not inspecting: {doc.get('reason') or 'not ready'}"})
    return out


def _current_roll_start(conn: sqlite3.Connection) -> int:
    """The seq of the start event of the roll the spool's last `roll` event belongs to (1: none)."""
    row = conn.execute("SELECT seq, body FROM lvc WHERE kind = 'roll'").fetchone()
    if row is None:
        return 1
    seq, body = int(row[0]), _body(row[1])
    if body.get("state") == "start":
        return seq
    prev = conn.execute(
        "SELECT seq FROM events WHERE kind = 'roll' AND seq < ? ORDER BY seq DESC LIMIT 1", (seq,)
    ).fetchone()
    return int(prev[0]) if prev is not None else seq


_DEFECT_KEYS = ("defect_id", "class", "score", "x_mm", "y_mm", "w_mm", "h_mm", "x_from_edge_mm", "points")
_STOP_KEYS = ("reason", "detail", "inspected_m", "defect_id")
_ROLL_KEYS = ("state", "camera_width_mm", "inspected_m", "width_mm", "reason")


def _event(seq: int, kind: str, raw: bytes, has_crop: bool) -> dict[str, Any] | None:
    body = _body(raw)
    if not body:
        return None
    keys = {"defect": _DEFECT_KEYS, "stop": _STOP_KEYS, "roll": _ROLL_KEYS}[kind]
    out: dict[str, Any] = {"seq": seq, "kind": kind, "ts": body.get("ts"), "roll_id": body.get("roll_id")}
    out.update({k: body.get(k) for k in keys if k in body})
    if kind == "stop" and isinstance(body.get("defect"), dict):
        out["y_mm"] = body["defect"].get("y_mm")
    if kind == "defect":
        out["crop"] = f"/operator/crop/{seq}.jpg" if has_crop else None
    return out


def _body(raw: bytes | str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
