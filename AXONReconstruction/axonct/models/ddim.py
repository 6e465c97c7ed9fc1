"""Stage II's noise process and its sampling loop, apart from the networks (the MONAI/diffusers split):
the DDPM schedule (MONAI's scheduler supplies the betas, in float64 here) and DDIM sampling written
from the clean estimate, so a guidance correction of x0_hat really moves the trajectory.

Conventions shared by every sampler in the project:
- volumes are in model range [-1, 1], shape [B, 1, N, N, N];
- ``guidance(x0_hat, step_index, num_steps, t) -> x0_hat`` is called once per step on the clipped
  clean estimate; the update is recomputed from whatever it returns;
- ``progress(step_index, num_steps)`` is an optional callback;
- all randomness comes from explicit ``torch.Generator`` objects (one per sample in a batch, or one).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from monai.networks.schedulers import DDPMScheduler

from axonct.presets import PriorConfig

Guidance = Callable[[torch.Tensor, int, int, int], torch.Tensor]
Progress = Callable[[int, int], None]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def randn(shape, generator: torch.Generator, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normal noise drawn on the generator's device, then moved: the same seed gives the same
    numbers whatever device the model runs on (and a CPU generator works with a CUDA model)."""
    if isinstance(generator, (list, tuple)):  # one generator per batch item (batched samples)
        from axonct.models.brownian_bridge import per_sample_randn

        out = per_sample_randn(tuple(shape), generator)
    else:
        out = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return out.to(device=device if device is not None else out.device, dtype=dtype)


def randint(high: int, size: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """Integers in [0, high) from the generator's device (see ``randn``)."""
    out = torch.randint(0, high, (size,), generator=generator, device=generator.device)
    return out.to(device) if device is not None else out


def norm_groups(channels) -> int:
    """GroupNorm group count that divides every level (MONAI requires it): 32 when possible,
    otherwise the largest common divisor (the tiny preset has 16-channel levels)."""
    return math.gcd(32, *[int(c) for c in channels])


class NoiseSchedule:
    """The forward process (MONAI's DDPMScheduler for ``add_noise``) plus the few quantities our own
    DDIM sampler needs. Not an nn.Module: it has no learnable state and stays out of checkpoints."""

    def __init__(self, cfg: PriorConfig):
        if cfg.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {cfg.prediction_type!r}")
        self.num_train_timesteps = int(cfg.num_train_timesteps)
        self.prediction_type = cfg.prediction_type
        self.scheduler = DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            schedule=cfg.schedule,
            prediction_type=cfg.prediction_type,
            clip_sample=True,
            beta_start=cfg.beta_start,
            beta_end=cfg.beta_end,
        )
        # Private float64 copy: MONAI's add_noise recasts its own alphas_cumprod to the input's dtype,
        # so the sampler never reads the scheduler's (possibly downcast) tensor.
        self.alphas_cumprod = self.scheduler.alphas_cumprod.detach().to(torch.float64).clone()

    def abar(self, t: int) -> float:
        return float(self.alphas_cumprod[int(t)])

    def sample_timesteps(self, batch: int, generator: torch.Generator, device=None) -> torch.Tensor:
        return randint(self.num_train_timesteps, batch, generator, device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) via MONAI, computed in float32 so the scheduler's table is never downcast."""
        xt = self.scheduler.add_noise(x0.float(), noise.float(), t)
        return xt.to(x0.dtype)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network regresses for the configured prediction_type."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(x0.float(), noise.float(), t).to(x0.dtype)
        return x0

    def predict_x0(self, model_out: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """Clean estimate from the network output at integer timestep t (unclipped)."""
        a = self.abar(t)
        sa, sb = math.sqrt(a), math.sqrt(1.0 - a)
        if self.prediction_type == "epsilon":
            return (x_t - sb * model_out) / sa
        if self.prediction_type == "v_prediction":
            return sa * x_t - sb * model_out
        return model_out

    def start_timestep(self, strength: float) -> int:
        """SDEdit start: strength 1 -> T-1 (pure noise), 0 -> 0."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"start_strength must be in [0, 1], got {strength}")
        return int(round(strength * (self.num_train_timesteps - 1)))

    def inference_timesteps(self, num_steps: int, start_t: Optional[int] = None) -> list[int]:
        """``num_steps`` evenly spaced integer timesteps from start_t (default T-1) down to 0,
        deduplicated (a short SDEdit range can round two steps onto the same timestep)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        start = self.num_train_timesteps - 1 if start_t is None else int(start_t)
        ts = torch.linspace(float(start), 0.0, num_steps, dtype=torch.float64).round().long().tolist()
        out: list[int] = []
        for t in ts:
            if not out or t != out[-1]:
                out.append(int(t))
        return out


@torch.no_grad()
def _no_grad_call(fn, *args):
    return fn(*args)


def ddim_sample(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: list[int],
    generator: Optional[torch.Generator] = None,
    eta: float = 0.0,
    guidance: Optional[Guidance] = None,
    progress: Optional[Progress] = None,
) -> torch.Tensor:
    """DDIM written from the clean estimate: x0_hat is clipped, optionally corrected by ``guidance``,
    and the step uses the epsilon implied by (x_t, x0_hat), so a guidance correction really moves the
    trajectory. The network runs without autograd; guidance runs in the caller's grad mode (it may use
    autograd on its own). Returns the final clipped x0_hat. eta > 0 needs ``generator``."""
    n = len(timesteps)
    x = x_t
    x0_hat = x
    for i, t in enumerate(timesteps):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = _no_grad_call(model_fn, x, t_batch).to(x.dtype)
        x0_hat = schedule.predict_x0(out, x, t).clamp(-1.0, 1.0)
        if guidance is not None:
            x0_hat = guidance(x0_hat, i, n, t).detach().to(x.dtype)
        a_t = schedule.abar(t)
        a_prev = schedule.abar(timesteps[i + 1]) if i + 1 < n else 1.0
        eps = (x - math.sqrt(a_t) * x0_hat) / math.sqrt(1.0 - a_t)
        sigma = 0.0
        if eta > 0 and i + 1 < n:
            sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
        x = math.sqrt(a_prev) * x0_hat + math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            if generator is None:
                raise ValueError("eta > 0 needs a generator")
            x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
        if progress is not None:
            progress(i, n)
    return x0_hat
