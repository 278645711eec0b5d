"""Learning routes side by side: web-level figures of several `loomsight eval --out` reports.

    python scripts/route_report.py rtdetr=models/default/eval.json dense=work/routes/dense/eval.json

prints a markdown table per class: class-aware recall / precision (95 % intervals) and
class-agnostic recall of each report, then the all-class rows and duplicates. Reports from
different rolls are flagged (their figures do not compare).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _cell(s: dict[str, Any] | None, key: str) -> str:
    if not s or s.get(key) is None:
        return "-"
    ci = s.get(f"{key}_ci95")
    return f"{s[key]:.2f}" + (f" ({ci[0]:.2f}–{ci[1]:.2f})" if ci else "")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    reports: dict[str, dict[str, Any]] = {}
    for arg in argv:
        label, _, path = arg.partition("=")
        reports[label] = json.loads(Path(path).read_text(encoding="utf-8"))
    seeds = {label: tuple(r["seed"] for r in rep["rolls"]) for label, rep in reports.items()}
    if len(set(seeds.values())) > 1:
        print("**warning: these reports ran different rolls; their figures do not compare**\n")
    first = next(iter(reports.values()))
    n_rolls = len(first["rolls"])
    print(f"Web level, {n_rolls} rolls (seeds {seeds[next(iter(seeds))][0]}..), class-aware recall / precision "
          "(95 % interval) and class-agnostic recall.\n")  # fmt: skip
    head = ["class", "truth"] + [
        f"{lab} {k}" for lab in reports for k in ("recall", "precision", "agnostic recall")
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for c in first["web_class_aware"]:
        row = [c, str(first["web_class_aware"][c]["n_truth"])]
        for rep in reports.values():
            aw = rep["web_class_aware"].get(c)
            ag = rep["web_class_agnostic"].get(c)
            row += [_cell(aw, "recall"), _cell(aw, "precision"), _cell(ag, "recall")]
        print("| " + " | ".join(row) + " |")
    print()
    for label, rep in reports.items():
        print(
            f"- {label}: duplicates {rep['duplicate_rate'] * 100:.2f} % of events; thresholds {rep['thresholds']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
