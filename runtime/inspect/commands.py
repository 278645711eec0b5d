"""`loomsight inspect IMAGES... --mm-per-px X --out DIR`: the daemon path on images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime.commands import Command


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", type=Path, nargs="+", help="image files or folders of images")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for events.jsonl, overlays and summary.json"
    )
    p.add_argument("--model", type=Path, default=Path("models/default"), help="model bundle")
    p.add_argument(
        "--mm-per-px", type=float, required=True,
        help="the camera's resolution across (mm per pixel); required: results depend on it",
    )  # fmt: skip
    p.add_argument("--mm-per-line", type=float, default=None, help="resolution along (default: --mm-per-px)")
    p.add_argument("--batch", type=int, default=8)


def _run(args: argparse.Namespace) -> int:
    from runtime.inspect.images import inspect_images

    summary = inspect_images(
        args.images, bundle=args.model, out=args.out, mm_per_px=args.mm_per_px,
        mm_per_line=args.mm_per_line, batch_size=args.batch,
    )  # fmt: skip
    for img in summary["images"]:
        print(f"{img['file']}: {img['defects']} defects {img['by_class']} -> {args.out / img['overlay']}")
    print(json.dumps({"out": str(args.out), "defects_by_class": summary["defects_by_class"]}))
    return 0


INSPECT = Command(
    name="inspect",
    help="run images (photos, line-scan strips, webs) through the daemon path: events JSON + overlays",
    add_arguments=_args,
    run=_run,
)
