"""Health and metrics endpoints, exercised with a real HTTP client on loopback."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from runtime.config import HealthConfig
from runtime.errors import ConfigError
from runtime.ops.health import HealthServer, HealthState, flatten_status

STATUS: dict[str, Any] = {
    "roll_id": "R-0042",
    "metres_inspected": 12.5,
    "frames": {"received_total": 1200, "dropped_total": 3, "incomplete_total": 1},
    "queues": {"frames": {"depth": 2, "capacity": 16}},
    "tiles_per_s": 41.5,
    "camera": {"connected": True, "state": "ok", "retries_total": 0},
    "defects_by_class": {"hole": 2, "broken-end": 1},
    "recent": [1, 2, 3],
    "spool": {"rows": 5000, "last_error": None},
}


def fetch(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name if not sample.labels else (sample.name, tuple(sorted(sample.labels.items())))
            out[key if isinstance(key, str) else sample.name] = sample if sample.labels else sample.value
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def served(clock: Clock) -> Iterator[tuple[HealthState, str]]:
    state = HealthState(line_id="loom-7", stale_after_s=10.0, clock=clock)
    server = HealthServer(state, "127.0.0.1", 0).start()
    yield state, server.url
    server.stop()


def test_live_while_running_but_not_ready_until_the_daemon_says_so(served: tuple[HealthState, str]) -> None:
    _, url = served
    assert fetch(url + "/healthz/live")[0] == 200
    code, ctype, body = fetch(url + "/healthz/ready")
    assert code == 503 and ctype == "application/json"
    assert json.loads(body)["reason"] == "starting"


def test_model_that_fails_to_load_leaves_daemon_live_not_ready_with_reason(
    served: tuple[HealthState, str],
) -> None:
    state, url = served
    state.set_ready(False, "model failed to load: sha256 of model.onnx does not match the manifest")
    assert fetch(url + "/healthz/live")[0] == 200
    code, _, body = fetch(url + "/healthz/ready")
    doc = json.loads(body)
    assert code == 503 and doc["live"] is True and doc["ready"] is False
    assert "sha256 of model.onnx" in doc["reason"]
    code, _, body = fetch(url + "/healthz")
    assert code == 200 and json.loads(body)["reason"].startswith("model failed to load")
    assert samples(fetch(url + "/metrics")[2])["loomsight_ready"] == 0.0


def test_ready_with_status_and_stale_status_turns_not_ready(
    served: tuple[HealthState, str], clock: Clock
) -> None:
    state, url = served
    state.set_ready(True)
    assert fetch(url + "/healthz/ready")[0] == 503  # ready, but no status has arrived yet
    state.update(STATUS)
    code, _, body = fetch(url + "/healthz/ready")
    doc = json.loads(body)
    assert code == 200 and doc["ready"] and doc["reason"] == "" and doc["line_id"] == "loom-7"
    assert doc["status"]["frames"]["dropped_total"] == 3
    clock.now += 11.0  # the status loop stopped
    code, _, body = fetch(url + "/healthz/ready")
    assert code == 503 and "not updated for 11.0 s" in json.loads(body)["reason"]


def test_metrics_expose_the_status_figures(served: tuple[HealthState, str]) -> None:
    state, url = served
    state.set_ready(True)
    state.update(STATUS)
    code, ctype, text = fetch(url + "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    got = samples(text)
    assert got["loomsight_up"] == 1.0 and got["loomsight_ready"] == 1.0
    assert got["loomsight_frames_dropped_total"] == 3.0
    assert got["loomsight_frames_received_total"] == 1200.0
    assert got["loomsight_queues_frames_depth"] == 2.0
    assert got["loomsight_tiles_per_s"] == 41.5
    assert got["loomsight_camera_connected"] == 1.0
    assert got["loomsight_defects_by_class_broken_end"] == 1.0
    assert got["loomsight_metres_inspected"] == 12.5
    assert got["loomsight_status_updates_total"] == 1.0
    info = got["loomsight_status_info"]
    assert info.labels == {"roll_id": "R-0042", "camera_state": "ok"}
    assert "process_resident_memory_bytes" in got and "process_open_fds" in got
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert (
        types["loomsight_frames_dropped"] == "counter" and types["loomsight_queues_frames_depth"] == "gauge"
    )
    assert not any(name.startswith("loomsight_recent") for name in got)  # lists are skipped

    state.update({**STATUS, "frames": {**STATUS["frames"], "dropped_total": 5}})
    assert samples(fetch(url + "/metrics")[2])["loomsight_frames_dropped_total"] == 5.0


def test_metrics_use_their_own_registry(served: tuple[HealthState, str]) -> None:
    state, _ = served
    state.update(STATUS)
    assert REGISTRY.get_sample_value("loomsight_ready") is None
    assert state.registry.get_sample_value("loomsight_queues_frames_capacity") == 16.0


def test_openmetrics_when_asked(served: tuple[HealthState, str]) -> None:
    _, url = served
    code, ctype, text = fetch(url + "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert code == 200 and ctype.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_non_finite_values_keep_healthz_valid_json(served: tuple[HealthState, str]) -> None:
    state, url = served
    state.update({"tiles_per_s": float("nan"), "lag_s": float("inf")})
    doc = json.loads(fetch(url + "/healthz")[2])
    assert doc["status"] == {"tiles_per_s": None, "lag_s": None}


def test_unknown_path_is_404_with_the_endpoint_list(served: tuple[HealthState, str]) -> None:
    _, url = served
    code, _, body = fetch(url + "/nope")
    assert code == 404 and "/metrics" in json.loads(body)["endpoints"]


def test_port_in_use_is_a_config_error_naming_the_key() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HealthServer.from_config(
            HealthConfig(enabled=True, port=port), HealthState(process_metrics=False)
        )
        with pytest.raises(ConfigError, match=rf"health.port = 127.0.0.1:{port}"):
            server.start()


def test_colliding_status_names_are_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    state = HealthState(process_metrics=False)
    state.update({"queue-depth": 1, "queue_depth": 2, "ready": 5})
    for _ in range(3):
        names = [s.name for family in state.registry.collect() for s in family.samples]
        assert names.count("loomsight_queue_depth") == 1 and names.count("loomsight_ready") == 1
    assert state.registry.get_sample_value("loomsight_queue_depth") in (1.0, 2.0)
    assert state.registry.get_sample_value("loomsight_ready") == 0.0  # reserved name keeps its meaning
    warnings = [r for r in caplog.records if "already taken" in r.getMessage()]
    assert len(warnings) == 2


def test_flatten_status_paths() -> None:
    numbers, texts = flatten_status({"a": {"b": 1, "c": True, "d": "x", "e": None}, "f": 2.5})
    assert numbers == {("a", "b"): 1.0, ("a", "c"): 1.0, ("f",): 2.5}
    assert texts == {("a", "d"): "x"}


def test_a_failing_check_makes_ready_false_with_its_reason_and_a_raising_check_counts_as_failing() -> None:
    state = HealthState(process_metrics=False)
    problem: dict[str, str | None] = {"replay": None}
    state.add_check("publisher", lambda: problem["replay"])
    state.set_ready(True)
    assert state.ready
    problem["replay"] = "replay server on tcp://x is down (thread dead)"
    doc = state.snapshot()
    assert (
        doc["ready"] is False and doc["reason"] == "publisher: replay server on tcp://x is down (thread dead)"
    )
    problem["replay"] = None
    assert state.ready

    def broken() -> str | None:
        raise RuntimeError("boom")

    state.add_check("control", broken)
    doc = state.snapshot()
    assert doc["ready"] is False and "control: check failed: RuntimeError: boom" in doc["reason"]


def test_the_daemons_counts_are_counters_and_its_levels_gauges() -> None:
    # issue 17.5: counts such as events published or camera timeouts were typed as gauges
    state = HealthState(process_metrics=False)
    state.update(
        {
            "frames": 120,
            "strips_dropped": 2,
            "queues": {"frames": 3},
            "queue_peaks": {"frames": 4},
            "source": {"timeouts": 1, "retries": 0},
            "publisher": {
                "published": 42,
                "held": 0,
                "spool": {"rows": 42, "pruned_rows": 5},
                "replay": {"events_sent": 17, "restarts_total": 0, "active_sessions": 1},
            },
            "control": {"requests": 9},
            "http": {"requests": 3},
        }
    )
    text = generate_latest(state.registry).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name in (
        "loomsight_frames",
        "loomsight_strips_dropped",
        "loomsight_source_timeouts",
        "loomsight_publisher_published",
        "loomsight_publisher_spool_pruned_rows",
        "loomsight_publisher_replay_events_sent",
        "loomsight_publisher_replay_restarts",
        "loomsight_control_requests",
        "loomsight_http_requests",
    ):
        assert types[name] == "counter", name
    for name in (
        "loomsight_queues_frames",
        "loomsight_queue_peaks_frames",
        "loomsight_source_retries",
        "loomsight_publisher_held",
        "loomsight_publisher_spool_rows",
        "loomsight_publisher_replay_active_sessions",
    ):
        assert types[name] == "gauge", name
    got = samples(text)
    assert got["loomsight_publisher_published_total"] == 42.0 and got["loomsight_queues_frames"] == 3.0


# ----------------------------------------------------------------------------- issue 17.1: supervised HTTP
def test_an_error_escaping_the_http_serving_loop_is_counted_and_serving_goes_on() -> None:
    state = HealthState(process_metrics=False)
    server = HealthServer(state, "127.0.0.1", 0).start()
    try:
        inner = server._server
        assert inner is not None
        real = inner.service_actions
        calls = {"n": 0}

        def failing_once() -> None:
            if calls["n"] == 0:
                calls["n"] += 1
                raise RuntimeError("injected fault")
            real()

        inner.service_actions = failing_once  # type: ignore[method-assign]
        for _ in range(100):  # serve_forever calls it at least every poll_interval
            if server.restarts_total:
                break
            fetch(server.url + "/healthz/live")
        assert server.restarts_total == 1 and server.problem() is None
        assert fetch(server.url + "/healthz/live")[0] == 200
        assert server.status()["running"] is True and server.status()["requests"] >= 1
    finally:
        server.stop()


def test_a_dead_http_thread_is_reported_and_started_again_by_ensure_running() -> None:
    state = HealthState(process_metrics=False)
    server = HealthServer(state, "127.0.0.1", 0).start()
    try:
        inner = server._server
        assert inner is not None and server._thread is not None
        thread = server._thread
        inner.shutdown()  # the serving thread ends while the server should be serving
        thread.join(5)
        assert not thread.is_alive()
        assert server.problem() is not None and "thread dead" in str(server.problem())
        assert server.status()["running"] is False
        assert server.ensure_running() is True
        assert not server.ensure_running()  # only once
        assert fetch(server.url + "/healthz/live")[0] == 200
        assert server.problem() is None and server.status()["restarts_total"] == 1
    finally:
        server.stop()


def test_a_failing_handler_is_counted_and_the_next_request_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    state = HealthState(process_metrics=False)
    server = HealthServer(state, "127.0.0.1", 0).start()
    try:
        real = state.snapshot
        monkeypatch.setattr(state, "snapshot", lambda: (_ for _ in ()).throw(RuntimeError("injected")))
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            fetch(server.url + "/healthz")
        monkeypatch.setattr(state, "snapshot", real)
        assert fetch(server.url + "/healthz")[0] == 200
        assert server.status()["errors"] == 1 and server.problem() is None
    finally:
        server.stop()
