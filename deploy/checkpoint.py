"""Read an ultralytics RT-DETR checkpoint (a local `.pt`) and what training recorded beside it.

Only a local file is ever opened: a name that is not a file is an error, never a download. The
checkpoint is unpickled by ultralytics' restricted loader (`weights_only=True` against its
allow-list of model classes), which never auto-installs a module a checkpoint names; full
unpickling of a checkpoint you trust is opt-in (`allow_pickle=True`).

Training metadata comes from `loomsight_train.json` beside the weights (written by
`loomsight train`; schema "loomsight.train/1": `mm_per_px`, `tile_px`, `overlap_px`, `color`,
`classes`, `dataset_sha256`, ...) or from a `loomsight` dict inside the checkpoint's
`train_args`, or at the checkpoint's top level, with the same keys.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ModelError

log = logging.getLogger(__name__)

# one source of truth for both: the training wrapper writes the sidecar, export reads it
from offline_train.train import SIDECAR_NAME, ensure_offline  # noqa: E402


@dataclass
class TrainingRecord:
    """What the training run says about the model; every field may be missing."""

    mm_per_px: float | None = None
    tile_px: int | None = None
    overlap_px: int | None = None
    color: str | None = None
    classes: list[str] | None = None
    dataset_sha256: str | None = None
    source: str = "none"
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class Checkpoint:
    path: Path
    model: Any  # the ultralytics RTDETRDetectionModel, float32, eval mode
    classes: list[str]
    num_queries: int
    imgsz: int | None  # from train_args, None when the checkpoint has none
    training: TrainingRecord
    ultralytics_meta: dict[str, Any]


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def parse_training_record(doc: dict[str, Any], source: str) -> TrainingRecord:
    tile: dict[str, Any] = doc["tile"] if isinstance(doc.get("tile"), dict) else {}
    mm = _first(doc, "mm_per_px")
    size = _first(doc, "tile_px", "tile_size_px", "imgsz") or _first(tile, "size_px")
    overlap = _first(doc, "overlap_px", "tile_overlap_px") or _first(tile, "overlap_px")
    classes = doc.get("classes")
    try:
        return TrainingRecord(
            mm_per_px=float(mm) if mm is not None else None,
            tile_px=int(size) if size is not None else None,
            overlap_px=int(overlap) if overlap is not None else None,
            color=str(doc["color"]) if doc.get("color") else None,
            classes=[str(c) for c in classes] if isinstance(classes, list) else None,
            dataset_sha256=_first(doc, "dataset_sha256", "dataset_hash") or None,
            source=source,
            raw=doc,
        )
    except (TypeError, ValueError) as exc:
        raise ModelError(f"training metadata in {source} has a bad value ({exc})") from None


def read_training_record(checkpoint_path: Path, ckpt: dict[str, Any]) -> TrainingRecord:
    """The sidecar beside the weights wins; else a `loomsight` dict inside the checkpoint."""
    sidecar = checkpoint_path.parent / SIDECAR_NAME
    if sidecar.is_file():
        try:
            doc = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{sidecar} is not readable JSON ({exc}); fix or delete it") from None
        if not isinstance(doc, dict):
            raise ModelError(f"{sidecar} must hold a JSON object")
        return parse_training_record(doc, str(sidecar))
    raw_args = ckpt.get("train_args")
    train_args: dict[str, Any] = raw_args if isinstance(raw_args, dict) else {}
    for where, doc in (
        ("train_args.loomsight", train_args.get("loomsight")),
        ("loomsight", ckpt.get("loomsight")),
    ):
        if isinstance(doc, dict):
            return parse_training_record(doc, f"{checkpoint_path}:{where}")
    return TrainingRecord()


def _class_names(names: Any, nc: int, path: Path) -> list[str]:
    if isinstance(names, dict):
        ordered = [names[k] for k in sorted(names)]
    elif isinstance(names, (list, tuple)):
        ordered = list(names)
    else:
        raise ModelError(f"{path}: the model carries no class names; retrain it with `loomsight train`")
    if len(ordered) != nc:
        raise ModelError(f"{path}: the model has {nc} classes but {len(ordered)} names ({ordered})")
    return [str(n) for n in ordered]


def load_checkpoint(path: Path | str, *, allow_pickle: bool = False) -> Checkpoint:
    """Load a local RT-DETR checkpoint; every failure is a ModelError that says what to pass instead."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"checkpoint {path} does not exist; pass the local .pt written by `loomsight train` "
            "(e.g. runs/train/<name>/weights/best.pt). Nothing is ever downloaded"
        )
    if not os.access(path, os.R_OK):
        raise ModelError(f"checkpoint {path} is not readable (permissions); fix them or copy the file")
    if path.suffix != ".pt":
        raise ModelError(
            f"checkpoint {path} is not a .pt file; `loomsight export` takes ultralytics .pt checkpoints"
        )
    if not zipfile.is_zipfile(path):
        raise ModelError(
            f"checkpoint {path} is not a PyTorch checkpoint (not a zip archive): it is truncated, corrupt or "
            "another kind of file; pass the .pt written by `loomsight train`"
        )
    ensure_offline()
    import torch
    from ultralytics.nn.modules.head import RTDETRDecoder
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=not allow_pickle)
    except (TypeError, ModuleNotFoundError, OSError, RuntimeError, EOFError) as exc:
        text = str(exc).strip()
        if not allow_pickle and "outside the supported" in text:
            raise ModelError(
                f"checkpoint {path} holds Python objects outside ultralytics' allow-list of model classes; "
                "if you trust the file, pass --allow-pickle to unpickle it fully"
            ) from None
        first_line = text.splitlines()[0].replace("ERROR ❌️", "").strip() if text else type(exc).__name__
        raise ModelError(f"cannot read checkpoint {path}: {first_line}") from None
    if not isinstance(ckpt, dict):
        raise ModelError(f"{path} is not an ultralytics checkpoint (it holds a {type(ckpt).__name__})")
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"{path} holds no model (keys: {sorted(ckpt)}); is it an ultralytics checkpoint?")
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, torch.nn.Sequential) and len(layers) else None
    if not isinstance(head, RTDETRDecoder):
        kind = type(head).__name__ if head is not None else type(model).__name__
        raise ModelError(
            f"{path} is not an RT-DETR checkpoint (its head is {kind}, task "
            f"{getattr(model, 'task', '?')!r}); loomsight models are RT-DETR, trained by `loomsight train`"
        )
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad = False
    train_args = ckpt.get("train_args") or {}
    imgsz = train_args.get("imgsz") if isinstance(train_args, dict) else None
    if isinstance(imgsz, (list, tuple)):
        imgsz = imgsz[0] if len(set(imgsz)) == 1 else None
    meta = {k: ckpt.get(k) for k in ("date", "version", "epoch") if ckpt.get(k) is not None}
    return Checkpoint(
        path=path,
        model=model,
        classes=_class_names(getattr(model, "names", None), int(head.nc), path),
        num_queries=int(head.num_queries),
        imgsz=int(imgsz) if isinstance(imgsz, int) else None,
        training=read_training_record(path, ckpt),
        ultralytics_meta=meta,
    )
