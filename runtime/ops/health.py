"""Health and metrics over HTTP: `/healthz` (live/ready as Triton means them) and Prometheus `/metrics`.

The daemon owns one `HealthState` and feeds it: `set_ready(False, "model failed to load: ...")`
while it cannot inspect, `set_ready(True)` once the model is warm and the pipeline runs, and
`update(status)` with the same dict it publishes on the `status` topic. `HealthServer` serves it
from a thread (stdlib http.server) on `[health] host/port`:

- `GET /healthz/live`  200 while the process runs (the server answering is the proof).
- `GET /healthz/ready` 200 when ready, else 503; the JSON body carries the reason. Besides
  `set_ready`, checks added with `add_check` (the replay and control servers' threads) make it
  503 while any of them reports a problem.
- `GET /healthz`       200 with the whole document (live, ready, reason, uptime, last status).
- `GET /metrics`       Prometheus text (or OpenMetrics when asked) from the state's own registry.
- `GET /`, `/operator...` the operator's live page, when the server is given one
  (`runtime/ops/operator_page.py`, `health.operator_page`).

Only GET and HEAD are answered (anything else gets 501): nothing here changes the daemon.

Metrics come from the status dict: every numeric leaf (bools as 0/1) of the nested dict becomes
`loomsight_<path joined by _>`; a leaf whose key ends in `_total`, or whose path is one of the
daemon's known counts (`COUNTER_PATHS`: frames, strips, drops, errors, events published or sent,
...), is a counter (exposed as `<name>_total`), everything else a gauge; string leaves become labels of `loomsight_status_info`; lists are skipped. So a status of
`{"frames": {"dropped_total": 3, "queue_depth": 2}, "camera": {"state": "ok"}}` is exposed as
`loomsight_frames_dropped_total 3`, `loomsight_frames_queue_depth 2` and
`loomsight_status_info{camera_state="ok"} 1`. Process figures (RSS, open fds, CPU) come from
prometheus-client's process collector, for soak tests and dashboards.

The server is supervised like the replay and control servers: an error escaping its serving loop
is logged and the loop starts again (`restarts_total`), a handler's error is logged and counted
(`errors`), and a thread that died is started again by `ensure_running()` (the daemon's status loop
calls it); `problem()` says why it is down, for readiness and the status topic.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from runtime import __version__
from runtime.config import HealthConfig
from runtime.errors import ConfigError
from runtime.ops.counters import COUNTER_PATHS

log = logging.getLogger(__name__)

NAMESPACE = "loomsight"
RESERVED = frozenset(
    {"loomsight_up", "loomsight_ready", "loomsight_status_age_seconds", "loomsight_status_updates"}
)
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")
MAX_LABEL_CHARS = 200


def metric_part(key: object) -> str:
    """One component of a metric name: lower case, [a-z0-9_] only."""
    part = _NAME_BAD.sub("_", str(key)).strip("_").lower()
    return part or "_"


def flatten_status(
    status: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], str]]:
    """Numeric leaves and string leaves of a nested status dict, keyed by their path."""
    numbers: dict[tuple[str, ...], float] = {}
    texts: dict[tuple[str, ...], str] = {}
    for key, value in status.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            sub_numbers, sub_texts = flatten_status(value, path)
            numbers.update(sub_numbers)
            texts.update(sub_texts)
        elif isinstance(value, bool):
            numbers[path] = 1.0 if value else 0.0
        elif isinstance(value, int | float):
            numbers[path] = float(value)
        elif isinstance(value, str):
            texts[path] = value
    return numbers, texts


class HealthState:
    """What the daemon tells the health endpoints. Thread-safe; the daemon writes, HTTP threads read.

    `stale_after_s`: when set, a status older than this makes the daemon not ready (its status
    loop has stopped), whatever `set_ready` said.
    """

    def __init__(
        self,
        *,
        line_id: str = "",
        stale_after_s: float | None = None,
        process_metrics: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.line_id = line_id
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._ready = False
        self._reason = "starting"
        self._status: dict[str, Any] = {}
        self._status_at: float | None = None
        self._updates = 0
        self._warned_collisions: set[str] = set()
        self._checks: list[tuple[str, Callable[[], str | None]]] = []
        self._checks_logged = ""
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatusCollector(self))
        if process_metrics:
            ProcessCollector(namespace="", registry=self.registry)

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Ready = the model is loaded and the pipeline is running. Give the reason when not."""
        with self._lock:
            if ready != self._ready or reason != self._reason:
                log.log(
                    logging.INFO if ready else logging.WARNING,
                    "health: %s%s",
                    "ready" if ready else "not ready",
                    f" ({reason})" if reason else "",
                )
            self._ready = ready
            self._reason = reason if reason or ready else "not ready"

    def add_check(self, name: str, check: Callable[[], str | None]) -> None:
        """A condition that makes the daemon not ready while it returns a reason (evaluated at each
        read, so a server thread that died turns readiness false at once). A check that raises
        counts as failing."""
        with self._lock:
            self._checks.append((name, check))

    def _failed_checks(self) -> list[str]:
        reasons: list[str] = []
        for name, check in self._checks:
            try:
                reason = check()
            except Exception as exc:
                reason = f"check failed: {type(exc).__name__}: {exc}"
            if reason:
                reasons.append(f"{name}: {reason}")
        text = "; ".join(reasons)
        if text != self._checks_logged:
            if reasons:
                log.error("health: not ready (%s)", text)
            else:
                log.warning("health: checks pass again")
            self._checks_logged = text
        return reasons

    def update(self, status: Mapping[str, Any]) -> None:
        """The daemon's latest `status` dict (nested; numbers, bools and strings are exposed)."""
        with self._lock:
            self._status = dict(status)
            self._status_at = self._clock()
            self._updates += 1

    @property
    def ready(self) -> bool:
        return bool(self.snapshot()["ready"])

    def snapshot(self) -> dict[str, Any]:
        """The `/healthz` document."""
        with self._lock:
            now = self._clock()
            age = None if self._status_at is None else now - self._status_at
            ready, reason = self._ready, self._reason
            failed = self._failed_checks() if ready else []
            if failed:
                ready, reason = False, "; ".join(failed)
            if ready and self.stale_after_s is not None and (age is None or age > self.stale_after_s):
                ready = False
                reason = (
                    "no status received yet"
                    if age is None
                    else f"status not updated for {age:.1f} s (limit {self.stale_after_s:g} s)"
                )
            return {
                "live": True,
                "ready": ready,
                "reason": "" if ready else reason,
                "line_id": self.line_id,
                "version": __version__,
                "uptime_s": round(now - self._started, 3),
                "status_age_s": None if age is None else round(age, 3),
                "status_updates": self._updates,
                "status": self._status,
            }

    def _metric_families(self) -> Iterator[Metric]:
        doc = self.snapshot()
        yield GaugeMetricFamily("loomsight_up", "1 while the daemon process runs", value=1.0)
        yield GaugeMetricFamily(
            "loomsight_ready",
            "1 when the model is loaded and the pipeline runs",
            value=1.0 if doc["ready"] else 0.0,
        )
        age = doc["status_age_s"]
        yield GaugeMetricFamily(
            "loomsight_status_age_seconds",
            "seconds since the daemon last updated its status",
            value=math.nan if age is None else float(age),
        )
        yield CounterMetricFamily(
            "loomsight_status_updates", "status updates received", value=float(doc["status_updates"])
        )
        yield InfoMetricFamily(
            "loomsight", "daemon identity", value={"version": __version__, "line_id": self.line_id}
        )
        numbers, texts = flatten_status(doc["status"])
        used = set(RESERVED)
        for path, value in sorted(numbers.items()):
            parts = [metric_part(p) for p in path]
            is_counter = parts[-1].endswith("_total") or parts[-1] == "total" or path in COUNTER_PATHS
            if is_counter:
                parts[-1] = parts[-1].removesuffix("total").rstrip("_") or "count"
            name = "_".join([NAMESPACE, *parts])
            if name in used:
                self._warn_collision(name, path)
                continue
            used.add(name)
            help_text = "status " + ".".join(path)
            if is_counter:
                yield CounterMetricFamily(name, help_text, value=value)
            else:
                yield GaugeMetricFamily(name, help_text, value=value)
        if texts:
            labels: dict[str, str] = {}
            for path, text in sorted(texts.items()):
                label = "_".join(metric_part(p) for p in path)
                if label[0].isdigit():
                    label = "_" + label
                labels.setdefault(label, text[:MAX_LABEL_CHARS])
            yield InfoMetricFamily("loomsight_status", "text fields of the daemon status", value=labels)

    def _warn_collision(self, name: str, path: tuple[str, ...]) -> None:
        if name not in self._warned_collisions:
            self._warned_collisions.add(name)
            log.warning(
                "status field %s maps to metric %s, which is already taken; not exported",
                ".".join(path),
                name,
            )


