"""Two weights folders on the real evaluation CTs, scored on the same field.

`axon evaluate` scores a reconstruction on its own grid. Weights with a wider cube (the 440 mm
`cpu` preset against the earlier 320 mm one) are then scored over more air around the body, which
is easy to get right and lifts PSNR. Here both reconstructions of each case are also scored on the
smaller of the two cubes (the wider one's reconstruction resampled onto it, anti-aliased), so the
difference is the weights', not the field's; and on that field at the coarser of the two voxel
sizes (both resampled), since a wider cube at the same voxel count has larger voxels, which costs
SSIM on the finer grid whatever the weights learned.

Usage: .venv/bin/python scripts/compare_weights.py OLD_WEIGHTS NEW_WEIGHTS [--data ../shared/data] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    from real_ct_runs import DEFAULT_DATA, evaluation_cts, print_means, reconstruct_ct

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from axonct.io.ct import read_ct
    from axonct.pipeline.reconstruction import AxonPipeline
    from axonct.tools.compare import score_against_ground_truth

    pipelines = {"old": AxonPipeline.load(Path(args.old), "cpu"), "new": AxonPipeline.load(Path(args.new), "cpu")}
    runs = {"biplanar": (True, {}, {}), "frontal-only": (False, {}, {})}
    rows = []
    for ct in evaluation_cts(args.data):
        gt = read_ct(ct)
        images = {name: reconstruct_ct(pipe, ct, runs) for name, pipe in pipelines.items()}
        for variant in runs:
            old, new = images["old"][variant], images["new"][variant]
            field = lambda im: im.GetSpacing()[0] * im.GetSize()[0]  # noqa: E731
            small, large = (old, new) if field(old) <= field(new) else (new, old)
            moved = onto(large, small)
            common = {"old": moved if large is old else old, "new": moved if large is new else new}
            coarse = coarser_grid(small, max(old.GetSpacing()[0], new.GetSpacing()[0]))
            for name in ("old", "new"):
                own = score_against_ground_truth(images[name][variant], gt)["honest"]
                same = score_against_ground_truth(common[name], gt)["honest"]
                both = score_against_ground_truth(onto(images[name][variant], coarse), gt)["honest"]
                rows.append({"ct": ct.name, "variant": variant, "weights": name,
                             "own_field_psnr": round(own["psnr"], 2), "own_field_ssim": round(own["ssim"], 3),
                             "common_field_psnr": round(same["psnr"], 2), "common_field_ssim": round(same["ssim"], 3),
                             "common_field_mm": round(field(small), 1),
                             "common_voxel_psnr": round(both["psnr"], 2), "common_voxel_ssim": round(both["ssim"], 3),
                             "common_voxel_mm": round(coarse.GetSpacing()[0], 3)})
                print(json.dumps(rows[-1]), flush=True)
    print("\nmeans (own field | common field | common field and voxel size)")
    print_means(rows, ("variant", "weights"), [("own_field_psnr", "own_field_ssim"),
                                                ("common_field_psnr", "common_field_ssim"),
                                                ("common_voxel_psnr", "common_voxel_ssim")])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def onto(image, reference):
    """``image`` resampled onto ``reference``'s grid, anti-aliased first (air outside)."""
    import SimpleITK as sitk

    from axonct.io.ct_preprocess import antialias

    return sitk.Resample(antialias(image, reference.GetSpacing()), reference, sitk.Transform(), sitk.sitkLinear,
                         -1024.0)


def coarser_grid(small, spacing: float):
    """A cube over ``small``'s field (same centre and axes) with voxels of ``spacing`` mm."""
    import numpy as np
    import SimpleITK as sitk

    size = max(1, int(round(small.GetSize()[0] * small.GetSpacing()[0] / spacing)))
    direction = np.array(small.GetDirection()).reshape(3, 3)
    centre = small.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in small.GetSize()])
    origin = np.array(centre) - direction @ np.full(3, (size - 1) / 2.0 * spacing)
    ref = sitk.Image([size] * 3, sitk.sitkFloat32)
    ref.SetSpacing([spacing] * 3)
    ref.SetDirection(small.GetDirection())
    ref.SetOrigin([float(x) for x in origin])
    return ref


if __name__ == "__main__":
    main()
