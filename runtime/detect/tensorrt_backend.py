"""TensorRT backend: a serialized engine (`model.engine`, built by `loomsight engine`) on one GPU.

TensorRT 10 Python API: `trt.Runtime.deserialize_cuda_engine` (which returns None, not an
exception, for a corrupt engine or one built for another GPU / TensorRT version), the engine's
named I/O tensors checked against the manifest, an execution context with the input shape set
per batch, `execute_async_v3` on a CUDA stream. Buffers come from cuda-python
(`cuda.bindings.runtime`, or `cuda.cudart` in older releases): device memory for the largest batch
of the engine's optimisation profile and page-locked host memory for the copies; never torch.

Importing this module needs neither TensorRT nor cuda-python: both are imported by the detector.

NOT EXECUTED HERE: TensorRT and a CUDA GPU were not available where this was written. The logic
(deserialization failure, I/O checks, batching, buffer bookkeeping, decoding) is tested with fake
`tensorrt` and cuda-python modules in tests/unit/test_tensorrt_logic.py; the calls follow the
documented APIs but have not run against the real libraries.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.detect.base import BaseDetector, prepare_batch
from runtime.detect.manifest import ModelManifest, RtdetrOutput
from runtime.errors import ModelError

if TYPE_CHECKING:
    from runtime.config import ModelConfig
    from runtime.detect.base import Detector

log = logging.getLogger(__name__)

_INSTALL_HINT = (
    "install the 'tensorrt' extra (pip install 'loomsight[tensorrt]' from NVIDIA's index, or JetPack's "
    "TensorRT) or set model.backend = 'onnxruntime'"
)


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise ModelError(
                f"the TensorRT backend needs cuda-python, which is not installed: {_INSTALL_HINT}"
            ) from None
    return cudart


class _Cuda:
    """The few cuda-python runtime calls we make, each checked."""

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart

    def call(self, what: str, result: Any) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            try:
                text = self.rt.cudaGetErrorString(err)[1]
                text = text.decode() if isinstance(text, bytes) else str(text)
            except Exception:
                text = str(err)
            raise ModelError(f"CUDA error in {what}: {text}")
        return values[0] if len(values) == 1 else tuple(values)


def open_tensorrt(bundle_dir: Path, config: ModelConfig) -> Detector:
    """The registered opener (runtime/detect/backends.py): the bundle's model.engine, RT-DETR bundles only."""
    from runtime.detect.bundle import load_bundle

    bundle = load_bundle(bundle_dir, verify=["model.engine"])
    if config.unknown_defects.enabled:
        raise ModelError("model.unknown_defects needs a dense bundle on the onnxruntime backend")
    if bundle.manifest.output.format != "rtdetr":
        raise ModelError(
            f"model bundle {bundle_dir} has a {bundle.manifest.output.format!r} output; the TensorRT engine "
            'backend reads RT-DETR bundles only. Set model.backend = "onnxruntime" (with the TensorRT or '
            "CUDA execution provider in model.providers for a GPU)"
        )
    return TensorRTDetector(bundle.engine_path, bundle.manifest, thresholds=dict(config.thresholds))


