"""`loomsight dataset`, `loomsight train` and `loomsight eval` (light: heavy imports happen in run)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.commands import Command

if TYPE_CHECKING:
    from offline_train.evaluate import RollPlan


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    src = p.add_argument_group("clean webs (one of)")
    src.add_argument("--sim-webs", type=int, default=0, help="render this many webs on the synthetic loom")
    src.add_argument("--clean", type=Path, default=None, help="folder of defect-free fabric images")
    p.add_argument("--sim-length-m", type=float, default=2.0, help="length of each simulated web")
    p.add_argument("--sim-width-px", type=int, default=2048)
    p.add_argument("--sim-defects-per-m", type=float, default=6.0)
    p.add_argument(
        "--camera-mm-per-px", type=float, default=None,
        help="resolution of the clean webs, across (required with --clean; the simulator's 0.1 with --sim-webs)",
    )  # fmt: skip
    p.add_argument(
        "--camera-mm-per-line", type=float, default=None,
        help="resolution of the clean webs, along (default: --camera-mm-per-px)",
    )  # fmt: skip
    p.add_argument("--mm-per-px", type=float, default=0.4, help="the model's resolution")
    p.add_argument("--tile-px", type=int, default=256)
    p.add_argument("--overlap-px", type=int, default=32)
    p.add_argument("--sim-class-weights", default=None, help="e.g. hole=3,broken_pick=2 (others 1)")
    p.add_argument(
        "--synth", default="default", help="'default', 'none', or comma-separated synthesizer names"
    )
    p.add_argument(
        "--cutpaste-per-class",
        type=int,
        default=0,
        help="add cut-paste: a library of this many simulator defects per class pasted onto clean tiles",
    )
    p.add_argument("--synth-probability", type=float, default=0.35)
    p.add_argument("--clean-keep-probability", type=float, default=0.15)
    p.add_argument("--val-every", type=int, default=5, help="every Nth web goes to the validation split")
    p.add_argument("--seed", type=int, default=0)


def _dataset_run(args: argparse.Namespace) -> int:
    from offline_train.dataset.builder import DatasetSpec, build_dataset
    from offline_train.dataset.webs import folder_webs, simulator_webs
    from runtime.errors import ConfigError
    from runtime.taxonomy import DEFECT_CLASSES

    if bool(args.sim_webs) == bool(args.clean):
        raise ConfigError("give exactly one source of clean webs: --sim-webs N or --clean DIR")
    if args.camera_mm_per_px is None:
        if args.clean:
            raise ConfigError(
                "--clean needs --camera-mm-per-px (the images' mm per pixel across): tiles are resampled to the "
                f"model's {args.mm_per_px} mm/px, so a wrong guess changes every defect's size"
            )
        args.camera_mm_per_px = 0.1  # the simulator's camera
    if args.camera_mm_per_line is None:
        args.camera_mm_per_line = args.camera_mm_per_px
    spec = DatasetSpec(
        classes=tuple(DEFECT_CLASSES),
        mm_per_px=args.mm_per_px,
        tile_px=args.tile_px,
        overlap_px=args.overlap_px,
        val_every=args.val_every,
        synth_probability=args.synth_probability,
        clean_keep_probability=args.clean_keep_probability,
        seed=args.seed,
    )
    if args.sim_webs:
        webs = simulator_webs(
            args.sim_webs,
            length_m=args.sim_length_m,
            width_px=args.sim_width_px,
            mm_per_px=args.camera_mm_per_px,
            mm_per_line=args.camera_mm_per_line,
            seed=args.seed,
            defects_per_m=args.sim_defects_per_m,
            class_weights=_parse_weights(args.sim_class_weights),
        )
    else:
        webs = folder_webs(args.clean, mm_per_px=args.camera_mm_per_px, mm_per_line=args.camera_mm_per_line)
    synths = _synthesizers(args.synth, args.mm_per_px, args.seed, args.cutpaste_per_class)
    # every argument (and the command line as typed): enough to build the same dataset again
    recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not callable(v)}
    card = build_dataset(
        webs, args.out, spec, synths, progress=lambda m: print(m, file=sys.stderr, flush=True), recipe=recipe
    )
    print(json.dumps({"out": str(args.out), "tiles": card.tiles, "sha256": card.content_sha256}))
    return 0


def _parse_weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    from runtime.errors import ConfigError

    weights: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--sim-class-weights: {part!r} is not CLASS=WEIGHT") from None
    return weights


def _synthesizers(choice: str, mm_per_px: float, seed: int, cutpaste_per_class: int = 0) -> list[Any]:
    if choice == "none":
        return []
    import numpy as np

    from offline_train.synth.library import DefectLibrary
    from offline_train.synth.registry import default_synthesizers

    library = None
    if cutpaste_per_class > 0:
        library = DefectLibrary.from_simulator(
            cutpaste_per_class,
            np.random.default_rng(seed + 17),
            mm_per_px,
            progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
    synths = default_synthesizers(library)
    if choice == "default":
        return list(synths)
    wanted = [c.strip() for c in choice.split(",") if c.strip()]
    by_name = {s.name: s for s in synths}
    missing = [w for w in wanted if w not in by_name]
    if missing:
        from runtime.errors import ConfigError

        raise ConfigError(f"--synth: unknown synthesizer(s) {missing}; available: {sorted(by_name)}")
    return [by_name[w] for w in wanted]


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="directory made by `loomsight dataset`")
    p.add_argument(
        "--arch", choices=("rtdetr", "dense"), default="rtdetr",
        help="rtdetr: the box detector (ultralytics); dense: the per-pixel defect model on the exact masks",
    )  # fmt: skip
    p.add_argument(
        "--model",
        default="loomsight-s",
        help="loomsight-s, loomsight-xs, rtdetr-l, rtdetr-resnet50 or a YAML",
    )
    p.add_argument(
        "--weights", type=Path, default=None, help="LOCAL pretrained weights / checkpoint to start from"
    )
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu", help="cpu, 0, 0,1 ...")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/train"))
    p.add_argument("--name", default="loomsight")
    p.add_argument("--patience", type=int, default=0, help="stop after this many epochs without improvement")
    p.add_argument("--lr0", type=float, default=None)
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=None,
        help="learning-rate warm-up (default: 3 from scratch, 0 when fine-tuning from --weights)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for training (default: every core)")
    p.add_argument("--resume", action="store_true", help="continue OUT/NAME/weights/last.pt")
    p.add_argument(
        "--backbone-from", type=Path, default=None,
        help="RT-DETR only: start the backbone from this dense checkpoint's encoder (--model loomsight-s)",
    )  # fmt: skip
    p.add_argument(
        "--backbone-freeze-epochs", type=int, default=2, help="keep the transferred backbone frozen this long"
    )
    dense = p.add_argument_group("dense model (--arch dense)")
    dense.add_argument(
        "--samples-per-epoch", type=int, default=4000, help="tiles drawn per epoch (rare classes first)"
    )
    dense.add_argument("--checkpoint-every-s", type=float, default=300.0, help="write last.pt this often")
    dense.add_argument(
        "--hours", type=float, default=None, help="stop after this much training time (resumable)"
    )
    dense.add_argument(
        "--also", action="append", default=[], metavar="DIR[:WEIGHT]",
        help="mix in another dataset's train tiles (e.g. `loomsight mine` hard negatives), their draws x WEIGHT",
    )  # fmt: skip


def _parse_also(values: list[str]) -> list[tuple[Path, float]]:
    out = []
    for v in values:
        path, _, weight = v.partition(":")
        try:
            out.append((Path(path), float(weight) if weight else 1.0))
        except ValueError:
            from runtime.errors import ConfigError

            raise ConfigError(f"--also {v!r}: expected DIR or DIR:WEIGHT with a number") from None
    return out


def _train_dense(args: argparse.Namespace) -> int:
    from offline_train.dense.train import DenseOptions, train_dense

    result = train_dense(
        DenseOptions(
            dataset=args.dataset, out=args.out, name=args.name, weights=args.weights, epochs=args.epochs,
            batch=args.batch, samples_per_epoch=args.samples_per_epoch,
            lr0=args.lr0 if args.lr0 is not None else (5e-4 if args.weights else 2e-3),
            threads=args.threads, seed=args.seed, resume=args.resume,
            checkpoint_every_s=args.checkpoint_every_s, hours=args.hours, also=_parse_also(args.also),
            command=" ".join(getattr(args, "command_line", [])),
        )
    )  # fmt: skip
    print(json.dumps({"best": str(result.best), "last": str(result.last), "metrics": result.metrics}))
    return 0


def _train_run(args: argparse.Namespace) -> int:
    if args.arch == "dense":
        return _train_dense(args)
    from offline_train.train import TrainOptions, train

    result = train(
        TrainOptions(
            dataset=args.dataset,
            out=args.out,
            name=args.name,
            model=args.model,
            weights=args.weights,
            epochs=args.epochs,
            batch=args.batch,
            device=args.device,
            workers=args.workers,
            patience=args.patience,
            seed=args.seed,
            resume=args.resume,
            lr0=args.lr0,
            warmup_epochs=args.warmup_epochs,
            threads=args.threads,
            backbone_from=args.backbone_from,
            backbone_freeze_epochs=args.backbone_freeze_epochs,
            command=" ".join(getattr(args, "command_line", [])),
        )
    )
    print(json.dumps({"best": str(result.best), "last": str(result.last), "metrics": result.metrics}))
    return 0


def _roll_args(p: argparse.ArgumentParser, *, rolls: int, seed: int, seed_help: str) -> None:
    """The synthetic rolls `eval` and `tune` run through the daemon."""
    p.add_argument("--rolls", type=int, default=rolls, help="synthetic rolls to run")
    p.add_argument("--length-m", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=seed, help=seed_help)
    p.add_argument(
        "--fabrics",
        default="all",
        help="'all' (the catalog, in turn) or comma-separated names; random:SEED is a held-out fabric",
    )
    p.add_argument("--defects-per-m", type=float, default=2.0)
    p.add_argument("--width-px", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)


def _roll_plan(args: argparse.Namespace) -> RollPlan:
    from offline_train.evaluate import RollPlan
    from runtime.sim.fabric import FABRICS, get_fabric

    fabrics = sorted(FABRICS) if args.fabrics == "all" else [f.strip() for f in args.fabrics.split(",")]
    for name in fabrics:
        get_fabric(name)  # a misspelt name fails here, not after the first rolls
    return RollPlan.consecutive(
        args.seed, args.rolls, fabrics, args.length_m,
        width_px=args.width_px, defects_per_m=args.defects_per_m, batch_size=args.batch,
    )  # fmt: skip


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="model bundle directory")
    _roll_args(
        p, rolls=6, seed=900001, seed_help="first roll seed (use seeds never used in training or tuning)"
    )
    p.add_argument(
        "--dataset", type=Path, default=None, help="also compute tile mAP on this dataset's val split"
    )
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON")
    p.add_argument(
        "--review-sheet", type=Path, default=None,
        help="write a picture of every miss, false alarm and duplicate here (.jpg or .png)",
    )  # fmt: skip
    p.add_argument(
        "--compare", type=Path, default=None,
        help="another eval's --out JSON (e.g. models/default/eval.json): print the figures side by side",
    )  # fmt: skip


def _eval_run(args: argparse.Namespace) -> int:
    from offline_train.evaluate import (
        evaluate_rolls,
        format_comparison,
        format_report,
        tile_map,
        write_report,
    )

    baseline = _read_eval_json(args.compare) if args.compare else None

    report = evaluate_rolls(
        args.bundle,
        _roll_plan(args),
        progress=lambda m: print(m, file=sys.stderr, flush=True),
        review_sheet=args.review_sheet,
    )
    if args.dataset is not None:
        report["tile"] = tile_map(args.bundle, args.dataset)
    print(format_report(report))
    if baseline is not None:
        print(format_comparison(report, baseline, str(args.compare)))
    if args.out:
        write_report(report, args.out)
    return 0


def _read_eval_json(path: Path) -> dict[str, Any]:
    from runtime.errors import ConfigError

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--compare {path}: cannot read an eval report there ({e})") from e
    if not isinstance(data, dict) or "web_class_aware" not in data:
        raise ConfigError(f"--compare {path}: not a `loomsight eval --out` report (no web_class_aware)")
    return data


def _tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="model bundle directory (its manifest.json is updated)")
    _roll_args(
        p, rolls=8, seed=800001, seed_help="first tuning seed (keep apart from training and eval seeds)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the chosen thresholds; leave the bundle as it is"
    )


def _tune_run(args: argparse.Namespace) -> int:
    from offline_train.web_tune import format_edge_masks, format_tuning, tune_bundle
    from runtime.detect.bundle import load_bundle

    previous = dict(load_bundle(args.bundle).manifest.thresholds)
    result = tune_bundle(
        args.bundle,
        _roll_plan(args),
        write=not args.dry_run,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(format_tuning(result.thresholds, previous))
    print(format_edge_masks(result.edge_masks))
    print(
        "dry run: the bundle is unchanged"
        if args.dry_run
        else f"thresholds and edge masks written to {args.bundle / 'manifest.json'}"
    )
    return 0


def _mine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="model bundle whose false alarms to collect")
    p.add_argument("--out", type=Path, required=True, help="dataset directory of hard negatives to write")
    p.add_argument("--sim-webs", type=int, required=True, help="clean simulator webs to render")
    p.add_argument("--sim-length-m", type=float, default=2.0)
    p.add_argument("--min-peak", type=float, default=0.3, help="keep tiles whose peak score reaches this")
    p.add_argument("--seed", type=int, default=70001, help="webs' first seed (keep apart from eval seeds)")


def _mine_run(args: argparse.Namespace) -> int:
    from offline_train.dense.mining import mine_hard_negatives

    if args.sim_webs < 1:
        from runtime.errors import ConfigError

        raise ConfigError(f"--sim-webs must be >= 1, got {args.sim_webs}")
    recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not callable(v)}
    stats = mine_hard_negatives(args.bundle, args.out, sim_webs=args.sim_webs, min_peak=args.min_peak,
                                seed=args.seed, length_m=args.sim_length_m, recipe=recipe)  # fmt: skip
    print(json.dumps({"out": str(args.out), **stats}))
    return 0


TRAIN_NEEDS = ("torch", "torchvision", "ultralytics")

DATASET = Command(
    name="dataset",
    help="build a training set from clean webs (simulator or images) and defect synthesizers",
    add_arguments=_dataset_args,
    run=_dataset_run,
)
TRAIN = Command(
    name="train",
    help="train an RT-DETR detector or the dense defect model on a dataset (offline, resumable)",
    add_arguments=_train_args,
    run=_train_run,
    extra="train",
    needs=TRAIN_NEEDS,
)
EVAL = Command(
    name="eval",
    help="web-level defect recall/precision on fresh synthetic rolls, and tile mAP",
    add_arguments=_eval_args,
    run=_eval_run,
    extra="train",
    needs=("pycocotools",),
)

MINE = Command(
    name="mine",
    help="hard negatives: clean simulator tiles on which a bundle fires, as a dataset for --also",
    add_arguments=_mine_args,
    run=_mine_run,
)

TUNE = Command(
    name="tune",
    help="choose per-class thresholds at web level (after merging) on synthetic tuning rolls",
    add_arguments=_tune_args,
    run=_tune_run,
)
