"""Stage II (FineDiff): an unconditional 3D CT diffusion prior plus a ControlNet that steers it with
Stage I's coarse volume.

The prior learns what chest CTs look like; the ControlNet (a trainable copy of the prior's encoder,
MAISI-style) injects the coarse reconstruction through zero-initialised residuals, so training the
ControlNet starts exactly at the prior and the prior itself is never changed.

The noise process and the DDIM loop live in `axonct.models.ddim`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from monai.networks.nets import ControlNet, DiffusionModelUNet

from axonct.models.ddim import Guidance, NoiseSchedule, Progress, ddim_sample, norm_groups, randn
from axonct.presets import PriorConfig

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

    def sampling_timesteps(self, num_steps: Optional[int] = None, start_strength: Optional[float] = None) -> list[int]:
        """The timesteps `sample` visits (one network call and one progress step each): ``num_steps``
        spread over [t_start, 0], fewer where a short SDEdit range would repeat one."""
        steps = num_steps or self.cfg.sample_steps
        s = self.cfg.start_strength if start_strength is None else float(start_strength)
        t_start = self.schedule.num_train_timesteps - 1 if s >= 1.0 else self.schedule.start_timestep(s)
        return self.schedule.inference_timesteps(steps, t_start)

    def sample(self, cond: torch.Tensor, generator: torch.Generator, num_steps: Optional[int] = None,
               start_strength: Optional[float] = None, guidance: Optional[Guidance] = None,
               progress: Optional[Progress] = None, eta: Optional[float] = None) -> torch.Tensor:
        """Conditional DDIM sample at cond's shape. start_strength 1.0 starts from pure noise at T-1;
        s < 1 starts SDEdit-style at t = round(s (T-1)) from sqrt(abar) cond + sqrt(1-abar) noise.
        ``num_steps`` network evaluations are spread over [t_start, 0] (fewer if they would repeat)."""
        s = self.cfg.start_strength if start_strength is None else float(start_strength)
        eta = getattr(self.cfg, "eta", 0.0) if eta is None else eta
        device = next(self.controlnet.parameters()).device
        cond = cond.to(device=device, dtype=torch.float32)
        noise = randn(cond.shape, generator, device, torch.float32)
        ts = self.sampling_timesteps(num_steps, s)
        if s >= 1.0:
            x = noise
        else:
            a = self.schedule.abar(ts[0])
            x = math.sqrt(a) * cond + math.sqrt(1.0 - a) * noise
        return ddim_sample(lambda xt, t: self(xt, t, cond), x, self.schedule, ts, generator, eta, guidance, progress)
