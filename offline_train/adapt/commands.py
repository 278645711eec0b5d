"""`loomsight adapt` (light: the work happens in offline_train.adapt.run)."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from runtime.commands import Command


def _adapt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clean", type=Path, nargs="+", required=True, metavar="IMAGES",
        help="defect-free images of the new fabric: files or folders (line-scan strips, tall web images, replay folders)",
    )  # fmt: skip
    p.add_argument(
        "--mm-per-px", type=float, required=True, help="the images' resolution across, mm per pixel"
    )
    p.add_argument("--mm-per-line", type=float, default=None, help="along the web (default: --mm-per-px)")
    p.add_argument("--from", dest="source", type=Path, default=Path("models/default"), help="bundle to adapt")
    p.add_argument("--out", type=Path, required=True, help="new bundle folder (must not exist or be empty)")
    p.add_argument(
        "--minutes", type=float, default=12.0,
        help="fine-tuning budget on this machine (0 = choose thresholds only); the whole run takes a few minutes more",
    )  # fmt: skip
    p.add_argument(
        "--synth", default="default",
        help="synthesizer families: perlin,streaks,blobs,cutpaste,gan ('default' = all but gan; 'none')",
    )  # fmt: skip
    p.add_argument("--gan-checkpoint", type=Path, default=None, help="generator from `loomsight gan train`")
    p.add_argument(
        "--target-false-alarms-per-m2", type=float, default=0.5,
        help="thresholds are raised until the held-back clean fabric gives at most this many false alarms per m^2",
    )  # fmt: skip
    p.add_argument(
        "--variants", type=int, default=3, help="passes over the training images, each with new defects"
    )
    p.add_argument(
        "--sim-webs", type=int, default=4,
        help="simulator webs with rendered defects mixed in, so classes no synthesizer makes are not forgotten",
    )  # fmt: skip
    p.add_argument("--val-share", type=float, default=0.25, help="share of the clean images held back")
    p.add_argument("--seed", type=int, default=0)


def _adapt_run(args: argparse.Namespace) -> int:
    from offline_train.adapt.run import AdaptOptions, adapt
    from offline_train.adapt.synths import parse_families

    result = adapt(
        AdaptOptions(
            clean=list(args.clean), mm_per_px=args.mm_per_px, mm_per_line=args.mm_per_line, source=args.source,
            out=args.out, minutes=args.minutes, synth=parse_families(args.synth),
            gan_checkpoint=args.gan_checkpoint, target_false_alarms_per_m2=args.target_false_alarms_per_m2,
            variants=args.variants, sim_webs=args.sim_webs, val_share=args.val_share, seed=args.seed,
            command=shlex.join(getattr(args, "command_line", ["loomsight", "adapt"])),
        )
    )  # fmt: skip
    s = result.summary
    print(json.dumps({"bundle": str(result.bundle), "before": _short(s["before"]), "after": _short(s["after"]),
                      "target_met": s["target_met"], "wall_s": s["wall_s"]}))  # fmt: skip
    return 0


def _short(m: dict[str, object]) -> dict[str, object]:
    return {k: m[k] for k in ("false_alarms_per_m2", "agnostic_recall", "aware_recall")}


ADAPT = Command(
    name="adapt",
    help="a bundle for a new fabric from its defect-free images: synthetic defects, fine-tune, thresholds",
    add_arguments=_adapt_args,
    run=_adapt_run,
    extra="train",
    needs=("torch", "torchvision", "ultralytics"),
)
