"""Hard negatives: defect-free tiles on which a bundle's model fires, kept for the next training.

`loomsight mine BUNDLE --out DIR --sim-webs N` renders clean simulator webs (no defects), cuts
them as the runtime does at the bundle's resolution and tiling, runs the bundle's model on every
tile and keeps those whose peak score (a dense model's P(defect); an RT-DETR's best class score)
reaches `--min-peak`, as a dataset of negatives. `loomsight train --arch dense --also DIR[:WEIGHT]`
mixes them into training (their draws weighted by WEIGHT against the other clean tiles).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def peak_score(raw: np.ndarray, output_format: str) -> np.ndarray:
    """One number per tile: how sure the model is that the tile holds a defect."""
    if output_format == "mask":
        return np.asarray(raw[:, 0].reshape(len(raw), -1).max(axis=1))
    return np.asarray(raw[:, :, 4:].reshape(len(raw), -1).max(axis=1))


def mine_hard_negatives(
    bundle: Path, out: Path, *, sim_webs: int, min_peak: float = 0.3, seed: int = 70001,
    length_m: float = 2.0, width_px: int = 2048, val_every: int = 8, recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    from offline_train.dataset.builder import DatasetSpec, build_dataset
    from offline_train.dataset.webs import simulator_webs
    from runtime.config import ModelConfig
    from runtime.detect.bundle import open_detector

    det: Any = open_detector(ModelConfig(bundle=bundle, batch_size=1))  # the ONNX backend: raw() is its own
    m = det.manifest
    peaks: list[float] = []

    def keep(tile: np.ndarray) -> bool:
        p = float(peak_score(det.raw(tile[None]), m.output.format)[0])
        peaks.append(p)
        return p >= min_peak

    spec = DatasetSpec(classes=tuple(m.classes), mm_per_px=m.mm_per_px, tile_px=m.tile.size_px,
                       overlap_px=m.tile.overlap_px, color=m.input.color, val_every=val_every,
                       synth_probability=0.0, clean_keep_probability=1.0, seed=seed)  # fmt: skip
    webs = simulator_webs(sim_webs, length_m=length_m, width_px=width_px, mm_per_px=0.1, mm_per_line=0.1,
                          seed=seed, defects_per_m=0.0)  # fmt: skip
    card = build_dataset(webs, out, spec, (), progress=lambda s: print(s, file=sys.stderr, flush=True),
                         recipe=recipe or {}, keep_clean=keep)  # fmt: skip
    arr = np.array(peaks) if peaks else np.zeros(1)
    stats = {"tiles_seen": len(peaks), "kept": card.tiles, "min_peak": min_peak,
             "peak_p50": round(float(np.median(arr)), 3), "peak_p90": round(float(np.percentile(arr, 90)), 3),
             "peak_p99": round(float(np.percentile(arr, 99)), 3),
             "share_kept": round(float((arr >= min_peak).mean()), 3)}  # fmt: skip
    (out / "mining.json").write_text(json.dumps({"bundle": str(bundle), **stats}, indent=2), encoding="utf-8")
    det.close()
    return stats
