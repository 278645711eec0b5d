"""Build a detector training set from webs: the runtime's resampling and tiler, exact labels.

Per web: resample to the model's mm/px with `runtime.preprocess` and cut tiles with
`runtime.tiler.Tiler` (the code production uses), label each tile from the defect masks (one
tight box per connected region), and give some defect-free tiles a synthetic defect from the
synthesizers (or keep them as negatives). Whole webs go to either train or val, never both.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from offline_train.dataset.labels import Box, boxes_from_mask
from offline_train.dataset.sheet import contact_sheet
from offline_train.dataset.webs import LabelledWeb
from offline_train.dataset.writer import DatasetWriter
from runtime.preprocess import resample_mask, resample_to_model, to_gray
from runtime.tiler import Tiler

log = logging.getLogger(__name__)

CARD_NAME = "dataset.json"


@dataclass(frozen=True)
class DatasetSpec:
    classes: tuple[str, ...]
    mm_per_px: float = 0.4
    tile_px: int = 256
    overlap_px: int = 32
    color: str = "gray"
    val_every: int = 5  # every 5th web goes to val
    synth_probability: float = 0.35  # a defect-free tile gets a synthetic defect this often
    clean_keep_probability: float = 0.15  # ... else it is kept as a negative this often
    merge_gap_px: int = 2
    min_area_px: int = 4
    seed: int = 0


@dataclass
class DatasetCard:
    spec: dict[str, Any]
    tiles: dict[str, int] = field(default_factory=dict)
    boxes_per_class: dict[str, dict[str, int]] = field(default_factory=dict)
    tiles_per_fabric: dict[str, int] = field(default_factory=dict)
    boxes_per_source: dict[str, int] = field(default_factory=dict)
    webs: dict[str, list[str]] = field(default_factory=dict)
    content_sha256: str = ""
    created_utc: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self) -> str:
        lines = [
            "# Loomsight dataset card",
            "",
            f"- created: {self.created_utc}",
            f"- content sha256: `{self.content_sha256}`",
            f"- model resolution: {self.spec['mm_per_px']} mm/px, tiles {self.spec['tile_px']} px "
            f"(overlap {self.spec['overlap_px']} px)",
            f"- tiles: {self.tiles}",
            *([f"- recipe: `{json.dumps(self.recipe, sort_keys=True)}`"] if self.recipe else []),
            "",
            "| class | train boxes | val boxes |",
            "|---|---:|---:|",
        ]
        for c in self.spec["classes"]:
            lines.append(
                f"| {c} | {self.boxes_per_class.get('train', {}).get(c, 0)} | "
                f"{self.boxes_per_class.get('val', {}).get(c, 0)} |"
            )
        lines += ["", "| source | boxes |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(self.boxes_per_source.items())]
        lines += ["", "| fabric | tiles |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(self.tiles_per_fabric.items())]
        return "\n".join(lines) + "\n"


class Synth:
    """What the builder needs of a synthesizer (offline_train.synth.base.Synthesizer)."""

    name: str

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> Any: ...


def _web_tiles_labels(web: LabelledWeb, spec: DatasetSpec) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The web at model resolution (as the runtime sees it) and a mask per class id present."""
    sx, sy = web.mm_per_px / spec.mm_per_px, web.mm_per_line / spec.mm_per_px
    pixels = to_gray(web.pixels) if spec.color == "gray" else cv2.cvtColor(web.pixels, cv2.COLOR_BGR2RGB)
    small = resample_to_model(pixels, sx, sy)
    masks: dict[int, np.ndarray] = {}
    for class_id, name in enumerate(spec.classes):
        m = web.class_mask(name)
        if m is not None and m.any():
            masks[class_id] = resample_mask(m, sx, sy)
    return small, masks


