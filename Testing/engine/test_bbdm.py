"""Brownian-bridge scheduler: forward marginals, training target, skip schedule, posterior and sampler."""

from __future__ import annotations

import math

import pytest
import torch

from axonct.models.brownian_bridge import BrownianBridgeScheduler

T = 1000


def _fields(shape, seed, dtype=torch.float32):
    """A fixed clean volume x0 (inside (-1, 1), so clipping never bites) and a condition y."""
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand(shape, generator=g, dtype=torch.float64) * 1.8 - 0.9).to(dtype)
    y = (torch.rand(shape, generator=g, dtype=torch.float64) * 1.8 - 0.9).to(dtype)
    return x0, y


def _m(t, m_min=0.001, m_max=0.999):
    return m_min + (m_max - m_min) * t / (T - 1)


def _delta(t, s=1.0):
    m = _m(t)
    return 2.0 * s * (m - m * m)


def test_schedule_tables_follow_the_formulas():
    sch = BrownianBridgeScheduler(T, 0.001, 0.999, variance_scale=0.5)
    for t in (0, 1, 250, 500, 998, 999):
        assert float(sch.m[t]) == pytest.approx(_m(t), abs=1e-12)
        assert float(sch.delta[t]) == pytest.approx(_delta(t, 0.5), abs=1e-12)
    assert float(sch.m[0]) == pytest.approx(0.001) and float(sch.m[T - 1]) == pytest.approx(0.999)
    assert float(BrownianBridgeScheduler().delta.max()) == pytest.approx(0.5, abs=1e-5)  # peak 2 s / 4


def test_forward_marginal_mean_and_variance_monte_carlo():
    """Residual x_t - ((1-m_t) x0 + m_t y) over 48^3 samples per t.

    Tolerances are 5 standard errors: mean |err| < 5 sqrt(delta_t / n) (+1e-6), and the variance
    within 5 sqrt(2 / n) ~ 2.1 % relative (n = 110592).
    """
    sch = BrownianBridgeScheduler()
    ts = torch.tensor([0, 300, 500, T - 1])
    shape = (len(ts), 1, 48, 48, 48)
    x0, y = _fields(shape, 1)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    x_t = sch.add_noise(x0, y, noise, ts)
    n = 48**3
    for i, t in enumerate(ts.tolist()):
        m, d = _m(t), _delta(t)
        resid = (x_t[i] - ((1 - m) * x0[i] + m * y[i])).double()
        assert abs(resid.mean().item()) < 5 * math.sqrt(d / n) + 1e-6, (t, resid.mean().item())
        assert resid.var().item() == pytest.approx(d, rel=5 * math.sqrt(2 / n)), t
    # the end points: the mean is the given mixture (zero noise isolates it exactly)
    zero = torch.zeros_like(x0)
    for i, t in ((0, 0), (3, T - 1)):
        m = sch.m[t].item()
        torch.testing.assert_close(sch.add_noise(x0, y, zero, ts)[i], (1 - m) * x0[i] + m * y[i], atol=1e-6, rtol=0)


def test_training_target_and_predict_x0_are_consistent():
    """x_t - target == x0 (float64: exact up to rounding, 1e-12) and predict_x0 inverts it."""
    sch = BrownianBridgeScheduler()
    shape = (3, 1, 8, 8, 8)
    x0, y = _fields(shape, 3, torch.float64)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.tensor([0, 421, T - 1])
    x_t = sch.add_noise(x0, y, noise, t)
    target = sch.training_target(x0, y, noise, t)
    torch.testing.assert_close(x_t - target, x0, atol=1e-12, rtol=0)
    torch.testing.assert_close(sch.predict_x0(x_t, target), x0, atol=1e-12, rtol=0)
    torch.testing.assert_close(sch.predict_x0(x_t, x_t - x0), x0, atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [1, 2, 10, 20, 200, 999, 1000])
def test_skip_schedule(n):
    steps = BrownianBridgeScheduler().set_timesteps(n)
    assert len(steps) == n
    assert steps[0] == T - 1
    if n > 1:
        assert steps[-1] == 0
    assert all(a > b for a, b in zip(steps, steps[1:]))


def test_skip_schedule_rejects_bad_counts():
    with pytest.raises(ValueError):
        BrownianBridgeScheduler().set_timesteps(0)
    with pytest.raises(ValueError):
        BrownianBridgeScheduler().set_timesteps(T + 1)


def test_eta1_coefficient_is_the_markov_posterior():
    """sqrt((delta_s - sigma^2)/delta_t) == a delta_s / delta_t with a = (1-m_t)/(1-m_s) (eta = 1)."""
    for t, s in ((999, 949), (600, 400), (10, 0)):
        m_t, m_s, d_t, d_s = _m(t), _m(s), _delta(t), _delta(s)
        d_ts = d_t - d_s * (1 - m_t) ** 2 / (1 - m_s) ** 2
        assert d_ts == pytest.approx(2 * (1 - m_t) * (m_t - m_s) / (1 - m_s), rel=1e-9)
        sigma2 = d_ts * d_s / d_t
        a = (1 - m_t) / (1 - m_s)
        assert math.sqrt((d_s - sigma2) / d_t) == pytest.approx(a * d_s / d_t, rel=1e-9)
        assert sigma2 == pytest.approx(1 / (1 / d_s + a * a / d_ts), rel=1e-9)


