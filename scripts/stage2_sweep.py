"""What Stage II adds on the real evaluation CTs: Stage I alone, then Stage II at several start
strengths (Stage III after each), through the default reconstruction path on `axon drr` files.

Usage: .venv/bin/python scripts/stage2_sweep.py [--data ../shared/data] [--weights DIR]
       [--strengths 0 0.15 0.3 0.6] [--json OUT.json]
Scores as `axon evaluate --pred --gt` (honest PSNR/SSIM on the reconstruction's grid).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    from real_ct_runs import DEFAULT_DATA, evaluation_cts, print_means, reconstruct_ct

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--weights", default=None)
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.15, 0.3, 0.6])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from axonct.io.ct import read_ct
    from axonct.pipeline.loading import default_weights_dir
    from axonct.pipeline.reconstruction import AxonPipeline
    from axonct.tools.compare import score_against_ground_truth

    pipeline = AxonPipeline.load(Path(args.weights) if args.weights else default_weights_dir(), "cpu")
    runs = {"stage I only (+ consistency)": (True, {}, {"stop_after": "coarse"})}
    runs.update({f"stages I-III, Stage II strength {s:g}": (True, {"fine_strength": s}, {}) for s in args.strengths})
    rows = []
    for ct in evaluation_cts(args.data):
        gt = read_ct(ct)
        for name, image in reconstruct_ct(pipeline, ct, runs).items():
            scored = score_against_ground_truth(image, gt)["honest"]
            rows.append({"ct": ct.name, "variant": name, "psnr": round(scored["psnr"], 2),
                         "ssim": round(scored["ssim"], 3)})
            print(f"{ct.name:40s} {name:40s} {scored['psnr']:6.2f} dB  SSIM {scored['ssim']:.3f}", flush=True)
    print("\nmean over the evaluation CTs")
    print_means(rows, ("variant",), [("psnr", "ssim")])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
