"""`loomsight tune`: per-class thresholds chosen at web level, where the floors are measured.

Export tunes thresholds on validation tiles (deploy.thresholds): a box per tile. What a textile
QA person counts is defects on the web, after the merger: a broken end is one defect however
many tiles saw it, and a false alarm is one event. This tuner runs synthetic rolls through the
daemon path once with every class at a low threshold, then, per class, sweeps the threshold over
the reported defects (a defect survives threshold t when its best score is >= t) and keeps the
one with the best web-level F1. When several thresholds tie for it, the middle of that plateau
is kept (the edges of a plateau measured on a few dozen defects are where it stops holding). A
class whose F1 is 0 everywhere, or whose best threshold finds fewer than `MIN_FOUND` true defects
on the tuning rolls (a threshold chosen on one defect is noise: a candidate bundle's thin place,
tuned to 0.20 on one, let 23 false alarms through on the eval rolls), is not tuned: it keeps the
threshold export chose on val tiles (not an earlier tune's), raised to the lowest one that
silences its false alarms when there is such.
The low-threshold run merges slightly differently from a run at the chosen thresholds (more boxes
can join); `loomsight eval` on other seeds is the measurement that counts.

Then, at those thresholds, each class may get an edge mask (`choose_edge_masks`): the narrowest
zone inside the tracked web edges whose reports, dropped, raise the class's web-level F1 by at
least 0.01. It is for a model that reads the selvedge's border as a defect (broken ends along
it); the runtime applies it before merging (runtime/web_edges.py) unless the config overrides it.

Use tuning seeds that neither training nor evaluation uses (default 800001.., training webs
use seeds < 10,000, `eval` defaults to 900001..). The result goes into the bundle's manifest
(`thresholds`, `edge_mask_mm`, and `metrics.web_threshold_tuning` with the sweeps' figures); model files and
their sha256 are untouched.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.scoring import ScoredBox, score_defects

if TYPE_CHECKING:
    from offline_train.evaluate import RollPlan

log = logging.getLogger(__name__)

# The run's floor is the first value. The top is finer: a dense model's peak P(defect) saturates
# near 1, and on the first dense bundle every class but hole hit 0.95 with precision still < 0.4.
GRID: np.ndarray = np.round(
    np.concatenate([np.arange(0.20, 0.951, 0.05), np.array([0.97, 0.98, 0.99, 0.995])]), 3
)
EDGE_MASK_GRID_MM = np.arange(0.0, 20.01, 1.0)
MIN_FOUND = 3  # true defects a class's best threshold must find on the tuning rolls to be tuned


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
    min_found: int = MIN_FOUND,
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
        precision, recall, f1 = _prf(tp, found, n_rep, n_truth)
        best = np.flatnonzero(f1 >= f1.max() - 1e-9)
        k = int(best[len(best) // 2])  # the middle of the best plateau
        if n_truth == 0 or f1.max() <= 0 or found[k] < min_found:
            # raised to the lowest threshold that silences its false alarms, or, when none does (a dense
            # model's peaks saturate), to the quietest one; never lowered
            silent = np.flatnonzero(n_rep == 0)
            quiet = silent[0] if len(silent) else int(np.argmin(n_rep))
            thr = max(cur, float(grid[quiet]))
            k = int(np.argmin(np.abs(grid - thr)))
            out[c] = WebTuning(c, thr, float(precision[k]), float(recall[k]), float(f1[k]), n_truth, False)
            continue
        out[c] = WebTuning(
            c, float(grid[k]), float(precision[k]), float(recall[k]), float(f1[k]), n_truth, True
        )
    return out


def _prf(
    tp: np.ndarray, found: np.ndarray, n_reported: np.ndarray, n_truth: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Web-level precision, recall and F1 per sweep step (0 where undefined)."""
    precision = np.divide(tp, n_reported, out=np.zeros_like(tp), where=n_reported > 0)
    recall = found / n_truth if n_truth else np.zeros_like(tp)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


@dataclass(frozen=True)
class EdgeMaskTuning:
    class_name: str
    mask_mm: float
    f1_without: float
    f1_with: float
    dropped_true: int  # reports of true defects the mask drops on the tuning rolls
    dropped_false: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "mask_mm": self.mask_mm,
            "f1_without": round(self.f1_without, 4),
            "f1_with": round(self.f1_with, 4),
            "dropped_true": self.dropped_true,
            "dropped_false": self.dropped_false,
        }