@pytest.mark.parametrize("t,s,eta", [(600, 400, 1.0), (999, 949, 1.0), (600, 400, 0.0), (300, 0, 0.5)])
def test_posterior_step_with_oracle_reproduces_forward_marginal(t, s, eta):
    """x_t ~ q(x_t|x0,y), one step with the exact x0 -> x_s ~ q(x_s|x0,y) (5 standard errors, n=48^3)."""
    sch = BrownianBridgeScheduler()
    shape = (1, 1, 48, 48, 48)
    x0, y = _fields(shape, 5)
    g = torch.Generator().manual_seed(6)
    x_t = sch.add_noise(x0, y, torch.randn(shape, generator=g), torch.tensor([t]))
    x_s, x0_hat = sch.step(x_t - x0, t, s, x_t, y, generator=g, eta=eta)
    torch.testing.assert_close(x0_hat, x0, atol=1e-6, rtol=0)
    n = 48**3
    m, d = _m(s), _delta(s)
    resid = (x_s - ((1 - m) * x0 + m * y)).double()
    assert abs(resid.mean().item()) < 5 * math.sqrt(d / n) + 1e-6
    assert resid.var().item() == pytest.approx(d, rel=5 * math.sqrt(2 / n))


def test_final_step_returns_x0_hat_without_noise():
    sch = BrownianBridgeScheduler()
    x0, y = _fields((1, 1, 4, 4, 4), 7)
    g = torch.Generator().manual_seed(8)
    state = g.get_state()
    out, x0_hat = sch.step(y - x0, 0, None, y, y, generator=g)
    assert torch.equal(out, x0_hat)
    assert torch.equal(g.get_state(), state)  # no noise drawn
    torch.testing.assert_close(out, x0, atol=1e-6, rtol=0)


def _oracle(x0):
    calls = []

    def model_fn(x_t, t):
        calls.append((x_t.clone(), t.clone()))
        return x_t - x0

    return model_fn, calls


@pytest.mark.parametrize("num_steps", [1, 20, 200])
def test_oracle_sampler_starts_at_y_and_ends_at_x0(num_steps):
    """Start exact (first model input is y bit for bit), end exact up to float64 rounding (1e-12)."""
    sch = BrownianBridgeScheduler()
    x0, y = _fields((2, 1, 6, 6, 6), 9, torch.float64)
    model_fn, calls = _oracle(x0)
    ticks = []
    out = sch.sample(model_fn, y, num_steps, generator=torch.Generator().manual_seed(10),
                     progress=lambda i, n: ticks.append((i, n)))
    assert torch.equal(calls[0][0], y)
    assert len(calls) == num_steps
    assert calls[0][1].tolist() == [T - 1, T - 1]
    assert [c[1][0].item() for c in calls] == sch.set_timesteps(num_steps)
    assert ticks == [(i, num_steps) for i in range(num_steps)]
    torch.testing.assert_close(out, x0, atol=1e-12, rtol=0)


def test_guidance_hook_called_per_step_and_changes_output():
    sch = BrownianBridgeScheduler()
    x0, y = _fields((1, 1, 6, 6, 6), 11, torch.float64)
    model_fn, _ = _oracle(x0)
    seen = []

    def guidance(x0_hat, i, n, t):
        seen.append((i, n, t))
        assert x0_hat.abs().max() <= 1.0  # the clipped estimate
        return 0.5 * x0_hat

    out = sch.sample(model_fn, y, 20, generator=torch.Generator().manual_seed(12), guidance=guidance)
    steps = sch.set_timesteps(20)
    assert seen == [(i, 20, t) for i, t in enumerate(steps)]
    torch.testing.assert_close(out, 0.5 * x0, atol=1e-12, rtol=0)  # the last step returns the guided x0_hat
    assert (out - x0).abs().max() > 0.1


def test_guidance_none_is_bit_identical_to_no_hook():
    sch = BrownianBridgeScheduler()
    x0, y = _fields((1, 1, 6, 6, 6), 13)

    def model_fn(x_t, t):  # an imperfect model so the noise and clipping paths matter
        return 0.7 * x_t - 0.2 * y + 1e-4 * t.float().view(-1, 1, 1, 1, 1)

    a = sch.sample(model_fn, y, 20, generator=torch.Generator().manual_seed(14))
    b = sch.sample(model_fn, y, 20, generator=torch.Generator().manual_seed(14), guidance=None)
    assert torch.equal(a, b)
    c = sch.sample(model_fn, y, 20, generator=torch.Generator().manual_seed(15))
    assert not torch.equal(a, c)  # the generator really drives the noise
    assert a.abs().max() <= 1.0  # the end point is a clipped x0_hat


def test_eta_zero_is_deterministic():
    sch = BrownianBridgeScheduler()
    x0, y = _fields((1, 1, 6, 6, 6), 16)

    def model_fn(x_t, t):
        return 0.5 * (x_t - x0)

    a = sch.sample(model_fn, y, 10, generator=torch.Generator().manual_seed(1), eta=0.0)
    b = sch.sample(model_fn, y, 10, generator=torch.Generator().manual_seed(2), eta=0.0)
    assert torch.equal(a, b)
