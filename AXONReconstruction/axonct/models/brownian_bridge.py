"""Brownian-bridge diffusion (BBDM) schedule, training target and skip sampler.

The bridge runs between the CT x0 (t = 0) and a condition volume y (t = T-1) of the same shape:

    x_t = (1 - m_t) x0 + m_t y + sqrt(delta_t) eps,   delta_t = 2 s (m_t - m_t^2),

with m_t linear from ``m_min`` to ``m_max``. The network learns the "grad" objective
m_t (y - x0) + sqrt(delta_t) eps, so x0_hat = x_t - model_output.

Sampling follows the bridge's posterior between two skip steps t > s given x0_hat:

    delta_{t|s} = delta_t - delta_s (1 - m_t)^2 / (1 - m_s)^2          (>= 0: = 2s (1-m_t)(m_t-m_s)/(1-m_s))
    sigma^2     = eta^2 delta_{t|s} delta_s / delta_t
    x_s         = (1 - m_s) x0_hat + m_s y
                  + sqrt((delta_s - sigma^2) / delta_t) (x_t - (1 - m_t) x0_hat - m_t y) + sigma z.

If x0_hat is exact and x_t follows the forward marginal, the bracket is sqrt(delta_t) eps, so x_s has
mean (1-m_s) x0 + m_s y and variance (delta_s - sigma^2) + sigma^2 = delta_s: the forward marginal
at s, for every eta in [0, 1]. With eta = 1 it is exactly the Markov posterior q(x_s | x_t, x0, y)
(its mean coefficient sqrt((delta_s - sigma^2)/delta_t) equals (1-m_t)/(1-m_s) * delta_s/delta_t).
eta = 0 gives a deterministic (DDIM-like) sampler. The last step returns x0_hat with no noise.

Sampling starts at x_T = y exactly (no noise is added: at t = T-1 the bridge is almost pinned to y,
delta ~ 2e-3, and the original BBDM does the same).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

# guidance(x0_hat, step_index, num_steps, t) -> corrected x0_hat; called once per sampling step on the
# clipped clean-volume estimate, before the posterior step uses it.
Guidance = Callable[[torch.Tensor, int, int, int], torch.Tensor]
Progress = Callable[[int, int], None]
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def randn_like_from(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device then moved.

    Drawing on the generator's own device keeps a CPU generator usable (and reproducible) for CUDA
    tensors, so resumed runs see the same noise whatever the compute device.
    """
    if isinstance(generator, (list, tuple)):  # one generator per batch item (batched samples)
        return per_sample_randn(x.shape, generator).to(device=x.device, dtype=x.dtype)
    gen_device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32)
    return noise.to(device=x.device, dtype=x.dtype)


def per_sample_randn(shape, generators) -> torch.Tensor:
    """Noise for a batch where item k comes from ``generators[k]`` alone: K samples drawn as one batch
    get exactly the numbers they would get one at a time, so batching never changes a result."""
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=torch.float32)
                      for g in generators], 0)


