"""`loomsight export` and `loomsight engine` (light: heavy imports happen in run)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from runtime.commands import Command


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        help="local ultralytics RT-DETR .pt (from `loomsight train`)",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced atomically)")
    p.add_argument(
        "--opset",
        type=int,
        default=17,
        help="ONNX opset: 17 or 18 (above 18 ORT's CUDA provider drops GridSample to the CPU)",
    )
    p.add_argument(
        "--mm-per-px",
        type=float,
        default=None,
        help="web resolution the model was trained at; None: from loomsight_train.json",
    )
    p.add_argument(
        "--tile-overlap-px", type=int, default=None, help="tile overlap; None: from loomsight_train.json"
    )
    p.add_argument("--imgsz", type=int, default=None, help="input size in px; None: from the training record")
    p.add_argument(
        "--color",
        choices=["gray", "rgb"],
        default=None,
        help="what the model sees; None: from the training record, else gray",
    )
    th = p.add_mutually_exclusive_group()
    th.add_argument(
        "--thresholds",
        default=None,
        metavar="JSON",
        help="per-class thresholds: '{\"hole\": 0.4}' or a JSON file",
    )
    th.add_argument(
        "--tune-on",
        type=Path,
        default=None,
        metavar="VAL_DATASET_YAML",
        help="tune thresholds for the best F1 per class on this data.yaml's val split",
    )
    p.add_argument("--tune-max-tiles", type=int, default=None, help="use at most this many validation tiles")
    p.add_argument(
        "--static-batch",
        type=int,
        default=None,
        metavar="N",
        help="also write model_bN.onnx with a fixed batch of N",
    )
    p.add_argument("--name", default=None, help="model name in the manifest; None: the training run's name")
    p.add_argument(
        "--include-checkpoint",
        action="store_true",
        help="also put the weights (fp16, no optimizer) and their training record in the bundle, so that "
        "`loomsight train --weights BUNDLE/checkpoint.pt` can fine-tune it for a new fabric",
    )
    p.add_argument(
        "--tolerance", type=float, default=1e-3, help="largest |ONNX - PyTorch| allowed on boxes and scores"
    )
    p.add_argument("--parity-tiles", type=int, default=8, help="tiles for the parity check")
    p.add_argument(
        "--parity-score-floor",
        type=float,
        default=0.01,
        help="queries scored below this by both PyTorch and ONNX are left out of the parity check (0 = all)",
    )
    p.add_argument(
        "--latency-runs", type=int, default=20, help="timed ONNX Runtime CPU runs per batch size (0 = skip)"
    )
    p.add_argument("--no-simplify", dest="simplify", action="store_false", help="skip onnxslim")
    p.add_argument(
        "--allow-pickle", action="store_true", help="fully unpickle a checkpoint you trust (custom classes)"
    )


def _export_run(args: argparse.Namespace) -> int:
    from deploy.export import ExportOptions, export_bundle, parse_thresholds

    result = export_bundle(
        ExportOptions(
            checkpoint=args.checkpoint,
            out=args.out,
            opset=args.opset,
            mm_per_px=args.mm_per_px,
            tile_overlap_px=args.tile_overlap_px,
            imgsz=args.imgsz,
            color=args.color,
            thresholds=parse_thresholds(args.thresholds) if args.thresholds is not None else None,
            tune_on=args.tune_on,
            tune_max_tiles=args.tune_max_tiles,
            static_batch=args.static_batch,
            name=args.name,
            tolerance=args.tolerance,
            parity_tiles=args.parity_tiles,
            parity_score_floor=args.parity_score_floor,
            latency_runs=args.latency_runs,
            allow_pickle=args.allow_pickle,
            simplify=args.simplify,
            include_checkpoint=args.include_checkpoint,
            command=shlex.join(getattr(args, "command_line", ["loomsight", "export"])),
        )
    )
    m = result.manifest
    print(
        f"bundle {result.bundle}: {m.name}, {len(m.classes)} classes, {m.input.size_px} px, opset {m.onnx_opset}"
    )
    for name, parity in result.parity.items():
        print(f"  parity {name}: max |ONNX - PyTorch| {parity.max_abs_diff:.2e} on {parity.tiles} tiles")
    for name, size in result.file_bytes.items():
        print(f"  {name}: {size / 1e6:.2f} MB")
    lat = m.metrics.get("ort_cpu_latency")
    if lat:
        print(
            "  ORT CPU ms/tile: "
            + ", ".join(
                f"{k.removesuffix('_ms_per_tile')} {v}" for k, v in lat.items() if k.endswith("_ms_per_tile")
            )
        )
    print(f"  thresholds: {m.thresholds}")
    return 0


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "bundle", type=Path, metavar="BUNDLE", help="model bundle directory (from `loomsight export`)"
    )
    p.add_argument("--batch", type=int, default=8, help="largest batch the engine takes")
    p.add_argument(
        "--opt-batch",
        type=int,
        default=None,
        help="batch TensorRT tunes for; None: model.batch_size from --config, else the runtime's default",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="runtime config TOML whose model.batch_size is the opt batch",
    )
    p.add_argument(
        "--fp16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="FP16 kernels where the GPU has fast FP16",
    )
    p.add_argument("--workspace-gb", type=float, default=2.0, help="builder workspace memory limit")
    p.add_argument(
        "--timing-cache", type=Path, default=None, help="timing cache file; None: BUNDLE/trt_timing.cache"
    )


def _engine_run(args: argparse.Namespace) -> int:
    from deploy.tensorrt_build import EngineOptions, build_engine

    opt_batch = args.opt_batch
    if opt_batch is None and args.config is not None:
        from runtime.config import load_config

        opt_batch = min(load_config(args.config).model.batch_size, args.batch)
    result = build_engine(
        EngineOptions(
            bundle=args.bundle,
            max_batch=args.batch,
            opt_batch=opt_batch,
            fp16=args.fp16,
            workspace_gb=args.workspace_gb,
            timing_cache=args.timing_cache,
        )
    )
    print(
        f"engine {result.engine}: {result.engine_bytes / 1e6:.1f} MB, {'FP16' if result.fp16 else 'FP32'}, built in {result.build_s:.0f} s"
    )
    return 0


EXPORT = Command(
    name="export",
    help="export an RT-DETR checkpoint to a parity-checked ONNX model bundle",
    add_arguments=_export_args,
    run=_export_run,
    extra="train",
    needs=("torch", "ultralytics", "onnx", "onnxslim"),
)

ENGINE = Command(
    name="engine",
    help="build a TensorRT engine for this GPU into a model bundle",
    add_arguments=_engine_args,
    run=_engine_run,
    extra="tensorrt",
    needs=("tensorrt",),
)
