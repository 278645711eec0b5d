"""TensorRT engine build and the TensorRT detector, with fake `tensorrt` and cuda-python modules.

TensorRT cannot be installed here, so these tests check our logic around it: parse errors by
index, the optimisation profile and FP16 choice, the timing cache, the manifest update, a
deserialization that returns None, I/O checks, batching through device buffers and decoding. The
fakes follow the TensorRT 10 / cuda-python APIs; "device memory" is host memory, copies are
memmoves, and the fake engine computes the darkness detector of tests/helpers/tiny_models.py.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.config import ModelConfig
from runtime.detect.bundle import load_bundle, open_detector
from runtime.errors import ModelError
from tests.helpers.tiny_models import write_tiny_bundle

MAGIC = b"FAKE-TRT-ENGINE\n"
NUM_QUERIES = 5


# ---- fake cuda-python -----------------------------------------------------------------------------


class _CudaError(int):
    pass


class FakeCudart(types.ModuleType):
    """cuda.bindings.runtime: every call returns (err, *values); memory is ctypes buffers."""

    class cudaError_t:
        cudaSuccess = _CudaError(0)
        cudaErrorMemoryAllocation = _CudaError(2)

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.buffers: dict[int, Any] = {}
        self.freed: list[int] = []
        self.streams = 0
        self.fail_malloc = False

    def _alloc(self, nbytes: int) -> tuple[_CudaError, int]:
        if self.fail_malloc:
            return self.cudaError_t.cudaErrorMemoryAllocation, 0
        buf = ctypes.create_string_buffer(max(nbytes, 1))
        self.buffers[ctypes.addressof(buf)] = buf
        return self.cudaError_t.cudaSuccess, ctypes.addressof(buf)

    def cudaMalloc(self, nbytes: int) -> tuple[_CudaError, int]:
        return self._alloc(nbytes)

    def cudaMallocHost(self, nbytes: int) -> tuple[_CudaError, int]:
        return self._alloc(nbytes)

    def cudaFree(self, ptr: int) -> tuple[_CudaError]:
        self.freed.append(ptr)
        self.buffers.pop(ptr)
        return (self.cudaError_t.cudaSuccess,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: int, stream: Any) -> tuple[_CudaError]:
        assert isinstance(dst, int) and isinstance(src, int)
        ctypes.memmove(dst, src, count)
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamCreate(self) -> tuple[_CudaError, int]:
        self.streams += 1
        return self.cudaError_t.cudaSuccess, 4242

    def cudaStreamSynchronize(self, stream: Any) -> tuple[_CudaError]:
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamDestroy(self, stream: Any) -> tuple[_CudaError]:
        self.streams -= 1
        return (self.cudaError_t.cudaSuccess,)

    def cudaSetDevice(self, device: int) -> tuple[_CudaError]:
        return (self.cudaError_t.cudaSuccess,)

    def cudaGetErrorString(self, err: int) -> tuple[_CudaError, bytes]:
        return self.cudaError_t.cudaSuccess, b"out of memory" if err == 2 else b"error"

    def cudaGetDeviceProperties(self, device: int) -> tuple[_CudaError, Any]:
        return self.cudaError_t.cudaSuccess, types.SimpleNamespace(name=b"Fake GPU 9000\0\0")


# ---- fake tensorrt ----------------------------------------------------------------------------------


class ParserError:
    def __init__(self, desc: str, node: int, name: str, op: str) -> None:
        self._d, self._n, self._name, self._op = desc, node, name, op

    def desc(self) -> str:
        return self._d

    def node(self) -> int:
        return self._n

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op

    def code(self) -> str:
        return "ErrorCode.UNSUPPORTED_NODE"


class FakeTensorRT(types.ModuleType):
    __version__ = "10.3.0"

    def __init__(self) -> None:
        super().__init__("tensorrt")
        self.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # found by the CLI's extra check
        self.state: dict[str, Any] = {"flags": set(), "profiles": [], "cache_in": None, "pool": None}

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return dtype


def make_fake_trt(*, parse_errors: list[ParserError] | None = None, fast_fp16: bool = True) -> FakeTensorRT:
    trt = FakeTensorRT()
    state = trt.state

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    class TensorIOMode:
        INPUT = "input"
        OUTPUT = "output"

    class DataType:
        FLOAT = np.float32
        HALF = np.float16

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class BuilderFlag:
        FP16 = "fp16"

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self) -> None:
            self.inputs: list[Tensor] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.errors = list(parse_errors or [])

        def parse_from_file(self, path: str) -> bool:
            if self.errors:
                return False
            import onnx

            proto = onnx.load(path)
            for vi in proto.graph.input:
                dims = tuple(d.dim_value if d.dim_value else -1 for d in vi.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(vi.name, dims))
            out = proto.graph.output[0].type.tensor_type.shape.dim
            state["onnx_out"] = tuple(d.dim_value if d.dim_value else -1 for d in out)
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    class Profile:
        def set_shape(
            self, name: str, lo: tuple[int, ...], opt: tuple[int, ...], hi: tuple[int, ...]
        ) -> None:
            self.shapes = (name, lo, opt, hi)

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return b"cache-v1"

    class Config:
        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            state["pool"] = (pool, size)

        def set_flag(self, flag: str) -> None:
            state["flags"].add(flag)

        def add_optimization_profile(self, p: Profile) -> int:
            state["profiles"].append(p.shapes)
            return 0

        def create_timing_cache(self, data: bytes) -> TimingCache:
            state["cache_in"] = bytes(data)
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            return True

        def get_timing_cache(self) -> TimingCache:
            return TimingCache(b"")

    class Builder:
        platform_has_fast_fp16 = fast_fp16

        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            state["network_flags"] = flags
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            (inp,) = network.inputs
            desc = {
                "input": inp.name,
                "shape": inp.shape,
                "output": state["onnx_out"],
                "profiles": state["profiles"],
            }
            return MAGIC + json.dumps(desc).encode()

    class Engine:
        def __init__(self, desc: dict[str, Any]) -> None:
            self.desc = desc
            self.names = [desc["input"], "output0"]

        @property
        def num_io_tensors(self) -> int:
            return 2

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> str:
            return TensorIOMode.INPUT if name == self.desc["input"] else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return tuple(self.desc["shape"] if name == self.desc["input"] else self.desc["output"])

        def get_tensor_dtype(self, name: str) -> Any:
            return DataType.FLOAT

        def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
            _, lo, opt, hi = self.desc["profiles"][index]
            return [tuple(lo), tuple(opt), tuple(hi)]

        def create_execution_context(self) -> Context:
            return Context(self)

    class Context:
        """Computes the darkness detector: boxes (.5,.5,.25,.25), score_k = sigmoid(20 (.5 - mean) + bias_k)."""

        bias = np.array([2.0, -2.0, -4.0], np.float32)

        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.addr: dict[str, int] = {}
            self.in_shape = tuple(engine.desc["shape"])
            state["executed_batches"] = []

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addr[name] = ptr
            return True

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            _, lo, _, hi = self.engine.desc["profiles"][0]
            if not lo[0] <= shape[0] <= hi[0]:
                return False
            self.in_shape = tuple(shape)
            return True

        def execute_async_v3(self, stream: int) -> bool:
            assert stream == 4242
            b = self.in_shape[0]
            n_in = int(np.prod(self.in_shape))
            x = np.ctypeslib.as_array(
                (ctypes.c_float * n_in).from_address(self.addr[self.engine.desc["input"]])
            )
            x = x.reshape(self.in_shape)
            mean = x.reshape(b, -1).mean(axis=1)
            scores = 1 / (1 + np.exp(-(20 * (0.5 - mean)[:, None] + self.bias[None, :])))
            q = self.engine.desc["output"][1]
            out = np.zeros((b, q, 7), np.float32)
            out[:, :, :4] = [0.5, 0.5, 0.25, 0.25]
            out[:, :, 4:] = scores[:, None, :]
            dst = np.ctypeslib.as_array((ctypes.c_float * out.size).from_address(self.addr["output0"]))
            dst[:] = out.ravel()
            state["executed_batches"].append(b)
            return True

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, blob: bytes) -> Engine | None:
            if not blob.startswith(MAGIC):
                return None  # what TensorRT does with a corrupt or foreign engine
            return Engine(json.loads(blob[len(MAGIC) :]))

    for name, obj in {
        "Logger": Logger,
        "TensorIOMode": TensorIOMode,
        "DataType": DataType,
        "MemoryPoolType": MemoryPoolType,
        "BuilderFlag": BuilderFlag,
        "OnnxParser": OnnxParser,
        "Builder": Builder,
        "Runtime": Runtime,
    }.items():
        setattr(trt, name, obj)
    return trt


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    rt = FakeCudart()
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.__dict__["runtime"] = rt
    cuda.__dict__["bindings"] = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    return rt


def install_trt(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> FakeTensorRT:
    trt = make_fake_trt(**kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "bundle", num_queries=NUM_QUERIES, class_bias=[2.0, -2.0, -4.0])


# ---- engine build ---------------------------------------------------------------------------------


def test_engine_build_writes_engine_and_updates_the_manifest(
    bundle: Path, fake_cuda: FakeCudart, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploy.tensorrt_build import EngineOptions, build_engine

    trt = install_trt(monkeypatch)
    before = json.loads((bundle / "manifest.json").read_text())
    res = build_engine(EngineOptions(bundle=bundle, max_batch=6, workspace_gb=1.5))
    assert res.engine == bundle / "model.engine" and res.fp16
    after = load_bundle(bundle, verify=["model.onnx", "model.engine"]).manifest  # hashes match the files
    assert after.sha256["model.onnx"] == before["sha256"]["model.onnx"]
    eng = after.provenance["tensorrt_engine"]
    assert (eng["tensorrt"], eng["gpu"], eng["fp16"]) == ("10.3.0", "Fake GPU 9000", True)
    assert (eng["min_batch"], eng["opt_batch"], eng["max_batch"]) == (1, 4, 6)
    assert after.provenance["made_by"] == before["provenance"]["made_by"]  # earlier provenance kept
    s = trt.state
    assert s["profiles"] == [("images", (1, 3, 64, 64), (4, 3, 64, 64), (6, 3, 64, 64))]
    assert s["pool"] == ("workspace", int(1.5 * (1 << 30)))
    assert s["flags"] == {"fp16"} and s["network_flags"] == 0 and s["cache_in"] == b""
    assert (bundle / "trt_timing.cache").read_bytes() == b"cache-v1"

    # A second build reuses the timing cache; --no-fp16 builds FP32.
    trt2 = install_trt(monkeypatch)
    res2 = build_engine(EngineOptions(bundle=bundle, max_batch=2, fp16=False))
    assert not res2.fp16 and trt2.state["flags"] == set()
    assert trt2.state["cache_in"] == b"cache-v1"
    assert (
        load_bundle(bundle, verify=["model.engine"]).manifest.provenance["tensorrt_engine"]["max_batch"] == 2
    )


def test_engine_build_without_fast_fp16_builds_fp32(
    bundle: Path, fake_cuda: FakeCudart, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploy.tensorrt_build import EngineOptions, build_engine

    trt = install_trt(monkeypatch, fast_fp16=False)
    assert not build_engine(EngineOptions(bundle=bundle)).fp16
    assert trt.state["flags"] == set()


def test_parse_errors_are_reported_by_index(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploy.tensorrt_build import EngineOptions, build_engine

    install_trt(
        monkeypatch,
        parse_errors=[
            ParserError("GridSample: unsupported mode", 41, "/decoder/GridSample_3", "GridSample"),
            ParserError("TopK: K must be constant", 77, "/head/TopK", "TopK"),
        ],
    )
    with pytest.raises(ModelError) as info:
        build_engine(EngineOptions(bundle=bundle))
    msg = str(info.value)
    assert "2 error(s)" in msg
    assert (
        "error 0: GridSample: unsupported mode (node #41, name '/decoder/GridSample_3', operator GridSample"
        in msg
    )
    assert "error 1: TopK: K must be constant (node #77, name '/head/TopK', operator TopK" in msg
    assert not (bundle / "model.engine").exists()
    assert "model.engine" not in json.loads((bundle / "manifest.json").read_text())["sha256"]


def test_engine_build_refuses_a_tampered_bundle_and_bad_options(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploy.tensorrt_build import EngineOptions, build_engine
    from runtime.errors import ConfigError

    install_trt(monkeypatch)
    with pytest.raises(ConfigError, match="--opt-batch 9"):
        build_engine(EngineOptions(bundle=bundle, max_batch=8, opt_batch=9))
    with (bundle / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="sha256"):
        build_engine(EngineOptions(bundle=bundle))


def test_engine_cli_names_the_extra_when_tensorrt_is_missing(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runtime.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, find_spec -> error
    assert main(["engine", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'loomsight[tensorrt]'" in err and "tensorrt" in err
    assert not (bundle / "model.engine").exists()


def test_engine_cli_takes_the_opt_batch_from_the_runtime_config(
    bundle: Path, fake_cuda: FakeCudart, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runtime.cli import main

    trt = install_trt(monkeypatch)
    cfg = bundle.parent / "loomsight.toml"
    cfg.write_text(f'[model]\nbundle = "{bundle}"\nbackend = "tensorrt"\nbatch_size = 3\n')
    assert main(["engine", str(bundle), "--batch", "6", "--config", str(cfg), "--no-fp16"]) == 0
    assert "FP32" in capsys.readouterr().out
    assert trt.state["profiles"] == [("images", (1, 3, 64, 64), (3, 3, 64, 64), (6, 3, 64, 64))]


# ---- the runtime detector ---------------------------------------------------------------------------


def _build(bundle: Path, monkeypatch: pytest.MonkeyPatch, max_batch: int = 4) -> None:
    from deploy.tensorrt_build import EngineOptions, build_engine

    install_trt(monkeypatch)
    build_engine(EngineOptions(bundle=bundle, max_batch=max_batch, opt_batch=2))


def test_tensorrt_detector_detects_through_device_buffers(
    bundle: Path, fake_cuda: FakeCudart, monkeypatch: pytest.MonkeyPatch
) -> None:
    _build(bundle, monkeypatch, max_batch=4)
    det = open_detector(ModelConfig(bundle=bundle, backend="tensorrt"))
    assert det.providers == ["TensorRT 10.3.0"]
    tiles = np.stack([np.zeros((64, 64), np.uint8)] * 3 + [np.full((64, 64), 255, np.uint8)] * 3)
    out = det.infer(tiles)  # 6 tiles through an engine of max batch 4: two runs
    assert [len(d) for d in out] == [NUM_QUERIES] * 3 + [0] * 3
    assert set(out[0].class_id.tolist()) == {0}
    np.testing.assert_allclose(out[0].xyxy[0], [24, 24, 40, 40], atol=1e-4)
    assert sys.modules["tensorrt"].state["executed_batches"] == [4, 2]
    allocated = len(fake_cuda.buffers)
    assert allocated == 4  # device + pinned host, input + output
    det.close()
    det.close()
    assert fake_cuda.buffers == {} and fake_cuda.streams == 0


def test_engine_that_does_not_deserialize_is_a_clear_error(
    bundle: Path, fake_cuda: FakeCudart, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploy.tensorrt_build import update_manifest

    install_trt(monkeypatch)
    engine = bundle / "model.engine"
    engine.write_bytes(b"an engine from another GPU and TensorRT version")
    update_manifest(bundle, engine, {"tensorrt": "8.6.1"})  # hash matches: the bytes are what was built
    with pytest.raises(ModelError) as info:
        open_detector(ModelConfig(bundle=bundle, backend="tensorrt"))
    msg = str(info.value)
    assert "could not deserialize" in msg and "another GPU or TensorRT version" in msg
    assert f"loomsight engine {bundle}" in msg


def test_engine_io_must_match_the_manifest(
    bundle: Path, fake_cuda: FakeCudart, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from runtime.detect.manifest import read_manifest
    from runtime.detect.tensorrt_backend import TensorRTDetector

    _build(bundle, monkeypatch)
    other = write_tiny_bundle(tmp_path / "other", classes=["a", "b"], num_queries=NUM_QUERIES)
    with pytest.raises(ModelError, match=r"output 'output0' is \(-1, 5, 7\).*2 classes"):
        TensorRTDetector(bundle / "model.engine", read_manifest(other))
    assert fake_cuda.buffers == {}


def test_tensorrt_backend_needs_the_engine_listed_and_tensorrt_installed(
    bundle: Path, fake_cuda: FakeCudart, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.detect.manifest import read_manifest
    from runtime.detect.tensorrt_backend import TensorRTDetector

    with pytest.raises(ModelError, match=r"lacks model.engine|not listed"):
        open_detector(ModelConfig(bundle=bundle, backend="tensorrt"))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ModelError, match=r"needs TensorRT.*loomsight\[tensorrt\].*onnxruntime"):
        TensorRTDetector(bundle / "model.engine", read_manifest(bundle))


def test_cuda_allocation_failure_is_a_model_error_and_frees_what_was_taken(
    bundle: Path, fake_cuda: FakeCudart, monkeypatch: pytest.MonkeyPatch
) -> None:
    _build(bundle, monkeypatch)
    fake_cuda.fail_malloc = True
    with pytest.raises(ModelError, match="CUDA error in cudaMallocHost: out of memory"):
        open_detector(ModelConfig(bundle=bundle, backend="tensorrt"))
    assert fake_cuda.buffers == {} and fake_cuda.streams == 0


# ---- the real thing (needs a CUDA GPU, TensorRT and cuda-python) -------------------------------------


@pytest.mark.gpu
def test_real_tensorrt_engine_matches_onnxruntime(bundle: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (tensorrt extra)")
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed (tensorrt extra)")
    from deploy.tensorrt_build import EngineOptions, build_engine

    build_engine(EngineOptions(bundle=bundle, max_batch=4, fp16=False, workspace_gb=0.5))
    tiles = np.random.default_rng(0).integers(0, 256, (6, 64, 64), dtype=np.uint8)
    trt_det = open_detector(ModelConfig(bundle=bundle, backend="tensorrt"))
    ort_det = open_detector(ModelConfig(bundle=bundle))
    np.testing.assert_allclose(trt_det.raw(tiles), ort_det.raw(tiles), atol=1e-4)  # type: ignore[attr-defined]
    trt_det.close()
