"""Train an RT-DETR detector with ultralytics, offline and resumable.

Models are built from YAML (a `.pt` name would make ultralytics download weights); pretrained
weights are only ever a local file the user passes. Ultralytics is kept offline
(`YOLO_OFFLINE=1`) and its settings live inside the project (`YOLO_CONFIG_DIR`). Beside the
weights we write `loomsight_train.json`: the resolution, tiling and classes the model was trained
with, which `loomsight export` copies into the bundle manifest.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from offline_train.dataset.builder import read_card
from runtime.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
SIDECAR_NAME = "loomsight_train.json"
# Project configs live here; the two ultralytics ones are built from ultralytics' own YAML files.
MODEL_CONFIGS = {
    "loomsight-s": str(CONFIG_DIR / "loomsight-s.yaml"),
    "loomsight-xs": str(CONFIG_DIR / "loomsight-xs.yaml"),
    "rtdetr-l": "rtdetr-l.yaml",
    "rtdetr-resnet50": "rtdetr-resnet50.yaml",
}


def ensure_offline(project_root: Path | None = None) -> None:
    """Set ultralytics' environment before it is imported: no network, settings in the project.

    Ultralytics' dataset check looks for `Arial.ttf` in its config directory and, failing that,
    probes the internet to download it. We give it a local font instead: matplotlib's DejaVu Sans
    (installed with ultralytics), copied under that name into the project's config directory.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    if "YOLO_CONFIG_DIR" not in os.environ:
        root = project_root or Path.cwd()
        os.environ["YOLO_CONFIG_DIR"] = str(root / ".yolo")
    config_dir = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"  # ultralytics' USER_CONFIG_DIR
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = config_dir / name
        if not target.exists():
            import shutil

            import matplotlib

            font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            if font.is_file():
                shutil.copyfile(font, target)
                log.debug("local font %s -> %s", font, target)


@dataclass
class TrainOptions:
    dataset: Path
    out: Path = Path("runs/train")
    name: str = "loomsight"
    model: str = "loomsight-s"
    weights: Path | None = None  # local pretrained weights or a checkpoint to fine-tune
    epochs: int = 100
    batch: int = 16
    device: str = "cpu"
    workers: int = 2
    patience: int = 0  # 0 = never stop early
    seed: int = 0
    resume: bool = False
    lr0: float | None = None
    # Ultralytics warms up over 3 epochs, starting the bias learning rate at 0.1: a recipe for a
    # run from scratch, not for weights that are already trained. None: 3 from scratch, 0 when
    # starting from --weights (not measured against each other here).
    warmup_epochs: float | None = None
    threads: int | None = None  # CPU threads for torch; None = every core
    backbone_from: Path | None = None  # a dense checkpoint whose encoder starts the backbone
    backbone_freeze_epochs: int = 2  # the transferred backbone is frozen this long
    command: str = ""  # the command line, for the training record
    time_hours: float | None = None  # stop after this much training (ultralytics `time`; overrides epochs)
    augment: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    run_dir: Path
    best: Path
    last: Path
    sidecar: Path
    metrics: dict[str, Any]


# Fabric is seen from above on a flat web: flips in both axes are fine, colour shifts are not (gray
# line-scan), and geometry changes stay mild so yarn pitch keeps its meaning.
DEFAULT_AUGMENT: dict[str, float] = {
    "fliplr": 0.5,
    "flipud": 0.5,
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.25,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.25,
    "mosaic": 0.5,
    "mixup": 0.0,
}


def _model_source(opts: TrainOptions) -> str:
    if opts.model in MODEL_CONFIGS:
        return MODEL_CONFIGS[opts.model]
    path = Path(opts.model)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return str(path)
    raise ConfigError(
        f"--model {opts.model!r} is neither a known config ({', '.join(MODEL_CONFIGS)}) nor a YAML file; "
        "pass weights as a local file with --weights"
    )


