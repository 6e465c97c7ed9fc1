"""Template fit: warp the training CT until its DRRs match the views (classical baseline).

Everything runs at the tiny preset (64^3 cube, 64^2 views) on a 32^3 work grid so each fit takes a
few seconds on one thread.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from axonct.config import data_preset
from axonct.io.ct_preprocess import ct_to_model
from axonct.physics.drr import drr_from_unit_volume
from axonct.errors import AxonInputError
from axonct.metrics import psnr
from axonct.guidance.template_fit import TemplateFit, affine_warp, default_template, fit_template
from axonct.physics.xray_realism import RealismConfig, simulate_radiograph
from axonct.transforms.normalize import robust_unit
from synthetic import synthetic_chest

WORK = 32
BOTH = np.array([1.0, 1.0], np.float32)
FRONTAL = np.array([1.0, 0.0], np.float32)
TRUE_POSE = {"rotation_deg": (3.0, -2.0, 5.0), "translation_mm": (12.0, -8.0, 10.0), "scale": (1.06, 0.95, 1.04)}


@pytest.fixture(scope="module")
def cfg():
    return data_preset("tiny")


@pytest.fixture(scope="module")
def real_template(real_ct_path, cfg):
    """LIDC-IDRI-0001 on the tiny grid, prepared exactly as the default template is."""
    return ct_to_model(sitk.ReadImage(str(real_ct_path)), cfg.grid, remove_bed=cfg.remove_bed).array


def realistic_views(unit: np.ndarray, cfg, seed: int = 3) -> np.ndarray:
    """Model views of a cube as the pipeline would see a radiograph (Beer-Lambert, scatter, noise,
    blur, unsharp mask, gamma; collimation off so the borders stay anatomy)."""
    drr = drr_from_unit_volume(torch.from_numpy(unit), cfg.grid, cfg.geometry)
    return simulate_radiograph(drr, dataclasses.replace(RealismConfig.mild(), collimation=False), seed=seed).numpy()


@pytest.fixture(scope="module")
def posed_case(real_template, cfg):
    truth = affine_warp(real_template, fov_mm=cfg.grid.fov_mm, **TRUE_POSE)
    return truth, realistic_views(truth, cfg)


def test_affine_warp_convention_matches_reported_parameters(cfg):
    """+x shift moves the anatomy towards +x (patient left) by that many mm; scale > 1 enlarges."""
    n, s = cfg.grid.size, cfg.grid.spacing_mm
    cube = np.zeros((n, n, n), np.float32)
    cube[24:40, 24:40, 24:40] = 1.0
    axis = (np.arange(n) + 0.5) * s - cfg.grid.fov_mm / 2

    def centroid(v):
        w = v / v.sum()
        return [float((w.sum(axis=(0, 1)) * axis).sum()), float((w.sum(axis=(0, 2)) * axis).sum()),
                float((w.sum(axis=(1, 2)) * axis).sum())]  # x, y, z in mm

    moved = affine_warp(cube, translation_mm=(20.0, 0.0, -15.0), fov_mm=cfg.grid.fov_mm)
    np.testing.assert_allclose(centroid(moved), [20.0, 0.0, -15.0], atol=0.5)
    grown = affine_warp(cube, scale=(1.0, 1.0, 1.5), fov_mm=cfg.grid.fov_mm)
    # length (voxels) of the cube along a line through its centre: 16 before
    assert float(grown[:, 32, 32].sum()) == pytest.approx(24.0, abs=0.5)  # z grows by 1.5
    assert float(grown[32, 32, :].sum()) == pytest.approx(16.0, abs=0.5)  # x does not


def test_default_template_is_the_sample_ct_and_cached(real_template, cfg):
    first = default_template(cfg)
    assert first is default_template(cfg)
    np.testing.assert_allclose(first, real_template, atol=1e-6)


def test_recovers_known_affine_from_realistic_radiographs(posed_case, real_template, cfg):
    truth, views = posed_case
    fit = fit_template(views, BOTH, cfg, template_unit=real_template, work_size=WORK)
    assert isinstance(fit, TemplateFit)
    assert fit.unit.shape == (64, 64, 64) and fit.unit.dtype == np.float32
    assert 0.0 <= fit.unit.min() and fit.unit.max() <= 1.0
    t = torch.from_numpy(truth)
    before, after = psnr(torch.from_numpy(real_template), t), psnr(torch.from_numpy(fit.unit), t)
    assert after > before + 8.0, (before, after)  # measured ~17.4 -> ~31 dB
    np.testing.assert_allclose(fit.affine_params["translation_mm"], TRUE_POSE["translation_mm"], atol=3.0)
    np.testing.assert_allclose(fit.affine_params["scale"], TRUE_POSE["scale"], atol=0.03)
    np.testing.assert_allclose(fit.affine_params["rotation_deg"], TRUE_POSE["rotation_deg"], atol=1.5)
    for name in ("frontal", "lateral"):
        r = fit.view_residuals[name]
        assert r["after"] < 0.4 * r["before"], (name, r)
    assert fit.loss_history[-1] < 0.2 * fit.loss_history[0]
    report = json.loads(json.dumps(fit.to_dict()))
    assert report["volume_shape"] == [64, 64, 64] and report["iterations"] == len(fit.loss_history)


def test_deformation_explains_what_the_affine_cannot(cfg):
    """Two synthetic chests differ in lung width, heart and body shape: beyond any affine."""
    template = ct_to_model(synthetic_chest(seed=1), cfg.grid).array
    truth = ct_to_model(synthetic_chest(seed=2), cfg.grid).array
    drr = drr_from_unit_volume(torch.from_numpy(truth), cfg.grid, cfg.geometry)
    views = robust_unit(drr[:, None])[:, 0].numpy()
    affine = fit_template(views, BOTH, cfg, template_unit=template, work_size=WORK, deform_iters=0)
    deformed = fit_template(views, BOTH, cfg, template_unit=template, work_size=WORK)
    assert affine.affine_params == deformed.affine_params  # stage A is the same in both runs
    assert affine.deformation["max_displacement_mm"] == 0.0
    for name in ("frontal", "lateral"):
        a, d = affine.view_residuals[name]["after"], deformed.view_residuals[name]["after"]
        assert d < 0.85 * a, (name, a, d)  # measured ~0.33 -> 0.25 and 0.25 -> 0.18
    assert deformed.deformation["max_displacement_mm"] > 2.0
    assert deformed.deformation["min_jacobian_det"] > 0.2  # no folding
    t = torch.from_numpy(truth)
    p_start = psnr(torch.from_numpy(template), t)
    p_aff, p_def = psnr(torch.from_numpy(affine.unit), t), psnr(torch.from_numpy(deformed.unit), t)
    assert p_aff > p_start + 3.0, (p_start, p_aff)
    assert p_def > p_aff - 0.3, (p_aff, p_def)


def test_frontal_only_uses_the_default_template_and_ignores_the_missing_view(posed_case, cfg):
    truth, views = posed_case
    views = views.copy()
    views[1] = np.random.default_rng(0).random(views[1].shape)  # garbage where the lateral is missing
    fit = fit_template(views, FRONTAL, cfg, work_size=WORK)  # template_unit=None: the sample CT
    assert set(fit.view_residuals) == {"frontal"}
    r = fit.view_residuals["frontal"]
    assert r["after"] < 0.5 * r["before"], r
    t = torch.from_numpy(truth)
    before, after = psnr(torch.from_numpy(default_template(cfg)), t), psnr(torch.from_numpy(fit.unit), t)
    assert after > before + 1.0, (before, after)  # measured ~17.4 -> ~19.9 dB
    # what the frontal view cannot see (depth shift/scale, out-of-plane tilts) stays at the template
    p = fit.affine_params
    assert p["translation_mm"][1] == 0.0 and p["scale"][1] == 1.0
    assert p["rotation_deg"][0] == 0.0 and p["rotation_deg"][2] == 0.0
    assert abs(p["translation_mm"][0] - TRUE_POSE["translation_mm"][0]) < 3.0


def test_bad_inputs_raise_clear_errors(cfg):
    template = np.zeros((64, 64, 64), np.float32)
    good = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    cases = [
        (dict(views=good[:1]), "shape"),
        (dict(views=np.random.default_rng(0).random((2, 32, 32))), "shape"),
        (dict(view_mask=np.array([1.0, 1.0, 0.0])), "view_mask"),
        (dict(view_mask=np.array([0.0, 0.0])), "no view"),
        (dict(view_mask=np.array([0.5, 1.0])), "0 or 1"),
        (dict(views=np.where(np.arange(64) == 3, np.nan, good)), "NaN"),
        (dict(views=np.stack([np.full((64, 64), 0.3), good[1]])), "flat"),
        (dict(template_unit=np.zeros((32, 32, 32))), "template_unit"),
    ]
    for override, words in cases:
        kwargs = dict(views=good, view_mask=BOTH, template_unit=template) | override
        with pytest.raises(AxonInputError, match=words):
            fit_template(data_cfg=cfg, affine_iters=1, deform_iters=1, **kwargs)
    # a flat or NaN lateral is fine when the lateral is marked missing
    ok = good.copy()
    ok[1] = np.nan
    fit_template(ok, FRONTAL, cfg, template_unit=np.random.default_rng(1).random((64, 64, 64)), work_size=16,
                 affine_iters=2, deform_iters=2, init_candidates=1)
    with pytest.raises(ValueError, match="work_size"):
        fit_template(good, BOTH, cfg, template_unit=template, work_size=4)
    with pytest.raises(ValueError, match="control_points"):
        fit_template(good, BOTH, cfg, template_unit=template, control_points=3)


def test_same_seed_same_result_and_progress_is_reported(posed_case, real_template, cfg):
    _, views = posed_case
    calls = []
    kw = dict(template_unit=real_template, work_size=WORK, affine_iters=30, deform_iters=20, seed=5)
    a = fit_template(views, BOTH, cfg, progress=lambda s, i, n: calls.append((s, i, n)), **kw)
    b = fit_template(views, BOTH, cfg, **kw)
    np.testing.assert_array_equal(a.unit, b.unit)
    assert a.loss_history == b.loss_history and a.affine_params == b.affine_params
    assert len(a.loss_history) == 50
    assert calls[0] == ("template_affine", 0, 30) and calls[-1] == ("template_deform", 19, 20)
    assert len(calls) == 50
