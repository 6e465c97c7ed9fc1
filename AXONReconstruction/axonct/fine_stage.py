"""Stage II (FineDiff): an unconditional 3D CT diffusion prior plus a ControlNet that steers it with
Stage I's coarse volume.

The prior learns what chest CTs look like; the ControlNet (a trainable copy of the prior's encoder,
MAISI-style) injects the coarse reconstruction through zero-initialised residuals, so training the
ControlNet starts exactly at the prior and the prior itself is never changed.

Conventions shared by every sampler in the project:
- volumes are in model range [-1, 1], shape [B, 1, N, N, N];
- ``guidance(x0_hat, step_index, num_steps, t) -> x0_hat`` is called once per step on the clipped
  clean estimate; the DDIM update is recomputed from whatever it returns;
- ``progress(step_index, num_steps)`` is an optional callback;
- all randomness comes from explicit ``torch.Generator`` objects.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from monai.networks.nets import ControlNet, DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from .presets import PriorConfig

Guidance = Callable[[torch.Tensor, int, int, int], torch.Tensor]
Progress = Callable[[int, int], None]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def randn(shape, generator: torch.Generator, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normal noise drawn on the generator's device, then moved: the same seed gives the same
    numbers whatever device the model runs on (and a CPU generator works with a CUDA model)."""
    if isinstance(generator, (list, tuple)):  # one generator per batch item (batched samples)
        from .bbdm import per_sample_randn

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


def _unet_kwargs(cfg: PriorConfig) -> dict:
    return dict(
        spatial_dims=3,
        in_channels=1,
        channels=tuple(cfg.channels),
        attention_levels=tuple(cfg.attention),
        num_res_blocks=cfg.res_blocks,
        num_head_channels=cfg.num_head_channels,
        norm_num_groups=norm_groups(cfg.channels),
        use_flash_attention=True,  # torch's scaled-dot-product attention: same weights, fused kernels
    )


