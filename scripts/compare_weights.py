"""Two weights folders on the real evaluation CTs, scored on the same field.

`axon evaluate` scores a reconstruction on its own grid. Weights with a wider cube (the 440 mm
`cpu` preset against the earlier 320 mm one) are then scored over more air around the body, which
is easy to get right and lifts PSNR. Here both reconstructions of each case are also scored on the
smaller of the two cubes (the wider one's reconstruction resampled onto it, anti-aliased), so the
difference is the weights', not the field's.

Usage: .venv/bin/python scripts/compare_weights.py OLD_WEIGHTS NEW_WEIGHTS [--data ../shared/data] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import SimpleITK as sitk

    from axonct.io.ct import read_ct
    from axonct.io.ct_preprocess import antialias
    from axonct.options import ReconstructOptions
    from axonct.pipeline.reconstruction import AxonPipeline
    from axonct.tools.compare import score_against_ground_truth
    from axonct.tools.drr_export import export_drrs

    data = Path(args.data)
    cts = [data / r["path"] for r in csv.DictReader(open(data / "manifest.csv"))
           if r["kind"] == "ct" and r["role"] == "eval"]
    pipelines = {"old": AxonPipeline.load(Path(args.old), "cpu"), "new": AxonPipeline.load(Path(args.new), "cpu")}
    rows = []
    for ct in cts:
        gt = read_ct(ct)
        images = {}
        for name, pipe in pipelines.items():
            with tempfile.TemporaryDirectory() as tmp:
                export_drrs(ct, tmp, pipe.preset.data, realism=None, save_cube=False)
                for variant, lateral in (("biplanar", Path(tmp) / "lateral.nrrd"), ("frontal-only", None)):
                    result = pipe(Path(tmp) / "frontal.nrrd", lateral, ReconstructOptions())
                    images[name, variant] = result.image()
        for variant in ("biplanar", "frontal-only"):
            old, new = images["old", variant], images["new", variant]
            small, large = (old, new) if old.GetSpacing()[0] * old.GetSize()[0] <= new.GetSpacing()[0] * new.GetSize()[0] \
                else (new, old)
            moved = sitk.Resample(antialias(large, small.GetSpacing()), small, sitk.Transform(), sitk.sitkLinear, -1024.0)
            common = {"old": moved if large is old else old, "new": moved if large is new else new}
            for name in ("old", "new"):
                own = score_against_ground_truth(images[name, variant], gt)["honest"]
                same = score_against_ground_truth(common[name], gt)["honest"]
                rows.append({"ct": ct.name, "variant": variant, "weights": name,
                             "own_field_psnr": round(own["psnr"], 2), "own_field_ssim": round(own["ssim"], 3),
                             "common_field_psnr": round(same["psnr"], 2), "common_field_ssim": round(same["ssim"], 3),
                             "common_field_mm": round(small.GetSpacing()[0] * small.GetSize()[0], 1)})
                print(json.dumps(rows[-1]), flush=True)
    print("\nmeans (own field | common field)")
    for variant in ("biplanar", "frontal-only"):
        for name in ("old", "new"):
            sel = [r for r in rows if r["variant"] == variant and r["weights"] == name]
            mean = lambda k: sum(r[k] for r in sel) / len(sel)  # noqa: E731
            print(f"{variant:13s} {name}: {mean('own_field_psnr'):.2f} dB / {mean('own_field_ssim'):.3f} | "
                  f"{mean('common_field_psnr'):.2f} dB / {mean('common_field_ssim'):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
