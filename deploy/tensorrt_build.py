"""`loomsight engine`: build a TensorRT engine from a bundle's `model.onnx`, on the GPU that will run it.

Written against the TensorRT 10 Python API (and 8.6, which needs the explicit-batch flag):
`trt.Builder` -> network from `trt.OnnxParser` (every parse error reported by index) ->
`IBuilderConfig` (workspace pool limit, FP16 when the GPU has fast FP16, an optimisation profile
for the dynamic batch: min 1, opt, max N; a timing cache file reused across builds) ->
`build_serialized_network` -> `model.engine` in the bundle, whose manifest then lists the
engine's sha256 and records the TensorRT version and GPU in its provenance.

NOT EXECUTED HERE: TensorRT cannot be installed on the machines this was written on. Everything
that does not need TensorRT itself (argument checks, parse-error reporting, the manifest update)
is tested with a fake `tensorrt` module (tests/unit/test_tensorrt_logic.py); the calls into
TensorRT follow its documented API but have not run against a real TensorRT.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runtime.config import ModelConfig
from runtime.detect.bundle import load_bundle
from runtime.detect.manifest import MANIFEST_NAME, ModelManifest, sha256_file
from runtime.errors import ConfigError, MissingExtraError, ModelError

log = logging.getLogger(__name__)

ENGINE_NAME = "model.engine"
TIMING_CACHE_NAME = "trt_timing.cache"


@dataclass
class EngineOptions:
    bundle: Path
    max_batch: int = 8
    opt_batch: int | None = None  # default: the runtime's model.batch_size, capped at max_batch
    fp16: bool = True
    workspace_gb: float = 2.0
    timing_cache: Path | None = None  # default: BUNDLE/trt_timing.cache


@dataclass(frozen=True)
class EngineResult:
    engine: Path
    manifest: ModelManifest
    fp16: bool
    build_s: float
    engine_bytes: int


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingExtraError("engine", "tensorrt", "tensorrt") from None
    return trt


def _network_flags(trt: Any) -> int:
    major = int(str(trt.__version__).split(".")[0])
    if major >= 10:
        return 0  # explicit batch is the only mode (the flag is deprecated)
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def describe_parser_error(index: int, err: Any) -> str:
    """One line per ONNX parser error: its index, description, node and operator when known."""

    def get(attr: str) -> Any:
        fn = getattr(err, attr, None)
        try:
            return fn() if callable(fn) else None
        except Exception:  # an accessor TensorRT lacks for this error kind
            return None

    parts = [f"error {index}: {get('desc') or err}"]
    node, name, op, code = get("node"), get("node_name"), get("node_operator"), get("code")
    where = []
    if node is not None and node != -1:
        where.append(f"node #{node}")
    if name:
        where.append(f"name {name!r}")
    if op:
        where.append(f"operator {op}")
    if code is not None:
        where.append(f"code {code}")
    if where:
        parts.append(f"({', '.join(where)})")
    return " ".join(parts)


def gpu_name(device: int = 0) -> str:
    """The GPU's name via cuda-python, or 'unknown' when cuda-python is not there."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        err, props = cudart.cudaGetDeviceProperties(device)
        if err != cudart.cudaError_t.cudaSuccess:
            return "unknown"
        name = props.name
        return (
            name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
        ).strip() or "unknown"
    except Exception:  # only provenance: never fail a build over it
        return "unknown"


def _atomic_write(path: Path, data: bytes | memoryview) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_options(opts: EngineOptions) -> int:
    if opts.max_batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {opts.max_batch}")
    runtime_batch = int(ModelConfig.model_fields["batch_size"].default)
    opt = opts.opt_batch if opts.opt_batch is not None else min(opts.max_batch, runtime_batch)
    if not 1 <= opt <= opts.max_batch:
        raise ConfigError(f"--opt-batch {opt} must lie between 1 and --batch {opts.max_batch}")
    if opts.workspace_gb <= 0:
        raise ConfigError(f"--workspace-gb must be > 0, got {opts.workspace_gb}")
    return opt


