"""Does the reconstruction agree with the radiographs it came from?

The volume is projected through the same geometry as the inputs and each DRR is compared with the
model-input view after the same percentile normalisation. Scores are per view: Pearson correlation,
PSNR and 2D SSIM on [0, 1] images.
"""

from __future__ import annotations

import numpy as np
import torch

from axonct.config import VIEWS, DataConfig, VolumeGrid
from axonct.physics.drr import drr_from_unit_volume
from axonct.metrics import psnr, ssim
from axonct.transforms.normalize import robust_unit


def reproject(unit_volume: np.ndarray, grid: VolumeGrid, data: DataConfig) -> np.ndarray:
    """[2, P, P] normalised DRRs (frontal, lateral) of a unit volume."""
    with torch.no_grad():
        drr = drr_from_unit_volume(torch.from_numpy(np.ascontiguousarray(unit_volume, np.float32)),
                                   grid, data.geometry, VIEWS)
    return robust_unit(drr[:, None])[:, 0].numpy()


def consistency_report(unit_volume: np.ndarray, grid: VolumeGrid, data: DataConfig,
                       views: np.ndarray, view_mask: np.ndarray) -> dict:
    drr = reproject(unit_volume, grid, data)
    report = {}
    for i, name in enumerate(VIEWS):
        if view_mask[i] <= 0:
            report[name] = {"given": False}
            continue
        a = torch.from_numpy(drr[i])
        b = torch.from_numpy(np.asarray(views[i], np.float32))
        r = float(np.corrcoef(drr[i].ravel(), views[i].ravel())[0, 1])
        report[name] = {"given": True, "correlation": round(r, 4), "psnr_db": round(psnr(a, b), 2),
                        "ssim": round(ssim(a, b), 4)}
    return report
