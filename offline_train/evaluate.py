"""`loomsight eval`: tile-level mAP and web-level defect recall/precision of a model bundle.

Web level runs whole synthetic rolls through the daemon itself (assembler, preprocess, tiler,
detector, merger, grader: the code path production uses) with an in-memory publisher, then
scores the defect events against the simulator's ground truth (runtime.scoring). Tile level
runs the bundle's ONNX model on a dataset's validation tiles and computes COCO mAP50 and
mAP50-95 with pycocotools.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.scoring import ClassScore, ScoredBox, score_defects

log = logging.getLogger(__name__)


class CollectingPublisher:
    """An EventPublisher stand-in that keeps every event in memory."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], bytes | None]] = []

    def start(self) -> None:
        pass

    def publish(
        self, kind: str, fields: dict[str, Any], *, roll_id: str, crop_jpeg: bytes | None = None
    ) -> int:
        self.events.append((kind, {**fields, "roll_id": roll_id}, crop_jpeg))
        return len(self.events)

    def set_heartbeat_fields(self, fields: dict[str, Any]) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"published": len(self.events)}

    def close(self, timeout_s: float = 0.0) -> None:
        pass

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [f for k, f, _ in self.events if k == kind]


@dataclass(frozen=True)
class RollPlan:
    """The synthetic rolls `eval` and `tune` run through the daemon: one roll per seed, the
    fabrics taken in turn."""

    seeds: tuple[int, ...]
    fabrics: tuple[str, ...]
    length_m: float
    width_px: int = 2048
    defects_per_m: float = 2.0
    batch_size: int = 8

    @classmethod
    def consecutive(
        cls, first_seed: int, rolls: int, fabrics: Sequence[str], length_m: float, **kw: Any
    ) -> RollPlan:
        return cls(tuple(range(first_seed, first_seed + rolls)), tuple(fabrics), length_m, **kw)

    def fabric(self, i: int) -> str:
        return self.fabrics[i % len(self.fabrics)]


@dataclass
class RollResult:
    seed: int
    fabric: str
    length_m: float
    truth: list[ScoredBox]
    reported: list[ScoredBox]
    events: list[dict[str, Any]] = field(default_factory=list)
    tiles_per_s: float = 0.0
    source_config: Any = None  # the SyntheticSourceConfig it ran with: the web can be rendered again
    edges_px: tuple[float | None, float | None] = (None, None)  # fabric edges tracked at the end, camera px

    @property
    def mm_per_line(self) -> float:
        return float(self.source_config.mm_per_line) if self.source_config is not None else 0.1


def run_roll(
    bundle: Path,
    *,
    seed: int,
    fabric: str,
    length_m: float,
    width_px: int = 2048,
    defects_per_m: float = 2.0,
    batch_size: int = 8,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    detector: Any = None,
    edge_mask_mm: dict[str, float] | None = None,
) -> RollResult:
    """One synthetic roll through the daemon. `edge_mask_mm`: None = the bundle's own, {} = none."""
    from runtime.config import parse_config
    from runtime.daemon.app import Daemon
    from runtime.sources.synthetic import SyntheticSource

    config = parse_config(
        {
            "line_id": "eval",
            "source": {
                "kind": "synthetic",
                "synthetic": {
                    "fabric": fabric,
                    "width_px": width_px,
                    "realtime": False,
                    "seed": seed,
                    "length_m": length_m,
                    "defects_per_m": defects_per_m,
                },
            },
            "model": {
                "bundle": str(bundle),
                "batch_size": batch_size,
                "providers": list(providers),
                "warmup_runs": 0,
            },
            "publish": {"jpeg_crops": False},
            "web": {"edge_mask_mm": edge_mask_mm},
        },
        source="eval",
    )
    source = SyntheticSource(config.source.synthetic)
    publisher = CollectingPublisher()
    daemon = Daemon(config, source=source, publisher=publisher, detector=detector, roll_id=f"eval-{seed}")
    daemon.run()
    status = daemon.status()
    truth = [ScoredBox(d.class_name, d.x0_px, d.y0_line, d.x1_px, d.y1_line) for d in source.truth]
    defects = publisher.of_kind("defect")
    reported = [ScoredBox(e["class"], *e["bbox_px"]) for e in defects]
    mm_per_px = config.source.synthetic.mm_per_px
    edges = tuple(None if e is None else e / mm_per_px for e in status.get("web_edges_mm", [None, None]))
    return RollResult(
        seed, fabric, length_m, truth, reported, defects, float(status.get("tiles_per_s_mean", 0.0)),
        config.source.synthetic, (edges[0], edges[1]),
    )  # fmt: skip


