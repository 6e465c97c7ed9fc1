"""Small synthetic CTs for tests that need many cases or broken ones (fast to make and to read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def synthetic_chest(shape=(40, 48, 48), spacing=(6.0, 6.0, 6.0), seed: int = 0) -> sitk.Image:
    """An elliptic soft-tissue body with two air lungs, a heart and a dense posterior spine (HU).

    Body size, lung size, heart size/position and noise vary with the seed, so a set of them has
    anatomy that a mean volume cannot explain and the radiographs can.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=np.float32)
    cz, cy, cx = (np.array(shape) - 1) / 2 + rng.uniform(-2, 2, 3)
    ry, rx = shape[1] * rng.uniform(0.26, 0.38), shape[2] * rng.uniform(0.34, 0.46)
    body = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
    lung_w = rng.uniform(0.28, 0.4)
    lungs = (((y - cy) / (ry * 0.6)) ** 2 + ((np.abs(x - cx) - rx * 0.45) / (rx * lung_w)) ** 2) < 1
    lungs &= z > shape[0] * rng.uniform(0.1, 0.35)  # diaphragm level
    hr = shape[2] * rng.uniform(0.08, 0.14)
    heart = ((z - cz) ** 2 + (y - (cy - ry * 0.2)) ** 2 + (x - (cx + rx * rng.uniform(0.05, 0.25))) ** 2) < hr**2
    spine = ((y - (cy + ry * 0.7)) ** 2 + (x - cx) ** 2) < (shape[2] * 0.06) ** 2
    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = 40.0
    hu[body & lungs] = -850.0
    hu[body & heart] = 60.0
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


def synthetic_cache(root: Path, n_cases: int = 8, preset: str = "tiny", seed0: int = 100, workers: int = 1) -> Path:
    """A prepared cache of synthetic chests (patient IDs SYN-000...)."""
    from axonct.config import data_preset
    from axonct.data.prepare import prepare_cache

    cts = root / "cts"
    for i in range(n_cases):
        write_nifti(synthetic_chest(seed=seed0 + i), cts / f"SYN-{i:03d}.nii.gz")
    prepare_cache([cts], root / "cache", data_preset(preset), workers=workers, progress=False,
                  val_fraction=0.25, test_fraction=0.0)
    return root / "cache"


def train_tiny_weights(cache: Path, root: Path, with_baseline: bool = True) -> Path:
    """A weights folder with every stage trained a few steps at tiny scale (plumbing, not quality)."""
    import shutil

    from axonct.presets import model_preset
    from axonct.training.trainer import train

    weights = root / "weights"
    weights.mkdir(parents=True)

    def preset(steps):
        p = model_preset("tiny")
        p.train.steps, p.train.validate_every, p.train.val_cases, p.train.controlnet_cond_steps = steps, 10**6, 1, 2
        return p

    stages = [("coarse", 4, {}), ("prior", 4, {}), ("sr", 4, {})]
    if with_baseline:
        stages.append(("baseline", 4, {}))
    stages.append(("controlnet", 2, {"prior_dir": str(root / "prior"), "coarse_dir": str(root / "coarse")}))
    for stage, steps, extra in stages:
        train(stage, cache, preset(steps), root / stage, device="cpu", progress=False, **extra)
        for suffix in (".safetensors", ".json"):
            shutil.copy(root / stage / f"{stage}{suffix}", weights)
    return weights
