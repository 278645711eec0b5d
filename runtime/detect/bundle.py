"""Open a model bundle and build the detector the config asks for."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from runtime.config import ModelConfig
from runtime.detect.base import Detector
from runtime.detect.manifest import ModelManifest, read_manifest, verify_files
from runtime.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelBundle:
    path: Path
    manifest: ModelManifest

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def engine_path(self) -> Path:
        return self.path / "model.engine"

    @property
    def has_engine(self) -> bool:
        return "model.engine" in self.manifest.sha256 and self.engine_path.is_file()


def load_bundle(path: Path | str, *, verify: list[str] | None = None) -> ModelBundle:
    """Read the manifest and check the sha256 of the files that will be loaded (default: model.onnx)."""
    bundle_dir = Path(path)
    manifest = read_manifest(bundle_dir)
    verify_files(bundle_dir, manifest, verify if verify is not None else ["model.onnx"])
    return ModelBundle(bundle_dir, manifest)


def open_detector(config: ModelConfig, *, bundle_path: Path | None = None) -> Detector:
    """The detector for `config`: the backend `model.backend` names (runtime/detect/backends.py)."""
    from runtime.detect.backends import open_backend

    det = open_backend(config.backend, Path(bundle_path or config.bundle), config)
    log.info("model %s (%s output) on %s", det.manifest.name, det.manifest.output.format, det.providers)
    return det


__all__ = ["ModelBundle", "ModelError", "load_bundle", "open_detector"]