def _scores_dict(scores: dict[str, ClassScore]) -> dict[str, Any]:
    return {c: s.to_dict() for c, s in scores.items()}


def run_rolls(
    bundle: Path,
    detector: Any,
    plan: RollPlan,
    *,
    on_roll: Callable[[int, RollResult], None] | None = None,
    edge_mask_mm: dict[str, float] | None = None,
) -> list[RollResult]:
    """Every roll of `plan` through the daemon with one open detector."""
    rolls: list[RollResult] = []
    for i, seed in enumerate(plan.seeds):
        r = run_roll(
            bundle, seed=seed, fabric=plan.fabric(i), length_m=plan.length_m, width_px=plan.width_px,
            defects_per_m=plan.defects_per_m, batch_size=plan.batch_size, detector=detector,
            edge_mask_mm=edge_mask_mm,
        )  # fmt: skip
        rolls.append(r)
        if on_roll:
            on_roll(i, r)
    return rolls


def evaluate_rolls(
    bundle: Path,
    plan: RollPlan,
    *,
    progress: Callable[[str], None] | None = None,
    review_sheet: Path | None = None,
) -> dict[str, Any]:
    """Score fresh synthetic rolls; with `review_sheet`, also write the picture of every miss,
    false alarm and duplicate (offline_train.eval_sheet)."""
    from runtime.config import ModelConfig
    from runtime.detect.bundle import load_bundle, open_detector

    manifest = load_bundle(bundle).manifest
    classes = manifest.classes

    def report_roll(i: int, r: RollResult) -> None:
        if progress:
            s = score_defects(r.truth, r.reported, classes=classes)["all"]
            progress(
                f"roll {i + 1}/{len(plan.seeds)} seed {r.seed} {r.fabric}: {s.n_truth} true, {s.n_reported} reported, "
                f"recall {s.recall:.2f} precision {s.precision:.2f} ({r.tiles_per_s:.1f} tiles/s)"
            )

    detector = open_detector(ModelConfig(bundle=bundle, batch_size=plan.batch_size))
    rolls = run_rolls(bundle, detector, plan, on_roll=report_roll)
    # score roll by roll (boxes of different rolls must never match), then add up
    aware: dict[str, ClassScore] = {}
    agnostic: dict[str, ClassScore] = {}
    for r in rolls:
        for target, kw in ((aware, {"class_aware": True}), (agnostic, {"class_aware": False})):
            for c, s in score_defects(r.truth, r.reported, classes=classes, **kw).items():
                acc = target.setdefault(c, ClassScore())
                acc.n_truth += s.n_truth
                acc.found += s.found
                acc.n_reported += s.n_reported
                acc.true_positives += s.true_positives
                acc.duplicates += s.duplicates
    n_events = sum(len(r.reported) for r in rolls)
    review: dict[str, Any] = {}
    if review_sheet is not None:
        from offline_train.eval_sheet import write_review_sheet

        items = write_review_sheet(rolls, classes, review_sheet)
        review = {"review_sheet": {"path": str(review_sheet), "items": len(items)}}
    return {
        "bundle": str(bundle),
        "model": manifest.name,
        "thresholds": dict(manifest.thresholds),
        "edge_mask_mm": dict(manifest.edge_mask_mm),
        "rolls": [
            {"seed": r.seed, "fabric": r.fabric, "length_m": r.length_m, "tiles_per_s": r.tiles_per_s}
            for r in rolls
        ],
        "web_class_aware": _scores_dict(aware),
        # per true class: found by a report of any class (the open-set view: was it seen at all?)
        "web_class_agnostic": _scores_dict(agnostic),
        "duplicate_rate": round(aware["all"].duplicates / n_events, 4) if n_events else 0.0,
        **review,
    }


