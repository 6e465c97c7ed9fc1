"""One reconstruction against its ground truth: the metrics, in two labelled conventions.

- honest: PSNR over the whole 3D volume on [0, 1] data (peak 1) and 3D SSIM with a Gaussian window;
- x2ct: the X2CT-GAN papers' numbers: volumes as integers in [0, 2500] but PSNR with peak 4095
  (about +4.3 dB), PSNR and SSIM per 2D slice along each of the three axes, averaged; SSIM with a
  7x7 uniform window and sample covariance on [0, 1] data.
A reconstruction from radiographs has no absolute position, so a prediction file is scored on its
own grid (any size, spacing, origin, direction): the ground truth is translated so that its body
centroid lands on the prediction's, then resampled onto the prediction's grid the way training
puts a CT on the model grid (clipped to the HU window, anti-aliased, linear, bed removed):
`score_against_ground_truth` (one call) = `align_ground_truth` + `score_aligned`.

Apart from the split harness (`evaluate`) because the Slicer module, the demo and `axon evaluate
--pred --gt` need only this one-case comparison, not the pipeline, caches and baselines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from axonct.config import VolumeGrid
from axonct.errors import AxonInputError
from axonct.io.ct_preprocess import antialias, body_mask, ct_to_model, hu_to_unit, unit_to_hu
from axonct.io.montage import montage_format, orthogonal_slices, save_montage
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
    """All metrics for one case; inputs are [D, H, W] unit volumes on the same grid (any shape, each
    side at least 7); ``grid`` gives the HU window only (for the MAE in HU)."""
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
    """A reconstruction file as a unit volume ([z, y, x], the file's own voxel order) and the
    `VolumeGrid` whose HU window maps it to [0, 1]: any 3D grid is accepted (``read_ct`` does not
    reorient). On a cube (isotropic) the grid also carries its size and field of view."""
    from axonct.io.ct import read_ct

    img = read_ct(path)
    size, spacing = img.GetSize(), img.GetSpacing()
    if len(set(size)) == 1 and np.allclose(spacing, spacing[0]):
        grid = VolumeGrid(size=size[0], fov_mm=float(spacing[0] * size[0]))
    else:
        grid = VolumeGrid()  # the HU window only
    return hu_to_unit(sitk.GetArrayFromImage(img).astype(np.float32), grid), grid


def ground_truth_on_grid(path: str | Path, grid: VolumeGrid, remove_bed: bool = True,
                         hu_offset: float = 0.0) -> np.ndarray:
    """The ground truth on a body-centred cube of ``grid`` (as in training). To score a prediction
    file, whose grid has its own origin, use `score_against_ground_truth` instead."""
    from axonct.io.ct import read_ct

    return ct_to_model(read_ct(path, hu_offset=hu_offset), grid, remove_bed=remove_bed).array


ALIGNMENT_METHOD = "body centroids, translation only"

SHIFT_RESOLUTION_VOXELS = 0.1
"""A centroid offset shorter than this (in the prediction's smallest voxel) is below what body
centroids resolve across two resolutions: the files are taken as already registered and the ground
truth is not moved (a prediction written on the ground truth's own frame keeps its exact score)."""


@dataclass
class AlignedGroundTruth:
    """A prediction and its ground truth on the prediction's grid, as [z, y, x] unit volumes."""

    pred_unit: np.ndarray
    gt_unit: np.ndarray
    window: VolumeGrid  # the HU window that maps HU to [0, 1] (its size/fov are not used)
    alignment: dict
    grid: dict


def _hu_image(image: sitk.Image, window: VolumeGrid, what: str, source=None) -> sitk.Image:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise AxonInputError(source, f"the {what} must be a 3D scalar HU image")
    return sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, window.hu_min, window.hu_max)


def body_centroid_lps(image: sitk.Image, mask: sitk.Image, what: str = "CT", source=None) -> np.ndarray:
    """Centroid (LPS mm) of the body of an HU image: its voxels above -500 HU inside ``mask``
    (`ct_preprocess.body_mask`: the largest component, so no table or cables), with the holes
    (lungs, airways) filled per axial slice as `body_mask` does. At the image's own resolution: the
    mask's coarse (~2.5 mm) skin would bias the centroid by a fraction of a millimetre."""
    from axonct.io.ct_preprocess import BODY_THRESHOLD_HU, _fill_holes_axial

    inside = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    body = sitk.And(inside, sitk.BinaryThreshold(image, BODY_THRESHOLD_HU, 1e9, 1, 0))
    idx = np.nonzero(sitk.GetArrayFromImage(_fill_holes_axial(body)))
    if idx[0].size == 0:
        raise AxonInputError(source, f"no body found in the {what} (no region above {BODY_THRESHOLD_HU:g} HU)")
    mean_index = [float(i.mean()) for i in idx[::-1]]  # (x, y, z) continuous index
    return np.array(image.TransformContinuousIndexToPhysicalPoint(mean_index), dtype=float)


def _antialias_onto(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """`ct_preprocess._antialias` for any target grid: each axis of ``image`` is smoothed with
    sigma = (out - in)/2 mm, ``out`` the spacing of the ``reference`` axis most parallel to it."""
    d_in = np.array(image.GetDirection()).reshape(3, 3)
    d_ref = np.array(reference.GetDirection()).reshape(3, 3)
    ref_spacing = np.array(reference.GetSpacing())
    out = [float(ref_spacing[int(np.argmax(np.abs(d_ref.T @ d_in[:, i])))]) for i in range(3)]
    return antialias(image, out)


def grid_of(image: sitk.Image) -> dict:
    """An image's grid as JSON: size and spacing per axis (x, y, z), origin and direction (LPS)."""
    size, spacing = list(image.GetSize()), [float(s) for s in image.GetSpacing()]
    return {"size": size, "spacing_mm": spacing, "origin_mm": [float(o) for o in image.GetOrigin()],
            "direction": [float(d) for d in image.GetDirection()],
            "fov_mm": [n * s for n, s in zip(size, spacing)]}


def align_ground_truth(pred_image: sitk.Image, gt_image: sitk.Image, remove_bed: bool = True,
                       window: VolumeGrid | None = None, sources=(None, None)) -> AlignedGroundTruth:
    """The ground truth on the prediction's grid (both HU images, any grid and direction).

    A reconstruction from radiographs has no absolute position: the ground truth is translated so
    that its body centroid (`body_centroid_lps` of `body_mask`, so a table does not pull it) lands
    on the prediction's (not moved when they already agree within `SHIFT_RESOLUTION_VOXELS`), then
    resampled once onto the prediction's grid as `ct_to_model` does: clipped to the HU window,
    anti-aliased where it is finer, linear, outside = air, and with ``remove_bed`` air outside its
    body mask. ``sources``: the prediction's and the ground truth's files, named in refusals."""
    window = window or VolumeGrid()
    pred = _hu_image(pred_image, window, "prediction", sources[0])
    gt = _hu_image(gt_image, window, "ground truth", sources[1])
    gt_mask = body_mask(gt)
    pred_centroid = body_centroid_lps(pred, body_mask(pred), "prediction", sources[0])
    gt_centroid = body_centroid_lps(gt, gt_mask, "ground truth", sources[1])
    offset = pred_centroid - gt_centroid
    registered = float(np.linalg.norm(offset)) < SHIFT_RESOLUTION_VOXELS * min(pred.GetSpacing())
    shift = np.zeros(3) if registered else offset  # the ground truth moves by this
    move = sitk.TranslationTransform(3, tuple(float(-v) for v in shift))  # output point -> input point
    reference = sitk.Image(pred.GetSize(), sitk.sitkFloat32)
    reference.CopyInformation(pred)
    on_grid = sitk.Resample(_antialias_onto(gt, pred), reference, move, sitk.sitkLinear, window.hu_min,
                            sitk.sitkFloat32)
    gt_hu = sitk.GetArrayFromImage(on_grid)
    if remove_bed:
        m = sitk.Resample(sitk.Cast(gt_mask, sitk.sitkFloat32), reference, move, sitk.sitkLinear, 0.0)
        gt_hu[sitk.GetArrayViewFromImage(m) < 0.5] = window.hu_min
    alignment = {"shift_mm": [float(v) for v in shift],
                 "pred_body_centroid_mm": [float(v) for v in pred_centroid],
                 "gt_body_centroid_mm": [float(v) for v in gt_centroid],
                 "method": ALIGNMENT_METHOD, "already_registered": registered}
    return AlignedGroundTruth(pred_unit=hu_to_unit(sitk.GetArrayFromImage(pred), window),
                              gt_unit=hu_to_unit(gt_hu, window), window=window, alignment=alignment,
                              grid=grid_of(pred))


def score_aligned(aligned: AlignedGroundTruth) -> dict:
    """`compare` on the prediction's grid, plus ``alignment`` and ``grid``."""
    return {**compare(aligned.pred_unit, aligned.gt_unit, aligned.window), "alignment": aligned.alignment,
            "grid": aligned.grid}


def score_against_ground_truth(pred_image: sitk.Image, gt_image: sitk.Image, remove_bed: bool = True) -> dict:
    """A prediction scored against its ground truth (both HU images, any grid) on the prediction's
    grid, after aligning the body centroids (`align_ground_truth`). Keys: honest, x2ct, mae_hu,
    mae_hu_body (as `compare`), alignment {shift_mm, pred_body_centroid_mm, gt_body_centroid_mm,
    method, already_registered} and grid {size, spacing_mm, origin_mm, direction, fov_mm} (x, y, z)."""
    return score_aligned(align_ground_truth(pred_image, gt_image, remove_bed=remove_bed))


def evaluate_files(pred: str | Path, gt: str | Path, montage: str | Path | None = None,
                   hu_offset: float = 0.0, overwrite: bool = False, emit=None) -> dict:
    """``hu_offset`` applies to the ground truth only (a CT stored as HU+1024 without its rescale).
    The ground truth is scored on the prediction's grid after aligning body centroids
    (`score_against_ground_truth`). The montage location is checked before any compute;
    ``emit(result)`` (e.g. printing the metrics) runs before the montage is written, so a failing
    montage cannot lose the metrics."""
    from axonct.io.ct import read_ct

    outputs = Outputs("evaluate", overwrite=overwrite)
    if montage:
        outputs.file(montage)  # never over a file AXON did not write: said first
        montage_format(montage)  # and a name the montage can be written under, before any compute
        outputs.check(4 << 20)
    aligned = align_ground_truth(read_ct(pred), read_ct(gt, hu_offset=hu_offset), sources=(pred, gt))
    scored = score_aligned(aligned)
    result = {"prediction": str(pred), "ground_truth": str(gt), "grid": scored.pop("grid"), **scored}
    if montage:
        result["montage"] = str(montage)
    if emit is not None:
        emit(result)
    if montage:
        with outputs:
            save_comparison_montage(aligned.gt_unit, {"prediction": aligned.pred_unit}, outputs.path(montage))
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
