"""Percentile normalisation to [0, 1]: one rule for a single numpy view and for torch batches.

Percentiles rather than extremes, so burnt-in labels, collimator edges and hot pixels do not decide
the contrast. The rule, shared by :func:`normalize_view` (numpy, one image) and :func:`robust_unit`
(torch, [B, C, H, W], used by training, the realism chain and the DRR checks):

- the range is the low and high percentile (0.5 % and 99.5 % by default);
- a mostly flat image, whose two percentiles coincide, falls back to its full range (min, max), so
  a few bright pixels on a flat background stay graded instead of becoming a binary mask;
- a constant image becomes all zeros (never NaN);
- no absolute floor on the range: the result does not depend on the image's units (a DRR in mm of
  water and the same DRR in metres normalise alike).
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_PERCENTILES = (0.5, 99.5)


def normalize_view(img: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """One image to float32 [0, 1] by its percentile range (the module's rule)."""
    a = np.asarray(img, dtype=np.float64)
    lo, hi = percentile_range(a, percentiles)
    return rescale(a, lo, hi)


def percentile_range(a: np.ndarray, percentiles) -> tuple[float, float]:
    """(low, high) percentile of ``a``; its (min, max) when those coincide (a mostly flat image)."""
    p_lo, p_hi = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    lo, hi = np.percentile(a, [p_lo, p_hi])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    return float(lo), float(hi)


def rescale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``a`` mapped so that lo -> 0 and hi -> 1, clipped, float32; all zeros for an empty range."""
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def robust_unit(img: torch.Tensor, lo_q: float = 0.005, hi_q: float = 0.995) -> torch.Tensor:
    """Batched [B, C, H, W] :func:`normalize_view` (each [C, H, W] sample by its own range, same rule),
    so training views, DRR checks and real radiographs share one normalisation."""
    flat = img.flatten(1)
    q = torch.quantile(flat, torch.tensor([lo_q, hi_q], dtype=flat.dtype, device=flat.device), dim=1)
    lo, hi = q[0], q[1]
    low, high = flat.aminmax(dim=1)
    empty = hi <= lo  # decided on the device: no host sync in the training loop
    lo, hi = torch.where(empty, low, lo), torch.where(empty, high, hi)
    span = hi - lo
    lo = lo.view(-1, *(1,) * (img.dim() - 1))
    span = torch.where(span > 0, span, torch.ones_like(span)).view_as(lo)  # constant: (img - lo) is 0
    return ((img - lo) / span).clamp(0, 1)
