"""`axon evaluate --pred P --gt G` honours P's geometry: G is translated so its body centroid lands on
P's, resampled onto P's own grid (any spacing, origin, direction) and scored there.

The reference below is written independently of the product with numpy/scipy only: body centroids
by thresholding (the phantoms have no bed and no holes, so this equals the product's body mask
centroid), G smoothed where it is finer than P (discrete Gaussian, sigma = (P's - G's spacing)/2 mm per axis:
the usual anti-alias, which the product applies as training does), sampled at P's voxel centres
minus the shift (linear), HU clipped to [-1024, 1476] and rescaled to [0, 1],
PSNR = 10 log10(1 / MSE).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import correlate1d, map_coordinates
from scipy.special import erfc, ive

from axonct.tools.compare import evaluate_files, score_against_ground_truth

REPO = Path(__file__).resolve().parents[2]
HU_MIN, HU_MAX = -1024.0, 1476.0
SEMI_AXES_MM = np.array([38.0, 28.0, 34.0])  # x, y, z


# ----------------------------------------------------------------------------- phantom


def anatomy_hu(points_mm: np.ndarray, centre_mm) -> np.ndarray:
    """A smooth body (ellipsoid, edge sigma 1.2 mm) with off-centre bone, fat and organ blobs, all
    above -500 HU inside; air (-1024) outside. ``points_mm`` [..., 3] LPS."""
    p = points_mm - np.asarray(centre_mm, float)
    f = np.sqrt(((p / SEMI_AXES_MM) ** 2).sum(-1))
    edge = 0.5 * erfc((f - 1.0) * 30.0 / (math.sqrt(2) * 1.2))

    def blob(at, sigma):
        return np.exp(-((p - np.asarray(at, float)) ** 2).sum(-1) / (2 * sigma**2))

    tissue = 40 + 900 * blob((-12, 10, 5), 5) - 120 * blob((15, -8, -10), 7) + 200 * blob((10, 5, 0), 8)
    return -1024.0 + edge * (1024.0 + tissue)


def make_image(size, spacing, origin, direction=np.eye(3), centre=(0, 0, 0), noise_hu=0.0, seed=0) -> sitk.Image:
    """The anatomy sampled at an image's voxel centres (anatomy centred at ``centre`` mm)."""
    pts = voxel_centres(size, spacing, origin, direction)
    hu = anatomy_hu(pts, centre)
    if noise_hu:
        hu = hu + np.random.default_rng(seed).normal(0, noise_hu, hu.shape)
    image = sitk.GetImageFromArray(hu.astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in np.asarray(direction, float).ravel()))
    return image


def default_origin(n, spacing):
    return (-(n - 1) / 2 * spacing,) * 3


# ----------------------------------------------------------------------------- independent reference


def voxel_centres(size, spacing, origin, direction) -> np.ndarray:
    """Physical LPS points [z, y, x, 3] of an image's voxel centres."""
    nx, ny, nz = size
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([i, j, k], -1).astype(float) * np.asarray(spacing, float)
    return np.asarray(origin, float) + idx @ np.asarray(direction, float).reshape(3, 3).T


def geometry(image: sitk.Image):
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()).reshape(3, 3)


def centroid_by_threshold(image: sitk.Image) -> np.ndarray:
    a = sitk.GetArrayFromImage(image)
    return voxel_centres(*geometry(image))[a > -500].mean(0)


