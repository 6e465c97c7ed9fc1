"""`axon evaluate --real`: judge reconstructions from real radiographs that have no ground truth.

Real X-rays are where DRR-trained models fail, and no CT exists to compute a PSNR against. What can
be measured per file: how it was framed, the lung air the reconstruction holds (mL, share of the
body, share on the patient's left), the overlap of the reconstruction's lungs with the radiograph's
lung fields (Dice), the body's box fill and ray streaks (`axonct.anatomy`), and how well the
reconstruction's DRR reproduces the input (`guidance.reprojection`). Writes real_cases.csv,
summary.json and one montage row per file, so a folder of X-rays can be judged at a glance.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from axonct.errors import AxonInputError
from axonct.io.output_policy import Outputs

RADIOGRAPH_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nrrd", ".mha",
                       ".nii", ".gz"}
MONTAGE_WINDOW_HU = (-1000.0, 300.0)


def list_radiographs(inputs: list[str | Path]) -> list[Path]:
    """Files given directly, and the radiograph-like files of given folders (sorted; hidden files and
    AXON's own outputs skipped)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                            and (f.suffix.lower() in RADIOGRAPH_SUFFIXES or f.suffix == ""))
        elif p.is_file():
            files.append(p)
        else:
            raise AxonInputError(p, "not found")
    if not files:
        raise AxonInputError(inputs[0] if inputs else None, "holds no radiographs (.dcm, .png, .jpg, .tif, ...)")
    return files


def evaluate_radiographs(inputs: list[str | Path], weights: str | Path | None, out: str | Path,
                         steps: int | None = None, seed: int = 0, device: str = "cpu", precision: str = "auto",
                         consistency_strength: float = 1.0, lung_fields: bool = True, framing: str = "auto",
                         overwrite: bool = False, progress=None, log=print) -> dict:
    """One reconstruction per frontal radiograph, with consistency; a file that cannot be read is a
    row with its error, not the end of the run."""
    from axonct.guidance.reprojection import consistency_report
    from axonct.options import ReconstructOptions
    from axonct.pipeline.loading import default_weights_dir
    from axonct.pipeline.reconstruction import AxonPipeline
    from axonct.runtime import resolve_device

    files = list_radiographs(inputs)
    weights = Path(weights) if weights else default_weights_dir()
    pipeline = AxonPipeline.load(weights, resolve_device(device), precision=precision)
    out = Path(out)
    outputs = Outputs("evaluate", overwrite=overwrite)
    outputs.folder(out)
    for name in ("real_cases.csv", "summary.json", "montage.png"):
        outputs.file(out / name)
    outputs.check(len(files) * (1 << 20) + (1 << 20))
    rows, tiles = [], []
    for n, path in enumerate(files):
        options = ReconstructOptions(steps=steps, seed=seed + n, consistency_strength=consistency_strength,
                                     lung_fields=lung_fields, framing=framing)
        try:
            result = pipeline(path, None, options, progress=progress)
        except AxonInputError as exc:
            log(f"skipped: {exc}")
            rows.append({"file": path.name, "path": str(path), "status": f"error: {exc}"})
            continue
        rec, frame, fields, checks = result.reconstruction, result.framing, result.lung_fields, result.checks
        views, mask = rec.views, rec.view_mask
        reproj = consistency_report(rec.mean, pipeline.preset.data.grid, pipeline.preset.data, views, mask)["frontal"]
        a = checks["anatomy"]
        dice = (checks["lung_fields"] or {}).get("dice", {}).get("frontal")
        rows.append({"file": path.name, "path": str(path), "status": "ok", "framing": frame.views["frontal"].method,
                     "size_factor": round(frame.size_factor, 3), "size_source": frame.size_source,
                     "lung_air_ml": a["enclosed_air_ml"], "lung_air_fraction": a["enclosed_air_fraction"],
                     "lung_left_share": a["air_left_share"], "lung_field_dice": dice,
                     "open_wall_air_fraction": a["open_wall_air_fraction"], "plausible": a["plausible"],
                     "body_box_fill": a["body_box_fill"], "streak_ratio_frontal": a["ray_streak_ratio"]["frontal"],
                     "reprojection_correlation": reproj.get("correlation"), "reprojection_psnr_db": reproj.get("psnr_db"),
                     "reprojection_ssim": reproj.get("ssim"), "warnings": " | ".join(checks["warnings"])})
        tiles.append(_montage_row(path.name, rec, views, fields, pipeline.preset.data))
        log(f"{path.name}: lung air {a['enclosed_air_fraction']:.1%} of the body, left share "
            f"{a['air_left_share']}, lung-field Dice {dice}")
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        first = rows[0]["status"].removeprefix("error: ")
        raise AxonInputError(None, f"none of the {len(rows)} radiograph(s) could be reconstructed (first: {first})")
    summary = {"files": len(rows), "reconstructed": len(ok), "weights": str(weights), "device": str(pipeline.device),
               "precision": pipeline.precision.to_dict(), "consistency_strength": consistency_strength,
               "lung_fields_guidance": lung_fields, "framing": framing,
               "note": "no ground truth: plausibility and agreement with the radiographs, not accuracy"}
    summary["plausible"] = sum(bool(r.get("plausible")) for r in ok)
    for key in ("lung_air_fraction", "lung_left_share", "open_wall_air_fraction", "lung_field_dice", "body_box_fill",
                "streak_ratio_frontal", "reprojection_correlation"):
        values = [r[key] for r in ok if isinstance(r.get(key), (int, float))]
        summary[f"median_{key}"] = round(float(np.median(values)), 4) if values else None
    summary["cases"] = rows
    with outputs:
        fieldnames = list(dict.fromkeys(k for r in rows for k in r))
        with open(outputs.path(out / "real_cases.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fieldnames)
            w.writeheader()
            w.writerows(rows)
        outputs.path(out / "summary.json").write_text(json.dumps(summary, indent=2))
        if tiles:
            from axonct.io.montage import save_montage

            save_montage(tiles, outputs.path(out / "montage.png"))
    return summary


def _montage_row(name: str, rec, views: np.ndarray, fields, data) -> list:
    """Input as framed | its lung fields | the reconstruction's lungs projected | its DRR | mid slices."""
    from axonct.guidance.lung_fields import projected_lung_air
    from axonct.io.ct_preprocess import unit_to_hu
    from axonct.io.montage import orthogonal_slices, to_uint8
    from axonct.physics.drr import drr_from_unit_volume

    hu = unit_to_hu(rec.mean, data.grid)
    projected = projected_lung_air(hu, data)[0]
    with torch.no_grad():
        drr = drr_from_unit_volume(torch.from_numpy(np.ascontiguousarray(rec.mean, np.float32)), data.grid,
                                   data.geometry, data.views)[0].numpy()
    lo, hi = MONTAGE_WINDOW_HU
    row = [(name[:22], to_uint8(views[0])),
           ("input lung fields", to_uint8(fields[0] if fields is not None else np.zeros_like(views[0]), 0, 1)),
           ("recon lungs, projected", to_uint8(projected.astype(np.float32), 0, 1)),
           ("recon DRR", to_uint8(drr))]
    row += [(k, to_uint8(v, lo, hi)) for k, v in orthogonal_slices(hu).items()]
    return row
