"""Turn clean DRR line integrals into images that look like real, processed radiographs.

Clean DRRs are the line integral of attenuation; real detectors see exp(-integral) photons plus
scatter and quantum noise, through a blurry detector, followed by the vendor's log, contrast
processing (gamma/LUT, unsharp masking) and collimation. Each effect is switchable and every random
draw comes from one seeded generator, so a training sample is reproducible from its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

Range = tuple[float, float]


@dataclass
class RealismConfig:
    """Ranges are sampled uniformly per image; set an effect's switch to False to disable it."""

    beer_lambert: bool = True  # exponential attenuation, then detector log
    scatter: bool = True
    scatter_to_primary: Range = (0.05, 0.4)
    scatter_sigma_frac: Range = (0.08, 0.2)  # kernel width as a fraction of the image side
    noise: bool = True
    photons_per_pixel: Range = (3e3, 3e4)  # unattenuated flux; ~1e4 is typical
    detector_blur: bool = True
    blur_sigma_px: Range = (0.3, 1.2)
    unsharp: bool = True
    unsharp_amount: Range = (0.0, 1.0)
    unsharp_sigma_frac: Range = (0.02, 0.06)
    gamma: bool = True
    gamma_range: Range = (0.6, 1.6)
    invert: bool = False  # simulate a MONOCHROME1 image read without inversion
    collimation: bool = True
    collimation_probability: float = 0.3
    collimation_max_frac: float = 0.12
    extra: dict = field(default_factory=dict)

    @classmethod
    def off(cls) -> "RealismConfig":
        return cls(
            beer_lambert=False, scatter=False, noise=False, detector_blur=False,
            unsharp=False, gamma=False, invert=False, collimation=False,
        )

    def only(self, **switches: bool) -> "RealismConfig":
        return replace(RealismConfig.off(), **switches)


def _uniform(r: Range, gen: torch.Generator) -> float:
    lo, hi = r
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflect padding."""
    if sigma <= 0:
        return img
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, img.shape[-1] - 1, img.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    out = F.pad(img, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, k.view(1, 1, -1, 1))


def robust_unit(img: torch.Tensor, lo_q: float = 0.005, hi_q: float = 0.995) -> torch.Tensor:
    """Batched [B, C, H, W] twin of `radiograph_preprocess.normalize_view` (same 0.5/99.5 percentiles),
    so training views, DRR checks and real radiographs share one normalisation."""
    flat = img.flatten(1)
    lo = torch.quantile(flat, lo_q, dim=1).view(-1, 1, 1, 1)
    hi = torch.quantile(flat, hi_q, dim=1).view(-1, 1, 1, 1)
    return ((img - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def simulate_radiograph(line_integral: torch.Tensor, cfg: RealismConfig, seed: int | None = None) -> torch.Tensor:
    """Realistic image in [0, 1] (bright = attenuating) from line integrals (H, W) or (B, H, W)."""
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    squeeze = line_integral.dim() == 2
    x = (line_integral[None] if squeeze else line_integral).unsqueeze(1).float()
    side = x.shape[-1]
    if cfg.beer_lambert:
        intensity = torch.exp(-x)
        if cfg.scatter:
            spr = _uniform(cfg.scatter_to_primary, gen)
            sig = _uniform(cfg.scatter_sigma_frac, gen) * side
            # scatter is a broad blur of the primary, scaled so that the scatter-to-primary ratio
            # holds under the body (where it matters most)
            intensity = intensity + spr * gaussian_blur(intensity, sig)
        if cfg.noise:
            photons = _uniform(cfg.photons_per_pixel, gen)
            counts = torch.poisson((intensity * photons).cpu(), generator=gen).to(intensity.device)
            intensity = counts.clamp_min(0.5) / photons
        if cfg.detector_blur:
            intensity = gaussian_blur(intensity, _uniform(cfg.blur_sigma_px, gen))
        x = -torch.log(intensity.clamp_min(1e-6))
    else:
        if cfg.noise:
            x = x + torch.randn(x.shape, generator=gen).to(x.device) * 0.01 * x.amax()
        if cfg.detector_blur:
            x = gaussian_blur(x, _uniform(cfg.blur_sigma_px, gen))
    x = robust_unit(x)
    if cfg.unsharp:
        amount = _uniform(cfg.unsharp_amount, gen)
        sig = _uniform(cfg.unsharp_sigma_frac, gen) * side
        x = (x + amount * (x - gaussian_blur(x, sig))).clamp(0, 1)
    if cfg.gamma:
        x = x.clamp_min(0) ** _uniform(cfg.gamma_range, gen)
    if cfg.collimation and float(torch.rand((), generator=gen)) < cfg.collimation_probability:
        h, w = x.shape[-2:]
        m = cfg.collimation_max_frac
        top, bottom, left, right = (int(_uniform((0.0, m), gen) * s) for s in (h, h, w, w))
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[..., :top, :] = True
        mask[..., h - bottom:, :] = True
        mask[..., :, :left] = True
        mask[..., :, w - right:] = True
        x = torch.where(mask, torch.ones_like(x), x)  # unexposed collimated border reads as white
    if cfg.invert:
        x = 1.0 - x
    x = x[:, 0]
    return x[0] if squeeze else x
