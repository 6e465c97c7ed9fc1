#!/usr/bin/env bash
# Phase 6 of the demo weights: Stage I of the phase 5 candidate (`scripts/finetune_frontal_depth.sh`)
# fine-tuned further for a frontal view alone, with
#   * every patient drawn equally often inside the real-CT cache (`CTCache.weights`): phase 4 and 5
#     drew per volume, so patient P1's 11 breathing phases made 11 of 13 real draws;
#   * three more synthetic caches of flatter chests (`scripts/flat_chests.json`: AP scale 0.72-1.0,
#     chest shape towards flat), one per patient: the training patients' chests are deep (AP / LR
#     0.76-0.84, two of three barrel-shaped) against roughly 0.6-0.85 in adults, and from a frontal
#     view alone the depth of a chest can only come from that prior.
# The other stages stay as in phase 4. Checkpoints every 100 steps; the same command resumes.
# Phase 7 is the same recipe continued (`candidates/cpu-wide` holds its result):
#   bash scripts/finetune_flat_chests.sh ../shared/data runs/frontal_depth/weights        # phase 6, 1000 steps
#   OUT=runs/flat_chests_2 STEPS_COARSE=800 bash scripts/finetune_flat_chests.sh ../shared/data runs/flat_chests/weights
# Phase 8 continues phase 7 with a quarter of the training views left as clean DRRs
# (`scripts/finetune_clean_views.json`: clean_view_probability 0.25), the inputs `axon drr` writes:
#   OUT=runs/clean_views CFG=scripts/finetune_clean_views.json STEPS_COARSE=800 \
#       bash scripts/finetune_flat_chests.sh ../shared/data candidates/cpu-wide
# Usage: [OUT=folder] [CFG=config.json] [STEPS_COARSE=n] bash scripts/finetune_flat_chests.sh [DATA] [INIT_WEIGHTS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
INIT="${2:-candidates/cpu-wide}"
AXON=.venv/bin/axon
RUNS=runs/retrain
FOV=runs/frontal_depth
OUT="${OUT:-runs/flat_chests}"
CFG="${CFG:-scripts/finetune_frontal_depth.json}"
STEPS_COARSE="${STEPS_COARSE:-1000}"
COUNT="${COUNT:-120}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p $OUT
. scripts/training_caches.sh
# the caches of phases 4 and 5 (same seeds: the same chests), then the flatter chests
phase5_caches $RUNS $FOV
synth_per_patient 60 0.3 "runs/flat_chests/synth_flat_0 runs/flat_chests/synth_flat_1 runs/flat_chests/synth_flat_2" \
    --anatomy scripts/flat_chests.json
if [ -f $OUT/coarse/resume.pt ]; then START=--resume; else START="--init-from $INIT"; fi
$AXON train coarse --data $CACHES --config $CFG --out $OUT/coarse --steps "$STEPS_COARSE" --no-progress $START
DEST=$OUT/weights
mkdir -p $DEST
for f in controlnet sr lung_fields; do cp "$INIT/$f.safetensors" "$INIT/$f.json" $DEST/; done
cp $OUT/coarse/coarse.safetensors $OUT/coarse/coarse.json "$INIT/sampling.json" $DEST/
echo "candidate weights in $DEST"
