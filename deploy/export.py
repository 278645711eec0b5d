"""`loomsight export`: an RT-DETR checkpoint -> a parity-checked, tuned model bundle.

Steps: read the local checkpoint and its training record; export ONNX (dynamic batch as
`model.onnx`, optionally a static batch as `model_b{N}.onnx`), simplified with onnxslim; compare
ONNX Runtime with PyTorch on sample tiles (fail above the tolerance); tune per-class thresholds on
a validation set (or take given ones); time ONNX Runtime on the CPU; write the bundle with a
manifest (DESIGN.md "Model bundle") through `deploy.bundle.write_bundle`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from deploy.bundle import write_bundle
from deploy.checkpoint import Checkpoint, load_checkpoint
from deploy.onnx_export import (
    Parity,
    check_opset,
    compare_outputs,
    export_model,
    export_onnx,
    reference_output,
)
from deploy.thresholds import DEFAULT_GRID, TileLabels, tune_thresholds
from deploy.val_tiles import ValSet, iter_batches, open_val_set, texture_tiles
from runtime.detect.base import prepare_batch
from runtime.detect.decode import DecodeStats
from runtime.detect.manifest import MODEL_SCHEMA, ModelManifest, sha256_file
from runtime.detect.outputs import output_format
from runtime.detections import Detections
from runtime.errors import ConfigError, ModelError

log = logging.getLogger(__name__)


STEPS = 6


@dataclass
class ExportOptions:
    checkpoint: Path
    out: Path
    opset: int = 17
    mm_per_px: float | None = None
    tile_overlap_px: int | None = None
    imgsz: int | None = None
    color: str | None = None
    thresholds: dict[str, float] | None = None
    tune_on: Path | None = None
    tune_max_tiles: int | None = None
    static_batch: int | None = None
    name: str | None = None
    tolerance: float = 1e-3
    parity_tiles: int = 8
    parity_score_floor: float = 0.01
    latency_runs: int = 20
    latency_batch: int = 8
    allow_pickle: bool = False
    simplify: bool = True
    include_checkpoint: bool = False  # weights for fine-tuning; the runtime never loads them
    command: str = field(default_factory=lambda: shlex.join(["loomsight", *sys.argv[1:]]))


@dataclass(frozen=True)
class ExportResult:
    bundle: Path
    manifest: ModelManifest
    parity: dict[str, Parity]
    file_bytes: dict[str, int]


def _step(n: int, what: str) -> None:
    log.info("[%d/%d] %s", n, STEPS, what)


def parse_thresholds(value: str) -> dict[str, float]:
    """`--thresholds`: inline JSON ('{"hole": 0.4}') or the path of a JSON file holding that object."""
    text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--thresholds {value!r} is neither a JSON object nor a JSON file ({exc})"
        ) from None
    if not isinstance(doc, dict) or not all(isinstance(v, (int, float)) for v in doc.values()):
        raise ConfigError(f"--thresholds must map class names to numbers, got {doc!r}")
    return {str(k): float(v) for k, v in doc.items()}


def _check_thresholds(thresholds: dict[str, float], classes: list[str]) -> None:
    unknown = sorted(set(thresholds) - set(classes))
    if unknown:
        raise ConfigError(
            f"--thresholds names classes the model does not have: {unknown}; classes: {classes}"
        )
    bad = {k: v for k, v in thresholds.items() if not 0.0 < v <= 1.0}
    if bad:
        raise ConfigError(f"--thresholds must lie in (0, 1]: {bad}")


@dataclass(frozen=True)
class _Resolved:
    name: str
    classes: list[str]
    size_px: int
    mm_per_px: float
    overlap_px: int
    color: str


def _resolve(opts: ExportOptions, ck: Checkpoint) -> _Resolved:
    rec = ck.training
    if rec.classes is not None and rec.classes != ck.classes:
        raise ModelError(
            f"{ck.path} has classes {ck.classes} but its training record ({rec.source}) says {rec.classes}; "
            "the checkpoint and loomsight_train.json do not belong together"
        )
    size = opts.imgsz or rec.tile_px or ck.imgsz
    if size is None:
        raise ConfigError(
            f"{ck.path} records no training image size; pass --imgsz (the tile size it was trained on)"
        )
    if size % 32:
        raise ConfigError(f"input size {size} px is not a multiple of 32 (RT-DETR's largest stride)")
    if ck.imgsz is not None and rec.tile_px is not None and ck.imgsz != rec.tile_px:
        log.warning(
            "checkpoint imgsz %d differs from the training record's tile_px %d", ck.imgsz, rec.tile_px
        )
    mm = opts.mm_per_px if opts.mm_per_px is not None else rec.mm_per_px
    if mm is None:
        raise ConfigError(
            f"no mm_per_px for {ck.path}: there is no {ck.path.parent / 'loomsight_train.json'} and the "
            "checkpoint records none; pass --mm-per-px (the web resolution the model was trained at)"
        )
    if mm <= 0:
        raise ConfigError(f"--mm-per-px must be > 0, got {mm}")
    overlap = opts.tile_overlap_px if opts.tile_overlap_px is not None else rec.overlap_px
    if overlap is None:
        overlap = size // 8
        log.warning("no tile overlap recorded; using %d px (pass --tile-overlap-px to choose)", overlap)
    if not 0 <= overlap < size:
        raise ConfigError(f"--tile-overlap-px {overlap} must be >= 0 and < the tile size {size}")
    color = opts.color or rec.color or "gray"
    if color not in ("gray", "rgb"):
        raise ConfigError(f"color must be 'gray' or 'rgb', got {color!r}")
    name = opts.name or (ck.path.parent.parent.name if ck.path.parent.name == "weights" else ck.path.stem)
    return _Resolved(name, ck.classes, int(size), float(mm), int(overlap), color)


def _manifest_fields(
    r: _Resolved, ck: Checkpoint, opset: int, thresholds: dict[str, float]
) -> dict[str, Any]:
    return {
        "schema": MODEL_SCHEMA,
        "name": r.name,
        "classes": r.classes,
        "input": {"name": "images", "size_px": r.size_px, "channels": 3, "color": r.color, "batch": None},
        "output": {"name": "output0", "num_queries": ck.num_queries},
        "mm_per_px": r.mm_per_px,
        "tile": {"size_px": r.size_px, "overlap_px": r.overlap_px},
        "thresholds": thresholds,
        "onnx_opset": opset,
    }


def _onnx_detector(path: Path, manifest: ModelManifest, threads: int = 0) -> Any:
    from runtime.detect.onnx_backend import OnnxDetector

    return OnnxDetector(path, manifest, providers=["CPUExecutionProvider"], intra_op_threads=threads)


def _parity(
    ck: Checkpoint, path: Path, manifest: ModelManifest, tiles: np.ndarray, opts: ExportOptions
) -> Parity:
    x = prepare_batch(tiles, manifest.input)
    ref = reference_output(ck.model, x)
    got = _onnx_detector(path, manifest).raw(tiles)
    p = compare_outputs(got, ref, tolerance=opts.tolerance, score_floor=opts.parity_score_floor)
    log.info(
        "parity %s: max |ONNX - PyTorch| = %.2e (boxes %.2e, scores %.2e) on %d tiles, %d queries compared%s",
        path.name,
        p.max_abs_diff,
        p.max_abs_diff_boxes,
        p.max_abs_diff_scores,
        p.tiles,
        p.compared_queries,
        f"; {p.reordered_tiles} tiles with queries reordered, {p.ignored_queries} queries below "
        f"{p.score_floor:g} left out"
        if p.reordered_tiles
        else "",
    )
    if not p.max_abs_diff <= opts.tolerance:
        raise ModelError(
            f"parity check failed for {path.name}: max |ONNX - PyTorch| = {p.max_abs_diff:.3e} "
            f"(boxes {p.max_abs_diff_boxes:.3e}, scores {p.max_abs_diff_scores:.3e}) over {p.tiles} tiles "
            f"is above the tolerance {opts.tolerance:g}; no bundle was written. If most tiles needed their "
            "queries matched, RT-DETR's top-k query selection is unstable on this model (near-equal encoder "
            "scores, typical of an untrained model). Otherwise try the other --opset, or raise --tolerance "
            "if the difference is understood"
        )
    return p


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tile", disable=None, file=sys.stderr)


def _detect_val(
    path: Path, manifest: ModelManifest, val: ValSet, limit: int | None
) -> tuple[list[Detections], list[TileLabels]]:
    det = _onnx_detector(path, manifest)
    floor = np.full(len(manifest.classes), float(DEFAULT_GRID.min()), np.float32)
    dets: list[Detections] = []
    labels: list[TileLabels] = []
    total = min(len(val), limit) if limit else len(val)
    with _progress(total, "validation tiles") as bar:
        for tiles, labs in iter_batches(
            val, size_px=manifest.input.size_px, color=manifest.input.color, batch=16, limit=limit
        ):
            dets += output_format(manifest).decode(det.raw(tiles), manifest, floor, DecodeStats(), None)
            labels += labs
            bar.update(len(tiles))
    return dets, labels


def _latency(path: Path, manifest: ModelManifest, runs: int, batch: int) -> dict[str, Any]:
    """Median ONNX Runtime CPU time per tile at batch 1 and at `batch`, after a warm-up."""
    size = manifest.input.size_px
    det = _onnx_detector(path, manifest)
    result: dict[str, Any] = {"runs": runs, "cpu_count": os.cpu_count(), "input_px": size}
    tiles = texture_tiles(max(batch, 1), size_px=size, color=manifest.input.color, seed=7)
    for b in sorted({1, batch}):
        t = tiles[:b]
        det.raw(t)
        det.raw(t)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            det.raw(t)
            times.append(time.perf_counter() - t0)
        result[f"batch_{b}_ms_per_tile"] = round(1000 * float(np.median(times)) / b, 3)
    return result


def _sample_tiles(val: ValSet | None, r: _Resolved, n: int) -> tuple[np.ndarray, str]:
    """Tiles for the parity check: the first validation tiles, else generated fabric texture."""
    if val is not None:
        batches = iter_batches(val, size_px=r.size_px, color=r.color, batch=n, limit=n)
        return np.concatenate([t for t, _ in batches]), f"validation tiles from {val.data_yaml}"
    return texture_tiles(n, size_px=r.size_px, color=r.color), "generated fabric texture"


def _thresholds(
    opts: ExportOptions, r: _Resolved, val: ValSet | None, onnx_path: Path, manifest: ModelManifest
) -> tuple[dict[str, float], dict[str, Any]]:
    """Tuned on the validation set for the best F1 per class, else given, else 0.5."""
    if val is None:
        thresholds = {c: (opts.thresholds or {}).get(c, 0.5) for c in r.classes}
        source = "given" if opts.thresholds else "default"
        log.info("thresholds %s (%s, not tuned)", thresholds, source)
        return thresholds, {"thresholds_source": source}
    dets, labels = _detect_val(onnx_path, manifest, val, opts.tune_max_tiles)
    tuned = tune_thresholds(dets, labels, r.classes)
    for c, t in tuned.items():
        note = f" [{t.note}]" if t.note else ""
        log.info(
            "  %-14s threshold %.2f  P %.3f R %.3f F1 %.3f (%d labels)%s",
            c,
            t.threshold,
            t.precision,
            t.recall,
            t.f1,
            t.n_labels,
            note,
        )
    return {c: t.threshold for c, t in tuned.items()}, {
        "thresholds_source": "tuned",
        "validation": {
            "data": str(val.data_yaml),
            "tiles": len(labels),
            "iou_min": 0.5,
            "per_class": {c: t.as_dict() for c, t in tuned.items()},
        },
    }


def _git_revision() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_revision": None}
    return {"git_revision": rev, "git_dirty": bool(dirty)}


def _package_versions() -> dict[str, str | None]:
    import importlib

    versions: dict[str, str | None] = {}
    for mod in ("torch", "ultralytics", "onnx", "onnxruntime", "onnxslim", "numpy"):
        try:
            versions[mod] = str(importlib.import_module(mod).__version__)
        except (ImportError, AttributeError):
            versions[mod] = None
    from runtime import __version__

    versions["loomsight"] = __version__
    return versions


def _training_files(checkpoint: Path, work: Path) -> dict[str, Path]:
    """A fine-tunable copy of the weights (fp16, optimizer stripped) and the training record beside it."""
    from ultralytics.utils.torch_utils import strip_optimizer

    from offline_train.train import SIDECAR_NAME

    out = {"checkpoint.pt": work / "checkpoint.pt"}
    if not strip_optimizer(checkpoint, str(out["checkpoint.pt"])):
        raise ConfigError(f"{checkpoint} is not an ultralytics checkpoint; cannot include it in the bundle")
    sidecar = checkpoint.parent / SIDECAR_NAME
    if sidecar.is_file():
        out[SIDECAR_NAME] = sidecar
    return out


def _is_dense(path: Path) -> bool:
    from offline_train.train import SIDECAR_NAME

    sidecar = Path(path).parent / SIDECAR_NAME
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text(encoding="utf-8")).get("arch") == "dense"
        except (OSError, ValueError):
            return False
    return False


def export_bundle(opts: ExportOptions) -> ExportResult:
    """Export a checkpoint: RT-DETR here, a dense model (its training record says arch "dense")
    through deploy.dense_export."""
    if _is_dense(opts.checkpoint):
        from deploy.dense_export import export_dense_bundle

        return export_dense_bundle(opts)
    opset = check_opset(opts.opset)
    if opts.thresholds is not None and opts.tune_on is not None:
        raise ConfigError("give either --thresholds or --tune-on, not both")
    if opts.static_batch is not None and opts.static_batch < 1:
        raise ConfigError(f"--static-batch must be >= 1, got {opts.static_batch}")
    if opts.tolerance <= 0:
        raise ConfigError(f"--tolerance must be > 0, got {opts.tolerance}")
    if not 0.0 <= opts.parity_score_floor < 1.0:
        raise ConfigError(f"--parity-score-floor must lie in [0, 1), got {opts.parity_score_floor}")
    if opts.parity_tiles < 1:
        raise ConfigError(f"--parity-tiles must be >= 1, got {opts.parity_tiles}")

    _step(1, f"reading checkpoint {opts.checkpoint}")
    ck = load_checkpoint(opts.checkpoint, allow_pickle=opts.allow_pickle)
    r = _resolve(opts, ck)
    if opts.thresholds is not None:
        _check_thresholds(opts.thresholds, r.classes)
    val = open_val_set(opts.tune_on, classes=r.classes) if opts.tune_on is not None else None
    log.info(
        "model %s: %d classes %s, %d px %s tiles (overlap %d px), %g mm/px, %d queries",
        r.name,
        len(r.classes),
        r.classes,
        r.size_px,
        r.color,
        r.overlap_px,
        r.mm_per_px,
        ck.num_queries,
    )

    opts.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=opts.out.parent) as tmp:
        work = Path(tmp)
        _step(2, f"exporting ONNX (opset {opset})")
        exp = export_model(ck.model)
        files: dict[str, Path] = {}
        variants = {"model.onnx": None} | (
            {f"model_b{opts.static_batch}.onnx": opts.static_batch} if opts.static_batch else {}
        )
        export_info: dict[str, Any] = {}
        for fname, batch in variants.items():
            files[fname] = work / fname
            export_info[fname] = export_onnx(
                exp,
                files[fname],
                size_px=r.size_px,
                opset=opset,
                batch=batch,
                num_queries=ck.num_queries,
                num_classes=len(r.classes),
                simplify=opts.simplify,
            )
            log.info(
                "wrote %s (%.2f MB, %d nodes)",
                fname,
                files[fname].stat().st_size / 1e6,
                export_info[fname]["nodes"],
            )

        base = _manifest_fields(r, ck, opset, {c: 0.5 for c in r.classes})
        provisional = ModelManifest.model_validate(
            {**base, "sha256": {n: sha256_file(p) for n, p in files.items()}}
        )

        _step(3, "parity check against PyTorch")
        sample, sample_kind = _sample_tiles(val, r, opts.parity_tiles)
        parity = {n: _parity(ck, p, provisional, sample, opts) for n, p in files.items()}

        _step(4, "thresholds")
        metrics: dict[str, Any] = {
            "parity": {n: {**p.as_dict(), "sample": sample_kind} for n, p in parity.items()},
            "parity_tolerance": opts.tolerance,
        }
        thresholds, threshold_metrics = _thresholds(opts, r, val, files["model.onnx"], provisional)
        metrics.update(threshold_metrics)

        _step(5, "ONNX Runtime CPU latency")
        if opts.latency_runs > 0:
            metrics["ort_cpu_latency"] = _latency(
                files["model.onnx"], provisional, opts.latency_runs, opts.latency_batch
            )
            log.info("ORT CPU latency: %s", metrics["ort_cpu_latency"])

        if opts.include_checkpoint:
            files.update(_training_files(ck.path, work))

        _step(6, f"writing bundle {opts.out}")
        provenance: dict[str, Any] = {
            "exported_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": opts.command,
            **_git_revision(),
            "packages": _package_versions(),
            "checkpoint": {"file": ck.path.name, "sha256": sha256_file(ck.path), **ck.ultralytics_meta},
            "dataset_sha256": ck.training.dataset_sha256,
            "training_record": ck.training.source,
            "onnx": export_info,
        }
        manifest = write_bundle(
            opts.out, files, {**base, "thresholds": thresholds, "provenance": provenance, "metrics": metrics}
        )
    sizes = {n: (opts.out / n).stat().st_size for n in manifest.sha256}
    log.info("bundle %s: %s", opts.out, ", ".join(f"{n} {b / 1e6:.2f} MB" for n, b in sizes.items()))
    return ExportResult(bundle=opts.out, manifest=manifest, parity=parity, file_bytes=sizes)
