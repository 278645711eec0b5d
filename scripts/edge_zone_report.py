"""Where across the web a bundle's reports and misses lie, measured from the tracked fabric edges.

Runs synthetic rolls through the daemon path (no edge mask, thresholds from the bundle) and prints,
per class, the distance of every true defect, found or missed, and of every false report from the
nearest seen web edge. It is the measurement behind `loomsight tune`'s edge mask: a model that
reads the selvedge's border as a defect shows false reports piled up a selvedge's width inside.

    python scripts/edge_zone_report.py models/default --rolls 28 --seed 800001 --length-m 4 [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from offline_train.evaluate import RollPlan, run_rolls
from runtime.config import ModelConfig
from runtime.detect.bundle import open_detector
from runtime.scoring import ScoredBox, score_defects
from runtime.sim.fabric import FABRICS


def _distance_mm(box: ScoredBox, edges: tuple[float | None, float | None], mm_per_px: float) -> float | None:
    cx = 0.5 * (box.x0 + box.x1)
    d = [cx - e for e in edges[:1] if e is not None] + [e - cx for e in edges[1:] if e is not None]
    return min(d) * mm_per_px if d else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--rolls", type=int, default=28)
    p.add_argument("--seed", type=int, default=800001)
    p.add_argument("--length-m", type=float, default=4.0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    detector = open_detector(ModelConfig(bundle=args.bundle, batch_size=8))
    plan = RollPlan.consecutive(args.seed, args.rolls, sorted(FABRICS), args.length_m)
    results = run_rolls(
        args.bundle, detector, plan, edge_mask_mm={},
        on_roll=lambda i, r: print(f"roll {i + 1}/{args.rolls} {r.fabric}: edges px {r.edges_px}", flush=True),
    )  # fmt: skip
    rows: list[dict[str, object]] = []
    for r in results:
        mmpp = r.source_config.mm_per_px
        for c in sorted({b.class_name for b in [*r.truth, *r.reported]}):
            t_c = [t for t in r.truth if t.class_name == c]
            rep = [b for b in r.reported if b.class_name == c]
            sc = score_defects(t_c, rep, classes=[c])[c]
            for i, t in enumerate(t_c):
                kind = "missed" if i in sc.missed else "found"
                rows.append(
                    {"class": c, "kind": kind, "seed": r.seed, "edge_mm": _distance_mm(t, r.edges_px, mmpp)}
                )
            for i, b in enumerate(rep):
                kind = "false" if i in sc.false_alarms else "dup" if i in sc.duplicate_reports else ""
                if kind:
                    rows.append(
                        {
                            "class": c,
                            "kind": kind,
                            "seed": r.seed,
                            "edge_mm": _distance_mm(b, r.edges_px, mmpp),
                        }
                    )
    bins = [0, 4, 8, 12, 16, 25, 50, 1e9]
    print(
        "\ndistance of the centre from the nearest seen web edge, mm (found/missed: true defects; false/dup: reports)"
    )
    print(f"{'class':15s} {'kind':7s} " + " ".join(f"<{b:g}".rjust(6) for b in bins[1:-1]) + "  more  unseen")
    for c in sorted({str(row["class"]) for row in rows}):
        for kind in ("found", "missed", "false", "dup"):
            d = [row["edge_mm"] for row in rows if row["class"] == c and row["kind"] == kind]
            seen = np.array([x for x in d if x is not None], float)
            hist = np.histogram(seen, bins=bins)[0] if len(seen) else np.zeros(len(bins) - 1, int)
            if d:
                print(
                    f"{c:15s} {kind:7s} " + " ".join(f"{n:6d}" for n in hist) + f"  {len(d) - len(seen):6d}"
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
