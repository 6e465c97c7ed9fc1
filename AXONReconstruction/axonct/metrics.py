"""Image-quality metrics on normalised volumes (values in [0, 1]), and mask overlap.

Honest convention (used in training logs): PSNR over the whole 3D volume with peak 1, and 3D SSIM
with a Gaussian window (sigma 1.5, 11^3 support), both on [0, 1] data. Dice compares lung-field
masks (network, reconstruction, radiologist) wherever they are scored.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    mse = float(torch.mean((pred.double() - target.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_filter(x: torch.Tensor, win: int, sigma: float, dims: int) -> torch.Tensor:
    """Valid-region Gaussian filter of [B, 1, ...] as one 1D convolution per axis (separable)."""
    t = torch.arange(win, device=x.device, dtype=x.dtype) - (win - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    conv = F.conv3d if dims == 3 else F.conv2d
    for axis in range(dims):
        shape = [1, 1] + [1] * dims
        shape[2 + axis] = win
        x = conv(x, g.view(shape))
    return x


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, win: int = 11,
         sigma: float = 1.5) -> float:
    """Mean SSIM of [D,H,W] / [B,1,D,H,W] volumes (3D window) or [H,W] / [B,1,H,W] images (2D)."""
    dims = 3 if pred.dim() in (3, 5) else 2
    while pred.dim() < dims + 2:
        pred, target = pred[None], target[None]
    pred, target = pred.double(), target.double()
    win = min(win, *pred.shape[2:])
    filt = lambda v: _gaussian_filter(v, win, sigma, dims)  # noqa: E731
    mu_x, mu_y = filt(pred), filt(target)
    sxx = filt(pred * pred) - mu_x**2
    syy = filt(target * target) - mu_y**2
    sxy = filt(pred * target) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def dice(pred, target, eps: float = 1e-6) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    inter, total = float(np.logical_and(p, t).sum()), float(p.sum() + t.sum())
    return 1.0 if total == 0 else (2.0 * inter + eps) / (total + eps)
