"""Shared fixtures: generated data only, loopback sockets, skips that say why."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Ultralytics must never touch the network nor write settings outside the project.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(ROOT / ".yolo"))


def free_tcp_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def loopback_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_tcp_port()}"


def _cuda_available() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (train extra)"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU on this machine"
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    if gpu_items:
        ok, why = _cuda_available()
        if not ok:
            for item in gpu_items:
                item.add_marker(pytest.mark.skip(reason=f"gpu test skipped: {why}"))


@pytest.fixture(scope="session")
def viky_cti() -> Path:
    """The GenTL producer for camera tests: $LOOMSIGHT_CTI, else the genicam wheel's simulated cameras."""
    env = os.environ.get("LOOMSIGHT_CTI")
    if env:
        return Path(env)
    try:
        import genicam
    except ImportError:
        pytest.skip("genicam wheel not installed")
    cti = Path(genicam.__file__).parent / "viky.cti"
    if not cti.is_file():
        pytest.skip(f"no viky.cti in {cti.parent}")
    return cti
