"""A review sheet of what the model got wrong: the picture an ML engineer looks at after `eval`.

For each evaluated roll the synthetic loom renders the same web again (same spec and seed give
the same pixels), and a crop around every missed true defect, every false alarm and every
duplicate report goes on one contact sheet: true boxes in green, reported boxes in red, a caption
saying which (MISS / FALSE / DUP), the class, the score and where on which roll. Long streaks are
shown from their start (at most `max_crop_lines` lines), so a crop never becomes a sliver.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from runtime.scoring import ScoredBox, score_defects

if TYPE_CHECKING:
    from offline_train.evaluate import RollResult

log = logging.getLogger(__name__)

Kind = Literal["MISS", "FALSE", "DUP"]
TRUE_BGR = (0, 200, 0)
REPORTED_BGR = (0, 0, 255)


@dataclass(frozen=True)
class ReviewItem:
    kind: Kind
    box: ScoredBox
    score: float | None
    roll_index: int


def review_items(rolls: Sequence[RollResult], classes: Sequence[str]) -> list[ReviewItem]:
    """Every miss, false alarm and duplicate of the rolls (class-aware matching, as `eval` scores)."""
    items: list[ReviewItem] = []
    for i, r in enumerate(rolls):
        s = score_defects(r.truth, r.reported, classes=classes)["all"]
        items += [ReviewItem("MISS", r.truth[k], None, i) for k in s.missed]
        for kind, indices in (("FALSE", s.false_alarms), ("DUP", s.duplicate_reports)):
            for k in indices:
                score = r.events[k].get("score") if k < len(r.events) else None
                items.append(ReviewItem(kind, r.reported[k], score, i))  # type: ignore[arg-type]
    return items


def _render_roll(roll: RollResult) -> np.ndarray:
    """The roll's web exactly as the daemon saw it (BGR), from the source config it ran with."""
    from runtime.sources.synthetic import SyntheticSource

    if roll.source_config is None:
        raise ValueError(f"roll seed {roll.seed} has no source config; it cannot be rendered again")
    source = SyntheticSource(roll.source_config.model_copy(update={"realtime": False}))
    source.start()
    blocks = []
    while (frame := source.read(timeout_s=1.0)) is not None:
        blocks.append(frame.pixels)
    source.stop()
    web = np.concatenate(blocks, axis=0)
    return web if web.ndim == 3 else cv2.cvtColor(web, cv2.COLOR_GRAY2BGR)


def _cell(
    web: np.ndarray, item: ReviewItem, roll: RollResult, *, cell_px: int, margin_px: int, max_crop_lines: int
) -> np.ndarray:
    b = item.box
    h, w = web.shape[:2]
    x0, x1 = max(0, int(b.x0) - margin_px), min(w, int(np.ceil(b.x1)) + margin_px)
    y0 = max(0, int(b.y0) - margin_px)
    y1 = min(h, int(np.ceil(b.y1)) + margin_px, y0 + max_crop_lines)
    side = max(x1 - x0, y1 - y0, cell_px // 2)  # a square window keeps the weave's aspect
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    x0, y0 = max(0, min(w - side, cx - side // 2)), max(0, min(h - side, cy - side // 2))
    x1, y1 = min(w, x0 + side), min(h, y0 + side)
    crop = web[y0:y1, x0:x1].copy()
    scale = cell_px / max(crop.shape[:2])
    crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    def draw(boxes: Sequence[ScoredBox], color: tuple[int, int, int]) -> None:
        for t in boxes:
            if t.x1 < x0 or t.x0 > x1 or t.y1 < y0 or t.y0 > y1:
                continue
            p0 = (int((t.x0 - x0) * scale), int((t.y0 - y0) * scale))
            p1 = (int((t.x1 - x0) * scale), int((t.y1 - y0) * scale))
            cv2.rectangle(crop, p0, p1, color, 1)

    draw(roll.truth, TRUE_BGR)
    draw(roll.reported, REPORTED_BGR)
    out = np.full((cell_px, cell_px, 3), 40, np.uint8)
    out[: crop.shape[0], : crop.shape[1]] = crop
    return out


def write_review_sheet(
    rolls: Sequence[RollResult],
    classes: Sequence[str],
    out: Path,
    *,
    max_items: int = 64,
    columns: int = 8,
    cell_px: int = 200,
    margin_px: int = 48,
    max_crop_lines: int = 1500,
) -> list[ReviewItem]:
    """Write the sheet to `out` (JPEG or PNG by suffix); returns every item. The sheet shows at
    most `max_items`: misses first, then false alarms and duplicates, each kind getting at least
    half the room when the other has more. With nothing to review, the sheet says so."""
    order = {"MISS": 0, "FALSE": 1, "DUP": 2}
    items = sorted(review_items(rolls, classes), key=lambda it: (order[it.kind], it.roll_index))
    misses = [it for it in items if it.kind == "MISS"]
    wrong = [it for it in items if it.kind != "MISS"]
    # both kinds of error get room: misses fill at most what the reports leave, and vice versa
    n_miss = min(len(misses), max(max_items // 2, max_items - len(wrong)))
    shown = misses[:n_miss] + wrong[: max_items - n_miss]
    caption_px = 30
    rows = max(1, -(-len(shown) // columns))
    sheet = np.full((rows * (cell_px + caption_px), columns * cell_px, 3), 25, np.uint8)
    if not shown:
        cv2.putText(sheet, "nothing to review: no miss, false alarm or duplicate", (8, cell_px // 2),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (230, 230, 230), 1, cv2.LINE_AA)  # fmt: skip
    # render each roll once (and hold one web at a time), placing its items where the order puts them
    web, rendered = np.zeros((1, 1, 3), np.uint8), -1
    for n, item in sorted(enumerate(shown), key=lambda pair: pair[1].roll_index):
        roll = rolls[item.roll_index]
        if item.roll_index != rendered:
            web, rendered = _render_roll(roll), item.roll_index
        cell = _cell(
            web,
            item,
            roll,
            cell_px=cell_px,
            margin_px=margin_px,
            max_crop_lines=max_crop_lines,
        )
        r, c = divmod(n, columns)
        y, x = r * (cell_px + caption_px), c * cell_px
        sheet[y : y + cell_px, x : x + cell_px] = cell
        color = TRUE_BGR if item.kind == "MISS" else REPORTED_BGR
        score = "" if item.score is None else f" {item.score:.2f}"
        cv2.putText(sheet, f"{item.kind} {item.box.class_name}{score}", (x + 3, y + cell_px + 12),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)  # fmt: skip
        where = f"{roll.fabric[:16]} s{roll.seed} y{item.box.y0 * roll.mm_per_line / 1000:.2f}m"
        cv2.putText(sheet, where, (x + 3, y + cell_px + 25),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.33, (200, 200, 200), 1, cv2.LINE_AA)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), sheet, [cv2.IMWRITE_JPEG_QUALITY, 80]):
        raise OSError(
            f"could not write the review sheet to {out}; use a .jpg or .png path in a writable folder"
        )
    log.info("review sheet: %d of %d items -> %s", len(shown), len(items), out)
    return items