def build_dataset(
    webs: Iterable[LabelledWeb],
    out_dir: Path,
    spec: DatasetSpec,
    synthesizers: Sequence[Synth] = (),
    *,
    progress: Callable[[str], None] | None = None,
    sheet_samples: int = 48,
    recipe: dict[str, Any] | None = None,
    keep_clean: Callable[[np.ndarray], bool] | None = None,
) -> DatasetCard:
    """Tile, label and write `webs`; `recipe` (how the webs and synthesizers were chosen, e.g. the
    command's arguments) is recorded in the card so the dataset can be rebuilt. `keep_clean`, when
    given, decides which defect-free tiles are kept as negatives (hard-negative mining)."""
    out_dir = Path(out_dir)
    writer = DatasetWriter(out_dir, spec.classes)
    tiler = Tiler(spec.tile_px, spec.overlap_px)
    rng = np.random.default_rng(spec.seed)
    card = DatasetCard(
        spec={**asdict(spec), "classes": list(spec.classes)},
        webs={"train": [], "val": []},
        recipe=recipe or {},
    )
    per_fabric: Counter[str] = Counter()
    per_source: Counter[str] = Counter()
    samples: list[tuple[np.ndarray, list[Box], str]] = []
    sampled_per_key: Counter[str] = Counter()
    class_index = {c: i for i, c in enumerate(spec.classes)}

    for web_no, web in enumerate(webs):
        split = web.split or (
            "val" if spec.val_every and web_no % spec.val_every == spec.val_every - 1 else "train"
        )
        if split not in ("train", "val"):
            raise ValueError(f"web {web.name}: split {split!r} must be 'train' or 'val'")
        card.webs[split].append(web.name)
        small, masks = _web_tiles_labels(web, spec)
        windows = tiler.layout(small.shape[1], small.shape[0])
        tiles = tiler.cut(small, windows)
        kept = 0
        for t, (win, cut_tile) in enumerate(zip(windows, tiles, strict=True)):
            tile = cut_tile
            boxes: list[Box] = []
            label_mask = np.zeros(tile.shape[:2], np.uint8)
            for class_id, mask in masks.items():
                sub = mask[win.y0 : win.y1, win.x0 : win.x1]
                if sub.shape != tile.shape[:2]:  # web smaller than one tile: padded like the pixels
                    pad = ((0, tile.shape[0] - sub.shape[0]), (0, tile.shape[1] - sub.shape[1]))
                    sub = np.pad(sub, pad, mode="symmetric")  # mirrored, as Tiler.cut pads pixels
                label_mask[sub > 0] = class_id + 1
                for x0, y0, x1, y1 in boxes_from_mask(
                    sub, merge_gap_px=spec.merge_gap_px, min_area_px=spec.min_area_px
                ):
                    boxes.append(Box(class_id, x0, y0, x1, y1))
            source = "simulator"
            if not boxes and any(m[win.y0 : win.y1, win.x0 : win.x1].any() for m in masks.values()):
                continue  # a defect sliver below min_area: neither a clean negative nor a label
            if not boxes:
                if synthesizers and rng.random() < spec.synth_probability:
                    synth = synthesizers[int(rng.integers(len(synthesizers)))]
                    result = synth(tile, rng)
                    if result is None:
                        continue
                    tile = result.image
                    cid = class_index.get(result.class_name)
                    if cid is None:
                        raise ValueError(
                            f"synthesizer {synth.name} produced class {result.class_name!r}, not one of {spec.classes}"
                        )
                    for x0, y0, x1, y1 in boxes_from_mask(
                        result.mask, merge_gap_px=spec.merge_gap_px, min_area_px=spec.min_area_px
                    ):
                        boxes.append(Box(cid, x0, y0, x1, y1))
                    label_mask[np.asarray(result.mask) > 0] = cid + 1
                    if not boxes:
                        continue
                    source = result.synthesizer
                elif rng.random() >= spec.clean_keep_probability or (
                    keep_clean is not None and not keep_clean(tile)
                ):
                    continue
                else:
                    source = "clean"
            name = f"{web.name}_t{t:05d}"
            writer.add(split, name, tile, boxes, label_mask)
            kept += 1
            per_fabric[web.fabric] += 1
            per_source[source] += len(boxes)
            key = spec.classes[boxes[0].class_id] + source if boxes else "clean"
            if len(samples) < sheet_samples and sampled_per_key[key] < 3:
                sampled_per_key[key] += 1
                samples.append(
                    (tile.copy(), boxes, f"{source}:{spec.classes[boxes[0].class_id] if boxes else '-'}")
                )
        if progress:
            progress(f"web {web_no + 1}: {web.name} -> {kept} tiles ({split}); total {dict(writer.tiles)}")

    writer.finish()
    card.tiles = dict(writer.tiles)
    card.boxes_per_class = {s: dict(c) for s, c in writer.boxes_per_class.items()}
    card.tiles_per_fabric = dict(per_fabric)
    card.boxes_per_source = dict(per_source)
    card.content_sha256 = writer.content_hash
    card.created_utc = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    (out_dir / CARD_NAME).write_text(json.dumps(asdict(card), indent=2), encoding="utf-8")
    (out_dir / "CARD.md").write_text(card.to_markdown(), encoding="utf-8")
    if samples:
        cv2.imwrite(str(out_dir / "contact_sheet.png"), contact_sheet(samples, spec.classes))
    return card


def read_card(dataset_dir: Path) -> dict[str, Any]:
    path = Path(dataset_dir) / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {dataset_dir} a dataset made by `loomsight dataset`?")
    return dict(json.loads(path.read_text(encoding="utf-8")))
