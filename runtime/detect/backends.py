"""Detector backends by name: `model.backend` in the config picks one.

A backend is one module with a `BaseDetector` subclass (runtime/detect/base.py) and an opener
`open_X(bundle_dir, config) -> Detector` that reads the bundle files it needs, checks what it can
run, and builds the detector; registering it is one line below ("name": "module:opener"). The
module is imported only when a config names it, so a backend's libraries (TensorRT, a vendor SDK)
stay optional. docs/design.md walks through adding one.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from runtime.config import ModelConfig
    from runtime.detect.base import Detector

BACKENDS: dict[str, str] = {
    "onnxruntime": "runtime.detect.onnx_backend:open_onnx",
    "tensorrt": "runtime.detect.tensorrt_backend:open_tensorrt",
}


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(
            f"model.backend = {name!r} is not a detector backend; choose one of {', '.join(BACKENDS)}"
        )
    return name


def open_backend(name: str, bundle_dir: Path, config: ModelConfig) -> Detector:
    """The detector backend `name` opened on the bundle at `bundle_dir`."""
    module_name, _, opener = BACKENDS[check_backend_name(name)].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"detector backend {name!r} cannot be imported ({exc}); install its extra") from None
    detector: Detector = getattr(module, opener)(Path(bundle_dir), config)
    return detector