class TensorRTDetector(BaseDetector):
    """A `BaseDetector` (runtime/detect/base.py) on a TensorRT engine."""

    def __init__(
        self,
        engine_path: Path,
        manifest: ModelManifest,
        *,
        thresholds: dict[str, float] | None = None,
        device: int = 0,
    ) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise ModelError(
                f"model.backend 'tensorrt' needs TensorRT, which is not installed: {_INSTALL_HINT}"
            ) from None
        super().__init__(manifest, thresholds=thresholds)
        self._trt = trt
        self._cuda = _Cuda(_import_cudart())
        self._closed = False
        self._device_buffers: list[int] = []
        self._host_buffers: list[int] = []
        self._stream: Any = None
        self._cuda.call("cudaSetDevice", self._cuda.rt.cudaSetDevice(device))

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engine
        try:
            blob = Path(engine_path).read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read the TensorRT engine {engine_path}: {exc}") from None
        engine = self._runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise ModelError(
                f"TensorRT {trt.__version__} could not deserialize {engine_path}: the engine is corrupt or was "
                f"built for another GPU or TensorRT version. Rebuild it on this machine with "
                f"`loomsight engine {Path(engine_path).parent}`"
            )
        self._engine = engine
        self._check_io(engine, Path(engine_path))
        context = engine.create_execution_context()
        if context is None:
            raise ModelError(
                f"TensorRT could not create an execution context for {engine_path} (out of GPU memory?)"
            )
        self._context = context
        try:
            self._allocate()
        except BaseException:
            self.close()
            raise

    # ---- set-up -------------------------------------------------------------------------------

    def _check_io(self, engine: Any, path: Path) -> None:
        trt = self._trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        spec, out_spec = self.manifest.input, self.manifest.output
        if not isinstance(out_spec, RtdetrOutput):
            raise ModelError(
                f"{path}: the TensorRT engine backend reads RT-DETR bundles; this one has a "
                f'{out_spec.format!r} output. Use model.backend = "onnx" with the TensorRT execution provider'
            )
        if inputs != [spec.name] or outputs != [out_spec.name]:
            raise ModelError(
                f"{path} has inputs {inputs} and outputs {outputs}; the manifest says {[spec.name]} -> "
                f"{[out_spec.name]}. The engine does not belong to this bundle: rebuild it with `loomsight engine`"
            )
        self._in_name, self._out_name = spec.name, out_spec.name
        in_shape = tuple(int(d) for d in engine.get_tensor_shape(self._in_name))
        n_cls = len(self.manifest.classes)
        want = (spec.channels, spec.size_px, spec.size_px)
        if len(in_shape) != 4 or in_shape[1:] != want:
            raise ModelError(
                f"{path} input {self._in_name!r} is {in_shape}; the manifest needs (batch, {want[0]}, {want[1]}, {want[2]})"
            )
        out_shape = tuple(int(d) for d in engine.get_tensor_shape(self._out_name))
        if len(out_shape) != 3 or out_shape[2] != 4 + n_cls or out_shape[1] not in (-1, out_spec.num_queries):
            raise ModelError(
                f"{path} output {self._out_name!r} is {out_shape}; the manifest's {n_cls} classes and "
                f"{out_spec.num_queries} queries need (batch, {out_spec.num_queries}, {4 + n_cls})"
            )
        if in_shape[0] == -1:
            lo, _, hi = engine.get_tensor_profile_shape(self._in_name, 0)
            self._min_batch, self._max_batch = int(lo[0]), int(hi[0])
            self._static_batch: int | None = None
        else:
            self._min_batch = self._max_batch = in_shape[0]
            self._static_batch = in_shape[0]
        self._in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._in_name)))
        self._out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._out_name)))
        self._num_queries = out_spec.num_queries
        self._out_row = 4 + n_cls

    def _host_array(self, count: int, dtype: np.dtype) -> np.ndarray:
        ptr = self._cuda.call("cudaMallocHost", self._cuda.rt.cudaMallocHost(count * dtype.itemsize))
        self._host_buffers.append(int(ptr))
        c_type = np.ctypeslib.as_ctypes_type(dtype) if dtype != np.float16 else ctypes.c_uint16
        arr = np.ctypeslib.as_array(ctypes.cast(int(ptr), ctypes.POINTER(c_type)), (count,))
        return arr.view(dtype)

    def _device_alloc(self, nbytes: int) -> int:
        ptr = int(self._cuda.call("cudaMalloc", self._cuda.rt.cudaMalloc(nbytes)))
        self._device_buffers.append(ptr)
        return ptr

    def _allocate(self) -> None:
        s = self.manifest.input.size_px
        in_count = self._max_batch * self.manifest.input.channels * s * s
        out_count = self._max_batch * self._num_queries * self._out_row
        self._stream = self._cuda.call("cudaStreamCreate", self._cuda.rt.cudaStreamCreate())
        self._host_in = self._host_array(in_count, self._in_dtype)
        self._host_out = self._host_array(out_count, self._out_dtype)
        self._dev_in = self._device_alloc(in_count * self._in_dtype.itemsize)
        self._dev_out = self._device_alloc(out_count * self._out_dtype.itemsize)
        ok_in = self._context.set_tensor_address(self._in_name, self._dev_in)
        ok_out = self._context.set_tensor_address(self._out_name, self._dev_out)
        if ok_in is False or ok_out is False:
            raise ModelError("TensorRT refused the I/O buffer addresses")
        log.info(
            "TensorRT %s engine: batch %d..%d, input %s, output %s",
            self._trt.__version__,
            self._min_batch,
            self._max_batch,
            self._in_dtype,
            self._out_dtype,
        )

    # ---- BaseDetector ----------------------------------------------------------------------

    @property
    def providers(self) -> list[str]:
        return [f"TensorRT {self._trt.__version__}"]

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def warmup_batch(self) -> int:
        return self._max_batch

    def raw(self, tiles: np.ndarray) -> np.ndarray:
        """Raw (N, queries, 4 + classes) output for N uint8 tiles, in chunks of the engine's largest batch."""
        if self._closed:
            raise ModelError("the TensorRT detector is closed")
        n = len(tiles)
        if n > self._max_batch:
            return np.concatenate(
                [self.raw(tiles[i : i + self._max_batch]) for i in range(0, n, self._max_batch)]
            )
        x = prepare_batch(tiles, self.manifest.input)
        b = max(n, self._min_batch)
        if b != n:  # static batch, or a profile whose minimum is above n: pad with zeros
            x = np.concatenate([x, np.zeros((b - n, *x.shape[1:]), x.dtype)])
        x = np.ascontiguousarray(x, dtype=self._in_dtype)
        rt, call = self._cuda.rt, self._cuda.call
        if self._static_batch is None and not self._context.set_input_shape(self._in_name, tuple(x.shape)):
            raise ModelError(
                f"TensorRT rejected input shape {tuple(x.shape)} (engine batch {self._min_batch}..{self._max_batch})"
            )
        out_shape = (b, self._num_queries, self._out_row)
        self._host_in[: x.size] = x.ravel()
        out_count = b * self._num_queries * self._out_row
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        call(
            "cudaMemcpyAsync",
            rt.cudaMemcpyAsync(self._dev_in, self._host_in.ctypes.data, x.nbytes, h2d, self._stream),
        )
        if not self._context.execute_async_v3(int(self._stream)):
            raise ModelError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        nbytes = out_count * self._out_dtype.itemsize
        call(
            "cudaMemcpyAsync",
            rt.cudaMemcpyAsync(self._host_out.ctypes.data, self._dev_out, nbytes, d2h, self._stream),
        )
        call("cudaStreamSynchronize", rt.cudaStreamSynchronize(self._stream))
        out = self._host_out[:out_count].reshape(out_shape).astype(np.float32)  # a copy: buffers are reused
        return out[:n]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        rt = self._cuda.rt
        for ptr in self._device_buffers:
            rt.cudaFree(ptr)
        for ptr in self._host_buffers:
            rt.cudaFreeHost(ptr)
        self._device_buffers.clear()
        self._host_buffers.clear()
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None
        self._engine = None
