"""One reconstruction against its ground truth: the metrics, in two labelled conventions.

- honest: PSNR over the whole 3D volume on [0, 1] data (peak 1) and 3D SSIM with a Gaussian window;
- x2ct: the X2CT-GAN papers' numbers: volumes as integers in [0, 2500] but PSNR with peak 4095
  (about +4.3 dB), PSNR and SSIM per 2D slice along each of the three axes, averaged; SSIM with a
  7x7 uniform window and sample covariance on [0, 1] data.
The ground truth goes to the model grid exactly as in training (`ct_preprocess.ct_to_model`).

Apart from the split harness (`evaluate`) because the Slicer module, the demo and `axon evaluate
--pred --gt` need only this one-case comparison, not the pipeline, caches and baselines.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from axonct.config import VolumeGrid
from axonct.errors import AxonInputError
from axonct.io.ct_preprocess import ct_to_model, hu_to_unit, unit_to_hu
from axonct.io.montage import orthogonal_slices, save_montage
from axonct.io.output_policy import Outputs
from axonct.metrics import psnr, ssim

X2CT_RANGE, X2CT_PEAK = 2500.0, 4095.0


def _slices(vol: torch.Tensor):
    """Every 2D slice along each of the three axes, as three [n, 1, h, w] batches."""
    return [vol.permute(*order)[:, None] for order in ((0, 1, 2), (1, 0, 2), (2, 0, 1))]


def x2ct_psnr(pred_unit: np.ndarray, gt_unit: np.ndarray) -> float:
    p = torch.from_numpy(np.round(np.clip(pred_unit, 0, 1) * X2CT_RANGE)).double()
    g = torch.from_numpy(np.round(np.clip(gt_unit, 0, 1) * X2CT_RANGE)).double()
    per_axis = []
    for ps, gs in zip(_slices(p), _slices(g)):
        mse = ((ps - gs) ** 2).flatten(1).mean(1)
        vals = [10 * math.log10(X2CT_PEAK**2 / float(m)) for m in mse if m > 0]
        per_axis.append(float(np.mean(vals)) if vals else math.inf)
    return float(np.mean(per_axis))


def ssim2d_uniform(a: torch.Tensor, b: torch.Tensor, win: int = 7, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM of [n, 1, h, w] batches, uniform window, sample covariance, valid region."""
    k = lambda x: F.avg_pool2d(x, win, stride=1)  # noqa: E731
    n = win * win
    cov = n / (n - 1)
    ux, uy = k(a), k(b)
    vx, vy = cov * (k(a * a) - ux**2), cov * (k(b * b) - uy**2)
    vxy = cov * (k(a * b) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def x2ct_ssim(pred_unit: np.ndarray, gt_unit: np.ndarray) -> float:
    p = torch.from_numpy(np.round(np.clip(pred_unit, 0, 1) * X2CT_RANGE) / X2CT_RANGE).double()
    g = torch.from_numpy(np.round(np.clip(gt_unit, 0, 1) * X2CT_RANGE) / X2CT_RANGE).double()
    return float(np.mean([float(ssim2d_uniform(ps, gs).mean()) for ps, gs in zip(_slices(p), _slices(g))]))


def compare(pred_unit: np.ndarray, gt_unit: np.ndarray, grid: VolumeGrid) -> dict:
    """All metrics for one case; inputs are [D, H, W] unit volumes on the same grid."""
    if pred_unit.shape != gt_unit.shape:
        raise ValueError(f"shapes differ: prediction {pred_unit.shape}, ground truth {gt_unit.shape}")
    p = torch.from_numpy(np.clip(pred_unit, 0, 1).astype(np.float32))
    g = torch.from_numpy(np.clip(gt_unit, 0, 1).astype(np.float32))
    hu_p, hu_g = unit_to_hu(p.numpy(), grid), unit_to_hu(g.numpy(), grid)
    body = hu_g > -500
    return {
        "honest": {"psnr": psnr(p, g), "ssim": ssim(p, g),
                   "convention": "3D, [0,1] data, PSNR peak 1, SSIM 3D Gaussian window (sigma 1.5)"},
        "x2ct": {"psnr": x2ct_psnr(pred_unit, gt_unit), "ssim": x2ct_ssim(pred_unit, gt_unit),
                 "convention": "slice-wise along 3 axes; PSNR on [0,2500] with peak 4095; SSIM 7x7 uniform on [0,1]"},
        "mae_hu": float(np.abs(hu_p - hu_g).mean()),
        "mae_hu_body": float(np.abs(hu_p - hu_g)[body].mean()) if body.any() else None,
    }


def flat_metrics(m: dict) -> dict:
    return {"psnr": m["honest"]["psnr"], "ssim": m["honest"]["ssim"], "psnr_x2ct": m["x2ct"]["psnr"],
            "ssim_x2ct": m["x2ct"]["ssim"], "mae_hu": m["mae_hu"], "mae_hu_body": m["mae_hu_body"]}


def load_prediction(path: str | Path) -> tuple[np.ndarray, VolumeGrid]:
    """A reconstruction file (on a model grid: cube, isotropic, identity direction) as a unit volume."""
    from axonct.io.ct import read_ct

    img = read_ct(path)
    size = img.GetSize()
    spacing = img.GetSpacing()
    if len(set(size)) != 1 or not np.allclose(spacing, spacing[0]) or \
            not np.allclose(np.array(img.GetDirection()), np.eye(3).ravel(), atol=1e-6):
        raise AxonInputError(path, f"is not on a model grid (size {size}, spacing {spacing}); "
                                   "pass an `axon reconstruct` output")
    grid = VolumeGrid(size=size[0], fov_mm=float(spacing[0] * size[0]))
    return hu_to_unit(sitk.GetArrayFromImage(img).astype(np.float32), grid), grid


def ground_truth_on_grid(path: str | Path, grid: VolumeGrid, remove_bed: bool = True,
                         hu_offset: float = 0.0) -> np.ndarray:
    from axonct.io.ct import read_ct

    return ct_to_model(read_ct(path, hu_offset=hu_offset), grid, remove_bed=remove_bed).array


def evaluate_files(pred: str | Path, gt: str | Path, montage: str | Path | None = None,
                   hu_offset: float = 0.0, overwrite: bool = False, emit=None) -> dict:
    """``hu_offset`` applies to the ground truth only (a CT stored as HU+1024 without its rescale).
    The montage location is checked before any compute; ``emit(result)`` (e.g. printing the metrics)
    runs before the montage is written, so a failing montage cannot lose the metrics."""
    outputs = Outputs("evaluate", overwrite=overwrite)
    if montage:
        outputs.file(montage)
        outputs.check(4 << 20)
    p, grid = load_prediction(pred)
    g = ground_truth_on_grid(gt, grid, hu_offset=hu_offset)
    result = {"prediction": str(pred), "ground_truth": str(gt), "grid": {"size": grid.size, "fov_mm": grid.fov_mm},
              **compare(p, g, grid)}
    if montage:
        result["montage"] = str(montage)
    if emit is not None:
        emit(result)
    if montage:
        with outputs:
            save_comparison_montage(g, {"prediction": p}, outputs.path(montage))
    return result


def save_comparison_montage(gt: np.ndarray, preds: dict[str, np.ndarray], path: str | Path) -> Path:
    """Rows: ground truth, then each prediction and its absolute difference (axial, coronal, sagittal)."""
    rows = [[(f"truth {k}", v) for k, v in orthogonal_slices(gt).items()]]
    for name, p in preds.items():
        rows.append([(f"{name} {k}", v) for k, v in orthogonal_slices(p).items()])
        diff = {k: np.abs(a - b) for (k, a), b in zip(orthogonal_slices(p).items(), orthogonal_slices(gt).values())}
        rows.append([(f"|{name} - truth| {k}", (np.clip(v / 0.3, 0, 1) * 255).astype(np.uint8))
                     for k, v in diff.items()])
    return save_montage(rows, path, tile=160)


OBLIQUE_ANGLE_DEG = 45.0  # a view between PA and lateral that no model ever receives


def residual_views(data, view_mask: np.ndarray) -> list:
    """The given input views, then the held-out oblique view, for `drr_residuals`."""
    from axonct.config import VIEWS
    from axonct.physics.geometry import view_at_angle, view_geometry

    geom = data.geometry
    names = [VIEWS[i] for i in range(len(VIEWS)) if float(view_mask[i]) > 0]
    return [view_geometry(n, geom) for n in names] + [view_at_angle(OBLIQUE_ANGLE_DEG, geom, "oblique")]


def render_for_residuals(unit: np.ndarray, data, views: list) -> torch.Tensor:
    from axonct.physics.drr import drr_from_unit_volume

    with torch.no_grad():
        return drr_from_unit_volume(torch.from_numpy(np.ascontiguousarray(unit, np.float32)),
                                    data.grid, data.geometry, views).double()


def drr_residuals(pred_unit: np.ndarray, gt_unit: np.ndarray, data, view_mask: np.ndarray,
                  gt_drrs: torch.Tensor | None = None) -> dict:
    """DRR disagreement with the truth on the given input views and on a held-out oblique view:
    matching the inputs only says the ray sums agree; the oblique view tests whether depth came out
    right too. Each is sqrt(1 - r^2) of the line integrals (r: Pearson correlation), the part of the
    truth's DRR that no affine intensity map of the prediction's DRR explains: 0 is a perfect match,
    1 no relation. It ignores a global density scale (PSNR and MAE already count that).
    ``gt_drrs``: the truth's `render_for_residuals`, when several predictions share one truth."""
    views = residual_views(data, view_mask)
    g = gt_drrs if gt_drrs is not None else render_for_residuals(gt_unit, data, views)
    p = render_for_residuals(pred_unit, data, views)
    rel = [unexplained_fraction(a, b) for a, b in zip(p, g)]
    return {"input_residual": float(np.mean(rel[:-1])), "oblique_residual": float(rel[-1])}


def unexplained_fraction(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """sqrt(1 - r^2): relative RMS error of the best affine fit of ``pred`` to ``truth``."""
    a, b = pred.flatten() - pred.mean(), truth.flatten() - truth.mean()
    den = float(a.norm() * b.norm())
    r = float(a @ b) / den if den > 0 else 0.0
    return math.sqrt(max(0.0, 1.0 - r * r))
