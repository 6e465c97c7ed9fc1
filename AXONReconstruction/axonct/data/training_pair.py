"""One CT file -> its model cube and clean biplanar DRRs: the pair a cache case stores.

It lives in the data layer because `axon prepare` builds every cache case with it; `axon drr`
(tools.drr_export) writes the same pair as image files, so both show exactly what training sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from axonct.config import DataConfig
from axonct.io.ct import read_ct_with_meta
from axonct.io.ct_preprocess import ModelVolume, ct_to_model
from axonct.physics.drr import drr_from_unit_volume


@dataclass
class TrainingPair:
    volume: ModelVolume
    drr: np.ndarray  # (V, P, P) float32 clean line integrals
    meta: dict


def make_training_pair(ct_path: str | Path, cfg: DataConfig, device: str = "cpu",
                       hu_offset: float = 0.0) -> TrainingPair:
    image, meta = read_ct_with_meta(ct_path, hu_offset=hu_offset)
    mv = ct_to_model(image, cfg.grid, remove_bed=cfg.remove_bed)
    cube = torch.from_numpy(mv.array).to(device)
    with torch.no_grad():
        drr = drr_from_unit_volume(cube, cfg.grid, cfg.geometry, cfg.views).cpu().numpy().astype(np.float32)
    return TrainingPair(mv, drr, meta)
