"""`loomsight export` for a dense checkpoint (`loomsight train --arch dense`): a mask bundle.

The same steps as the RT-DETR export (deploy/export.py): ONNX with a dynamic batch (simplified),
a parity check of ONNX Runtime against PyTorch on sample tiles, thresholds (given, tuned on a
validation set with the runtime's own mask decoder, or 0.5), CPU latency, and the bundle written
through `deploy.bundle.write_bundle` with `output.format = "mask"`.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from deploy.bundle import write_bundle
from deploy.onnx_export import Parity, check_opset
from deploy.val_tiles import open_val_set, texture_tiles
from runtime.detect.base import prepare_batch
from runtime.detect.manifest import MODEL_SCHEMA, ModelManifest, sha256_file
from runtime.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "images", "output0"


def _onnx(
    model: Any, path: Path, *, channels: int, size_px: int, opset: int, simplify: bool
) -> dict[str, Any]:
    import onnx
    import torch

    x = torch.rand(2, channels, size_px, size_px)
    raw = path.with_suffix(".raw.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(raw), opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, do_constant_folding=True,
            dynamo=False,
        )  # fmt: skip
    proto = onnx.load(str(raw))
    raw.unlink()
    info: dict[str, Any] = {"nodes_exported": len(proto.graph.node), "simplified": False}
    if simplify:
        import onnxslim

        try:
            proto = onnxslim.slim(proto)
            info.update(simplified=True, simplifier=f"onnxslim {onnxslim.__version__}")
        except Exception as exc:  # a simplifier failure leaves a valid, unsimplified graph
            log.warning("onnxslim could not simplify %s (%s); keeping the unsimplified graph", path.name, exc)
    proto.producer_name = "loomsight export"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    info.update(nodes=len(proto.graph.node), opset=opset, batch="dynamic")
    return info


def _strip(ckpt: dict[str, Any], out: Path) -> None:
    """A fine-tunable copy: weights and what describes them, no optimiser state."""
    import torch

    keep = ("arch", "hparams", "classes", "model", "spec", "epoch", "elapsed_s", "best_score", "history")
    torch.save({k: ckpt[k] for k in keep if k in ckpt}, out)


def export_dense_bundle(opts: Any) -> Any:
    """`opts` is deploy.export.ExportOptions; returns deploy.export.ExportResult."""
    import torch

    from deploy.export import ExportResult, _check_thresholds, _detect_val, _latency, _package_versions
    from deploy.export import _git_revision as git_revision
    from deploy.thresholds import tune_thresholds
    from offline_train.dense.model import OUTPUT_STRIDE_PX
    from offline_train.dense.train import SIDECAR_NAME, load_dense_checkpoint

    opset = check_opset(opts.opset)
    if opts.thresholds is not None and opts.tune_on is not None:
        raise ConfigError("give either --thresholds or --tune-on, not both")
    if opts.static_batch is not None:
        raise ConfigError("--static-batch is for RT-DETR bundles; a dense bundle has a dynamic batch")
    model, ckpt = load_dense_checkpoint(Path(opts.checkpoint))
    spec = ckpt["spec"]
    classes = list(ckpt["classes"])
    size = int(opts.imgsz or spec["tile_px"])
    if size % 32:
        raise ConfigError(f"input size {size} px is not a multiple of 32 (the encoder's largest stride)")
    overlap = int(opts.tile_overlap_px if opts.tile_overlap_px is not None else spec["overlap_px"])
    if not 0 <= overlap < size:
        raise ConfigError(f"--tile-overlap-px {overlap} must be >= 0 and < the tile size {size}")
    color = opts.color or spec.get("color", "gray")
    mm = float(opts.mm_per_px if opts.mm_per_px is not None else spec["mm_per_px"])
    if opts.thresholds is not None:
        _check_thresholds(opts.thresholds, classes)
    path = Path(opts.checkpoint)
    name = opts.name or (path.parent.parent.name if path.parent.name == "weights" else path.stem)
    base: dict[str, Any] = {
        "schema": MODEL_SCHEMA,
        "name": name,
        "classes": classes,
        "input": {
            "name": INPUT_NAME,
            "size_px": size,
            "channels": model.in_channels,
            "color": color,
            "batch": None,
        },
        "output": {"name": OUTPUT_NAME, "format": "mask", "stride_px": OUTPUT_STRIDE_PX},
        "mm_per_px": mm,
        "tile": {"size_px": size, "overlap_px": overlap},
        "onnx_opset": opset,
    }
    val = open_val_set(opts.tune_on, classes=classes) if opts.tune_on is not None else None
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=opts.out.parent) as tmp:
        work = Path(tmp)
        files = {"model.onnx": work / "model.onnx"}
        log.info("[1/4] exporting the dense model as ONNX (opset %d)", opset)
        info = _onnx(model, files["model.onnx"], channels=model.in_channels, size_px=size, opset=opset,
                     simplify=opts.simplify)  # fmt: skip
        provisional = ModelManifest.model_validate(
            {**base, "thresholds": {}, "sha256": {"model.onnx": sha256_file(files["model.onnx"])}}
        )
        log.info("[2/4] parity check against PyTorch")
        from deploy.export import _onnx_detector

        tiles = texture_tiles(opts.parity_tiles, size_px=size, color=color, seed=3)
        x = prepare_batch(tiles, provisional.input)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = _onnx_detector(files["model.onnx"], provisional).raw(tiles)
        diff = float(np.abs(got - ref).max())
        if not diff <= opts.tolerance:
            raise ModelError(
                f"parity check failed for model.onnx: max |ONNX - PyTorch| = {diff:.3e} over {len(tiles)} tiles "
                f"is above the tolerance {opts.tolerance:g}; no bundle was written"
            )
        parity = Parity(max_abs_diff_boxes=0.0, max_abs_diff_scores=diff, tiles=len(tiles))
        log.info("parity: max |ONNX - PyTorch| = %.2e on %d tiles", diff, len(tiles))
        metrics: dict[str, Any] = {
            "parity": {"model.onnx": {"max_abs_diff_probability": diff, "tiles": len(tiles),
                                      "sample": "generated fabric texture"}},
            "parity_tolerance": opts.tolerance,
        }  # fmt: skip
        log.info("[3/4] thresholds")
        if val is not None:
            dets, labels = _detect_val(files["model.onnx"], provisional, val, opts.tune_max_tiles)
            tuned = tune_thresholds(dets, labels, classes)
            thresholds = {c: t.threshold for c, t in tuned.items()}
            metrics.update(thresholds_source="tuned", validation={
                "data": str(val.data_yaml), "tiles": len(labels), "iou_min": 0.5,
                "per_class": {c: t.as_dict() for c, t in tuned.items()}})  # fmt: skip
        else:
            thresholds = {c: (opts.thresholds or {}).get(c, 0.5) for c in classes}
            metrics["thresholds_source"] = "given" if opts.thresholds else "default"
        if opts.latency_runs > 0:
            metrics["ort_cpu_latency"] = _latency(
                files["model.onnx"], provisional, opts.latency_runs, opts.latency_batch
            )
            log.info("ORT CPU latency: %s", metrics["ort_cpu_latency"])
        if opts.include_checkpoint:
            files["checkpoint.pt"] = work / "checkpoint.pt"
            _strip(ckpt, files["checkpoint.pt"])
            sidecar = path.parent / SIDECAR_NAME
            if sidecar.is_file():
                files[SIDECAR_NAME] = sidecar
        log.info("[4/4] writing bundle %s", opts.out)
        provenance = {
            "exported_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": opts.command,
            **git_revision(),
            "packages": _package_versions(),
            "checkpoint": {"file": path.name, "sha256": sha256_file(path), "arch": "dense",
                           "wall_clock_h": round(float(ckpt.get("elapsed_s", 0.0)) / 3600, 3),
                           "epoch": ckpt.get("epoch")},
            "dataset_sha256": spec.get("dataset_sha256", ""),
            "onnx": {"model.onnx": info},
        }  # fmt: skip
        manifest = write_bundle(opts.out, files, {**base, "thresholds": thresholds, "provenance": provenance,
                                                  "metrics": metrics})  # fmt: skip
    sizes = {n: (opts.out / n).stat().st_size for n in manifest.sha256}
    return ExportResult(bundle=opts.out, manifest=manifest, parity={"model.onnx": parity}, file_bytes=sizes)
