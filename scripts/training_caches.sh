# Sourced by the retraining scripts (phases 4-6 of the demo weights): the training caches, written
# when absent, so every phase names the same chests (same seeds) without repeating how they are made.
# Needs AXON, DATA and COUNT set; defines LIDC, P1, P5 and the functions below.
LIDC="$($AXON fetch-data | sed 's/^sample data in //')/cxr.nii.gz"
P1="$DATA/ct/train/ct01_popi00_fullres.nii.gz"  # patient P1 (its 4D-CT phases are in the real cache)
P5="$DATA/ct/train/ct06_cip_testinput.nii.gz"

real_cache() {  # folder: LIDC-IDRI-0001 and every CT of DATA/ct/train, split by patient (manifest.csv)
  [ -f "$1/manifest.json" ] || $AXON prepare --ct "$LIDC" "$DATA"/ct/train/*.nii.gz --patients "$DATA/manifest.csv" \
      --out "$1" --preset cpu-wide --val-fraction 0 --test-fraction 0 --no-progress
}

synth_cache() {  # folder set-seed fov-probability source-CT [more axon synth options]
  local out=$1 seed=$2 fov=$3 ct=$4
  shift 4
  [ -f "$out/manifest.json" ] || $AXON synth --out "$out" --count "$COUNT" --seed "$seed" --preset cpu-wide \
      --fov-probability "$fov" --ct "$ct" "$@" >/dev/null
}