def tile_map(
    bundle: Path, dataset: Path, *, batch_size: int = 16, limit: int | None = None
) -> dict[str, float]:
    """COCO mAP50 and mAP50-95 of the bundle's ONNX model on a dataset's validation tiles."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from runtime.config import ModelConfig
    from runtime.detect.bundle import load_bundle, open_detector

    ann = Path(dataset) / "annotations_val.json"
    if not ann.is_file():
        raise FileNotFoundError(f"{ann} is missing; build the dataset with `loomsight dataset`")
    classes = load_bundle(bundle).manifest.classes
    # score (almost) every query: mAP needs the whole precision/recall curve, not the tuned thresholds
    det = open_detector(ModelConfig(bundle=bundle, thresholds=dict.fromkeys(classes, 0.001)))
    gt = COCO(str(ann))
    img_ids = sorted(gt.getImgIds())[:limit] if limit else sorted(gt.getImgIds())
    results = []
    for start in range(0, len(img_ids), batch_size):
        ids = img_ids[start : start + batch_size]
        tiles = np.stack([_read_gray(Path(dataset) / gt.imgs[i]["file_name"]) for i in ids])
        for img_id, d in zip(ids, det.infer(tiles), strict=True):
            for (x0, y0, x1, y1), c, s in zip(
                d.xyxy.tolist(), d.class_id.tolist(), d.score.tolist(), strict=True
            ):
                results.append(
                    {
                        "image_id": img_id,
                        "category_id": int(c),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": s,
                    }
                )
    if not results:
        return {"mAP50": 0.0, "mAP50_95": 0.0, "tiles": len(img_ids)}
    dt = gt.loadRes(results)
    ev = COCOeval(gt, dt, "bbox")
    ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"mAP50_95": float(ev.stats[0]), "mAP50": float(ev.stats[1]), "tiles": len(img_ids)}


def _read_gray(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(f"cannot read tile {path}")
    return np.asarray(img)


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")


def format_report(report: dict[str, Any]) -> str:
    lines = ["class            truth found  recall (95% CI)  reported   prec (95% CI)       f1  dups"]

    def f(x: Any) -> str:
        return "   -  " if x is None else f"{x:6.3f}"

    def ci(pair: Any) -> str:
        return "         " if not pair else f"{pair[0]:.2f}-{pair[1]:.2f}"

    for c, s in report["web_class_aware"].items():
        lines.append(
            f"{c:<16} {s['n_truth']:5d} {s['found']:5d}  {f(s['recall'])} {ci(s.get('recall_ci95'))} "
            f"{s['n_reported']:8d} {f(s['precision'])} {ci(s.get('precision_ci95'))} {f(s['f1'])} {s['duplicates']:5d}"
        )
    ag = report["web_class_agnostic"]["all"]
    lines.append(f"class-agnostic: recall {ag['recall']}, precision {ag['precision']}")
    per_class = {c: v for c, v in report["web_class_agnostic"].items() if c != "all" and v.get("n_truth")}
    if per_class:
        lines.append(
            "class-agnostic recall per true class: "
            + ", ".join(f"{c} {f(v['recall']).strip()}" for c, v in per_class.items())
        )
    lines.append(f"duplicate events: {report['duplicate_rate'] * 100:.2f}%")
    if "tile" in report:
        lines.append(f"tile mAP50 {report['tile']['mAP50']:.3f}, mAP50-95 {report['tile']['mAP50_95']:.3f}")
    if "review_sheet" in report:
        r = report["review_sheet"]
        lines.append(f"review sheet ({r['items']} misses, false alarms and duplicates): {r['path']}")
    return "\n".join(lines)


def format_comparison(
    report: dict[str, Any], baseline: dict[str, Any], baseline_name: str = "baseline"
) -> str:
    """This report's web figures beside a baseline's (another `eval --out` file), class by class.

    Both must come from the same rolls (seeds, fabrics, length), else the comparison means nothing:
    a mismatch is said in the first line rather than refused, so two different runs can still be
    read side by side.
    """

    def rolls(r: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
        return [(x.get("seed"), x.get("fabric"), x.get("length_m")) for x in r.get("rolls", [])]

    same = rolls(report) == rolls(baseline)
    lines = [
        f"against {baseline_name}: "
        + (
            "same rolls"
            if same
            else "DIFFERENT rolls (seeds/fabrics/length differ): not comparable defect by defect"
        ),
        "class            recall (base -> this)     precision (base -> this)   f1 (base -> this)",
    ]

    def pair(a: float | None, b: float | None) -> str:
        fa = "  -  " if a is None else f"{a:5.2f}"
        fb = "  -  " if b is None else f"{b:5.2f}"
        delta = "" if a is None or b is None else f" ({b - a:+.2f})"
        return f"{fa} -> {fb}{delta}".ljust(26)

    base = baseline.get("web_class_aware", {})
    for c, s in report["web_class_aware"].items():
        b = base.get(c, {})
        lines.append(
            f"{c:<16} {pair(b.get('recall'), s['recall'])} {pair(b.get('precision'), s['precision'])} "
            f"{pair(b.get('f1'), s['f1'])}".rstrip()
        )
    b_dup, dup = baseline.get("duplicate_rate"), report.get("duplicate_rate")
    if b_dup is not None and dup is not None:
        lines.append(f"duplicate events: {b_dup * 100:.2f}% -> {dup * 100:.2f}%")
    if "tile" in report and "tile" in baseline:
        lines.append(f"tile mAP50: {baseline['tile']['mAP50']:.3f} -> {report['tile']['mAP50']:.3f}")
    return "\n".join(lines)
