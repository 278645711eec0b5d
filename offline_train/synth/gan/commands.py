"""`loomsight gan train`: the Multistage GAN on a dataset's real defects (light: torch loads in run)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime.commands import Command


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset",
        type=Path,
        help="a `loomsight dataset` directory with masks/ (best: --sim-webs N --synth none)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="run folder: last.pt, record.json, samples/ (continued when it holds last.pt)",
    )
    p.add_argument(
        "--patch-px", type=int, default=64, help="patch size at model resolution (power of two, 16..256)"
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training time in all, data loading not counted (stage 1 gets 60 %% with --stage both)",
    )
    budget.add_argument(
        "--steps", type=int, default=None, help="steps per stage (default 500 when no --minutes)"
    )
    p.add_argument(
        "--stage",
        choices=("1", "2", "both"),
        default="both",
        help="1: defect generator; 2: fusion net (needs stage 1)",
    )
    p.add_argument(
        "--vgg16-weights",
        type=Path,
        default=None,
        help="LOCAL torchvision VGG16 state dict for the texture code (default: seeded random filters)",
    )
    p.add_argument(
        "--real-crops",
        type=Path,
        default=None,
        help="also learn from a folder of real defect crops (NAME.png, NAME_mask.png, NAME.json)",
    )
    p.add_argument(
        "--loss",
        choices=("rpgan", "bce"),
        default="rpgan",
        help="rpgan: R3GAN's relativistic pairing loss; bce: classic non-saturating",
    )
    p.add_argument("--gamma", type=float, default=1.0, help="R1/R2 weight at the start")
    p.add_argument("--gamma-end", type=float, default=0.1, help="R1/R2 weight at the end of the schedule")
    p.add_argument("--gamma-schedule", choices=("cosine", "linear", "constant"), default="cosine")
    p.add_argument(
        "--gamma-horizon-steps",
        type=int,
        default=None,
        help="steps over which gamma decays (default: --steps, else 4000)",
    )
    p.add_argument(
        "--augment",
        default="translation,cutout,brightness",
        help="differentiable augmentation policy, or 'none'",
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument(
        "--rec-weight", type=float, default=5.0, help="stage 2: weight of the L1 reconstruction term"
    )
    p.add_argument(
        "--checkpoint-every-s", type=float, default=120.0, help="write last.pt and a sample grid this often"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="gan_action", metavar="ACTION", required=True)
    train = sub.add_parser(
        "train",
        help="train the texture-conditioned defect generator (stage 1) and the fusion net (stage 2)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _train_args(train)


def _run(args: argparse.Namespace) -> int:
    import torch

    from offline_train.synth.gan.checkpoint import GanConfig
    from offline_train.synth.gan.data import from_dataset, with_crops
    from offline_train.synth.gan.texture import ExtractorConfig, file_sha256
    from offline_train.synth.gan.train import train_gan
    from runtime.errors import ConfigError

    if args.gan_action != "train":
        raise ConfigError(f"unknown gan action {args.gan_action!r}; try `loomsight gan train --help`")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.patch_px < 16 or args.patch_px > 256 or args.patch_px & (args.patch_px - 1):
        raise ConfigError(f"--patch-px must be a power of two in 16..256, got {args.patch_px}")
    if args.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {args.batch}")
    steps = args.steps if args.steps is not None or args.minutes is not None else 500
    extractor = ExtractorConfig()
    if args.vgg16_weights is not None:
        if not args.vgg16_weights.is_file():
            raise ConfigError(
                f"--vgg16-weights {args.vgg16_weights} does not exist (a local file is needed; nothing is downloaded)"
            )
        extractor = ExtractorConfig(
            kind="vgg16",
            vgg_weights=str(args.vgg16_weights.resolve()),
            vgg_sha256=file_sha256(args.vgg16_weights),
        )
    data = from_dataset(args.dataset, args.patch_px, seed=args.seed)
    if args.real_crops is not None:
        data = with_crops(data, args.real_crops, seed=args.seed)
    horizon = args.gamma_horizon_steps or steps or 4000
    cfg = GanConfig(
        classes=data.classes,
        patch_px=args.patch_px,
        extractor=extractor,
        loss=args.loss,
        gamma_start=args.gamma,
        gamma_end=args.gamma_end,
        gamma_schedule=args.gamma_schedule,
        gamma_horizon_steps=horizon,
        lr=args.lr,
        batch=args.batch,
        rec_weight=args.rec_weight,
        augment=args.augment,
        seed=args.seed,
    )
    print(
        f"GAN data: {len(data)} real defects {data.counts()}, {len(data.clean_tiles)} clean tiles",
        file=sys.stderr,
    )
    record = train_gan(
        data,
        args.out,
        cfg,
        stage=args.stage,
        steps=steps,
        minutes=args.minutes,
        vgg_weights=args.vgg16_weights,
        checkpoint_every_s=args.checkpoint_every_s,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
    )
    summary = {
        k: record[k]
        for k in ("wall_clock_hours", "stage1_steps", "stage2_steps", "steps_per_s", "data_sha256")
    }
    print(json.dumps({"out": str(args.out), "checkpoint": str(args.out / "last.pt"), **summary}))
    return 0


GAN = Command(
    name="gan",
    help="the Multistage GAN defect synthesizer: `loomsight gan train DATASET --out DIR`",
    add_arguments=_add_arguments,
    run=_run,
    extra="train",
    needs=("torch", "torchvision"),
)