def reference_score(pred: sitk.Image, gt: sitk.Image, shift=None) -> dict:
    """PSNR of P against G moved by ``shift`` (default: the body-centroid shift) on P's grid."""
    if shift is None:
        shift = centroid_by_threshold(pred) - centroid_by_threshold(gt)
    size, spacing, origin, direction = geometry(gt)
    pred_spacing, pred_direction = np.array(pred.GetSpacing()), np.array(pred.GetDirection()).reshape(3, 3)
    # anti-alias: each G axis against the P axis most parallel to it (sigma in G voxels, z, y, x order)
    out = [pred_spacing[np.argmax(np.abs(pred_direction.T @ direction[:, i]))] for i in range(3)]
    sigma = [max(0.0, (o - s) / 2) / s for o, s in zip(out, spacing)][::-1]
    hu = np.clip(sitk.GetArrayFromImage(gt).astype(np.float64), HU_MIN, HU_MAX)
    for axis, sig in enumerate(sigma):
        if sig > 0:  # the discrete Gaussian kernel, exp(-t) I_n(t), t = sigma^2: exactly that variance
            n = np.arange(-int(4 * sig + 3), int(4 * sig + 3) + 1)
            w = ive(n, sig * sig)
            hu = correlate1d(hu, w / w.sum(), axis=axis, mode="nearest")
    pts = voxel_centres(*geometry(pred)) - shift  # where each P voxel falls in G before the move
    index_xyz = (pts - np.asarray(origin)) @ direction / np.asarray(spacing)  # D^T (p - o) / s
    coords = index_xyz[..., ::-1].transpose(3, 0, 1, 2)  # -> (z, y, x) index arrays
    g = map_coordinates(hu, coords, order=1, mode="constant", cval=HU_MIN)
    p = sitk.GetArrayFromImage(pred).astype(np.float64)
    unit = lambda hu: (np.clip(hu, HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)  # noqa: E731
    mse = float(((unit(p) - unit(g)) ** 2).mean())
    return {"psnr": 10 * math.log10(1.0 / mse), "shift": np.asarray(shift, float)}


# ----------------------------------------------------------------------------- cases

G_CENTRE = np.array([31.0, -47.0, 118.0])  # the ground truth's anatomy sits far from P's


def ground_truth(spacing=(1.5, 1.5, 1.5)) -> sitk.Image:
    """G: the same anatomy on its own finer, non-cubic grid, origin tens of mm away from P's."""
    spacing = np.asarray(spacing, float)
    half = SEMI_AXES_MM + 12.0
    size = tuple(int(v) for v in np.ceil(2 * half / spacing) + 1)
    origin = G_CENTRE - half + np.array([3.3, -2.1, 1.7])  # anatomy not centred on G's grid either
    return make_image(size, spacing, origin, centre=G_CENTRE)


def pred_default(centre=(0.0, 0.0, 0.0)) -> sitk.Image:
    """P on the default-style cube: identity direction, origin -(n-1)/2 * spacing (2.5 mm)."""
    return make_image((64,) * 3, (2.5,) * 3, default_origin(64, 2.5), centre=centre, noise_hu=40.0)


def pred_framed() -> sitk.Image:
    """P framed with non-default 2.9 mm voxels, a non-cubic grid and an arbitrary origin."""
    origin = np.array([-93.1, 17.4, -260.2])
    size, spacing = (56, 52, 58), (2.9, 2.9, 2.9)
    centre = origin + (np.array(size) - 1) / 2 * 2.9 + np.array([5.0, -3.0, 7.0])
    return make_image(size, spacing, origin, centre=centre, noise_hu=40.0, seed=1)


def pred_flipped() -> sitk.Image:
    """P with a non-identity direction: y and z axes flipped (and anisotropic voxels)."""
    direction = np.diag([1.0, -1.0, -1.0])
    size, spacing = (60, 56, 50), (2.5, 2.5, 3.0)
    origin = np.array([-70.0, 62.0, 80.0])
    centre = origin + direction @ ((np.array(size) - 1) / 2 * np.array(spacing))
    return make_image(size, spacing, origin, direction, centre=centre, noise_hu=40.0, seed=2)


def check_against_reference(result: dict, pred: sitk.Image, gt: sitk.Image) -> dict:
    ref = reference_score(pred, gt)
    half_voxel = min(pred.GetSpacing()) / 2
    assert result["alignment"]["method"] == "body centroids, translation only"
    assert np.abs(np.array(result["alignment"]["shift_mm"]) - ref["shift"]).max() < half_voxel
    assert result["honest"]["psnr"] == pytest.approx(ref["psnr"], abs=0.1)
    assert list(result["grid"]["size"]) == list(pred.GetSize())
    assert np.allclose(result["grid"]["spacing_mm"], pred.GetSpacing())
    assert np.allclose(result["grid"]["origin_mm"], pred.GetOrigin())
    return ref


@pytest.mark.parametrize("make_pred", [pred_default, pred_framed, pred_flipped], ids=["default", "framed", "flipped"])
def test_scores_on_the_prediction_grid_like_the_reference(make_pred):
    pred, gt = make_pred(), ground_truth()
    result = score_against_ground_truth(pred, gt)
    ref = check_against_reference(result, pred, gt)
    assert 30 < ref["psnr"] < 60  # a meaningful score: the noise of P, not a misregistration
    # and a sensitive one: 1 mm of misregistration would cost far more than the 0.1 dB tolerance
    assert reference_score(pred, gt, shift=ref["shift"] + [1.0, 0, 0])["psnr"] < ref["psnr"] - 0.3
    assert np.allclose(result["alignment"]["pred_body_centroid_mm"], centroid_by_threshold(pred), atol=0.5)
    assert np.allclose(result["alignment"]["gt_body_centroid_mm"], G_CENTRE, atol=0.5)
    # the arrays are P's own: every metric is finite on a non-cubic grid too
    assert all(math.isfinite(result[k]) for k in ("mae_hu", "mae_hu_body"))
    assert 0 < result["honest"]["ssim"] <= 1 and 0 < result["x2ct"]["ssim"] <= 1


def test_anisotropic_ground_truth():
    pred, gt = pred_framed(), ground_truth(spacing=(1.2, 1.6, 2.0))
    check_against_reference(score_against_ground_truth(pred, gt), pred, gt)


def test_a_translated_reconstruction_scores_as_well():
    """P's anatomy 40 mm off-centre in the same grid: the alignment finds it; unaligned it would fail."""
    gt = ground_truth()
    centred = score_against_ground_truth(pred_default(), gt)
    offset = np.array([20.0, -20.0, 800**0.5])  # 40 mm
    moved_pred = pred_default(centre=offset)
    moved = score_against_ground_truth(moved_pred, gt)
    assert np.linalg.norm(offset) == pytest.approx(40.0)
    assert moved["honest"]["psnr"] == pytest.approx(centred["honest"]["psnr"], abs=0.3)
    assert np.allclose(np.array(moved["alignment"]["shift_mm"]) - centred["alignment"]["shift_mm"], offset, atol=0.5)
    # without the alignment (G where its own coordinates put it) the same files score far lower
    unaligned = reference_score(moved_pred, gt, shift=np.zeros(3))["psnr"]
    assert unaligned < moved["honest"]["psnr"] - 10


def test_a_prediction_on_the_ground_truths_frame_is_not_moved():
    """Centroids agreeing to a small fraction of a voxel: the files are taken as registered as they are."""
    pred = make_image((56,) * 3, (2.5,) * 3, G_CENTRE - 27.5 * 2.5 + 0.7, centre=G_CENTRE, noise_hu=40.0)
    gt = ground_truth()
    result = score_against_ground_truth(pred, gt)
    assert result["alignment"]["already_registered"] and result["alignment"]["shift_mm"] == [0.0, 0.0, 0.0]
    assert result["honest"]["psnr"] == pytest.approx(reference_score(pred, gt, shift=np.zeros(3))["psnr"], abs=0.1)


def test_evaluate_files_reports_the_alignment_and_montage(tmp_path):
    pred, gt = pred_framed(), ground_truth()
    pred_path, gt_path = tmp_path / "pred.nrrd", tmp_path / "gt.nii.gz"
    sitk.WriteImage(pred, str(pred_path))
    sitk.WriteImage(gt, str(gt_path))
    emitted = []
    result = evaluate_files(pred_path, gt_path, montage=tmp_path / "m.png", emit=emitted.append)
    assert emitted == [result] and (tmp_path / "m.png").exists()
    assert {"prediction", "ground_truth", "grid", "honest", "x2ct", "mae_hu", "mae_hu_body",
            "alignment"} <= set(result)
    json.dumps(result)  # printable as JSON
    check_against_reference(result, sitk.ReadImage(str(pred_path)), sitk.ReadImage(str(gt_path)))


def test_cli_evaluate_honours_the_prediction_geometry(tmp_path):
    pred, gt = pred_flipped(), ground_truth()
    pred_path, gt_path = tmp_path / "pred.nrrd", tmp_path / "gt.nii.gz"
    sitk.WriteImage(pred, str(pred_path))
    sitk.WriteImage(gt, str(gt_path))
    env = dict(os.environ, PYTHONPATH=str(REPO / "AXONReconstruction"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "axonct.app.cli", "evaluate", "--pred", str(pred_path),
                           "--gt", str(gt_path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    ref = reference_score(sitk.ReadImage(str(pred_path)), sitk.ReadImage(str(gt_path)))
    assert printed["honest"]["psnr"] == pytest.approx(ref["psnr"], abs=0.1)
    assert np.abs(np.array(printed["alignment"]["shift_mm"]) - ref["shift"]).max() < 1.25