class _StatusCollector:
    """Prometheus collector that renders the HealthState at scrape time."""

    def __init__(self, state: HealthState) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        return []  # names change with the status dict; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        return self._state._metric_families()


def _jsonable(value: Any) -> Any:
    """Strict JSON: NaN/Inf become null, tuples lists, unknown objects their str()."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _json_bytes(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(_jsonable(doc), allow_nan=False).encode()


class PageRoutes(Protocol):
    """Extra read-only routes (the operator page): an answer, or None for a path that is not theirs."""

    def respond(self, path: str, query: str, client_host: str) -> Any: ...


def _handler_for(state: HealthState, routes: PageRoutes | None = None) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        server_version = f"loomsight-health/{__version__}"
        timeout = 5.0  # a client that stalls cannot hold a handler thread for long

        def do_GET(self) -> None:
            _count(self.server, "requests")
            self._respond(with_body=True)

        def do_HEAD(self) -> None:
            _count(self.server, "requests")
            self._respond(with_body=False)

        def _respond(self, *, with_body: bool) -> None:
            parts = urlsplit(self.path)
            path = parts.path.rstrip("/") or "/"
            if routes is not None:
                page = routes.respond(path, parts.query, str(self.client_address[0]))
                if page is not None:
                    self._send(page.code, page.body, page.content_type, with_body, page.headers)
                    return
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(HTTPStatus.OK, encoder(state.registry), content_type, with_body)
                return
            if path == "/healthz/live":
                self._send_json(HTTPStatus.OK, {"live": True}, with_body)
                return
            if path in ("/healthz", "/healthz/ready"):
                doc = state.snapshot()
                code = HTTPStatus.OK if path == "/healthz" or doc["ready"] else HTTPStatus.SERVICE_UNAVAILABLE
                self._send_json(code, doc, with_body)
                return
            self._send_json(
                HTTPStatus.NOT_FOUND,
                {
                    "error": f"no such endpoint {path!r}",
                    "endpoints": ["/healthz", "/healthz/live", "/healthz/ready", "/metrics"]
                    + (["/"] if routes is not None else []),
                },
                with_body,
            )

        def _send_json(self, code: HTTPStatus, doc: Mapping[str, Any], with_body: bool) -> None:
            self._send(code, _json_bytes(doc), "application/json", with_body)

        def _send(
            self,
            code: int,
            body: bytes,
            content_type: str,
            with_body: bool,
            headers: Iterable[tuple[str, str]] = (),
        ) -> None:
            extra = dict(headers)
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", extra.pop("Cache-Control", "no-store"))
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("health %s %s", self.address_string(), format % args)

    return HealthHandler


def _count(server: Any, name: str) -> None:
    if isinstance(server, _Server):
        with server.counts_lock:
            server.counts[name] += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counts_lock = threading.Lock()
        self.counts = {"requests": 0, "errors": 0}

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A handler failed: log it (not a bare traceback on stderr) and count it; serving goes on."""
        _count(self, "errors")
        log.exception("health HTTP request from %s failed", client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class HealthServer:
    """The HTTP endpoints in a background thread. `port=0` picks a free port (see `.port`)."""

    def __init__(
        self, state: HealthState, host: str = "127.0.0.1", port: int = 9108, routes: PageRoutes | None = None
    ) -> None:
        self.state = state
        self.routes = routes
        self.host = host
        self.requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.restarts_total = 0

    @classmethod
    def from_config(
        cls, config: HealthConfig, state: HealthState, routes: PageRoutes | None = None
    ) -> HealthServer:
        return cls(state, config.host, config.port, routes)

    def start(self) -> HealthServer:
        if self._server is not None:
            return self
        server_cls = _Server6 if ":" in self.host else _Server
        try:
            self._server = server_cls((self.host, self.requested_port), _handler_for(self.state, self.routes))
        except OSError as exc:
            raise ConfigError(
                f"health.host/health.port = {self.host}:{self.requested_port}: cannot listen ({exc}); "
                "choose a free port, or set health.enabled = false"
            ) from None
        self._stopping.clear()
        self._start_thread()
        log.info(
            "health endpoints on %s (/healthz, /metrics%s)",
            self.url,
            ", operator page /" if self.routes else "",
        )
        return self

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="health-http", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """serve_forever, started again (counted) when an error escapes it, until stop()."""
        while not self._stopping.is_set():
            server = self._server
            if server is None:
                return
            try:
                server.serve_forever(poll_interval=0.2)
                return  # shutdown() was called
            except Exception:
                self.restarts_total += 1
                log.exception("health HTTP server on %s failed; serving again", self.url)
                self._stopping.wait(0.1)

    def ensure_running(self) -> bool:
        """Start the serving thread again if it died (the daemon's status loop calls this)."""
        if self._server is None or self._stopping.is_set():
            return False
        if self._thread is not None and self._thread.is_alive():
            return False
        self.restarts_total += 1
        log.error("health HTTP server thread on %s had died; starting it again", self.url)
        self._start_thread()
        return True

    def problem(self) -> str | None:
        """Why the endpoints are not being served, or None."""
        if self._server is None or self._stopping.is_set():
            return None
        if self._thread is None or not self._thread.is_alive():
            return f"health HTTP server on {self.url} is down (thread dead)"
        return None

    def status(self) -> dict[str, Any]:
        """For the daemon's status (and so the metrics): running, restarts, requests, errors."""
        server = self._server
        counts = {"requests": 0, "errors": 0}
        if server is not None:
            with server.counts_lock:
                counts = dict(server.counts)
        return {
            "running": server is not None and self.problem() is None,
            "restarts_total": self.restarts_total,
            **counts,
        }

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("HealthServer.port is known only after start()")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._server is None:
            return
        self._stopping.set()
        if self._thread is not None and self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._server = None
        self._thread = None

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
