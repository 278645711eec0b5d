"""One open GenICam camera through harvesters: find it, configure it, grab owned images from it.

This module knows harvesters and GenApi; `runtime.sources.genicam.GenicamSource` supervises a
`CameraDevice` (watchdog, reconnects, line accounting) without knowing either. harvesters is
imported inside `HarvesterDevice.open`, never at import time.

Grabbing: harvesters' own fetch timeout restarts on every incomplete buffer (so a camera sending
only incomplete buffers never times out); `grab` uses `try_fetch` with its own deadline instead,
counts incomplete buffers through harvesters' INCOMPLETE_BUFFER event, converts the pixels (which
copies them) and re-queues the buffer before returning.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from runtime.config import GenicamSourceConfig, NodeValue
from runtime.errors import CameraError
from runtime.sources.pixel_formats import convert

log = logging.getLogger(__name__)

CTI_ENV = "LOOMSIGHT_CTI"

# GenApi EAccessMode values (NI, NA, WO, RO, RW).
_WRITE_ONLY, _READ_WRITE = 2, 4


def default_cti_path() -> Path | None:
    """$LOOMSIGHT_CTI, else the simulated cameras shipped in the genicam wheel (None if neither)."""
    env = os.environ.get(CTI_ENV)
    if env:
        return Path(env)
    try:
        import genicam
    except ImportError:
        return None
    return Path(genicam.__file__).parent / "viky.cti"


def resolve_cti_path(config: GenicamSourceConfig) -> Path:
    """The producer file to load; CameraError naming the path and how to set it when it is missing."""
    path = config.cti_path or default_cti_path()
    if path is None:
        raise CameraError(
            f"no GenTL producer (.cti) configured: set source.genicam.cti_path or ${CTI_ENV} "
            "(or install the genicam wheel for its simulated cameras)"
        )
    if not Path(path).is_file():
        origin = (
            "source.genicam.cti_path"
            if config.cti_path
            else (f"${CTI_ENV}" if os.environ.get(CTI_ENV) else "the genicam wheel")
        )
        raise CameraError(
            f"GenTL producer {path} (from {origin}) does not exist; install the camera vendor's "
            f"producer and point source.genicam.cti_path or ${CTI_ENV} at its .cti file"
        )
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise CameraError(f"GenTL producer {path}: cannot read it ({exc.strerror})") from None
    if not magic.startswith(_LIBRARY_MAGICS):
        raise CameraError(
            f"{path} is not a GenTL producer: a .cti file is a shared library (ELF, PE or Mach-O) and this "
            f"file starts with {magic!r}; point source.genicam.cti_path or ${CTI_ENV} at the camera "
            "vendor's .cti file (nothing about the camera, its power or its cabling was checked yet)"
        )
    return Path(path)


_LIBRARY_MAGICS = (b"\x7fELF", b"MZ", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe")


@dataclass(frozen=True)
class DeviceDescription:
    """What a producer says about one camera, for selection and for messages."""

    index: int
    id: str | None
    serial_number: str | None
    user_defined_name: str | None
    vendor: str | None
    model: str | None

    @property
    def label(self) -> str:
        """Short name for frames and status: the serial number, else the device id, else the index."""
        return self.serial_number or self.id or f"#{self.index}"

    def __str__(self) -> str:
        return (
            f"{self.vendor or '?'} {self.model or '?'} (serial_number={self.serial_number!r}, "
            f"device_id={self.id!r}, user_defined_name={self.user_defined_name!r})"
        )


@dataclass(frozen=True)
class Grab:
    """One complete buffer, already copied out of the driver.

    `pixels` is None when the buffer could not be used (`error` says why: wrong size, unknown
    pixel format); the camera is alive nevertheless.
    """

    pixels: np.ndarray | None
    width: int
    height: int
    pixel_format: str
    frame_id: int | None
    device_timestamp: int | None
    error: str | None = None


class CameraDevice(Protocol):
    """An opened, acquiring camera as `GenicamSource` sees it."""

    @property
    def name(self) -> str:
        """The camera in words, for messages."""
        ...

    @property
    def label(self) -> str:
        """A short, stable name (serial number) for frames and status."""
        ...

    @property
    def incomplete(self) -> int:
        """Incomplete buffers discarded since the device was opened."""
        ...

    def grab(self, timeout_s: float) -> Grab | None:
        """The next complete buffer within `timeout_s`, or None; raises when the device is gone."""
        ...

    def close(self) -> None:
        """Stop acquisition and release the device; never raises."""
        ...


def _safe(obj: Any, attr: str) -> Any:
    try:
        value = getattr(obj, attr)
    except Exception:  # GenTL NotAvailableException for optional fields
        return None
    return value if value not in ("", None) else None


def describe_devices(device_info_list: list[Any]) -> list[DeviceDescription]:
    return [
        DeviceDescription(
            index=i,
            id=_safe(info, "id_"),
            serial_number=_safe(info, "serial_number"),
            user_defined_name=_safe(info, "user_defined_name"),
            vendor=_safe(info, "vendor"),
            model=_safe(info, "model"),
        )
        for i, info in enumerate(device_info_list)
    ]


def select_device(
    devices: list[DeviceDescription], config: GenicamSourceConfig, cti: Path
) -> DeviceDescription:
    """The one camera the config names (every given selector must match)."""
    if not devices:
        raise CameraError(
            f"no GenICam camera found through {cti}; check power, cabling and network/USB3 setup "
            "(the vendor's viewer should see the camera)"
        )
    wanted = {
        "serial_number": config.serial_number,
        "device_id": config.device_id,
        "user_defined_name": config.user_defined_name,
    }
    wanted = {k: v for k, v in wanted.items() if v is not None}
    if not wanted:
        if len(devices) > 1:
            log.warning(
                "no camera selector configured; using the first of %d cameras: %s (set "
                "source.genicam.serial_number to choose)",
                len(devices),
                devices[0],
            )
        return devices[0]

    def matches(d: DeviceDescription) -> bool:
        have = {"serial_number": d.serial_number, "device_id": d.id, "user_defined_name": d.user_defined_name}
        return all(have[k] == v for k, v in wanted.items())

    found = [d for d in devices if matches(d)]
    if not found:
        asked = ", ".join(f"{k}={v!r}" for k, v in wanted.items())
        listing = "; ".join(str(d) for d in devices)
        raise CameraError(f"no camera with {asked} through {cti}; cameras found: {listing}")
    return found[0]


def _allowed(node: Any) -> str:
    """What a node accepts, in words (best effort)."""
    kind = type(node).__name__
    try:
        if kind == "IEnumeration":
            return "one of " + ", ".join(str(s) for s in node.symbolics)
        if kind in ("IInteger", "IFloat"):
            text = f"{node.min} .. {node.max}"
            inc = getattr(node, "inc", None) if kind == "IInteger" else None
            return text + (f" in steps of {inc}" if inc not in (None, 1) else "")
        if kind == "IBoolean":
            return "true or false"
        if kind == "ICommand":
            return "true (executes the command)"
        if kind == "IString":
            return "a string"
    except Exception:
        return "(range not available)"
    return f"a {kind} value"


def _coerce(node: Any, value: NodeValue) -> Any:
    kind = type(node).__name__
    if kind == "IInteger":
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise TypeError(f"expected an integer, got {value!r}")
        return int(value)
    if kind == "IFloat":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if kind == "IBoolean":
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if kind in ("IEnumeration", "IString"):
        return str(value)
    return value


def apply_nodes(node_map: Any, nodes: dict[str, NodeValue], device: str) -> None:
    """Write `nodes` in order; CameraError naming the node, the value and what it allows."""
    for name, value in nodes.items():
        if not node_map.has_node(name):
            names = [n.node.name for n in node_map.nodes]
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise CameraError(
                f"GenICam node {name!r} does not exist on {device}{hint}; "
                f"remove it from [source.genicam.nodes] or check the camera's feature names"
            )
        node = node_map.get_node(name)
        kind = type(node).__name__
        try:
            access = node.node.get_access_mode()
        except Exception:
            access = _READ_WRITE
        if access not in (_WRITE_ONLY, _READ_WRITE):
            raise CameraError(
                f"GenICam node {name!r} on {device} is not writable now (access mode {access}); "
                f"cannot set it to {value!r}"
            )
        try:
            if kind == "ICommand":
                if value is not True:
                    raise TypeError(f"a command node takes true, got {value!r}")
                node.execute()
            else:
                node.value = _coerce(node, value)
        except Exception as exc:
            detail = re.sub(r"\s*:\s*\w+Exception thrown in node.*$", "", str(exc), flags=re.S).strip()
            raise CameraError(
                f"GenICam node {name!r} on {device} rejected {value!r}: {detail or type(exc).__name__}; "
                f"allowed: {_allowed(node)}"
            ) from None
        log.info("camera %s: %s = %r", device, name, value)


def _read_node(node_map: Any, name: str) -> Any:
    try:
        return node_map.get_node(name).value if node_map.has_node(name) else None
    except Exception:
        return None


class HarvesterDevice:
    """A camera opened through harvesters (implements `CameraDevice`)."""

    def __init__(self, harvester: Any, acquirer: Any, description: DeviceDescription, output: str) -> None:
        self._harvester = harvester
        self._acquirer = acquirer
        self.description = description
        self._output = output
        self._incomplete = 0
        self._closed = False

    @classmethod
    def open(cls, config: GenicamSourceConfig) -> HarvesterDevice:
        """Load the producer, pick the camera, apply `config.nodes`, start acquisition."""
        cti = resolve_cti_path(config)
        from harvesters.core import Callback, Harvester

        harvester = Harvester()
        acquirer = None
        try:
            harvester.add_file(str(cti))
            harvester.update()
            devices = describe_devices(harvester.device_info_list)
            chosen = select_device(devices, config, cti)
            try:
                acquirer = harvester.create(chosen.index)
            except Exception as exc:
                raise CameraError(
                    f"cannot open camera {chosen}: {exc}; is another application (a viewer, a second "
                    "daemon) using it?"
                ) from None
            name = str(chosen)
            apply_nodes(acquirer.remote_device.node_map, dict(config.nodes), name)
            acquirer.num_buffers = config.num_buffers
            device = cls(harvester, acquirer, chosen, config.output)

            class _CountIncomplete(Callback):
                def emit(self, context: object = None) -> None:
                    device._incomplete += 1

            acquirer.add_callback(acquirer.Events.INCOMPLETE_BUFFER, _CountIncomplete())
            acquirer.start()
        except CameraError:
            _teardown(harvester, acquirer)
            raise
        except Exception as exc:
            _teardown(harvester, acquirer)
            raise CameraError(f"cannot start the camera through {cti}: {type(exc).__name__}: {exc}") from None
        node_map = acquirer.remote_device.node_map
        log.info(
            "camera %s acquiring: %sx%s %s",
            name,
            _read_node(node_map, "Width"),
            _read_node(node_map, "Height"),
            _read_node(node_map, "PixelFormat"),
        )
        return device

    @property
    def name(self) -> str:
        return str(self.description)

    @property
    def label(self) -> str:
        return self.description.label

    @property
    def acquirer(self) -> Any:
        """The harvesters ImageAcquirer (tests destroy it to simulate an unplugged cable)."""
        return self._acquirer

    @property
    def node_map(self) -> Any:
        return self._acquirer.remote_device.node_map

    @property
    def incomplete(self) -> int:
        return self._incomplete

    def grab(self, timeout_s: float) -> Grab | None:
        if self._closed:
            raise CameraError(f"camera {self.name} is closed")
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            buffer = self._acquirer.try_fetch(timeout=remaining)
            if buffer is None:  # timed out, or an incomplete buffer was discarded (and counted)
                continue
            try:
                return self._copy_out(buffer)
            finally:
                buffer.queue()

    def _copy_out(self, buffer: Any) -> Grab:
        frame_id = _safe(buffer, "frame_id")
        stamp = _safe(buffer, "timestamp_ns")
        payload = buffer.payload
        components = getattr(payload, "components", None) if payload is not None else None
        if not components:
            return Grab(None, 0, 0, "", frame_id, stamp, error="buffer carries no image component")
        comp = components[0]
        width, height, fmt = int(comp.width), int(comp.height), str(comp.data_format)
        try:
            pixels = convert(comp.data, width, height, fmt, "bgr" if self._output == "bgr" else "gray")
        except CameraError as exc:
            return Grab(None, width, height, fmt, frame_id, stamp, error=str(exc))
        return Grab(pixels, width, height, fmt, frame_id, stamp)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _teardown(self._harvester, self._acquirer)


def _teardown(harvester: Any, acquirer: Any) -> None:
    """Stop, destroy and reset, logging (never raising) what fails: the device may already be gone."""
    if acquirer is not None:
        for step in ("stop", "destroy"):
            try:
                getattr(acquirer, step)()
            except Exception as exc:
                log.warning("camera teardown: %s failed: %s: %s", step, type(exc).__name__, exc)
    try:
        harvester.reset()
    except Exception as exc:
        log.warning("camera teardown: harvester reset failed: %s: %s", type(exc).__name__, exc)
