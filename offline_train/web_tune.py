"""`loomsight tune`: per-class thresholds chosen at web level, where the floors are measured.

Export tunes thresholds on validation tiles (deploy.thresholds): a box per tile. What a textile
QA person counts is defects on the web, after the merger: a broken end is one defect however
many tiles saw it, and a false alarm is one event. This tuner runs synthetic rolls through the
daemon path once with every class at a low threshold, then, per class, sweeps the threshold over
the reported defects (a defect survives threshold t when its best score is >= t) and keeps the
one with the best web-level F1. When several thresholds tie for it, the middle of that plateau
is kept (the edges of a plateau measured on a few dozen defects are where it stops holding). A
class whose F1 is 0 everywhere (or has no true defects on the tuning rolls) is not tuned: it keeps
its threshold, raised to the lowest one that silences its false alarms when there is such.
The low-threshold run merges slightly differently from a run at the chosen thresholds (more boxes
can join); `loomsight eval` on other seeds is the measurement that counts.

Use tuning seeds that neither training nor evaluation uses (default 800001.., training webs
use seeds < 10,000, `eval` defaults to 900001..). The result goes into the bundle's manifest
(`thresholds`, and `metrics.web_threshold_tuning` with the sweep's figures); model files and
their sha256 are untouched.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.scoring import ScoredBox, score_defects

log = logging.getLogger(__name__)

GRID = np.round(np.arange(0.20, 0.951, 0.05), 2)  # the run's floor is the first value


@dataclass(frozen=True)
class WebTuning:
    class_name: str
    threshold: float
    precision: float
    recall: float
    f1: float
    n_truth: int
    tuned: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "n_truth": self.n_truth,
            "tuned": self.tuned,
        }


def choose_thresholds(
    rolls: Sequence[tuple[list[ScoredBox], list[ScoredBox], list[float]]],
    classes: Sequence[str],
    current: dict[str, float],
    grid: np.ndarray = GRID,
) -> dict[str, WebTuning]:
    """Per class, the grid threshold with the best web-level F1 over `rolls` of
    (truth, reported, reported scores); see the module doc for ties and untunable classes."""
    out: dict[str, WebTuning] = {}
    for c in classes:
        tp = np.zeros(len(grid))
        found = np.zeros(len(grid))
        n_rep = np.zeros(len(grid))
        n_truth = 0
        for truth, reported, scores in rolls:
            t_c = [t for t in truth if t.class_name == c]
            n_truth += len(t_c)
            mine = [(r, s) for r, s in zip(reported, scores, strict=True) if r.class_name == c]
            for k, thr in enumerate(grid):
                kept = [r for r, s in mine if s >= thr]
                sc = score_defects(t_c, kept, classes=[c])[c]
                tp[k] += sc.true_positives
                found[k] += sc.found
                n_rep[k] += sc.n_reported
        cur = float(current.get(c, 0.5))
        precision = np.divide(tp, n_rep, out=np.zeros_like(tp), where=n_rep > 0)
        recall = found / n_truth if n_truth else np.zeros_like(tp)
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
        if n_truth == 0 or f1.max() <= 0:
            silent = np.flatnonzero(n_rep == 0)
            thr = max(cur, float(grid[silent[0]])) if len(silent) else cur
            k = int(np.argmin(np.abs(grid - thr)))
            out[c] = WebTuning(c, thr, float(precision[k]), float(recall[k]), float(f1[k]), n_truth, False)
            continue
        best = np.flatnonzero(f1 >= f1.max() - 1e-9)
        k = int(best[len(best) // 2])  # the middle of the best plateau
        out[c] = WebTuning(
            c, float(grid[k]), float(precision[k]), float(recall[k]), float(f1[k]), n_truth, True
        )
    return out


def tune_bundle(
    bundle: Path,
    *,
    seeds: Sequence[int],
    fabrics: Sequence[str],
    length_m: float,
    defects_per_m: float = 2.0,
    width_px: int = 2048,
    batch_size: int = 8,
    write: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, WebTuning]:
    """Run the tuning rolls, choose thresholds, and (with `write`) put them in the manifest."""
    from offline_train.evaluate import RollResult, run_rolls
    from runtime.config import ModelConfig
    from runtime.detect.bundle import load_bundle, open_detector

    manifest = load_bundle(bundle).manifest
    low = float(GRID[0])
    detector = open_detector(
        ModelConfig(bundle=bundle, batch_size=batch_size, thresholds=dict.fromkeys(manifest.classes, low))
    )

    def report_roll(i: int, r: RollResult) -> None:
        if progress:
            progress(
                f"tuning roll {i + 1}/{len(seeds)} seed {r.seed} {r.fabric}: {len(r.truth)} true, {len(r.reported)} reported at >= {low}"
            )

    results = run_rolls(
        bundle, detector, seeds=seeds, fabrics=fabrics, length_m=length_m, width_px=width_px,
        defects_per_m=defects_per_m, batch_size=batch_size, on_roll=report_roll,
    )  # fmt: skip
    rolls = [(r.truth, r.reported, [float(e["score"]) for e in r.events]) for r in results]
    chosen = choose_thresholds(rolls, manifest.classes, dict(manifest.thresholds))
    if write:
        fields = manifest.model_dump(mode="json", by_alias=True)
        fields["thresholds"] = {c: t.threshold for c, t in chosen.items()}
        fields.setdefault("metrics", {})["web_threshold_tuning"] = {
            "seeds": [int(s) for s in seeds],
            "fabrics": list(fabrics),
            "length_m": length_m,
            "defects_per_m": defects_per_m,
            "previous_thresholds": dict(manifest.thresholds),
            "classes": {c: t.as_dict() for c, t in chosen.items()},
        }
        _write_manifest(bundle, fields)
    return chosen


def _write_manifest(bundle: Path, fields: dict[str, Any]) -> None:
    """Validate, then replace manifest.json atomically (a crash leaves the old one)."""
    from runtime.detect.manifest import ModelManifest

    text = ModelManifest.model_validate(fields).to_json()
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=bundle)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, bundle / "manifest.json")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_tuning(chosen: dict[str, WebTuning], previous: dict[str, float]) -> str:
    lines = ["class            before  after  truth  recall   prec     f1"]
    for c, t in chosen.items():

        def f(x: float) -> str:
            return "   -  " if np.isnan(x) else f"{x:6.3f}"

        lines.append(
            f"{c:15s} {previous.get(c, 0.5):6.2f} {t.threshold:6.2f} {t.n_truth:6d} {f(t.recall)} {f(t.precision)} {f(t.f1)}"
            + (
                ""
                if t.tuned
                else "  (not tuned: no true defect found; kept, or raised to silence false alarms)"
            )
        )
    return "\n".join(lines)