def _load_timing_cache(config: Any, path: Path) -> Any:
    data = b""
    if path.is_file():
        data = path.read_bytes()
        log.info("reusing TensorRT timing cache %s (%d bytes)", path, len(data))
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s was made on another GPU or TensorRT; starting a fresh one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def update_manifest(bundle_dir: Path, engine_path: Path, engine_info: dict[str, Any]) -> ModelManifest:
    """List the engine's sha256 and its build facts in the manifest; validated, written atomically."""
    path = bundle_dir / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    data["sha256"] = {**data.get("sha256", {}), ENGINE_NAME: sha256_file(engine_path)}
    data["provenance"] = {**data.get("provenance", {}), "tensorrt_engine": engine_info}
    manifest = ModelManifest.model_validate(data)
    _atomic_write(path, manifest.to_json().encode("utf-8"))
    return manifest


def build_engine(opts: EngineOptions) -> EngineResult:
    opt_batch = _check_options(opts)
    bundle = load_bundle(opts.bundle)  # refuses a bundle whose model.onnx does not match its hash
    manifest = bundle.manifest
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise ModelError("TensorRT could not create a builder: no usable CUDA GPU or driver on this machine")
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    log.info("parsing %s", bundle.onnx_path)
    if not parser.parse_from_file(str(bundle.onnx_path)):
        errors = [describe_parser_error(i, parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(
            f"TensorRT {trt.__version__} cannot parse {bundle.onnx_path} ({len(errors)} error(s)):\n  "
            + "\n  ".join(errors or ["(the parser gave no details)"])
            + "\nRe-export with `loomsight export --opset 17`, or use model.backend = 'onnxruntime'"
        )
    if network.num_inputs != 1:
        raise ModelError(f"{bundle.onnx_path} has {network.num_inputs} inputs; a loomsight model has one")
    inp = network.get_input(0)
    shape = tuple(int(d) for d in inp.shape)
    spec = manifest.input
    if inp.name != spec.name or len(shape) != 4 or shape[1:] != (spec.channels, spec.size_px, spec.size_px):
        raise ModelError(
            f"{bundle.onnx_path} input is {inp.name!r} {shape}; the manifest says {spec.name!r} "
            f"(batch, {spec.channels}, {spec.size_px}, {spec.size_px})"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    fp16 = False
    if opts.fp16:
        if getattr(builder, "platform_has_fast_fp16", True):
            config.set_flag(trt.BuilderFlag.FP16)
            fp16 = True
        else:
            log.warning("this GPU has no fast FP16; building an FP32 engine")
    max_batch = opts.max_batch
    if shape[0] == -1:
        profile = builder.create_optimization_profile()
        chw = shape[1:]
        profile.set_shape(inp.name, (1, *chw), (opt_batch, *chw), (max_batch, *chw))
        config.add_optimization_profile(profile)
    else:
        if shape[0] != max_batch:
            log.warning("model.onnx has a static batch of %d; --batch %d is ignored", shape[0], max_batch)
        max_batch = opt_batch = shape[0]
    cache_path = opts.timing_cache or bundle.path / TIMING_CACHE_NAME
    _load_timing_cache(config, cache_path)

    log.info(
        "building the engine (batch 1..%d, opt %d, %s, workspace %g GB); this takes minutes",
        max_batch,
        opt_batch,
        "FP16" if fp16 else "FP32",
        opts.workspace_gb,
    )
    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.monotonic() - t0
    if serialized is None:
        raise ModelError(
            f"TensorRT {trt.__version__} failed to build an engine from {bundle.onnx_path} (see its log above); "
            "try --no-fp16 or a larger --workspace-gb"
        )
    new_cache = config.get_timing_cache()
    if new_cache is not None:
        _atomic_write(cache_path, memoryview(new_cache.serialize()))
    engine_path = bundle.engine_path
    _atomic_write(engine_path, memoryview(serialized))
    info = {
        "tensorrt": str(trt.__version__),
        "gpu": gpu_name(),
        "fp16": fp16,
        "min_batch": 1,
        "opt_batch": opt_batch,
        "max_batch": max_batch,
        "workspace_gb": opts.workspace_gb,
        "build_s": round(build_s, 1),
        "built_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    manifest = update_manifest(bundle.path, engine_path, info)
    size = engine_path.stat().st_size
    log.info("wrote %s (%.1f MB) in %.0f s on %s", engine_path, size / 1e6, build_s, info["gpu"])
    return EngineResult(engine=engine_path, manifest=manifest, fp16=fp16, build_s=build_s, engine_bytes=size)
