"""Small ZeroMQ helpers shared by the publisher, the replay server and the subscriber."""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from runtime.errors import ConfigError

log = logging.getLogger(__name__)


def bind(socket: zmq.Socket[Any], endpoint: str, config_key: str) -> str:
    """Bind and return the resolved endpoint; a clear ConfigError for a taken or invalid endpoint."""
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise ConfigError(
                f"{config_key} = {endpoint!r}: address already in use (another loomsight or program listens "
                "there); stop it or choose another port"
            ) from None
        raise ConfigError(
            f"{config_key} = {endpoint!r}: cannot bind ({exc}); use e.g. 'tcp://127.0.0.1:5556' or 'ipc:///run/x'"
        ) from None
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def rebind(socket: zmq.Socket[Any], endpoint: str, timeout_s: float = 2.0) -> bool:
    """Unbind (which closes every connection accepted there) and bind the same endpoint again.

    Clients reconnect by themselves and handshake again, so ZAP sees each of them anew.
    """
    try:
        socket.unbind(endpoint)
    except zmq.ZMQError as exc:
        log.warning("unbind %s: %s", endpoint, exc)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.bind(endpoint)
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                log.error("cannot bind %s again after a session reset: %s", endpoint, exc)
                return False
            time.sleep(0.005)


def set_keepalive(socket: zmq.Socket[Any], idle_s: int = 10) -> None:
    """TCP keepalive, so a half-open connection (cable pulled, peer powered off) is noticed.

    ZMTP heartbeats (ZMQ_HEARTBEAT_IVL) are deliberately NOT used: with a slow reader whose
    receive queue is full, libzmq 4.3 aborts the whole process (`Assertion failed: !_io_error`,
    zeromq/libzmq#3937, #4364, #4767). Kernel keepalive has no such interaction; liveness of the
    publisher itself is our own heartbeat events.
    """
    socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
    socket.setsockopt(zmq.TCP_KEEPALIVE_IDLE, idle_s)
    socket.setsockopt(zmq.TCP_KEEPALIVE_INTVL, max(1, idle_s // 2))
    socket.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
