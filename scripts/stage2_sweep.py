"""What Stage II adds on the real evaluation CTs: Stage I alone, then Stage II at several start
strengths (Stage III after each), through the default reconstruction path on `axon drr` files.

Usage: .venv/bin/python scripts/stage2_sweep.py [--data ../shared/data] [--weights DIR]
       [--strengths 0 0.15 0.3 0.6] [--json OUT.json]
Scores as `axon evaluate --pred --gt` (honest PSNR/SSIM on the reconstruction's grid).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--weights", default=None)
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.15, 0.3, 0.6])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from axonct.io.ct import read_ct
    from axonct.options import ReconstructOptions
    from axonct.pipeline.loading import default_weights_dir
    from axonct.pipeline.reconstruction import AxonPipeline
    from axonct.tools.compare import score_against_ground_truth
    from axonct.tools.drr_export import export_drrs

    data = Path(args.data)
    cts = [data / r["path"] for r in csv.DictReader(open(data / "manifest.csv"))
           if r["kind"] == "ct" and r["role"] == "eval"]
    pipeline = AxonPipeline.load(Path(args.weights) if args.weights else default_weights_dir(), "cpu")
    variants = [("stage I only (+ consistency)", {"stop_after": "coarse"}, {})]
    variants += [(f"stages I-III, Stage II strength {s:g}", {}, {"fine_strength": s}) for s in args.strengths]
    rows = []
    for ct in cts:
        gt = read_ct(ct)
        with tempfile.TemporaryDirectory() as tmp:
            export_drrs(ct, tmp, pipeline.preset.data, realism=None, save_cube=False)
            for name, call, opts in variants:
                options = dataclasses.replace(ReconstructOptions(), **opts)
                result = pipeline(Path(tmp) / "frontal.nrrd", Path(tmp) / "lateral.nrrd", options, **call)
                scored = score_against_ground_truth(result.image(), gt)["honest"]
                rows.append({"ct": ct.name, "variant": name, "psnr": round(scored["psnr"], 2),
                             "ssim": round(scored["ssim"], 3)})
                print(f"{ct.name:40s} {name:40s} {scored['psnr']:6.2f} dB  SSIM {scored['ssim']:.3f}", flush=True)
    print("\nmean over the evaluation CTs")
    for name, _, _ in variants:
        sel = [r for r in rows if r["variant"] == name]
        print(f"{name:40s} {sum(r['psnr'] for r in sel) / len(sel):6.2f} dB  "
              f"SSIM {sum(r['ssim'] for r in sel) / len(sel):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
