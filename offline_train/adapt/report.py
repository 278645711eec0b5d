"""The adaptation report: `adaptation.md` and `adaptation.png` (synthetic samples, before/after bars)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from offline_train.dataset.labels import Box
from offline_train.dataset.sheet import contact_sheet


def _bars(before: dict[str, Any], after: dict[str, Any], width: int) -> np.ndarray:
    """Three pairs of bars: false alarms/m^2 (scaled to the larger), agnostic and aware synthetic recall."""
    h = 230
    img = np.full((h, width, 3), 255, np.uint8)
    fa_top = max(before["false_alarms_per_m2"], after["false_alarms_per_m2"], 1e-9)
    groups = [
        ("false alarms / m^2 (clean held-back)", before["false_alarms_per_m2"] / fa_top,
         after["false_alarms_per_m2"] / fa_top, before["false_alarms_per_m2"], after["false_alarms_per_m2"]),
        ("synthetic recall, any class", before["agnostic_recall"] or 0, after["agnostic_recall"] or 0,
         before["agnostic_recall"] or 0, after["agnostic_recall"] or 0),
        ("synthetic recall, right class", before["aware_recall"] or 0, after["aware_recall"] or 0,
         before["aware_recall"] or 0, after["aware_recall"] or 0),
    ]  # fmt: skip
    gw = width // len(groups)
    base, top = h - 40, 30
    for g, (label, b, a, bv, av) in enumerate(groups):
        x = g * gw + gw // 2
        for k, (frac, value, colour) in enumerate(((b, bv, (150, 150, 150)), (a, av, (200, 120, 0)))):
            x0 = x - 50 + k * 55
            y0 = int(base - frac * (base - top))
            cv2.rectangle(img, (x0, y0), (x0 + 45, base), colour, -1)
            cv2.putText(
                img, f"{value:.2f}", (x0, y0 - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA
            )
        cv2.putText(
            img, label, (g * gw + 8, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA
        )
    cv2.putText(img, "before (source bundle)", (10, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (120, 120, 120), 1)
    cv2.putText(img, "after (adapted)", (220, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 120, 0), 1)
    return img


def write_report(
    out_dir: Path,
    summary: dict[str, Any],
    samples: Sequence[tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]],
    classes: Sequence[str],
) -> tuple[Path, Path]:
    """`adaptation.md` (what was done, before/after, per class) and `adaptation.png`."""
    items = []
    for tile, boxes in list(samples)[:16]:
        bx = [Box(classes.index(c), *b) for c, b in boxes if c in classes]
        items.append((tile, bx, ",".join(sorted({c for c, _ in boxes}))))
    before, after = summary["before"], summary["after"]
    sheet = (
        contact_sheet(items, classes, columns=8, cell_px=160) if items else np.zeros((0, 1280, 3), np.uint8)
    )
    bars = _bars(before, after, sheet.shape[1] if items else 1280)
    png = Path(out_dir) / "adaptation.png"
    cv2.imwrite(str(png), np.vstack([bars, sheet]) if items else bars)

    lines = [
        f"# Adaptation of `{summary['source_bundle']}` to a new fabric",
        "",
        f"- clean images: {summary['clean_images']} ({summary['train_area_m2']:.2f} m^2 trained on, "
        f"{summary['val_area_m2']:.2f} m^2 held back {summary['split']})",
        f"- synthesizers: {', '.join(summary['synthesizers']) or 'none'}; fine-tune budget "
        f"{summary['minutes']} min on {summary['device']}; wall clock {summary['wall_s']:.0f} s in all",
        f"- training set: {summary['training_tiles']} tiles",
        f"- target (thresholds as low as the held-back clean web allows): <= {summary['target_false_alarms_per_m2']} false alarms per m^2 on the held-back clean fabric "
        f"({'met' if summary['target_met'] else 'NOT met: the noisiest classes are at the top of the grid'})",
        "",
        "| | false alarms / m^2 | synthetic recall (any class) | synthetic recall (right class) |",
        "|---|---:|---:|---:|",
        f"| before | {before['false_alarms_per_m2']:.2f} | {before['agnostic_recall']} | {before['aware_recall']} |",
        f"| after | {after['false_alarms_per_m2']:.2f} | {after['agnostic_recall']} | {after['aware_recall']} |",
        "",
        "Synthetic recall is measured on the synthesizers' own defects placed on held-back tiles: it shows the",
        "model still sees what it was shown, not that it finds this fabric's real defects (nothing here has",
        "any). Run `loomsight eval` on real or simulated defects of the fabric before trusting the bundle.",
        "",
        "| class | threshold before | after | false alarms / m^2 after | synthetic recall after (any / right) |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in classes:
        pc = after.get("per_class", {}).get(c, {})
        lines.append(
            f"| {c} | {before['thresholds'][c]} | {after['thresholds'][c]} | "
            f"{after['false_alarms_by_class'][c]:.2f} | "
            f"{pc.get('agnostic_recall', '-')} / {pc.get('aware_recall', '-')} |"
        )
    lines += ["", "![before/after and synthetic samples](adaptation.png)", ""]
    md = Path(out_dir) / "adaptation.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    return md, png
