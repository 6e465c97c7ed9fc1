#!/usr/bin/env bash
# Phase 5 of the demo weights: Stage I of the phase 4 candidate (`scripts/retrain_all_patients.sh`)
# fine-tuned for a frontal view alone. Phase 4 made the body far too deep from a frontal view of a
# chest cut at its sides by the scanner's field of view (both real evaluation CTs are), an input its
# training chests rarely showed (10 % FOV cuts) and a view it trained on only 30 % of the time.
# Here: three more synthetic caches with a circular FOV cut in 60 % of the chests (same patients,
# new set seeds), and the lateral view dropped in 60 % of the training samples (`coarse.view_dropout`).
# The other stages stay as in phase 4. Checkpoints every 100 steps; the same command resumes.
# Usage: bash scripts/finetune_frontal_depth.sh [DATA] [INIT_WEIGHTS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
INIT="${2:-candidates/cpu-wide}"
AXON=.venv/bin/axon
RUNS=runs/retrain
OUT=runs/frontal_depth
CFG=scripts/finetune_frontal_depth.json
STEPS_COARSE="${STEPS_COARSE:-1000}"
COUNT="${COUNT:-120}"
mkdir -p $OUT
. scripts/training_caches.sh
# phase 4's caches (real CTs and 10 %-FOV synthetic chests), then three with a FOV cut in 60 %
phase5_caches $RUNS $OUT
if [ -f $OUT/coarse/resume.pt ]; then START=--resume; else START="--init-from $INIT"; fi
$AXON train coarse --data $CACHES --config $CFG --out $OUT/coarse --steps "$STEPS_COARSE" --no-progress $START
DEST=$OUT/weights
mkdir -p $DEST
for f in controlnet sr lung_fields; do cp "$INIT/$f.safetensors" "$INIT/$f.json" $DEST/; done
cp $OUT/coarse/coarse.safetensors $OUT/coarse/coarse.json "$INIT/sampling.json" $DEST/
echo "candidate weights in $DEST"
