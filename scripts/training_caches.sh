# Sourced by the retraining scripts (phases 4-7 of the demo weights): the training caches, written
# when absent, so every phase names the same chests (same seeds) without repeating how they are made.
# Needs AXON, DATA and COUNT set; defines LIDC, P1, P5, the functions below, and CACHES, the folders
# they have named so far (for `axon train --data`).
LIDC="$($AXON fetch-data | sed 's/^sample data in //')/cxr.nii.gz"
P1="$DATA/ct/train/ct01_popi00_fullres.nii.gz"  # patient P1 (its 4D-CT phases are in the real cache)
P5="$DATA/ct/train/ct06_cip_testinput.nii.gz"
CACHES=""

real_cache() {  # folder: LIDC-IDRI-0001 and every CT of DATA/ct/train, split by patient (manifest.csv)
  [ -f "$1/manifest.json" ] || $AXON prepare --ct "$LIDC" "$DATA"/ct/train/*.nii.gz --patients "$DATA/manifest.csv" \
      --out "$1" --preset cpu-wide --val-fraction 0 --test-fraction 0 --no-progress
  CACHES="$CACHES $1"
}

synth_cache() {  # folder set-seed fov-probability source-CT [more axon synth options]
  local out=$1 seed=$2 fov=$3 ct=$4
  shift 4
  [ -f "$out/manifest.json" ] || $AXON synth --out "$out" --count "$COUNT" --seed "$seed" --preset cpu-wide \
      --fov-probability "$fov" --ct "$ct" "$@" >/dev/null
  CACHES="$CACHES $out"
}

synth_per_patient() {  # first-set-seed fov-probability "folder-LIDC folder-P1 folder-P5" [more synth options]
  local seed=$1 fov=$2 i
  local outs=($3) cts=("$LIDC" "$P1" "$P5")
  shift 3
  for i in 0 1 2; do synth_cache "${outs[$i]}" $((seed + i)) "$fov" "${cts[$i]}" "$@"; done
}

phase4_caches() {  # folder: the real CTs, and 10 %-FOV synthetic chests of each patient (set seeds 40-42)
  real_cache "$1/real"
  synth_per_patient 40 0.1 "$1/synth_lidc $1/synth_p1 $1/synth_p5"
}

phase5_caches() {  # phase-4 folder, phase-5 folder: phase 4's, then a FOV cut in 60 % (set seeds 50-52)
  phase4_caches "$1"
  synth_per_patient 50 0.6 "$2/synth_fov_0 $2/synth_fov_1 $2/synth_fov_2"
}
