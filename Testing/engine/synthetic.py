"""Small synthetic CTs for tests that need many cases or broken ones (fast to make and to read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def synthetic_chest(shape=(40, 48, 48), spacing=(6.0, 6.0, 6.0), seed: int = 0) -> sitk.Image:
    """Air around an elliptic soft-tissue body with two air lungs and a dense posterior spine (HU)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=np.float32)
    cz, cy, cx = (np.array(shape) - 1) / 2 + rng.uniform(-2, 2, 3)
    ry, rx = shape[1] * 0.33, shape[2] * 0.42
    body = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
    lungs = (((y - cy) / (ry * 0.6)) ** 2 + ((np.abs(x - cx) - rx * 0.45) / (rx * 0.35)) ** 2) < 1
    spine = ((y - (cy + ry * 0.7)) ** 2 + (x - cx) ** 2) < (shape[2] * 0.06) ** 2
    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = 40.0
    hu[body & lungs] = -850.0
    hu[spine] = 700.0
    hu += rng.normal(0, 5, shape).astype(np.float32)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing(spacing)
    img.SetOrigin((-100.0, -120.0, -50.0))
    return img


def write_nifti(img: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path
