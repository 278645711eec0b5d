#!/usr/bin/env bash
# The dense route (issue 11): how the dense defect model was made, the exact commands, resumable.
# Needs the train extra (`make test` installs it). Every step is skipped when its output exists;
# training resumes from its last checkpoint (written every 5 minutes) when re-run.
#   OUT=models/default scripts/train_dense_model.sh   # to (re)make the bundled model from it
set -euo pipefail
cd "$(dirname "$0")/.."
LS=.venv/bin/loomsight
WORK=${WORK:-work}
OUT=${OUT:-$WORK/routes/dense}
HOURS=${HOURS:-1.5}
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$PWD/.yolo"

# 1. 120 synthetic webs (2.5 m x 2048 px at 0.1 mm/px, 7 defects/m, the quiet classes weighted up),
#    tiled at 0.4 mm/px into 256 px tiles with exact label masks; Perlin stains, warp/weft streaks
#    and cut-paste of simulator defects on clean tiles (not the Perlin foreign blobs: they taught
#    stain-vs-contamination confusion in an earlier run).
[ -f "$WORK/datasets/m1/data.yaml" ] || \
  $LS dataset --out "$WORK/datasets/m1" --sim-webs 120 --sim-length-m 2.5 --sim-defects-per-m 7 \
    --val-every 8 --seed 7007 --cutpaste-per-class 50 --clean-keep-probability 0.3 \
    --synth perlin_stain,streak_broken_end,streak_broken_pick,cutpaste \
    --sim-class-weights hole=0.5,stain=0.5,broken_end=0.8,broken_pick=1.2,knot=2.0,slub=1.5,thin_place=2.0,float=2.5,contamination=1.5

# 2. DenseDefectNet from scratch, HOURS of training time (the cosine schedule spans the budget).
RUN="$WORK/runs/dense_m1"
ARGS=(--arch dense --epochs 100 --batch 16 --samples-per-epoch 3200 --hours "$HOURS" --out "$WORK/runs"
      --name dense_m1 --threads 2 --checkpoint-every-s 300)
if [ -f "$RUN/weights/last.pt" ] && [ ! -f "$RUN/done" ]; then
  $LS train "$WORK/datasets/m1" "${ARGS[@]}" --resume
elif [ ! -f "$RUN/done" ]; then
  $LS train "$WORK/datasets/m1" "${ARGS[@]}"
fi
touch "$RUN/done"

# 3. Export (parity-checked mask bundle, fine-tunable weights included), thresholds at web level on
#    tuning rolls (seeds 800001..), evaluation on fresh rolls (seeds 900001..) with the review sheet.
$LS export "$RUN/weights/best.pt" --out "$OUT" --name loomsight-dense --include-checkpoint
$LS tune "$OUT" --rolls 28 --length-m 4 --seed 800001
$LS eval "$OUT" --rolls 112 --length-m 4 --seed 900001 --out "$OUT/eval.json" --review-sheet "$OUT/review.jpg"