class BrownianBridgeScheduler:
    """Coefficients and update rules of the Brownian bridge between x0 and y."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        m_min: float = 0.001,
        m_max: float = 0.999,
        variance_scale: float = 1.0,
    ) -> None:
        if num_train_timesteps < 2:
            raise ValueError("num_train_timesteps must be >= 2")
        if not 0.0 < m_min < m_max < 1.0:
            raise ValueError(f"need 0 < m_min < m_max < 1, got {m_min}, {m_max}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.m_min = float(m_min)
        self.m_max = float(m_max)
        self.variance_scale = float(variance_scale)
        # float64 tables: the coefficients are looked up and cast to the data dtype at use.
        self.m = torch.linspace(self.m_min, self.m_max, self.num_train_timesteps, dtype=torch.float64)
        self.delta = 2.0 * self.variance_scale * (self.m - self.m**2)
        self.timesteps = self.set_timesteps(min(20, self.num_train_timesteps))

    # ------------------------------------------------------------------ coefficient lookup
    def _coef(self, table: torch.Tensor, t, like: torch.Tensor) -> torch.Tensor:
        """table[t] shaped to broadcast against ``like`` ([B, ...]); t is an int or a LongTensor [B]."""
        if isinstance(t, torch.Tensor):
            t_cpu = t.detach().to("cpu", torch.long)
            if t_cpu.dim() == 0:
                v = table[t_cpu].reshape([1] * like.dim())
            else:
                v = table[t_cpu].reshape([-1] + [1] * (like.dim() - 1))
        else:
            v = table[int(t)].reshape([1] * like.dim())
        return v.to(device=like.device, dtype=like.dtype)

    # ------------------------------------------------------------------ forward process / training
    def add_noise(self, x0: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """Sample of the forward marginal q(x_t | x0, y) with the given standard-normal noise."""
        m = self._coef(self.m, t, x0)
        d = self._coef(self.delta, t, x0)
        return (1.0 - m) * x0 + m * y + d.sqrt() * noise

    def training_target(self, x0: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """The "grad" objective: x_t - target == x0, so the net predicts the bridge's displacement."""
        m = self._coef(self.m, t, x0)
        d = self._coef(self.delta, t, x0)
        return m * (y - x0) + d.sqrt() * noise

    @staticmethod
    def predict_x0(x_t: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        return x_t - model_output

    # ------------------------------------------------------------------ sampling
    def set_timesteps(self, num_steps: int) -> list[int]:
        """Descending skip-sampling timesteps, evenly spaced from T-1 down to 0 (both included).

        ``num_steps`` model evaluations; 1 step is just [T-1] (a single x0 prediction from y).
        """
        T = self.num_train_timesteps
        num_steps = int(num_steps)
        if not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
        if num_steps == 1:
            steps = [T - 1]
        else:
            # spacing (T-1)/(n-1) >= 1, so rounding keeps the list strictly decreasing
            steps = torch.linspace(T - 1, 0, num_steps, dtype=torch.float64).round().long().tolist()
        self.timesteps = steps
        return steps

    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        s: Optional[int],
        x_t: torch.Tensor,
        y: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        eta: float = 1.0,
        guidance: Optional[Guidance] = None,
        step_index: int = 0,
        num_steps: int = 1,
        clip: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One posterior move t -> s (< t). ``s=None`` (or t == 0) is the final step: returns x0_hat.

        Returns ``(x_s, x0_hat)`` where x0_hat is the (clipped, guided) clean estimate used.
        """
        model_output = model_output.to(x_t.dtype)
        x0_hat = self.predict_x0(x_t, model_output)
        if clip:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        if guidance is not None:
            x0_hat = guidance(x0_hat, step_index, num_steps, int(t)).detach().to(x_t.dtype)
            if clip:
                x0_hat = x0_hat.clamp(-1.0, 1.0)
        if s is None or int(t) == 0:
            return x0_hat, x0_hat
        t, s = int(t), int(s)
        if not 0 <= s < t:
            raise ValueError(f"posterior step needs 0 <= s < t, got t={t}, s={s}")
        m_t, m_s = float(self.m[t]), float(self.m[s])
        d_t, d_s = float(self.delta[t]), float(self.delta[s])
        d_ts = d_t - d_s * (1.0 - m_t) ** 2 / (1.0 - m_s) ** 2
        sigma2 = (eta**2) * d_ts * d_s / d_t
        c_eps = max(d_s - sigma2, 0.0) / d_t  # clamp: eta > 1 would make it negative
        mean = (1.0 - m_s) * x0_hat + m_s * y + (c_eps**0.5) * (x_t - (1.0 - m_t) * x0_hat - m_t * y)
        if sigma2 > 0.0:
            return mean + (sigma2**0.5) * randn_like_from(x_t, generator), x0_hat
        return mean, x0_hat

    def sample(
        self,
        model_fn: ModelFn,
        y: torch.Tensor,
        num_steps: int,
        generator: Optional[torch.Generator] = None,
        eta: float = 1.0,
        guidance: Optional[Guidance] = None,
        clip: bool = True,
        progress: Optional[Progress] = None,
    ) -> torch.Tensor:
        """Walk the bridge from x_T = y (exactly, no noise) to x0 in ``num_steps`` model calls.

        ``model_fn(x_t, t_batch)`` returns the grad-objective prediction; ``t_batch`` is a LongTensor [B].
        Noise comes only from ``generator`` (None: torch's default generator).
        """
        steps = self.set_timesteps(num_steps)
        n = len(steps)
        x = y.clone()
        for i, t in enumerate(steps):
            t_batch = torch.full((y.shape[0],), t, dtype=torch.long, device=y.device)
            out = model_fn(x, t_batch)
            s = steps[i + 1] if i + 1 < n else None
            x, _ = self.step(out, t, s, x, y, generator=generator, eta=eta, guidance=guidance,
                             step_index=i, num_steps=n, clip=clip)
            if progress is not None:
                progress(i, n)
        return x
