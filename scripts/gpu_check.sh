#!/usr/bin/env bash
# Every GPU check and benchmark in one call (about 5 minutes on one H200), for a lent GPU machine:
#   bash scripts/gpu_wheels.sh            # here, once: the wheels the GPU machine lacks -> gpu_wheels/
#   bash scripts/gpu_check.sh             # there (carry gpu_wheels); writes $OUT/gpu_check.json
# Checks: the CUDA tests (guided step on the GPU, batched samples = single runs, bf16 vs fp32, the
# reconstruct command end to end with consistency); benchmarks: the paper preset (256^3) with 1 and
# 4 samples and with fewer Stage II steps, the cpu preset, and the DRR pair. Each step has its own
# timeout, so one hang cannot eat the machine's time; the table records what ran and what failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if compgen -G "gpu_wheels/*.whl" >/dev/null; then
  "$PY" -m pip install --no-deps --no-index --quiet --disable-pip-version-check gpu_wheels/*.whl \
    || echo "gpu_check: some carried wheels did not install" >&2
fi
export PYTHONPATH="$PWD/AXONReconstruction:$PWD/Testing/engine${PYTHONPATH:+:$PYTHONPATH}"
: > "$OUT/steps.jsonl"

step() {  # step NAME TIMEOUT_S CMD...: run, time, record rc and the last lines of output
  local name="$1" limit="$2"; shift 2
  local t0; t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local secs; secs=$(echo "$(date +%s.%N) - $t0" | bc)
  "$PY" - "$name" "$rc" "$secs" "$OUT/$name.log" >> "$OUT/steps.jsonl" <<'PYEOF'
import json, sys
name, rc, secs, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
tail = open(log, errors="replace").read().splitlines()[-6:]
print(json.dumps({"step": name, "rc": rc, "seconds": round(secs, 1), "tail": tail}))
PYEOF
  echo "gpu_check: $name rc=$rc in ${secs}s"
}

step machine 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; \
  $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.is_bf16_supported())'"
step tests 240 "$PY" -m pytest -q -p no:cacheprovider Testing/engine/test_gpu.py Testing/engine/test_precision.py -k "not avx2"
step paper_1 150 "$PY" -m axonct.app.cli benchmark pipeline --config paper --device cuda --json "$OUT/paper_1.json"
step paper_4 200 "$PY" -m axonct.app.cli benchmark pipeline --config paper --device cuda --samples 4 --json "$OUT/paper_4.json"
step paper_fine25 120 "$PY" -m axonct.app.cli benchmark pipeline --config paper --device cuda --steps 25 --json "$OUT/paper_fine25.json"
step paper_fp32 150 "$PY" -m axonct.app.cli benchmark pipeline --config paper --device cuda --precision fp32 --json "$OUT/paper_fp32.json"
step cpu_preset 60 "$PY" -m axonct.app.cli benchmark pipeline --config cpu --device cuda --json "$OUT/cpu_preset.json"
step drr 60 "$PY" -m axonct.app.cli benchmark drr --device cuda --json "$OUT/drr.json"

"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
steps = [json.loads(l) for l in (out / "steps.jsonl").read_text().splitlines() if l.strip()]
table = {"steps": {s["step"]: {"rc": s["rc"], "seconds": s["seconds"]} for s in steps}, "benchmarks": {}}
for name in ("paper_1", "paper_4", "paper_fine25", "paper_fp32", "cpu_preset", "drr"):
    f = out / f"{name}.json"
    if not f.exists():
        continue
    r = json.loads(f.read_text())
    if r["benchmark"] == "pipeline":
        rows = {row["stage"]: row for row in r["rows"]}
        table["benchmarks"][name] = {
            "preset": r["preset"], "samples": r["samples"], "sample_batch": r.get("sample_batch"),
            "precision": r.get("precision", {}).get("name"),
            **{f"{k}_s": rows[k]["seconds"] for k in ("coarse", "fine", "sr", "total")},
            "peak_cuda_gb": round((rows["total"]["peak_cuda_mb"] or 0) / 1024, 2),
            "gflop": rows["total"]["gflop"], "output_shape": r.get("output_shape")}
    else:
        table["benchmarks"][name] = {row["views"]: row["median_s"] for row in r["rows"]}
(out / "gpu_check.json").write_text(json.dumps(table, indent=2))
print(json.dumps(table, indent=2))
PYEOF