def choose_edge_masks(
    rolls: Sequence[tuple[list[ScoredBox], list[ScoredBox], list[float], tuple[float | None, float | None]]],
    thresholds: dict[str, float],
    *,
    mm_per_px: float,
    grid_mm: np.ndarray = EDGE_MASK_GRID_MM,
    min_gain: float = 0.01,
) -> dict[str, EdgeMaskTuning]:
    """Per class, the narrowest zone inside the web edges whose reports, dropped, give the best
    web-level F1 (at the class's threshold) over `rolls` of (truth, reported, scores, edges px).

    A class gets a mask only when it raises F1 by at least `min_gain`: the zone costs every true
    defect that lies in it, on every roll to come. Sides where an edge was not seen are not masked.
    """
    from runtime.daemon.inspector import in_edge_zone
    from runtime.web_edges import WebEdges

    out: dict[str, EdgeMaskTuning] = {}
    for c, thr in thresholds.items():
        dropped = np.zeros((len(grid_mm), 2), np.int64)  # (true, false)
        tp_n = np.zeros(len(grid_mm))
        found_n = np.zeros(len(grid_mm))
        rep_n = np.zeros(len(grid_mm))
        n_truth = 0
        for truth, reported, scores, (left, right) in rolls:
            t_c = [t for t in truth if t.class_name == c]
            n_truth += len(t_c)
            kept = [r for r, s in zip(reported, scores, strict=True) if r.class_name == c and s >= thr]
            if not kept and not t_c:
                continue
            xyxy = np.array([[r.x0, r.y0, r.x1, r.y1] for r in kept], np.float64).reshape(-1, 4)
            one_class = np.zeros(len(kept), np.int64)
            full = score_defects(t_c, kept, classes=[c])[c]
            for k, w_mm in enumerate(grid_mm):
                # the runtime's own rule (runtime.daemon.inspector.in_edge_zone), in camera pixels
                mask_px = np.array([w_mm / mm_per_px])
                inside = in_edge_zone(xyxy, one_class, WebEdges(left, right), mask_px)
                rest = [r for r, drop in zip(kept, inside, strict=True) if not drop]
                sc = score_defects(t_c, rest, classes=[c])[c]
                tp_n[k] += sc.true_positives
                found_n[k] += sc.found
                rep_n[k] += sc.n_reported
                dropped[k] += (
                    full.true_positives - sc.true_positives,
                    int(inside.sum()) - (full.true_positives - sc.true_positives),
                )
        if n_truth == 0:
            continue
        f1 = _prf(tp_n, found_n, rep_n, n_truth)[2]
        k = int(np.flatnonzero(f1 >= f1.max() - 1e-9)[0])
        if f1[k] < f1[0] + min_gain:
            k = 0
        if k > 0:
            out[c] = EdgeMaskTuning(
                c, float(grid_mm[k]), float(f1[0]), float(f1[k]), int(dropped[k, 0]), int(dropped[k, 1])
            )
    return out


@dataclass(frozen=True)
class TuneResult:
    thresholds: dict[str, WebTuning]
    edge_masks: dict[str, EdgeMaskTuning]


def tune_bundle(
    bundle: Path,
    plan: RollPlan,
    *,
    write: bool = True,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Run the tuning rolls (no edge mask), choose thresholds, then edge masks at those
    thresholds, and (with `write`) put both in the manifest."""
    from offline_train.evaluate import RollResult, run_rolls
    from runtime.config import ModelConfig
    from runtime.detect.bundle import load_bundle, open_detector

    manifest = load_bundle(bundle).manifest
    low = float(GRID[0])
    detector = open_detector(
        ModelConfig(
            bundle=bundle, batch_size=plan.batch_size, thresholds=dict.fromkeys(manifest.classes, low)
        )
    )

    def report_roll(i: int, r: RollResult) -> None:
        if progress:
            progress(
                f"tuning roll {i + 1}/{len(plan.seeds)} seed {r.seed} {r.fabric}: {len(r.truth)} true, {len(r.reported)} reported at >= {low}"
            )

    results = run_rolls(bundle, detector, plan, on_roll=report_roll, edge_mask_mm={})
    rolls = [(r.truth, r.reported, [float(e["score"]) for e in r.events]) for r in results]
    # an untuned class falls back to export's val-tile threshold, not to an earlier tune's choice:
    # the result does not depend on how often the bundle was tuned before
    export_thresholds = _export_thresholds(manifest.metrics, dict(manifest.thresholds))
    chosen = choose_thresholds(rolls, manifest.classes, export_thresholds)
    masks = choose_edge_masks(
        [(*roll, r.edges_px) for roll, r in zip(rolls, results, strict=True)],
        {c: t.threshold for c, t in chosen.items() if t.tuned},
        mm_per_px=results[0].source_config.mm_per_px if results else 0.1,
    )
    if write:
        fields = manifest.model_dump(mode="json", by_alias=True)
        fields["thresholds"] = {c: t.threshold for c, t in chosen.items()}
        fields["edge_mask_mm"] = {c: m.mask_mm for c, m in masks.items()}
        fields.setdefault("metrics", {})["web_threshold_tuning"] = {
            "seeds": [int(s) for s in plan.seeds],
            "fabrics": list(plan.fabrics),
            "length_m": plan.length_m,
            "defects_per_m": plan.defects_per_m,
            "previous_thresholds": dict(manifest.thresholds),
            # the thresholds export chose on val tiles survive any number of re-tunings
            "export_thresholds": export_thresholds,
            "classes": {c: t.as_dict() for c, t in chosen.items()},
            "previous_edge_mask_mm": dict(manifest.edge_mask_mm),
            "edge_mask": {c: m.as_dict() for c, m in masks.items()},
        }
        write_manifest(bundle, fields)
    return TuneResult(chosen, masks)


def _export_thresholds(metrics: dict[str, Any], current: dict[str, float]) -> dict[str, float]:
    earlier = metrics.get("web_threshold_tuning") or {}
    found = earlier.get("export_thresholds") or earlier.get("previous_thresholds") or current
    return dict(found)


def write_manifest(bundle: Path, fields: dict[str, Any]) -> None:
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


def format_edge_masks(masks: dict[str, EdgeMaskTuning]) -> str:
    if not masks:
        return "edge masks: none (no class's F1 rises by masking the zone inside the web edges)"
    lines = ["edge mask        zone_mm  f1_without  f1_with  dropped_true  dropped_false"]
    for c, m in masks.items():
        lines.append(
            f"{c:15s} {m.mask_mm:8.1f} {m.f1_without:11.3f} {m.f1_with:8.3f} {m.dropped_true:13d} {m.dropped_false:14d}"
        )
    return "\n".join(lines)
