"""ONNX Runtime backend: TensorRT EP, CUDA EP or CPU, in the order the config lists them.

ONNX Runtime silently falls back to the CPU when a GPU provider cannot load, so the providers
actually in use are read back from the session (`session.get_providers()`) and reported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.detect.base import BaseDetector, prepare_batch
from runtime.detect.manifest import ModelManifest
from runtime.errors import ModelError

if TYPE_CHECKING:
    from runtime.config import ModelConfig
    from runtime.detect.base import Detector

log = logging.getLogger(__name__)

_TRT_OPTIONS: dict[str, object] = {"trt_fp16_enable": True, "trt_engine_cache_enable": True}


def open_onnx(bundle_dir: Path, config: ModelConfig) -> Detector:
    """The registered opener (runtime/detect/backends.py): the bundle's model.onnx on `config.providers`."""
    from runtime.detect.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
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
    return det


class OnnxDetector(BaseDetector):
    def __init__(
        self,
        onnx_path: Path,
        manifest: ModelManifest,
        *,
        providers: list[str] | None = None,
        thresholds: dict[str, float] | None = None,
        intra_op_threads: int = 0,
        intra_op_spinning: bool = True,
        trt_cache_dir: Path | None = None,
        unknown_threshold: float | None = None,
    ) -> None:
        import onnxruntime as ort

        super().__init__(manifest, thresholds=thresholds, unknown_threshold=unknown_threshold)
        requested = providers or ["CPUExecutionProvider"]
        available = set(ort.get_available_providers())
        chosen: list[Any] = []
        for name in requested:
            if name not in available:
                log.warning(
                    "ONNX Runtime provider %s is not available here (available: %s)", name, sorted(available)
                )
                continue
            if name == "TensorrtExecutionProvider":
                opts = dict(_TRT_OPTIONS)
                if trt_cache_dir is not None:
                    opts["trt_engine_cache_path"] = str(trt_cache_dir)
                chosen.append((name, opts))
            else:
                chosen.append(name)
        if not chosen:
            chosen = ["CPUExecutionProvider"]
        so = ort.SessionOptions()
        if intra_op_threads:
            so.intra_op_num_threads = intra_op_threads
        # a spinning worker keeps a core busy between inferences (ORT's default); off frees it
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if intra_op_spinning else "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(onnx_path), sess_options=so, providers=chosen)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            raise ModelError(
                f"ONNX Runtime cannot load {onnx_path}: {type(exc).__name__}: {exc}. "
                "The file is corrupt or not an ONNX model; re-export the bundle"
            ) from None
        self._providers = list(self._session.get_providers())
        wanted_gpu = [p for p in requested if p != "CPUExecutionProvider"]
        if wanted_gpu and self._providers == ["CPUExecutionProvider"]:
            log.warning("requested %s but ONNX Runtime runs on the CPU only", wanted_gpu)
        self._check_signature(onnx_path)

    def _check_signature(self, onnx_path: Path) -> None:
        spec = self.manifest.input
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{onnx_path} has {len(inputs)} inputs; a loomsight model has exactly one")
        shape = list(inputs[0].shape)
        expected = [spec.batch, spec.channels, spec.size_px, spec.size_px]
        if len(shape) != 4 or any(
            isinstance(got, int) and want is not None and got != want
            for got, want in zip(shape, expected, strict=False)
        ):
            raise ModelError(
                f"{onnx_path} input shape is {shape} but the manifest says "
                f"[{spec.batch or 'batch'}, {spec.channels}, {spec.size_px}, {spec.size_px}]; "
                "the bundle's files do not belong together"
            )
        self._input_name = inputs[0].name
        self._static_batch = shape[0] if isinstance(shape[0], int) else None
        self._format.check(list(outputs[0].shape), self.manifest, str(onnx_path))
        self._output_name = outputs[0].name

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    @property
    def static_batch(self) -> int | None:
        return self._static_batch

    @property
    def warmup_batch(self) -> int:
        return self._static_batch or 1

    def raw(self, tiles: np.ndarray) -> np.ndarray:
        """The model's raw output for a batch of uint8 tiles (padded to a static batch if needed)."""
        n = len(tiles)
        x = prepare_batch(tiles, self.manifest.input)
        b = self._static_batch
        if b is not None and n != b:
            if n > b:
                return np.concatenate([self.raw(tiles[i : i + b]) for i in range(0, n, b)])
            x = np.concatenate([x, np.zeros((b - n, *x.shape[1:]), x.dtype)])
        out = self._session.run([self._output_name], {self._input_name: x})[0]
        return np.asarray(out)[:n]

    def close(self) -> None:
        self._session = None
