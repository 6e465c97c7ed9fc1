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
# Usage: bash scripts/finetune_flat_chests.sh [DATA] [INIT_WEIGHTS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
INIT="${2:-candidates/cpu-wide}"
AXON=.venv/bin/axon
RUNS=runs/retrain
FOV=runs/frontal_depth
OUT=runs/flat_chests
CFG=scripts/finetune_frontal_depth.json
STEPS_COARSE="${STEPS_COARSE:-1000}"
COUNT="${COUNT:-120}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p $OUT
LIDC="$($AXON fetch-data | sed 's/^sample data in //')/cxr.nii.gz"
P1="$DATA/ct/train/ct01_popi00_fullres.nii.gz"
P5="$DATA/ct/train/ct06_cip_testinput.nii.gz"
# the caches of phases 4 and 5 (same seeds: the same chests), written when absent
[ -f $RUNS/real/manifest.json ] || $AXON prepare --ct "$LIDC" "$DATA"/ct/train/*.nii.gz \
    --patients "$DATA/manifest.csv" --out $RUNS/real --preset cpu-wide --val-fraction 0 --test-fraction 0 --no-progress
synth() {  # folder seed fov-probability source-CT [more synth options]
  local out=$1 seed=$2 fov=$3 ct=$4; shift 4
  [ -f "$out/manifest.json" ] || $AXON synth --out "$out" --count "$COUNT" --seed "$seed" --preset cpu-wide \
      --fov-probability "$fov" --ct "$ct" "$@" >/dev/null
}
i=0
for ct in "$LIDC" "$P1" "$P5"; do
  name=$(echo lidc p1 p5 | cut -d' ' -f$((i + 1)))
  synth $RUNS/synth_$name $((40 + i)) 0.1 "$ct"
  synth $FOV/synth_fov_$i $((50 + i)) 0.6 "$ct"
  synth $OUT/synth_flat_$i $((60 + i)) 0.3 "$ct" --anatomy scripts/flat_chests.json
  i=$((i + 1))
done
CACHES="$RUNS/real $RUNS/synth_lidc $RUNS/synth_p1 $RUNS/synth_p5 $FOV/synth_fov_0 $FOV/synth_fov_1 $FOV/synth_fov_2"
CACHES="$CACHES $OUT/synth_flat_0 $OUT/synth_flat_1 $OUT/synth_flat_2"
if [ -f $OUT/coarse/resume.pt ]; then START=--resume; else START="--init-from $INIT"; fi
$AXON train coarse --data $CACHES --config $CFG --out $OUT/coarse --steps "$STEPS_COARSE" --no-progress $START
DEST=$OUT/weights
mkdir -p $DEST
for f in controlnet sr lung_fields; do cp "$INIT/$f.safetensors" "$INIT/$f.json" $DEST/; done
cp $OUT/coarse/coarse.safetensors $OUT/coarse/coarse.json "$INIT/sampling.json" $DEST/
echo "candidate weights in $DEST"
