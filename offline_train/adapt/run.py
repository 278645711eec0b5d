"""`loomsight adapt`: a bundle for a new fabric from defect-free images of it, in one command.

Steps (each printed as it starts): read and check the clean images; hold back part of them by
image; place synthetic defects on the held-back tiles (always the non-learned families, a fixed
seed: before and after are measured on the same defects); measure the source bundle there; build
the training set on the new fabric's tiles with the chosen synthesizers; fine-tune the bundle's
model within the budget; export; choose thresholds on the held-back clean web for the target
false-alarm rate (the lowest the clean fabric allows, from the grid's floor up); measure again; write the bundle (manifest provenance: the source bundle, the
clean images' sha256, the synthesizers, the budget) with `adaptation.md`, `adaptation.png` and
`adaptation.json`. The new bundle appears at --out only when everything succeeded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline_train.adapt import check
from offline_train.adapt.finetune import (
    build_training_set,
    check_budget,
    export,
    fine_tunable_weights,
    fine_tune,
)
from offline_train.adapt.inputs import check_scale, read_clean_images, split_by_image
from offline_train.adapt.report import write_report
from offline_train.adapt.synths import DEFAULT_FAMILIES, build_synthesizers
from runtime.errors import ConfigError

log = logging.getLogger(__name__)

CHECK_SEED = 424242


@dataclass
class AdaptOptions:
    clean: list[Path]
    mm_per_px: float
    source: Path
    out: Path
    mm_per_line: float | None = None
    minutes: float = 12.0
    synth: tuple[str, ...] = DEFAULT_FAMILIES
    target_false_alarms_per_m2: float = 0.5
    variants: int = 3
    sim_webs: int = 4
    val_share: float = 0.25
    check_defects_per_tile: int = 2
    seed: int = 0
    gan_checkpoint: Path | None = None
    work_dir: Path | None = None  # default: a temporary folder beside --out, removed on success
    command: str = ""


@dataclass
class AdaptResult:
    bundle: Path
    summary: dict[str, Any] = field(default_factory=dict)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _measure(bundle: Path, held: check.HeldOut, webs: list[Any], classes: list[str], *,
             thresholds: dict[str, float] | None, target: float) -> tuple[dict[str, Any], bool]:  # fmt: skip
    scores = check.run_detector(bundle, held, webs)
    from runtime.detect.manifest import read_manifest

    met = True
    if thresholds is None:
        start = dict.fromkeys(read_manifest(bundle).classes, check.GRID[0])
        thresholds, met = check.choose_thresholds(scores, start, held.area_m2, target)
    fa = check.false_alarms_per_m2(scores, thresholds, held.area_m2)
    recall = check.synthetic_recall(held, scores, classes, thresholds)
    return {
        "thresholds": thresholds, "false_alarms_per_m2": round(sum(fa.values()), 3),
        "false_alarms_by_class": {c: round(v, 3) for c, v in fa.items()}, **recall,
    }, met  # fmt: skip


def adapt(opts: AdaptOptions) -> AdaptResult:
    from runtime.detect.bundle import load_bundle

    t0 = time.monotonic()
    out = Path(opts.out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"--out {out} exists and is not empty; choose a new folder (nothing is overwritten)"
        )
    source = load_bundle(opts.source)  # a clear ModelError for a missing or corrupt bundle
    manifest = source.manifest
    mm_per_line = opts.mm_per_line or opts.mm_per_px
    check_scale(opts.mm_per_px, mm_per_line, manifest.mm_per_px)
    check_budget(opts.minutes)
    weights = fine_tunable_weights(source.path) if opts.minutes > 0 else None
    if opts.target_false_alarms_per_m2 < 0:
        raise ConfigError(f"--target-false-alarms-per-m2 {opts.target_false_alarms_per_m2} must be >= 0")

    _say("[1/6] reading the clean images")
    images = read_clean_images(opts.clean)
    split = split_by_image(
        images, mm_per_px=opts.mm_per_px, mm_per_line=mm_per_line, val_share=opts.val_share
    )
    _say(f"      {len(images)} image(s): {split.train_area_m2:.2f} m^2 to train on, {split.val_area_m2:.2f} m^2 "
         f"held back {split.how}")  # fmt: skip
    classes = list(manifest.classes)
    tile_px, color = manifest.tile.size_px, manifest.input.color
    clean = check.held_out_tiles(split.val, mm_per_px=manifest.mm_per_px, tile_px=tile_px, color=color)
    area = split.val_area_m2
    if len(clean) == 0:
        raise ConfigError(f"the held-back images are smaller than one {tile_px} px tile at the model's resolution; "
                          "give larger or more clean images")  # fmt: skip
    checkers = build_synthesizers(
        DEFAULT_FAMILIES, mm_per_px=manifest.mm_per_px, seed=CHECK_SEED, progress=None
    )
    held = check.HeldOut(clean, area, check.place_synthetic(
        clean, checkers, per_tile=opts.check_defects_per_tile, seed=CHECK_SEED))  # fmt: skip

    _say(f"[2/6] measuring the source bundle on {len(clean)} held-back tiles ({area:.2f} m^2) and "
         f"{len(held.synthetic)} synthetic defects")  # fmt: skip
    before, _ = _measure(source.path, held, split.val, classes, thresholds=dict(manifest.thresholds),
                         target=opts.target_false_alarms_per_m2)  # fmt: skip

    work_parent = Path(opts.work_dir) if opts.work_dir else out.resolve().parent
    work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.adapt.", dir=work_parent))
    training_tiles = 0
    try:
        if weights is not None:
            _say(f"[3/6] building the training set ({', '.join(opts.synth) or 'no synthesizers'})")
            synths = build_synthesizers(opts.synth, mm_per_px=manifest.mm_per_px, seed=opts.seed,
                                        gan_checkpoint=opts.gan_checkpoint, progress=_say)  # fmt: skip
            card = build_training_set(
                work / "dataset", manifest, split.train, split.val, synths, variants=opts.variants,
                sim_webs=opts.sim_webs, seed=opts.seed, recipe={"command": opts.command}, progress=_say,
            )  # fmt: skip
            training_tiles = int(card.tiles.get("train", 0))
            _say(f"[4/6] fine-tuning for {opts.minutes:g} min from {weights}")
            best, _metrics = fine_tune(work / "dataset", manifest, weights, minutes=opts.minutes,
                                       out=work / "train", seed=opts.seed)  # fmt: skip
            _say("[5/6] exporting")
            new = export(best, work / "bundle", manifest, name=f"{manifest.name}-adapted")
        else:
            _say("[3-5/6] --minutes 0: no fine-tune, thresholds only")
            new = work / "bundle"
            shutil.copytree(source.path, new)
        _say("[6/6] choosing thresholds on the held-back clean tiles and measuring again")
        after, met = _measure(
            new, held, split.val, classes, thresholds=None, target=opts.target_false_alarms_per_m2
        )
        summary: dict[str, Any] = {
            "source_bundle": str(opts.source), "clean_images": len(images),
            "clean_sha256": {str(i.path): i.sha256 for i in images}, "split": split.how,
            "train_area_m2": round(split.train_area_m2, 4), "val_area_m2": round(split.val_area_m2, 4),
            "held_back_tiles": len(clean), "synthesizers": list(opts.synth), "minutes": opts.minutes,
            "variants": opts.variants, "sim_webs": opts.sim_webs, "seed": opts.seed,
            "device": f"CPU ({os.cpu_count()} cores)", "training_tiles": training_tiles,
            "target_false_alarms_per_m2": opts.target_false_alarms_per_m2, "target_met": met,
            "before": before, "after": after, "command": opts.command,
        }  # fmt: skip
        summary["wall_s"] = round(time.monotonic() - t0, 1)
        _write_bundle_fields(new, manifest, after["thresholds"], summary)
        write_report(new, summary, held.synthetic, classes)
        (new / "adaptation.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(new, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _say(f"adapted bundle: {out} (report {out / 'adaptation.md'})")
    return AdaptResult(out, summary)


def _write_bundle_fields(
    bundle: Path, source: Any, thresholds: dict[str, float], summary: dict[str, Any]
) -> None:
    from offline_train.web_tune import write_manifest

    fields = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    fields["thresholds"] = thresholds
    fields["edge_mask_mm"] = dict(source.edge_mask_mm)
    prov = dict(fields.get("provenance") or {})
    prov["adaptation"] = {
        k: summary[k]
        for k in (
            "source_bundle",
            "clean_sha256",
            "synthesizers",
            "minutes",
            "variants",
            "sim_webs",
            "seed",
            "command",
        )
    }
    prov["adaptation"]["source_model"] = source.name
    fields["provenance"] = prov
    metrics = dict(fields.get("metrics") or {})
    metrics["adaptation"] = {
        k: summary[k]
        for k in (
            "before",
            "after",
            "target_false_alarms_per_m2",
            "target_met",
            "wall_s",
            "held_back_tiles",
            "val_area_m2",
        )
    }
    fields["metrics"] = metrics
    write_manifest(bundle, fields)
