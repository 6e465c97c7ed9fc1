"""`axon drr`: CT -> model cube -> biplanar DRRs, as image files beside a montage.

The pair itself is `data.training_pair` (what `axon prepare` caches); this module only writes it out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from axonct.atomic import atomic_path
from axonct.config import DataConfig
from axonct.data.training_pair import make_training_pair
from axonct.physics.geometry import view_geometry
from axonct.io.montage import orthogonal_slices, save_montage, to_uint8
from axonct.io.output_policy import Outputs
from axonct.io.volume_export import write_itk
from axonct.physics.xray_realism import RealismConfig, simulate_radiograph


def view_image(arr: np.ndarray, pixel_spacing_mm: float, meta: dict) -> sitk.Image:
    """A 2D SimpleITK image centred on the detector centre, with the view's geometry as metadata."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    img.SetSpacing((pixel_spacing_mm, pixel_spacing_mm))
    half = (arr.shape[0] - 1) / 2.0 * pixel_spacing_mm
    img.SetOrigin((-half, -half))
    for k, v in meta.items():
        img.SetMetaData(k, v if isinstance(v, str) else json.dumps(v))
    return img


def write_image(img: sitk.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        write_itk(img, tmp)


def write_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(arr)).save(tmp, format="PNG")


def export_drrs(
    ct_path: str | Path,
    out_dir: str | Path,
    cfg: DataConfig,
    realism: RealismConfig | None = None,
    seed: int = 0,
    save_cube: bool = True,
    device: str = "cpu",
    hu_offset: float = 0.0,
    overwrite: bool = False,
) -> dict:
    """Write the views (NRRD + PNG), the model cube, geometry.json and a montage; all or nothing.

    ``out_dir`` may already exist: the files are written beside what it holds (`output_policy`), and
    every output name is checked (and the location for space) before the CT is even read."""
    out_dir = Path(out_dir)
    outputs = Outputs("drr", overwrite=overwrite)
    outputs.folder(out_dir)
    names = drr_file_names(cfg, realism is not None, save_cube)
    for name in names:
        outputs.file(out_dir / name)
    p, s = cfg.geometry.detector_pixels, cfg.grid.size
    outputs.check(len(names) * p * p * 4 + (s**3 * 4 if save_cube else 0) + (4 << 20))
    pair = make_training_pair(ct_path, cfg, device, hu_offset=hu_offset)
    written = {}
    tmp = _Staged(outputs, out_dir)
    with outputs:
        montage_rows = [[(f"CT {k}", v) for k, v in orthogonal_slices(pair.volume.array).items()], []]
        realistic_row = []
        for i, name in enumerate(cfg.views):
            geom = view_geometry(name, cfg.geometry)
            meta = {"axon_view": name, "axon_quantity": "line integral of attenuation", "axon_geometry": geom.to_dict()}
            drr = pair.drr[i]
            write_image(view_image(drr, geom.pixel_spacing_mm, meta), tmp / f"{name}.nrrd")
            write_png(drr, tmp / f"{name}.png")
            written[name] = f"{name}.nrrd"
            montage_rows[1].append((f"DRR {name}", drr))
            if realism is not None:
                real = simulate_radiograph(torch.from_numpy(drr), realism, seed=seed + i).numpy()
                meta = dict(meta, axon_quantity="simulated processed radiograph, bright = attenuating")
                write_image(view_image(real, geom.pixel_spacing_mm, meta), tmp / f"{name}_realistic.nrrd")
                write_png(real, tmp / f"{name}_realistic.png")
                written[f"{name}_realistic"] = f"{name}_realistic.nrrd"
                realistic_row.append((f"realistic {name}", real))
        if realistic_row:
            montage_rows.append(realistic_row)
        if save_cube:
            write_image(pair.volume.to_hu_image(), tmp / "ct_model_grid.nrrd")
            written["ct_model_grid"] = "ct_model_grid.nrrd"
        save_montage(montage_rows, tmp / "montage.png")
        info = {
            "source": str(ct_path),
            "patient_id": pair.meta.get("patient_id"),
            **({"hu_offset": hu_offset} if hu_offset else {}),
            "config": cfg.to_dict(),
            "cube_center_lps_mm": list(pair.volume.center_lps),
            "views": {n: view_geometry(n, cfg.geometry).to_dict() for n in cfg.views},
            "realism_seed": seed if realism is not None else None,
            "files": dict(written, montage="montage.png"),
        }
        (tmp / "geometry.json").write_text(json.dumps(info, indent=2))
    return info


def drr_file_names(cfg: DataConfig, realism: bool, save_cube: bool) -> list[str]:
    """Every file `export_drrs` writes, known before any compute."""
    names = []
    for name in cfg.views:
        names += [f"{name}.nrrd", f"{name}.png"]
        if realism:
            names += [f"{name}_realistic.nrrd", f"{name}_realistic.png"]
    if save_cube:
        names.append("ct_model_grid.nrrd")
    return names + ["montage.png", "geometry.json"]


class _Staged:
    """``staged / "name"``: the temporary path of ``folder/name`` in a run's `Outputs`."""

    def __init__(self, outputs: Outputs, folder: Path):
        self.outputs, self.folder = outputs, folder

    def __truediv__(self, name: str) -> Path:
        return self.outputs.path(self.folder / name)
