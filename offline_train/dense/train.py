"""Train DenseDefectNet on a dataset's exact masks: plain PyTorch, on the CPU, resumable.

`weights/last.pt` is written every `checkpoint_every_s` seconds and at every epoch end (model,
optimiser, schedule, the position inside the epoch and the wall clock spent so far), so a run
that is killed loses at most that much; `--resume` continues it. `weights/best.pt` holds the epoch
with the best validation score (mean over classes of the tile recall at P >= 0.5, minus the
share of clean validation tiles that raise any defect pixel at P >= 0.5). Beside them
`loomsight_train.json` is the training record that `loomsight export` copies into the bundle.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from offline_train.dataset.builder import read_card
from offline_train.dense.data import (
    TileMaskDataset,
    TileRecord,
    class_pixel_weights,
    list_split,
    sampling_weights,
)
from offline_train.dense.loss import dense_loss, downsample_labels
from offline_train.dense.model import OUTPUT_STRIDE_PX, DenseDefectNet, count_parameters
from offline_train.train import SIDECAR_NAME  # one training-record name for both trainers
from runtime.errors import ConfigError

log = logging.getLogger(__name__)

ARCH = "dense"


@dataclass
class DenseOptions:
    dataset: Path
    out: Path = Path("runs/train")
    name: str = "dense"
    weights: Path | None = None  # a dense checkpoint to fine-tune from
    epochs: int = 20
    batch: int = 16
    samples_per_epoch: int = 4000
    lr0: float = 2e-3
    weight_decay: float = 1e-4
    val_tiles: int = 600
    clean_share: float = 0.25
    threads: int | None = None
    seed: int = 0
    resume: bool = False
    checkpoint_every_s: float = 300.0
    hours: float | None = None  # stop (checkpointed, resumable) after this much wall clock
    also: list[tuple[Path, float]] = field(default_factory=list)  # extra datasets' train tiles, draw weight
    command: str = ""


@dataclass
class DenseResult:
    run_dir: Path
    best: Path
    last: Path
    sidecar: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def _progress(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar on a terminal, none otherwise (the training loop then prints a plain line every 10 %)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # never a half-written checkpoint


def load_dense_checkpoint(path: Path) -> tuple[DenseDefectNet, dict[str, Any]]:
    """The model of a dense checkpoint (best.pt or last.pt) and the checkpoint's record."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("arch") != ARCH:
        raise ConfigError(f"{path} is not a dense checkpoint (made by `loomsight train --arch dense`)")
    model = DenseDefectNet(**ckpt["hparams"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


@torch.no_grad()
def validate(model: DenseDefectNet, records: list[TileRecord], channels: int, batch: int) -> dict[str, Any]:
    """Tile recall per class (P(defect) * P(class) >= 0.5 somewhere inside the true mask) and the
    clean tiles' false-alarm share (any cell P(defect) >= 0.5)."""
    model.eval()
    ds = TileMaskDataset(records, channels=channels, augment=False)
    n_cls = model.num_classes
    hit, seen = np.zeros(n_cls), np.zeros(n_cls)
    clean_alarm = clean_seen = 0
    for i in range(0, len(ds), batch):
        xs, ys = zip(*(ds[j] for j in range(i, min(i + batch, len(ds)))), strict=True)
        prob = model(torch.stack(xs).contiguous(memory_format=torch.channels_last))
        label = downsample_labels(torch.stack(ys), OUTPUT_STRIDE_PX)
        p_def = prob[:, 0]
        for k in range(len(xs)):
            lab = label[k]
            if not bool((lab > 0).any()):
                clean_seen += 1
                clean_alarm += int(bool((p_def[k] >= 0.5).any()))
                continue
            for c in torch.unique(lab[lab > 0]).tolist():
                region = lab == c
                seen[c - 1] += 1
                score = (p_def[k] * prob[k, c])[region].max()
                hit[c - 1] += float(score >= 0.5)
    recall = np.where(seen > 0, hit / np.maximum(seen, 1), np.nan)
    present = recall[~np.isnan(recall)]
    fa = clean_alarm / clean_seen if clean_seen else 0.0
    score = float(present.mean() - fa) if len(present) else -fa
    model.train()
    return {
        "tile_recall": {
            str(c): (None if math.isnan(r) else round(float(r), 4)) for c, r in enumerate(recall)
        },
        "clean_alarm_share": round(fa, 4),
        "score": round(score, 4),
    }


def train_dense(opts: DenseOptions) -> DenseResult:
    dataset = Path(opts.dataset)
    card = read_card(dataset)
    spec = card["spec"]
    classes = list(spec["classes"])
    channels = 1 if spec.get("color", "gray") == "gray" else 3
    if opts.batch < 2:
        raise ConfigError(f"--batch {opts.batch}: BatchNorm needs at least 2 tiles per batch")
    train_rec = list_split(dataset, "train")
    val_rec = list_split(dataset, "val")
    rng = np.random.default_rng(opts.seed)
    if len(val_rec) > opts.val_tiles:
        val_rec = [val_rec[i] for i in sorted(rng.choice(len(val_rec), opts.val_tiles, replace=False))]
    torch.manual_seed(opts.seed)
    torch.set_num_threads(opts.threads or torch.get_num_threads())

    run_dir = Path(opts.out).resolve() / opts.name
    wdir = run_dir / "weights"
    wdir.mkdir(parents=True, exist_ok=True)
    last, best = wdir / "last.pt", wdir / "best.pt"

    model = DenseDefectNet(len(classes), in_channels=channels)
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr0, weight_decay=opts.weight_decay)
    steps_per_epoch = max(1, opts.samples_per_epoch // opts.batch)
    total_steps = steps_per_epoch * opts.epochs
    warmup = 0 if opts.weights else min(200, total_steps // 10)

    def lr_at(step: int, spent_s: float) -> float:
        """Linear warm-up, then cosine to 2 % of lr0 over the epochs, or over the time budget
        (--hours) when one is given: the schedule ends when the budget does, however fast the box."""
        if step < warmup:
            return opts.lr0 * (step + 1) / warmup
        t = spent_s / (opts.hours * 3600) if opts.hours else (step - warmup) / max(1, total_steps - warmup)
        return opts.lr0 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    epoch, step_in_epoch, elapsed_s, best_score = 0, 0, 0.0, -math.inf
    history: list[dict[str, Any]] = []
    if opts.resume:
        if not last.is_file():
            raise ConfigError(f"--resume: no checkpoint at {last}; start without --resume")
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optim.load_state_dict(ckpt["optimizer"])
        epoch, step_in_epoch = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        elapsed_s, best_score = float(ckpt["elapsed_s"]), float(ckpt["best_score"])
        history = list(ckpt.get("history", []))
        log.info(
            "resuming %s at epoch %d step %d (%.2f h so far)",
            last,
            epoch + 1,
            step_in_epoch,
            elapsed_s / 3600,
        )
    elif opts.weights is not None:
        start, _ = load_dense_checkpoint(Path(opts.weights))
        if start.num_classes != len(classes) or start.in_channels != channels:
            raise ConfigError(
                f"--weights {opts.weights} has {start.num_classes} classes / {start.in_channels} channels; "
                f"the dataset has {len(classes)} / {channels}"
            )
        model.load_state_dict(start.state_dict())

    # channels-last convolutions run ~3x faster on the CPU (oneDNN), measured on the 2-core box
    model.to(memory_format=torch.channels_last)
    ce_weights = torch.from_numpy(class_pixel_weights(train_rec, len(classes)))
    sampler_w = sampling_weights(train_rec, opts.clean_share)
    for extra_dir, weight in opts.also:
        extra = list_split(Path(extra_dir), "train")
        if list(read_card(Path(extra_dir))["spec"]["classes"]) != classes:
            raise ConfigError(f"--also {extra_dir}: its classes differ from {dataset}'s {classes}")
        # each extra tile is drawn as often as an average tile of the main set, times `weight`
        extra_w = sampling_weights(extra, opts.clean_share) * (weight * len(extra) / len(train_rec))
        sampler_w = np.concatenate([sampler_w, extra_w])
        sampler_w /= sampler_w.sum()
        train_rec = train_rec + extra
        log.info("--also %s: %d tiles, draw weight %g", extra_dir, len(extra), weight)
    ds = TileMaskDataset(train_rec, channels=channels, augment=True, seed=opts.seed)
    log.info(
        "dense model %.2f M parameters, %d classes, %d train / %d val tiles, %d steps per epoch",
        count_parameters(model) / 1e6, len(classes), len(train_rec), len(val_rec), steps_per_epoch,
    )  # fmt: skip

    def state(ep: int, step: int) -> dict[str, Any]:
        return {
            "arch": ARCH, "hparams": model.hparams(), "classes": classes, "model": model.state_dict(),
            "optimizer": optim.state_dict(), "epoch": ep, "step_in_epoch": step,
            "elapsed_s": elapsed_s, "best_score": best_score, "history": history,
            "spec": spec, "options": {k: str(v) for k, v in asdict(opts).items()},
        }  # fmt: skip

    write_sidecar(wdir / SIDECAR_NAME, card, opts, elapsed_s, history)
    tty = sys.stderr.isatty()
    model.train()
    last_ckpt = time.monotonic()
    budget_s = opts.hours * 3600 if opts.hours else math.inf
    stopped_early = False
    while epoch < opts.epochs and not stopped_early:
        sampler = WeightedRandomSampler(
            sampler_w.tolist(), steps_per_epoch * opts.batch, replacement=True,
            generator=torch.Generator().manual_seed(opts.seed * 1000 + epoch),
        )  # fmt: skip
        loader = DataLoader(ds, batch_size=opts.batch, sampler=sampler, num_workers=0, drop_last=True)
        bar = _progress(tty, steps_per_epoch, f"epoch {epoch + 1}/{opts.epochs}")
        bar.update(step_in_epoch)
        sums: dict[str, float] = {}
        t_epoch = time.monotonic()
        for i, (x, y) in enumerate(loader):
            if i < step_in_epoch:
                continue  # resumed mid-epoch: these steps were trained before the stop
            t0 = time.monotonic()
            for g in optim.param_groups:
                g["lr"] = lr_at(epoch * steps_per_epoch + i, elapsed_s)
            d_logit, c_logits = model.logits(x.contiguous(memory_format=torch.channels_last))
            loss, parts = dense_loss(
                d_logit, c_logits, downsample_labels(y, OUTPUT_STRIDE_PX), class_weights=ce_weights
            )
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            elapsed_s += time.monotonic() - t0
            step_in_epoch = i + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if not tty and (i + 1) % max(1, steps_per_epoch // 10) == 0:
                print(f"epoch {epoch + 1}/{opts.epochs} step {i + 1}/{steps_per_epoch} loss {float(loss.detach()):.3f} "
                      f"({elapsed_s / 3600:.2f} h)", file=sys.stderr, flush=True)  # fmt: skip
            if time.monotonic() - last_ckpt >= opts.checkpoint_every_s:
                _save(last, state(epoch, step_in_epoch))
                last_ckpt = time.monotonic()
            if elapsed_s >= budget_s:
                stopped_early = True
                break
        bar.close()
        if stopped_early and step_in_epoch < steps_per_epoch:
            _save(last, state(epoch, step_in_epoch))
            log.info(
                "time budget of %.2f h reached inside epoch %d: checkpointed, --resume continues",
                opts.hours or 0,
                epoch + 1,
            )
            break
        t_val = time.monotonic()
        val = validate(model, val_rec, channels, opts.batch)
        elapsed_s += time.monotonic() - t_val
        named = {classes[int(c)]: r for c, r in val["tile_recall"].items()}
        row = {"epoch": epoch + 1, **{k: round(v / steps_per_epoch, 4) for k, v in sums.items()},
               "val_score": val["score"], "clean_alarm_share": val["clean_alarm_share"],
               "tile_recall": named, "epoch_s": round(time.monotonic() - t_epoch, 1)}  # fmt: skip
        history.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        epoch, step_in_epoch = epoch + 1, 0
        if val["score"] > best_score:
            best_score = val["score"]
            _save(best, state(epoch, 0))
        _save(last, state(epoch, 0))
        last_ckpt = time.monotonic()
        write_sidecar(wdir / SIDECAR_NAME, card, opts, elapsed_s, history)
    if not best.is_file():
        _save(best, state(epoch, step_in_epoch))
    write_sidecar(wdir / SIDECAR_NAME, card, opts, elapsed_s, history)
    metrics = {"best_val_score": best_score, "epochs_done": epoch, "wall_clock_h": round(elapsed_s / 3600, 3)}
    return DenseResult(run_dir, best, last, wdir / SIDECAR_NAME, metrics)


def write_sidecar(
    path: Path, card: dict[str, Any], opts: DenseOptions, elapsed_s: float, history: list[dict[str, Any]]
) -> None:
    spec = card["spec"]
    doc = {
        "schema": "loomsight.train/1",
        "arch": ARCH,
        "mm_per_px": spec["mm_per_px"],
        "tile_px": spec["tile_px"],
        "overlap_px": spec["overlap_px"],
        "color": spec.get("color", "gray"),
        "classes": spec["classes"],
        "dataset": str(Path(opts.dataset).resolve()),
        "dataset_sha256": card.get("content_sha256", ""),
        "model": "dense",
        "weights": str(opts.weights) if opts.weights else None,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "command": opts.command or " ".join(sys.argv),
        "wall_clock_h": round(elapsed_s / 3600, 3),
        "wall_clock_s": round(elapsed_s, 1),
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metrics": {"history": history},
    }
    path.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
