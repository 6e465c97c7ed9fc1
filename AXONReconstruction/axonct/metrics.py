"""Image-quality metrics on normalised volumes (values in [0, 1]).

Honest convention (used in training logs): PSNR over the whole 3D volume with peak 1, and 3D SSIM
with a Gaussian window (sigma 1.5, 11^3 support), both on [0, 1] data.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    mse = float(torch.mean((pred.double() - target.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, dims: int, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    w = g
    for _ in range(dims - 1):
        w = w[..., None] * g
    return w[None, None]


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, win: int = 11,
         sigma: float = 1.5) -> float:
    """Mean SSIM of [D,H,W] / [B,1,D,H,W] volumes (3D window) or [H,W] / [B,1,H,W] images (2D)."""
    dims = 3 if pred.dim() in (3, 5) else 2
    while pred.dim() < dims + 2:
        pred, target = pred[None], target[None]
    pred, target = pred.double(), target.double()
    win = min(win, *pred.shape[2:])
    w = _gaussian_window(win, sigma, dims, pred.device, pred.dtype)
    conv = F.conv3d if dims == 3 else F.conv2d
    mu_x, mu_y = conv(pred, w), conv(target, w)
    sxx = conv(pred * pred, w) - mu_x**2
    syy = conv(target * target, w) - mu_y**2
    sxy = conv(pred * target, w) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean())
