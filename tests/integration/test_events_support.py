"""Helpers shared by the event-bus integration tests (real sockets, real spool), and their own checks."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from runtime.config import PublishConfig, SecurityConfig, SpoolConfig
from runtime.events.publisher import EventPublisher, OutgoingEvent


def free_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def make_publisher(
    tmp_path: Path,
    *,
    pub: str | None = None,
    replay: str | None = "auto",
    spool_name: str = "spool.sqlite3",
    security: SecurityConfig | None = None,
    **publish_overrides: Any,
) -> EventPublisher:
    publish = PublishConfig(
        pub_endpoint=pub or free_endpoint(),
        replay_endpoint=free_endpoint() if replay == "auto" else replay,
        linger_ms=0,
        **{"heartbeat_s": 0.2, **publish_overrides},
    )
    return EventPublisher(
        line_id="L1",
        publish=publish,
        spool=SpoolConfig(path=tmp_path / spool_name, reserve_mb=0.5),
        security=security or SecurityConfig(),
    )


class PacedPublisher(threading.Thread):
    """Publishes defect events at `rate_hz` until `count` are out (or stop()); records every seq.

    When the spool's fsync is slower than the period, the events that are due go out together in
    one `publish_many` (one commit), so the rate holds on a busy disk too.
    """

    def __init__(
        self,
        publisher: EventPublisher,
        *,
        rate_hz: float,
        count: int,
        roll_id: str = "R1",
        pad_bytes: int = 0,
    ) -> None:
        super().__init__(name="paced-publisher", daemon=True)
        self.publisher = publisher
        self.period_s = 1.0 / rate_hz
        self.count = count
        self.roll_id = roll_id
        self.pad = "x" * pad_bytes
        self.seqs: list[int] = []
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Like a daemon stage draining its queue: what is due is published in one `publish_many`."""
        start = time.perf_counter()
        i = 0
        try:
            while i < self.count and not self._stop_event.is_set():
                due = min(self.count, int((time.perf_counter() - start) / self.period_s) + 1)
                if due <= i:
                    time.sleep(max(0.0, start + i * self.period_s - time.perf_counter()))
                    continue
                batch = [
                    OutgoingEvent("defect", {"class": "hole", "i": k, "pad": self.pad}, self.roll_id)
                    for k in range(i, min(due, i + 200))
                ]
                self.seqs.extend(self.publisher.publish_many(batch))
                i += len(batch)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def test_paced_publisher_publishes_at_the_asked_rate(tmp_path: Path) -> None:
    pub = make_publisher(tmp_path, replay=None)
    pub.start()
    try:
        paced = PacedPublisher(pub, rate_hz=500, count=250)
        t0 = time.monotonic()
        paced.start()
        paced.join(10)
        elapsed = time.monotonic() - t0
    finally:
        pub.close()
    assert paced.error is None
    assert paced.seqs == list(range(1, 251))
    assert 0.4 < elapsed < 3.0, elapsed
