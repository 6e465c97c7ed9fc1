"""Per-view calibration: known intensity maps and geometry are recovered, the inverse is consistent,
and a simulated radiograph is explained far better than by a plain normalised comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from axonct.guidance.calibration import ViewCalibration, border_mask, fit_calibrations, fit_view_calibration
from axonct.config import ProjectionGeometry, VolumeGrid
from axonct.physics.drr import drr_from_unit_volume
from axonct.physics.xray_realism import RealismConfig, simulate_radiograph
from axonct.transforms.normalize import robust_unit

P = 64


@pytest.fixture(scope="module")
def drrs() -> torch.Tensor:
    """(2, 64, 64) float64 line integrals (frontal, lateral) of the real sample CT, else a synthetic chest."""
    torch.set_num_threads(1)
    from axonct.io.ct_preprocess import ct_to_model

    grid = VolumeGrid(size=64, fov_mm=320.0)
    try:
        from axonct.io.ct import read_ct
        from axonct.io.sample_data import sample_ct_path

        image = read_ct(sample_ct_path())
    except Exception:
        from synthetic import synthetic_chest

        image = synthetic_chest()
    mv = ct_to_model(image, grid)
    return drr_from_unit_volume(torch.from_numpy(mv.array), grid, ProjectionGeometry(detector_pixels=P)).double()


def _truth(model, L, shift, scale, **params) -> ViewCalibration:
    params["l_ref"] = float(torch.quantile(L, 0.99))
    return ViewCalibration(model, params, shift, scale, 0.0)


CASES = [
    ("affine", dict(a=0.11, b=0.04), (2.3, -3.1), 1.06, 0),
    ("gamma", dict(a=0.8, b=0.1, g=0.5), (-4.0, 1.6), 0.93, 1),
    ("gamma", dict(a=0.7, b=0.05, g=2.0), (1.2, 2.7), 1.0, 0),
    ("log", dict(a=0.95, b=0.02, k=0.6), (0.7, -4.4), 1.04, 1),
]


@pytest.mark.parametrize("model,params,shift,scale,view", CASES)
def test_recovers_known_mapping_and_geometry(drrs, model, params, shift, scale, view):
    L = drrs[view]
    truth = _truth(model, L, shift, scale, **params)
    obs = truth.apply(L) + 0.002 * torch.randn(L.shape, generator=torch.Generator().manual_seed(0), dtype=L.dtype)
    fit = fit_view_calibration(obs, L)
    assert fit.model == model, fit.to_dict()
    assert fit.shift_px == pytest.approx(shift, abs=0.15)
    assert fit.scale == pytest.approx(scale, abs=0.005)
    for k, v in params.items():
        assert fit.params[k] == pytest.approx(v, rel=0.05, abs=0.01), (k, fit.to_dict())
    assert fit.residual_rmse < 0.004
    # the fitted model reproduces the observation, numpy in -> numpy out
    pred = fit.apply(L.numpy())
    assert isinstance(pred, np.ndarray) and pred.shape == (P, P)
    inner = slice(8, -8)
    assert np.abs(pred[inner, inner] - truth.apply(L).numpy()[inner, inner]).max() < 0.01


def test_pinned_geometry_keeps_the_view_where_it_is_and_still_fits_the_intensity(drrs):
    """A view in the model's own geometry: an estimate drawn 6 % too wide is not matched by
    magnifying the view (as the free fit does), so the targets keep the view's true size."""
    L = drrs[0]
    obs = _truth("gamma", L, (0.0, 0.0), 1.0, a=0.8, b=0.1, g=0.7).apply(L)
    too_wide = _truth("affine", L, (0.0, 0.0), 1.06, a=1.0, b=0.0).apply(L)
    free = fit_view_calibration(obs, too_wide)
    pinned = fit_view_calibration(obs, too_wide, pinned=True)
    assert free.scale == pytest.approx(1 / 1.06, abs=0.01)
    assert pinned.scale == 1.0 and pinned.shift_px == (0.0, 0.0)
    exact = fit_view_calibration(obs, L, pinned=True)
    assert exact.model == "gamma" and exact.params["g"] == pytest.approx(0.7, rel=0.05)
    assert exact.residual_rmse < 0.004
    assert pinned.residual_rmse > 5 * exact.residual_rmse  # the width error stays visible


def test_affine_preferred_when_residuals_tie(drrs):
    L = drrs[0]
    obs = _truth("affine", L, (0.0, 0.0), 1.0, a=0.12, b=0.05).apply(L)
    obs = obs + 0.01 * torch.randn(L.shape, generator=torch.Generator().manual_seed(3), dtype=L.dtype)
    fit = fit_view_calibration(obs, L)
    assert fit.model == "affine"
    assert set(fit.candidates) == {"affine", "gamma", "log"}
    assert fit_view_calibration(obs, L, models=("gamma", "log")).model in ("gamma", "log")


@pytest.mark.parametrize("model,params", [("affine", dict(a=0.1, b=0.05)), ("gamma", dict(a=0.8, b=0.1, g=0.6)),
                                          ("log", dict(a=0.9, b=0.03, k=0.5))])
