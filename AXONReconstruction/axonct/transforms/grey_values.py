"""Grey-value transforms that make the networks' input independent of a radiograph's processing.

Rank equalisation (:func:`equalize_views`) and matching onto the training views' quantiles
(:func:`match_views`, Stage I's "matched" input domain) are both monotone, so any global processing
(window, gamma, LUT, log or linear detector signal) drops out; the networks apply them to their own
input, in training and at inference alike.
"""

from __future__ import annotations

import numpy as np
import torch


def equalize_views(views: torch.Tensor) -> torch.Tensor:
    """Rank (histogram) equalisation of each [..., H, W] image to [0, 1], batched.

    A pixel becomes the fraction of its image's pixels that are darker (ties share their mid-rank).
    Any global monotone processing (window, gamma, LUT, log or linear detector signal) leaves the
    ranks unchanged, so a processed clinical radiograph and a raw DRR of the same anatomy map to
    the same image: the networks that read radiographs see this domain in training and at
    inference. Local processing (unsharp masking, local equalisation) is what remains, and the
    realism augmentation covers it.
    """
    lead, (h, w) = views.shape[:-2], views.shape[-2:]
    flat = views.reshape(-1, h * w).float()
    ordered = flat.sort(dim=1).values.contiguous()
    below = torch.searchsorted(ordered, flat.contiguous(), right=False)
    upto = torch.searchsorted(ordered, flat.contiguous(), right=True)
    ranks = (below + upto).float() / (2.0 * flat.shape[1])
    return ranks.reshape(*lead, h, w).to(views.dtype if views.is_floating_point() else torch.float32)


def equalize_view(img: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`equalize_views` for one image."""
    return equalize_views(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))).numpy()


def match_views(views: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Batched histogram matching: each [..., V, H, W] view's grey values onto its view's quantile
    table ([V, K], e.g. the training views' mean quantiles).

    The map is the rank (:func:`equalize_views`) followed by the table, so it is monotone and any
    global processing of the input (window, gamma, LUT, equalisation) drops out, and matching an
    already matched view changes nothing. Unlike plain equalisation the result keeps the training
    views' contrast, so networks trained on those views read it unchanged.
    """
    if tables.dim() != 2 or tables.shape[0] != views.shape[-3]:
        raise ValueError(f"tables must be [{views.shape[-3]}, K], got {tuple(tables.shape)}")
    ranks = equalize_views(views).float()
    t = tables.to(device=views.device, dtype=torch.float32)
    k = t.shape[1]
    pos = ranks * (k - 1)
    lo = pos.floor().long().clamp(0, k - 2)
    w = pos - lo.float()
    shape = (1,) * (views.dim() - 3) + (t.shape[0], 1, 1, k)
    table = t.view(shape).expand(*views.shape, k)
    below = table.gather(-1, lo.unsqueeze(-1)).squeeze(-1)
    above = table.gather(-1, (lo + 1).unsqueeze(-1)).squeeze(-1)
    out = below + (above - below) * w
    return out.to(views.dtype if views.is_floating_point() else torch.float32)
