"""Reprojection consistency in the samplers: CG, the two guidances and the pipeline switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from axonct.models.brownian_bridge import BrownianBridgeScheduler
from axonct.config import data_preset
from axonct.guidance.consistency import ConsistencyConfig, ViewConsistency, conjugate_gradient, fade_weight
from axonct.io.ct_preprocess import ct_to_model
from axonct.physics.drr import drr_from_unit_volume
from axonct.transforms.normalize import robust_unit
from synthetic import synthetic_chest

DATA = data_preset("tiny")
LO = DATA.diffusion_grid(2)


@pytest.fixture(scope="module")
def truth_and_guess(tmp_path_factory):
    """A synthetic chest on the tiny grid (truth), its clean normalised views, and a wrong estimate
    (another chest) on the diffusion grid."""
    truth = ct_to_model(synthetic_chest(seed=3), DATA.grid).array
    other = ct_to_model(synthetic_chest(seed=11), DATA.grid).array
    views = drr_from_unit_volume(torch.from_numpy(truth), DATA.grid, DATA.geometry)
    views = robust_unit(views[:, None])[:, 0].numpy()
    pool = lambda a: F.avg_pool3d(torch.from_numpy(a)[None, None], 2)[0]  # noqa: E731  (1, S, S, S)
    return pool(truth), views, pool(other)


def _checker(views, mask=(1.0, 1.0), **cfg):
    return ViewConsistency(views, np.array(mask, np.float32), LO, DATA.geometry, ConsistencyConfig(**cfg))


def test_conjugate_gradient_solves_spd_system():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(4 * 4 * 4, 4 * 4 * 4, generator=gen, dtype=torch.float64)
    a = m @ m.T / 64 + torch.eye(64, dtype=torch.float64)  # well conditioned: CG converges fast
    x_true = torch.randn(2, 4, 4, 4, generator=gen, dtype=torch.float64)
    apply = lambda v: (v.flatten(1) @ a).view_as(v)  # noqa: E731  (a is symmetric)
    x = conjugate_gradient(apply, apply(x_true), torch.zeros_like(x_true), 64)
    assert torch.allclose(x, x_true, atol=1e-6)


def test_fade_weight_is_one_then_falls_to_zero():
    w = [fade_weight(i, 20, 0.25) for i in range(20)]
    assert w[:14] == [1.0] * 14 and w[-1] == 0.0
    assert all(a >= b for a, b in zip(w, w[1:]))


def test_calibrated_targets_fit_the_truth(truth_and_guess):
    truth, views, _ = truth_and_guess
    checker = _checker(views)
    checker.calibrate(truth)
    res_truth = checker.relative_residual(truth)
    assert max(res_truth) < 0.05, res_truth  # the views were made from this volume


def test_pinned_views_are_calibrated_in_place(truth_and_guess):
    """Views in the model's own geometry: the calibration against a wrong estimate fits intensity
    only; the other view keeps its free scale and position."""
    _, views, guess = truth_and_guess
    checker = ViewConsistency(views, np.ones(2, np.float32), LO, DATA.geometry, ConsistencyConfig(),
                              pinned=(True, False))
    checker.calibrate(guess)
    frontal, lateral = checker.calibrations
    assert frontal.scale == 1.0 and frontal.shift_px == (0.0, 0.0)
    assert lateral.scale != 1.0 or lateral.shift_px != (0.0, 0.0)


def test_cg_guidance_halves_the_residual_without_harming_the_volume(truth_and_guess):
    truth, views, guess = truth_and_guess
    checker = _checker(views)
    checker.calibrate(guess)
    before = checker.relative_residual(guess)
    guided = checker.cg_guidance()(guess[:, None] * 2 - 1, 0, 10, 500)
    u = (guided[:, 0] + 1) / 2
    after = checker.relative_residual(u)
    assert all(a < 0.7 * b for a, b in zip(after, before)), (before, after)
    # two views cannot fix depth: the correction must at least not smear error into the volume
    assert float((u - truth).abs().mean()) < 1.02 * float((guess - truth).abs().mean())
    # corrections stay inside the (dilated) body of the estimate
    outside = checker.support(guess) == 0
    assert torch.equal(u[outside], guess[outside])
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0


def test_bridge_guidance_steps_down_the_residual_scaled_by_the_bridge(truth_and_guess):
    truth, views, guess = truth_and_guess
    sched = BrownianBridgeScheduler(num_train_timesteps=1000)
    checker = _checker(views)
    checker.calibrate(guess)
    before = checker.relative_residual(guess)
    mid = int(torch.argmax(sched.delta))
    guided = checker.bridge_guidance(sched)(guess[:, None] * 2 - 1, 5, 10, mid)
    after = checker.relative_residual(((guided[:, 0] + 1) / 2))
    assert all(a < b for a, b in zip(after, before)), (before, after)
    # at the end of the bridge (t = 0) its variance is zero: no correction
    end = checker.bridge_guidance(sched)(guess[:, None] * 2 - 1, 9, 10, 0)
    assert torch.allclose(end, guess[:, None] * 2 - 1, atol=1e-6)


def test_strength_zero_changes_nothing_and_frontal_only_works(truth_and_guess):
    truth, views, guess = truth_and_guess
    x = guess[:, None] * 2 - 1
    off = _checker(views, strength=0.0)
    assert torch.equal(off.cg_guidance()(x, 0, 10, 500), x)
    front = _checker(views, mask=(1.0, 0.0))
    assert front.names == ["frontal"]
    out = front.cg_guidance()(x, 0, 10, 500)
    assert out.shape == x.shape and not torch.equal(out, x)
    report = front.report((out[0, 0] + 1).numpy() / 2)
    assert set(report["views"]) == {"frontal"} and report["views"]["frontal"]["calibration"]["model"]


def test_bad_config_is_refused():
    with pytest.raises(ValueError):
        ConsistencyConfig(strength=-1)
    with pytest.raises(ValueError):
        _checker(np.zeros((2, 64, 64), np.float32), mask=(0.0, 0.0))


def test_pipeline_with_consistency_agrees_better_with_its_inputs(tiny_cache, tiny_weights, one_thread):
    """Held-out case, undertrained tiny weights: consistency must bring the result's DRRs closer to
    the input views than the plain sampler does (the very thing it promises)."""
    from axonct.data.datasets import Augmentation, BatchMaker, CTCache
    from axonct.tools.compare import drr_residuals
    from axonct.pipeline.reconstruction import AxonPipeline

    pipe = AxonPipeline.load(tiny_weights)
    cache = CTCache(tiny_cache)
    case = cache.case_ids("val")[0]
    item = BatchMaker(cache, [case], 2, Augmentation.none()).sample(case, torch.Generator().manual_seed(0))
    views, mask = item["views"].numpy(), np.ones(2, np.float32)
    gt = cache.load(case)[0].astype(np.float32)
    plain = pipe.reconstruct(views, mask, steps=4, seed=1)
    guided = pipe.reconstruct(views, mask, steps=4, seed=1, consistency=ConsistencyConfig())
    r_plain = drr_residuals(plain.mean, gt, DATA, mask)["input_residual"]
    r_guided = drr_residuals(guided.mean, gt, DATA, mask)["input_residual"]
    assert r_guided < 0.9 * r_plain, (r_plain, r_guided)
    assert guided.consistency["views"]["frontal"]["relative_residual"] >= 0
    assert any(s["stage"] == "coarse" for s in guided.consistency["steps"])
    assert any(s["stage"] == "fine" for s in guided.consistency["steps"])