def test_target_line_integrals_inverts_apply(drrs, model, params):
    L = drrs[0]
    # integer shift, unit scale: both warps are exact resamplings, so the inverse is exact
    cal = _truth(model, L, (5.0, -3.0), 1.0, **params)
    target, weight = cal.target_line_integrals(cal.apply(L).numpy())
    assert target.dtype == np.float32 and weight.shape == (P, P)
    assert (weight[-5:] == 0).all() and (weight[:, :3] == 0).all()  # outside the warped field
    assert weight[:-5, 3:].all()
    np.testing.assert_allclose(target[weight > 0], L.numpy()[weight > 0], rtol=1e-5, atol=1e-5)
    # sub-pixel shift and scale: recovered up to double bilinear interpolation
    cal = _truth(model, L, (2.4, -1.7), 1.05, **params)
    target, weight = cal.target_line_integrals(cal.apply(L))
    assert isinstance(target, torch.Tensor) and weight.mean() > 0.7
    err = (target - L).abs()[weight > 0]
    assert float(err.median()) < 0.02 * float(L.max()) and float(err.mean()) < 0.04 * float(L.max())


def test_target_weight_zero_on_clipped_values(drrs):
    L = drrs[1]
    cal = _truth("affine", L, (0.0, 0.0), 1.0, a=0.3, b=-0.2)  # windowed: air below 0, dense bone above 1
    obs = cal.apply(L).clamp(0, 1)
    target, weight = cal.target_line_integrals(obs)
    clipped = (obs <= 1e-3) | (obs >= 1 - 1e-3)
    assert clipped.float().mean() > 0.05
    assert (weight[clipped] == 0).all()
    ok = weight > 0
    torch.testing.assert_close(target[ok], L[ok], rtol=1e-5, atol=1e-5)
    # the fit treats those pixels as censored and still finds the window
    fit = fit_view_calibration(obs, L)
    assert fit.params["a"] == pytest.approx(0.3, rel=0.03) and fit.params["b"] == pytest.approx(-0.2, abs=0.02)


def test_apply_is_differentiable(drrs):
    L = drrs[0].clone().requires_grad_(True)
    cal = _truth("log", drrs[0], (1.5, -0.5), 1.03, a=0.9, b=0.03, k=0.5)
    cal.apply(L).sum().backward()
    assert L.grad is not None and float(L.grad.abs().sum()) > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simulated_radiograph_calibrated_residual_far_below_plain_normalisation(drrs, seed):
    L = drrs[seed % 2]
    shift, scale = (3.0, -2.0), 1.05
    moved = _truth("affine", L, shift, scale, a=1.0, b=0.0).apply(L)
    cfg = RealismConfig(collimation=False)
    obs = simulate_radiograph(moved.float(), cfg, seed=seed).double()
    plain = robust_unit(L[None, None])[0, 0]
    plain_rmse = float(((obs - plain) ** 2).mean().sqrt())
    fit = fit_view_calibration(obs, L)
    assert fit.residual_rmse < 0.5 * plain_rmse, (fit.residual_rmse, plain_rmse)
    assert fit.shift_px == pytest.approx(shift, abs=0.5)
    assert fit.scale == pytest.approx(scale, abs=0.03)
    json.dumps(fit.to_dict())


def test_collimated_border_is_masked(drrs):
    L = drrs[0]
    obs = _truth("gamma", L, (1.0, 2.0), 1.02, a=0.8, b=0.1, g=0.7).apply(L).clone()
    obs[:6] = 1.0  # unexposed collimated bands read white
    obs[:, -4:] = 1.0
    m = border_mask(obs.numpy())
    assert (m[:6] == 0).all() and (m[:, -4:] == 0).all() and m[6:, :-4].all()
    fit = fit_view_calibration(obs, L)
    assert fit.model == "gamma" and fit.shift_px == pytest.approx((1.0, 2.0), abs=0.2)
    # an explicit mask is honoured too and reaches the inverse
    _, weight = fit.target_line_integrals(obs, mask=m)
    assert float(weight[:4].sum()) == 0


def test_mismatched_shapes_give_clear_errors(drrs):
    L = drrs[0]
    with pytest.raises(ValueError, match="differ in shape"):
        fit_view_calibration(torch.rand(P, P), L[::2, ::2])
    with pytest.raises(ValueError, match="mask shape"):
        fit_view_calibration(torch.rand(P, P), L, mask=np.ones((P, P + 1)))
    with pytest.raises(ValueError, match="2-D"):
        fit_view_calibration(torch.rand(1, P, P), L[None])
    with pytest.raises(ValueError, match="models"):
        fit_view_calibration(torch.rand(P, P), L, models=("spline",))
    with pytest.raises(ValueError, match=r"\(V, P, P\)"):
        fit_calibrations(torch.rand(2, P, P), torch.ones(2), drrs[:, ::2, ::2])


def test_fit_calibrations_skips_missing_views(drrs):
    truths = [_truth("affine", drrs[i], (1.0, -1.0), 1.0, a=0.1 + 0.02 * i, b=0.05) for i in range(2)]
    views = torch.stack([truths[i].apply(drrs[i]) for i in range(2)])
    cals = fit_calibrations(views.numpy(), np.array([1.0, 0.0]), drrs.numpy())
    assert cals[1] is None and isinstance(cals[0], ViewCalibration)
    assert cals[0].params["a"] == pytest.approx(0.1, rel=0.02)
    both = fit_calibrations(views, torch.ones(2), drrs)
    assert both[1].params["a"] == pytest.approx(0.12, rel=0.02)
