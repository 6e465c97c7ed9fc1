"""Stage II: CT diffusion prior, ControlNet stage and the shared DDIM sampler (tiny, 16^3 volumes)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from axonct.models.ddim import NoiseSchedule, ddim_sample
from axonct.models.fine import ControlNetStage, CTPrior
from axonct.presets import PriorConfig, model_preset

N = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**over) -> PriorConfig:
    return dataclasses.replace(model_preset("tiny").prior, **over)


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def trained_like_prior(cfg=None, seed=0) -> CTPrior:
    """A prior whose zero-initialised output conv is randomised, standing in for a trained prior (an
    untrained MONAI UNet outputs exactly zero and passes no gradient back to ControlNet residuals)."""
    torch.manual_seed(seed)
    prior = CTPrior(cfg or tiny_cfg())
    with torch.no_grad():
        for p in prior.unet.out[2].parameters():
            p.normal_(0.0, 0.05)
    return prior


def blob(n=N, center=(0.5, 0.5, 0.5), r=0.3, b=1) -> torch.Tensor:
    """A smooth blob in [-1, 1] used as a conditioning volume."""
    ax = (torch.arange(n) + 0.5) / n
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    d2 = (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2
    v = torch.exp(-d2 / (2 * r**2)) * 2 - 1
    return v[None, None].repeat(b, 1, 1, 1, 1).float()


def corr(a, b) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-12))


# ---------------------------------------------------------------- schedule and sampler


def test_schedule_follows_config():
    cfg = tiny_cfg(num_train_timesteps=100, beta_start=0.001, beta_end=0.02)
    s = NoiseSchedule(cfg)
    betas = torch.linspace(0.001**0.5, 0.02**0.5, 100, dtype=torch.float64) ** 2
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-5)
    assert s.inference_timesteps(5) == [99, 74, 50, 25, 0]
    assert s.start_timestep(0.6) == round(0.6 * 99)
    with pytest.raises(ValueError):
        NoiseSchedule(tiny_cfg(prediction_type="x0"))


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_recovers_x0_with_oracle_model(ptype, eta):
    """With a model that outputs the exact target for a known x0, every step's x0_hat is x0."""
    s = NoiseSchedule(tiny_cfg(prediction_type=ptype))
    x0 = blob(8) * 0.8

    def oracle(x_t, t):
        a = s.abar(int(t[0]))
        eps = (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)
        return eps if ptype == "epsilon" else math.sqrt(a) * eps - math.sqrt(1 - a) * x0

    xt = torch.randn(x0.shape, generator=gen(1))
    out = ddim_sample(oracle, xt, s, s.inference_timesteps(6), gen(2), eta=eta)
    assert torch.allclose(out, x0, atol=1e-4)


# ---------------------------------------------------------------- prior


@pytest.mark.parametrize("b", [1, 2])
def test_prior_shapes(b):
    prior = CTPrior(tiny_cfg())
    x0 = blob(b=b)
    loss, logs = prior.training_loss(x0, gen())
    assert loss.ndim == 0 and loss.requires_grad and torch.isfinite(loss)
    assert loss.dtype == torch.float32 and isinstance(logs["loss"], float)
    out = prior.sample((b, 1, N, N, N), gen(), num_steps=3)
    assert out.shape == (b, 1, N, N, N) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1


def test_prior_v_prediction_and_attention():
    cfg = tiny_cfg(prediction_type="v_prediction", attention=(False, False, True))
    prior = trained_like_prior(cfg)
    loss, _ = prior.training_loss(blob(b=2), gen())
    assert torch.isfinite(loss)
    assert prior.sample((1, 1, N, N, N), gen(), num_steps=2).shape == (1, 1, N, N, N)
    stage = ControlNetStage.from_prior(prior)
    assert stage.sample(blob(), gen(), num_steps=2).shape == (1, 1, N, N, N)


