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
    """The detector for `config`: ONNX Runtime (any provider) or a TensorRT engine."""
    path = bundle_path or config.bundle
    if config.backend == "tensorrt":
        bundle = load_bundle(path, verify=["model.engine"])
        if config.unknown_defects.enabled:
            raise ModelError("model.unknown_defects needs a dense bundle on the onnxruntime backend")
        if bundle.manifest.output.format != "rtdetr":
            raise ModelError(
                f"model bundle {path} has a {bundle.manifest.output.format!r} output; the TensorRT engine "
                'backend reads RT-DETR bundles only. Set model.backend = "onnx" (with the TensorRT or '
                "CUDA execution provider in model.providers for a GPU)"
            )
        from runtime.detect.tensorrt_backend import TensorRTDetector

        return TensorRTDetector(bundle.engine_path, bundle.manifest, thresholds=dict(config.thresholds))
    bundle = load_bundle(path)
    from runtime.detect.onnx_backend import OnnxDetector

    det = OnnxDetector(
        bundle.onnx_path,
        bundle.manifest,
        providers=list(config.providers),
        thresholds=dict(config.thresholds),
        intra_op_threads=config.intra_op_threads,
        intra_op_spinning=config.intra_op_spinning,
        trt_cache_dir=bundle.path / "trt_cache",
        unknown_threshold=config.unknown_defects.threshold if config.unknown_defects.enabled else None,
    )
    if det.static_batch is not None and det.static_batch != config.batch_size:
        log.info(
            "model has a static batch of %d; config batch_size %d is regrouped",
            det.static_batch,
            config.batch_size,
        )
    log.info("model %s (%s output) on %s", bundle.manifest.name, bundle.manifest.output.format, det.providers)
    return det


__all__ = ["ModelBundle", "ModelError", "load_bundle", "open_detector"]
