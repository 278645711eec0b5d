"""ONNX Runtime backend: TensorRT EP, CUDA EP or CPU, in the order the config lists them.

ONNX Runtime silently falls back to the CPU when a GPU provider cannot load, so the providers
actually in use are read back from the session (`session.get_providers()`) and reported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from runtime.detect.base import prepare_batch, threshold_vector
from runtime.detect.decode import DecodeStats
from runtime.detect.manifest import ModelManifest
from runtime.detect.outputs import output_format
from runtime.detections import Detections
from runtime.errors import ModelError

log = logging.getLogger(__name__)

_TRT_OPTIONS: dict[str, object] = {"trt_fp16_enable": True, "trt_engine_cache_enable": True}


class OnnxDetector:
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

        self.manifest = manifest
        self.decode_stats = DecodeStats()
        self._thresholds = threshold_vector(manifest, thresholds or {})
        self._format = output_format(manifest)
        if unknown_threshold is not None and not self._format.open_set:
            raise ModelError(
                f"model.unknown_defects is on, but {manifest.name!r} has a {manifest.output.format!r} output, "
                "which has no class-agnostic channel; use a dense (mask) bundle or switch unknown_defects off"
            )
        self._unknown = unknown_threshold
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

    def warmup(self, runs: int) -> None:
        size = self.manifest.input.size_px
        batch = self._static_batch or 1
        dummy = np.full((batch, size, size), 128, np.uint8)
        for _ in range(runs):
            self.infer(dummy)

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

    def infer(self, tiles: np.ndarray) -> list[Detections]:
        if len(tiles) == 0:
            return []
        return self._format.decode(
            self.raw(tiles), self.manifest, self._thresholds, self.decode_stats, self._unknown
        )

    def close(self) -> None:
        self._session = None
