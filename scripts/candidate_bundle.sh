#!/usr/bin/env bash
# Turn a training checkpoint into a candidate bundle measured exactly like models/default, and
# print its web figures beside the shipped bundle's. Nothing in models/default is touched.
#
#   scripts/candidate_bundle.sh work/runs/v1c/weights/best.pt work/bundle_v1c [DATASET]
#
# Steps (the same as scripts/train_default_model.sh 3-5): export with thresholds tuned on the
# dataset's val tiles, web-level tuning on rolls 800001.. , eval on rolls 900001.. with
# --compare against models/default/eval.json (same rolls when ROLLS matches that file's).
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${1:?checkpoint (.pt)}
OUT=${2:?output bundle directory}
DATASET=${3:-work/datasets/v1}
ROLLS=${ROLLS:-112}
TUNE_ROLLS=${TUNE_ROLLS:-28}
LS=.venv/bin/loomsight
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$PWD/.yolo"

$LS export "$CKPT" --out "$OUT" --name loomsight-default --tune-on "$DATASET/data.yaml" \
  --tune-max-tiles 500 --include-checkpoint
$LS tune "$OUT" --rolls "$TUNE_ROLLS" --length-m 4 --seed 800001
$LS eval "$OUT" --rolls "$ROLLS" --length-m 4 --seed 900001 --dataset "$DATASET" \
  --out "$OUT/eval.json" --review-sheet "$OUT/review.jpg" --compare models/default/eval.json
