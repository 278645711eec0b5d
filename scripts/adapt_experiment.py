"""The adaptation experiment: does `loomsight adapt` help on fabrics nobody trained on?

    python scripts/adapt_experiment.py run [--fabrics 1,2,3,4,5] [--arms b,c,e] [--seeds 0] [--minutes 4]
    python scripts/adapt_experiment.py report    # work/adapt_exp/tables.md, docs/adaptation_{experiment.json,chart.png,samples.png}

For each held-out fabric `random:SEED` (seeds reserved by runtime.sim.novel_fabrics): render 10 m
of its clean web (the only thing adaptation sees, as 4096-line strips), then per arm adapt the
bundled model with `loomsight adapt` and measure with `loomsight eval` on that fabric's own
rendered defects (the simulator's, not synthesized), on fresh roll seeds that neither the clean
web nor any tuning used. Arms: (a) no adaptation (the bundle as it is), (b) Perlin + streaks,
(c) cut-paste, (d) GAN (only with --gan-checkpoint), (e) all together, and (t) thresholds only
(`--minutes 0`: no fine-tune, the threshold choice on the held-back clean web alone). Every (fabric, arm, seed)
result is a JSON file under work/adapt_exp/results/; a run skips those that exist (resumable).
`report` also measures label integrity (changed pixels outside the boxes, per synthesizer) and
writes sample grids of every synthesizer on every fabric. Nothing is tuned on the eval rolls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "work" / "adapt_exp"
CLEAN_M = 10.0
STRIP_LINES = 4096
EVAL_SEED = 960001  # + 1000 * fabric seed: fresh rolls per fabric
EVAL_ROLLS = 12
EVAL_LENGTH_M = 4.0
ARMS = {
    "a": None,
    "t": "none",
    "b": "perlin,streaks",
    "c": "cutpaste",
    "d": "gan",
    "e": "perlin,streaks,blobs,cutpaste",
}
ARM_NAMES = {
    "a": "no adaptation",
    "t": "thresholds only",
    "b": "Perlin + streaks",
    "c": "cut-paste",
    "d": "GAN",
    "e": "all together",
}
WIDTH_M = 0.2048


def _loomsight(*args: str) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "loomsight"), *args]


def clean_web(fabric_seed: int) -> Path:
    """10 m of the fabric's defect-free web as strips (rendered once; the seed is the fabric's + 7000)."""
    folder = WORK / "clean" / f"random_{fabric_seed}"
    if (folder / "done").is_file():
        return folder
    from runtime.sim.fabric import get_fabric
    from runtime.sim.loom import render_web

    folder.mkdir(parents=True, exist_ok=True)
    pixels, _, _ = render_web(get_fabric(f"random:{fabric_seed}"), length_m=CLEAN_M, width_px=2048, mm_per_px=0.1,
                              mm_per_line=0.1, seed=7000 + fabric_seed, defects_per_m=0, with_masks=True)  # fmt: skip
    for y in range(0, pixels.shape[0], STRIP_LINES):
        cv2.imwrite(str(folder / f"web_{y:08d}.png"), pixels[y : y + STRIP_LINES])
    (folder / "done").write_text("ok")
    return folder


def _eval(bundle: Path, fabric_seed: int, out: Path) -> dict[str, Any]:
    cmd = _loomsight("eval", str(bundle), "--fabrics", f"random:{fabric_seed}", "--rolls", str(EVAL_ROLLS),
                     "--length-m", str(EVAL_LENGTH_M), "--seed", str(EVAL_SEED + 1000 * fabric_seed),
                     "--out", str(out))  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return dict(json.loads(out.read_text()))


def _figures(ev: dict[str, Any]) -> dict[str, Any]:
    area = len(ev["rolls"]) * EVAL_LENGTH_M * WIDTH_M
    ag, aw = ev["web_class_agnostic"]["all"], ev["web_class_aware"]["all"]
    false = ag["n_reported"] - ag["true_positives"] - ag.get("duplicates", 0)
    return {
        "agnostic_recall": ag["recall"], "agnostic_precision": ag["precision"],
        "aware_recall": aw["recall"], "aware_precision": aw["precision"],
        "false_alarms_per_m2": round(false / area, 3), "n_truth": ag["n_truth"],
        "per_class_agnostic_recall": {c: v["recall"] for c, v in ev["web_class_agnostic"].items() if c != "all"},
    }  # fmt: skip


def run_one(fabric_seed: int, arm: str, seed: int, minutes: float, gan: Path | None) -> None:
    result = WORK / "results" / f"random_{fabric_seed}_{arm}_s{seed}.json"
    if result.is_file():
        return
    result.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    bundle, adapt_summary = ROOT / "models" / "default", None
    if ARMS[arm] is not None:
        if arm == "d" and gan is None:
            print(f"random:{fabric_seed} arm d: skipped (no --gan-checkpoint)", flush=True)
            return
        bundle = WORK / "bundles" / f"random_{fabric_seed}_{arm}_s{seed}"
        if not (bundle / "manifest.json").is_file():
            cmd = _loomsight("adapt", "--clean", str(clean_web(fabric_seed)), "--mm-per-px", "0.1", "--out",
                             str(bundle), "--minutes", "0" if arm == "t" else str(minutes), "--synth", str(ARMS[arm]),
                             "--seed", str(seed))  # fmt: skip
            if gan is not None and "gan" in str(ARMS[arm]):
                cmd += ["--gan-checkpoint", str(gan)]
            log = WORK / "logs" / f"{bundle.name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as fh:
                subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
        adapt_summary = json.loads((bundle / "adaptation.json").read_text())
    ev = _eval(bundle, fabric_seed, WORK / "evals" / f"random_{fabric_seed}_{arm}_s{seed}.json")
    doc: dict[str, Any] = {"fabric": f"random:{fabric_seed}", "arm": arm, "seed": seed,
           "minutes": minutes if arm not in ("a", "t") else 0,
           "eval": _figures(ev), "eval_rolls": EVAL_ROLLS, "eval_length_m": EVAL_LENGTH_M,
           "eval_first_seed": EVAL_SEED + 1000 * fabric_seed, "wall_s": round(time.monotonic() - t0, 1),
           "adapt": None if adapt_summary is None else {k: adapt_summary[k] for k in (
               "before", "after", "training_tiles", "wall_s", "target_met")}}  # fmt: skip
    result.write_text(json.dumps(doc, indent=2))
    f = doc["eval"]
    print(f"random:{fabric_seed} arm {arm} seed {seed}: agnostic R {f['agnostic_recall']:.3f} P "
          f"{f['agnostic_precision']:.3f}, FA/m2 {f['false_alarms_per_m2']}, {doc['wall_s']:.0f} s", flush=True)  # fmt: skip


def cmd_run(args: argparse.Namespace) -> int:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(ROOT / ".yolo"))
    fabrics = [int(s) for s in args.fabrics.split(",")]
    for fs in fabrics:
        clean_web(fs)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in args.arms.split(","):  # every fabric of one arm before the next arm
            for fs in fabrics:
                run_one(fs, arm, 0 if arm in ("a", "t") else seed, args.minutes, args.gan_checkpoint)
    return 0


def _label_integrity_and_samples(fabrics: list[int]) -> tuple[dict[str, int], Path]:
    """Changed pixels outside the union of each sample's boxes (must be 0), and a sample grid."""
    from offline_train.adapt.synths import build_synthesizers
    from offline_train.dataset.labels import boxes_from_mask
    from runtime.preprocess import resample_to_model, to_gray

    synths = build_synthesizers(
        ("perlin", "streaks", "blobs", "cutpaste"), mm_per_px=0.4, seed=5, cutpaste_per_class=6
    )
    outside: dict[str, int] = {}
    rows = []
    rng = np.random.default_rng(3)
    for fs in fabrics:
        strip = cv2.imread(str(sorted(clean_web(fs).glob("web_*.png"))[0]))
        assert strip is not None
        small = resample_to_model(to_gray(strip), 0.25, 0.25)
        row = []
        for synth in synths:
            for _ in range(20):
                y = int(rng.integers(0, small.shape[0] - 256))
                tile = np.ascontiguousarray(small[y : y + 256, :256])
                r = synth(tile, rng)
                if r is None:
                    continue
                boxes = boxes_from_mask(r.mask, merge_gap_px=2, min_area_px=4)
                inside = np.zeros(tile.shape, bool)
                for x0, y0, x1, y1 in boxes:
                    inside[y0:y1, x0:x1] = True
                outside[synth.name] = outside.get(synth.name, 0) + int(((r.image != tile) & ~inside).sum())
                img = cv2.cvtColor(r.image, cv2.COLOR_GRAY2BGR)
                for x0, y0, x1, y1 in boxes:
                    cv2.rectangle(img, (x0 - 1, y0 - 1), (x1, y1), (0, 0, 255), 1)
                cv2.putText(img, f"random:{fs} {synth.name}", (3, 12), 0, 0.4, (0, 255, 255), 1)
                row.append(img)
                break
        rows.append(np.hstack(row + [np.zeros_like(row[0])] * (len(synths) - len(row))))
    path = ROOT / "docs" / "adaptation_samples.png"
    grid = np.vstack(rows)
    cv2.imwrite(
        str(path),
        cv2.resize(grid, (grid.shape[1] * 3 // 8, grid.shape[0] * 3 // 8), interpolation=cv2.INTER_AREA),
    )
    return outside, path


def _label(r: dict[str, Any]) -> str:
    """A table row's arm, with its fine-tune budget when it has one (arms may run at different budgets)."""
    return f"({r['arm']}) {ARM_NAMES[r['arm']]}" + (f", {r['minutes']:g} min" if r["minutes"] else "")


def _chart(table: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(table)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, title in zip(axes, ("agnostic_recall", "agnostic_precision", "false_alarms_per_m2"),
                              ("class-agnostic recall", "class-agnostic precision", "false alarms / m²"), strict=True):  # fmt: skip
        meds = [statistics.median(table[a][key]) for a in arms]
        lo = [m - min(table[a][key]) for a, m in zip(arms, meds, strict=True)]
        hi = [max(table[a][key]) - m for a, m in zip(arms, meds, strict=True)]
        ax.bar(arms, meds, yerr=[lo, hi], capsize=4, color="#3b7dd8")
        ax.set_title(title + " — median, min–max over fabrics")
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _realism(fabrics: list[int]) -> dict[str, float]:
    """Accuracy of a from-scratch real-vs-synthetic classifier per synthesizer family (50 % = indistinguishable)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from adapt_realism import classifier_accuracy, real_crops, synthetic_crops

    from offline_train.adapt.synths import build_synthesizers
    from runtime.preprocess import resample_to_model, to_gray

    real = real_crops(fabrics)
    tiles = []
    for fs in fabrics:
        for path in sorted(clean_web(fs).glob("web_*.png"))[:3]:
            img = cv2.imread(str(path))
            assert img is not None
            small = resample_to_model(to_gray(img), 0.25, 0.25)
            tiles += [
                np.ascontiguousarray(small[y : y + 256, :256]) for y in range(0, small.shape[0] - 255, 256)
            ]
    out = {}
    for family in ("perlin", "streaks", "blobs", "cutpaste"):
        synths = build_synthesizers((family,), mm_per_px=0.4, seed=9, cutpaste_per_class=6)
        fake = [
            c
            for k, sy in enumerate(synths)
            for c in synthetic_crops(sy, tiles, len(real) // len(synths), 11 + k)
        ]
        out[family] = round(classifier_accuracy(real, fake), 3)
        print(
            f"realism {family}: classifier accuracy {out[family]} ({len(real)} real, {len(fake)} synthetic crops)"
        )
    return out


def _markdown(results: list[dict[str, Any]], table: dict[str, dict[str, list[float]]], outside: dict[str, int],
              realism: dict[str, float]) -> str:  # fmt: skip
    arms = list(table)
    lines = ["| fabric | arm | fine-tune min | agnostic recall | agnostic precision | aware recall | aware precision | "
             "false alarms/m² |", "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in sorted(results, key=lambda r: (r["fabric"], list(ARMS).index(r["arm"]), r["seed"])):
        f = r["eval"]
        lines.append(f"| {r['fabric']} | ({r['arm']}) {ARM_NAMES[r['arm']]} s{r['seed']} | {r['minutes']:g} | "
                     f"{f['agnostic_recall']:.3f} | "
                     f"{f['agnostic_precision']:.3f} | {f['aware_recall']:.3f} | {f['aware_precision']:.3f} | "
                     f"{f['false_alarms_per_m2']:.2f} |")  # fmt: skip
    lines += ["", "Median (min–max) over fabrics:", "",
              "| arm | n | agnostic recall | agnostic precision | aware recall | false alarms/m² |",
              "|---|---:|---|---|---|---|"]  # fmt: skip

    def cell(v: list[float]) -> str:
        return f"{statistics.median(v):.3f} ({min(v):.3f}–{max(v):.3f})"

    for a in arms:
        t = table[a]
        lines.append(f"| {a} | {len(t['agnostic_recall'])} | {cell(t['agnostic_recall'])} | "
                     f"{cell(t['agnostic_precision'])} | {cell(t['aware_recall'])} | {cell(t['false_alarms_per_m2'])} |")  # fmt: skip
    by = {(r["fabric"], r["arm"], r["seed"]): r["eval"] for r in results}
    for hi, lo in (("e", "a"), ("d", "b"), ("t", "a")):
        pairs = [(f"{fab} seed {seed}", by[(fab, hi, seed)], by[(fab, lo, lo_seed)])
                 for fab, arm, seed in by if arm == hi
                 for lo_seed in ([0] if lo in ("a", "t") else [seed]) if (fab, lo, lo_seed) in by]  # fmt: skip
        if pairs:
            lines += [
                "",
                f"({hi}) minus ({lo}), per fabric: class-agnostic recall and precision, points:",
                "",
            ]
            lines += [f"- {fab}: recall {100 * (e['agnostic_recall'] - a['agnostic_recall']):+.1f}, precision "
                      f"{100 * (e['agnostic_precision'] - a['agnostic_precision']):+.1f}" for fab, e, a in sorted(pairs)]  # fmt: skip
    lines += ["", f"Label integrity (pixels changed outside the boxes, per synthesizer): {outside}", ""]
    if realism:
        lines += [
            f"Realism proxy (real-vs-synthetic classifier accuracy, 0.5 = indistinguishable): {realism}",
            "",
        ]
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    results = [json.loads(p.read_text()) for p in sorted((WORK / "results").glob("*.json"))]
    if not results:
        print("no results yet: run first", file=sys.stderr)
        return 2
    fabrics = sorted({int(r["fabric"].split(":")[1]) for r in results})
    table: dict[str, dict[str, list[float]]] = {}
    for r in sorted(results, key=lambda r: (list(ARMS).index(r["arm"]), r["minutes"])):
        for k, v in r["eval"].items():
            if isinstance(v, (int, float)) and v is not None:
                table.setdefault(_label(r), {}).setdefault(k, []).append(float(v))
    outside, samples = _label_integrity_and_samples(fabrics)
    chart = ROOT / "docs" / "adaptation_chart.png"
    _chart(table, chart)
    realism = {} if args.no_realism else _realism(fabrics)
    doc = {"results": results, "label_integrity_changed_pixels_outside_boxes": outside,
           "realism_classifier_accuracy": realism,
           "eval": {"rolls_per_fabric": EVAL_ROLLS, "length_m": EVAL_LENGTH_M, "first_seed": "960001 + 1000 * fabric"},
           "machine": f"CPU, {os.cpu_count()} cores, no GPU"}  # fmt: skip
    (WORK / "tables.md").write_text(  # pasted into docs/adaptation_experiment.md with the reading of it
        _markdown(results, table, outside, realism)
    )
    (ROOT / "docs" / "adaptation_experiment.json").write_text(json.dumps(doc, indent=2))
    print(
        json.dumps(
            {a: {k: round(statistics.median(v), 3) for k, v in t.items()} for a, t in table.items()}, indent=1
        )
    )
    print("label integrity:", outside, "samples:", samples, "chart:", chart)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--fabrics", default="1,2,3,4,5")
    r.add_argument("--arms", default="a,t,e,b,c")
    r.add_argument("--seeds", default="0")
    r.add_argument("--minutes", type=float, default=8.0)
    r.add_argument("--gan-checkpoint", type=Path, default=None)
    rep = sub.add_parser("report")
    rep.add_argument("--no-realism", action="store_true", help="skip the real-vs-synthetic classifier")
    args = p.parse_args()
    return cmd_run(args) if args.cmd == "run" else cmd_report(args)


if __name__ == "__main__":
    raise SystemExit(main())