def test_prior_sample_deterministic():
    prior = trained_like_prior()
    a = prior.sample((1, 1, N, N, N), gen(5), num_steps=3)
    b = prior.sample((1, 1, N, N, N), gen(5), num_steps=3)
    c = prior.sample((1, 1, N, N, N), gen(6), num_steps=3)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_prior_loss_decreases_on_fixed_example():
    torch.manual_seed(0)
    prior = CTPrior(tiny_cfg())
    x0 = blob(b=2)
    opt = torch.optim.Adam(prior.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss, _ = prior.training_loss(x0, gen(3))  # same t and noise every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ---------------------------------------------------------------- ControlNet stage


@pytest.mark.parametrize("b", [1, 2])
def test_stage_shapes(b):
    stage = ControlNetStage.from_prior(trained_like_prior())
    x0, cond = blob(b=b), blob(b=b, center=(0.4, 0.5, 0.6))
    loss, logs = stage.training_loss(x0, cond, gen())
    assert loss.ndim == 0 and loss.requires_grad and torch.isfinite(loss) and "loss" in logs
    for s in (1.0, 0.5):
        out = stage.sample(cond, gen(), num_steps=3, start_strength=s)
        assert out.shape == (b, 1, N, N, N) and out.dtype == torch.float32
        assert out.min() >= -1 and out.max() <= 1


def test_conditioning_embedding_must_not_downsample():
    with pytest.raises(ValueError, match="exactly one entry"):
        ControlNetStage(tiny_cfg(controlnet_conditioning_channels=(8, 16)))
    with pytest.raises(ValueError):
        ControlNetStage.from_prior(CTPrior(tiny_cfg()), tiny_cfg(channels=(16, 32, 64)))


def test_controlnet_starts_from_prior_weights_and_changes_nothing():
    prior = trained_like_prior()
    stage = ControlNetStage.from_prior(prior)
    cn, un = stage.controlnet.state_dict(), prior.unet.state_dict()
    shared = [k for k in cn if k in un]
    assert any(k.startswith("down_blocks") for k in shared) and any(k.startswith("middle_block") for k in shared)
    for k in shared:
        assert torch.equal(cn[k], un[k]), k

    x, cond = torch.randn((2, 1, N, N, N), generator=gen(1)), blob(b=2)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        down, mid = stage.residuals(x, t, cond)
        assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0
        ref = prior(x, t)
        assert ref.abs().max() > 0  # the comparison is not trivially 0 == 0
        assert torch.equal(stage(x, t, cond), ref)


def test_prior_is_frozen_and_only_controlnet_trains():
    prior = trained_like_prior()
    stage = ControlNetStage.from_prior(prior)
    assert all(not p.requires_grad for p in stage.prior.parameters())
    assert {id(p) for p in stage.trainable_parameters()} == {id(p) for p in stage.controlnet.parameters()}
    stage.train()
    assert stage.controlnet.training and not stage.prior.training and not stage.prior.unet.training

    before_prior = {k: v.clone() for k, v in stage.prior.state_dict().items()}
    before_cn = {k: v.clone() for k, v in stage.controlnet.state_dict().items()}
    opt = torch.optim.Adam(stage.trainable_parameters(), lr=1e-3)
    for _ in range(2):
        loss, _ = stage.training_loss(blob(b=2), blob(b=2, center=(0.3, 0.5, 0.5)), gen(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in stage.prior.parameters())
    for k, v in stage.prior.state_dict().items():
        assert torch.equal(v, before_prior[k]), k
    assert any(not torch.equal(v, before_cn[k]) for k, v in stage.controlnet.state_dict().items())


def test_stage_loss_decreases_on_fixed_example():
    stage = ControlNetStage.from_prior(trained_like_prior())
    x0, cond = blob(b=2), blob(b=2, center=(0.45, 0.5, 0.5))
    opt = torch.optim.Adam(stage.trainable_parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        loss, _ = stage.training_loss(x0, cond, gen(3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_stage_sample_deterministic():
    stage = ControlNetStage.from_prior(trained_like_prior())
    cond = blob()
    a = stage.sample(cond, gen(7), num_steps=3)
    b = stage.sample(cond, gen(7), num_steps=3)
    c = stage.sample(cond, gen(8), num_steps=3)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_partial_strength_starts_from_noised_condition():
    """At s=0.3 (t=300, abar ~ 0.41) the first clean estimate is cond + ~1.2x noise: clearly correlated
    with cond (about 0.24 here) and not with an unrelated blob; from pure noise (s=1) it is not."""
    stage = ControlNetStage.from_prior(trained_like_prior())
    cond = blob(center=(0.3, 0.35, 0.6), r=0.25)
    other = blob(center=(0.7, 0.6, 0.3), r=0.25)
    first = {}

    def spy(x0_hat, i, n, t):
        first.setdefault("x0", x0_hat.clone())
        first.setdefault("t", t)
        return x0_hat

    stage.sample(cond, gen(0), num_steps=4, start_strength=0.3, guidance=spy)
    assert first["t"] == round(0.3 * (stage.cfg.num_train_timesteps - 1))
    assert corr(first["x0"], cond) > 0.15
    assert corr(first["x0"], cond) > corr(first["x0"], other) + 0.15

    first.clear()
    stage.sample(cond, gen(0), num_steps=4, start_strength=1.0, guidance=spy)
    assert first["t"] == stage.cfg.num_train_timesteps - 1
    assert abs(corr(first["x0"], cond)) < 0.1


@pytest.mark.parametrize("which", ["prior", "stage"])
def test_guidance_and_progress_hooks(which):
    stage = ControlNetStage.from_prior(trained_like_prior())
    cond = blob()

    def run(**kw):
        if which == "prior":
            return stage.prior.sample((1, 1, N, N, N), gen(9), num_steps=4, **kw)
        return stage.sample(cond, gen(9), num_steps=4, start_strength=0.8, **kw)

    calls, ticks = [], []

    def identity(x0_hat, i, n, t):
        calls.append((i, n, t))
        assert x0_hat.min() >= -1 and x0_hat.max() <= 1  # clipped before guidance sees it
        return x0_hat

    plain = run()
    assert torch.equal(run(guidance=None), plain)
    assert torch.equal(run(guidance=identity, progress=lambda i, n: ticks.append((i, n))), plain)
    assert [c[0] for c in calls] == [0, 1, 2, 3] and all(c[1] == 4 for c in calls)
    ts = [c[2] for c in calls]
    assert ts == sorted(ts, reverse=True) and ts[-1] == 0
    assert ticks == [(i, 4) for i in range(4)]
    # guidance has an effect: the update is recomputed from the corrected estimate
    shifted = run(guidance=lambda x0, i, n, t: (x0 * 0 + 0.25))
    assert torch.allclose(shifted, torch.full_like(shifted, 0.25))