def _check_weights(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(
            f"--weights {path} does not exist; pretrained weights must be a local file (nothing is downloaded)"
        )
    return path


def train(opts: TrainOptions) -> TrainResult:
    data_yaml = Path(opts.dataset) / "data.yaml"
    if not data_yaml.is_file():
        raise ConfigError(f"{opts.dataset} has no data.yaml; build one with `loomsight dataset`")
    card = read_card(opts.dataset)
    spec = card["spec"]
    ensure_offline(Path(opts.out).resolve())  # ultralytics' settings under --out, not the working directory
    from ultralytics import RTDETR

    run_dir = Path(opts.out).resolve() / opts.name
    last = run_dir / "weights" / "last.pt"
    # Written before the first epoch, so that an interrupted run's last.pt can be exported too.
    write_sidecar(run_dir / "weights" / SIDECAR_NAME, card=card, opts=opts, metrics={})
    _use_threads(model_threads := opts.threads or (os.cpu_count() or 1))
    if opts.resume:
        if not last.is_file():
            raise ConfigError(f"--resume: no checkpoint at {last}; start without --resume")
        log.info("resuming %s", last)
        model = RTDETR(str(last))
        _keep_threads(model, model_threads)
        results = model.train(resume=True, device=opts.device, workers=opts.workers)
    else:
        args = ultralytics_args(opts, data_yaml, tile_px=int(spec["tile_px"]))  # bad options fail first
        model = RTDETR(_model_source(opts))
        _keep_threads(model, model_threads)
        if opts.weights is not None and opts.backbone_from is not None:
            raise ConfigError(
                "give --weights (a whole detector) or --backbone-from (a dense encoder), not both"
            )
        if opts.weights is not None:
            model.load(str(_check_weights(Path(opts.weights))))
        if opts.backbone_from is not None:
            from offline_train.backbone_transfer import load_backbone, unfreeze_after

            n_layers = load_backbone(model, _check_weights(Path(opts.backbone_from)))
            if opts.backbone_freeze_epochs > 0:
                args["freeze"] = n_layers
                unfreeze_after(model, n_layers, opts.backbone_freeze_epochs)
        results = model.train(**args)
    trainer = model.trainer
    save_dir = Path(trainer.save_dir) if trainer is not None else run_dir
    best = save_dir / "weights" / "best.pt"
    last = save_dir / "weights" / "last.pt"
    metrics = {k: float(v) for k, v in (getattr(results, "results_dict", None) or {}).items()}
    sidecar = save_dir / "weights" / SIDECAR_NAME
    write_sidecar(sidecar, card=card, opts=opts, metrics=metrics)
    return TrainResult(
        run_dir=save_dir, best=best if best.is_file() else last, last=last, sidecar=sidecar, metrics=metrics
    )


def ultralytics_args(opts: TrainOptions, data_yaml: Path, *, tile_px: int) -> dict[str, Any]:
    """The arguments of a new (not resumed) ultralytics training run."""
    args: dict[str, Any] = {
        "data": str(data_yaml.resolve()),
        "epochs": opts.epochs,
        "imgsz": tile_px,
        "batch": opts.batch,
        "device": opts.device,
        "workers": opts.workers,
        "project": str(Path(opts.out).resolve()),
        "name": opts.name,
        "exist_ok": True,
        "plots": False,  # plots want a font from the internet
        "amp": opts.device != "cpu",
        "seed": opts.seed,
        "patience": opts.patience or opts.epochs + 1,
        "val": True,
        "verbose": False,
        **DEFAULT_AUGMENT,
        **opts.augment,
    }
    if opts.lr0 is not None:
        args["lr0"] = opts.lr0
        args["optimizer"] = "AdamW"
    if opts.time_hours is not None:
        if opts.time_hours <= 0:
            raise ConfigError(f"a training budget of {opts.time_hours} h is not positive")
        args["time"] = float(opts.time_hours)
    warmup = opts.warmup_epochs
    if warmup is None:
        warmup = 0.0 if opts.weights is not None else 3.0
    if warmup < 0:
        raise ConfigError(f"--warmup-epochs {warmup} is negative; use 0 for no warm-up")
    args["warmup_epochs"] = float(warmup)
    return args


def _use_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _keep_threads(model: Any, n: int) -> None:
    """Ultralytics trains on cpu_count - 1 threads (one, on a 2-core box); put them all to work."""
    model.add_callback("on_train_epoch_start", lambda trainer: _use_threads(n))
    model.add_callback("on_pretrain_routine_end", lambda trainer: _use_threads(n))


def write_sidecar(path: Path, *, card: dict[str, Any], opts: TrainOptions, metrics: dict[str, Any]) -> None:
    spec = card["spec"]
    doc = {
        "schema": "loomsight.train/1",
        "mm_per_px": spec["mm_per_px"],
        "tile_px": spec["tile_px"],
        "overlap_px": spec["overlap_px"],
        "color": spec.get("color", "gray"),
        "classes": spec["classes"],
        "dataset": str(Path(opts.dataset).resolve()),
        "dataset_sha256": card.get("content_sha256", ""),
        "model": opts.model,
        "weights": str(opts.weights) if opts.weights else None,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "command": opts.command or " ".join(sys.argv),
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metrics": metrics,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")


def read_sidecar(weights: Path) -> dict[str, Any] | None:
    """The training metadata beside a checkpoint, if `loomsight train` wrote one."""
    path = Path(weights).parent / SIDECAR_NAME
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))