class CTPrior(nn.Module):
    """Unconditional 3D CT diffusion prior (the anatomical prior of Stage II)."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        self.unet = DiffusionModelUNet(out_channels=1, **_unet_kwargs(cfg))
        self.schedule = NoiseSchedule(cfg)

    def forward(self, x_t, t, down_block_additional_residuals=None, mid_block_additional_residual=None):
        """Raw network output (epsilon / v / x0 depending on prediction_type)."""
        return self.unet(
            x_t,
            timesteps=t,
            down_block_additional_residuals=down_block_additional_residuals,
            mid_block_additional_residual=mid_block_additional_residual,
        )

    def training_loss(self, x0: torch.Tensor, generator: torch.Generator):
        """MSE on the prediction target at a uniformly drawn timestep. Returns (loss, logs)."""
        b = x0.shape[0]
        t = self.schedule.sample_timesteps(b, generator, x0.device)
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.schedule.add_noise(x0, noise, t)
        pred = self(x_t, t)
        loss = F.mse_loss(pred.float(), self.schedule.target(x0, noise, t).float())
        return loss, {"loss": float(loss.detach()), "t_mean": float(t.float().mean())}

    def sample(self, shape, generator: torch.Generator, num_steps: Optional[int] = None,
               guidance: Optional[Guidance] = None, progress: Optional[Progress] = None,
               eta: Optional[float] = None) -> torch.Tensor:
        """Unconditional DDIM sample of the given shape [B, 1, N, N, N], starting from pure noise."""
        p = next(self.parameters())
        steps = num_steps or self.cfg.sample_steps
        eta = getattr(self.cfg, "eta", 0.0) if eta is None else eta
        x = randn(shape, generator, p.device, torch.float32)
        ts = self.schedule.inference_timesteps(steps)
        return ddim_sample(lambda xt, t: self(xt, t), x, self.schedule, ts, generator, eta, guidance, progress)


_ARCH_FIELDS = ("channels", "res_blocks", "attention", "num_head_channels", "num_train_timesteps",
                "schedule", "beta_start", "beta_end", "prediction_type")


class ControlNetStage(nn.Module):
    """Frozen CTPrior + trainable MONAI ControlNet conditioned on Stage I's volume at the same grid.

    Only the ControlNet trains: the prior's parameters have requires_grad False and the prior stays
    in eval mode even when the stage is put in train mode. The state dict holds both (``prior.*``
    and ``controlnet.*``) so one checkpoint restores the whole stage."""

    def __init__(self, cfg: PriorConfig, prior: Optional[CTPrior] = None):
        super().__init__()
        if len(cfg.controlnet_conditioning_channels) != 1:
            # MONAI's conditioning embedding adds one stride-2 conv per extra entry; the condition is
            # already at x's resolution, so exactly one entry (no downsampling) is valid.
            raise ValueError(
                "controlnet_conditioning_channels must have exactly one entry (the conditioning volume "
                f"is at the same resolution as x), got {tuple(cfg.controlnet_conditioning_channels)}"
            )
        if prior is None:
            prior = CTPrior(cfg)
        else:
            bad = [f for f in _ARCH_FIELDS if getattr(cfg, f) != getattr(prior.cfg, f)]
            if bad:
                raise ValueError(f"PriorConfig differs from the prior's in architecture/schedule fields {bad}")
        self.cfg = cfg
        self.prior = prior
        self.prior.requires_grad_(False)
        self.prior.eval()
        self.controlnet = ControlNet(
            conditioning_embedding_in_channels=1,
            conditioning_embedding_num_channels=tuple(cfg.controlnet_conditioning_channels),
            **_unet_kwargs(cfg),
        )

    @property
    def schedule(self) -> NoiseSchedule:
        return self.prior.schedule

    @classmethod
    def from_prior(cls, prior: CTPrior, cfg: Optional[PriorConfig] = None) -> "ControlNetStage":
        """Wrap a trained prior (frozen in place, not copied) and copy its encoder/middle weights into the
        ControlNet where names and shapes match (as MAISI does); the ControlNet's zero convs stay zero."""
        stage = cls(cfg or prior.cfg, prior)
        stage.copy_prior_weights()
        return stage

    def copy_prior_weights(self) -> list[str]:
        """Copy every prior parameter whose name and shape match the ControlNet's; returns the names."""
        src = self.prior.unet.state_dict()
        dst = self.controlnet.state_dict()
        copied = [k for k, v in dst.items() if k in src and src[k].shape == v.shape]
        with torch.no_grad():
            for k in copied:
                dst[k].copy_(src[k])
        return copied

    def train(self, mode: bool = True):
        super().train(mode)
        self.prior.eval()
        return self

    def trainable_parameters(self):
        """Parameters the optimiser (and EMA) should see: the ControlNet's only."""
        return list(self.controlnet.parameters())

    def residuals(self, x_t, t, cond):
        """ControlNet residuals (down list, mid), already multiplied by controlnet_scale."""
        return self.controlnet(x_t, timesteps=t, controlnet_cond=cond.to(x_t.dtype),
                               conditioning_scale=self.cfg.controlnet_scale)

    def forward(self, x_t, t, cond):
        """Prior output with ControlNet residuals added to its skip connections and middle block."""
        down, mid = self.residuals(x_t, t, cond)
        return self.prior(x_t, t, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    def training_loss(self, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator):
        """Same objective as the prior, with the condition fed to the ControlNet. Returns (loss, logs)."""
        b = x0.shape[0]
        t = self.schedule.sample_timesteps(b, generator, x0.device)
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.schedule.add_noise(x0, noise, t)
        pred = self(x_t, t, cond)
        loss = F.mse_loss(pred.float(), self.schedule.target(x0, noise, t).float())
        return loss, {"loss": float(loss.detach()), "t_mean": float(t.float().mean())}

    def sample(self, cond: torch.Tensor, generator: torch.Generator, num_steps: Optional[int] = None,
               start_strength: Optional[float] = None, guidance: Optional[Guidance] = None,
               progress: Optional[Progress] = None, eta: Optional[float] = None) -> torch.Tensor:
        """Conditional DDIM sample at cond's shape. start_strength 1.0 starts from pure noise at T-1;
        s < 1 starts SDEdit-style at t = round(s (T-1)) from sqrt(abar) cond + sqrt(1-abar) noise.
        ``num_steps`` network evaluations are spread over [t_start, 0] (fewer if they would repeat)."""
        steps = num_steps or self.cfg.sample_steps
        s = self.cfg.start_strength if start_strength is None else float(start_strength)
        eta = getattr(self.cfg, "eta", 0.0) if eta is None else eta
        device = next(self.controlnet.parameters()).device
        cond = cond.to(device=device, dtype=torch.float32)
        noise = randn(cond.shape, generator, device, torch.float32)
        if s >= 1.0:
            t_start = self.schedule.num_train_timesteps - 1
            x = noise
        else:
            t_start = self.schedule.start_timestep(s)
            a = self.schedule.abar(t_start)
            x = math.sqrt(a) * cond + math.sqrt(1.0 - a) * noise
        ts = self.schedule.inference_timesteps(steps, t_start)
        return ddim_sample(lambda xt, t: self(xt, t, cond), x, self.schedule, ts, generator, eta, guidance, progress)
