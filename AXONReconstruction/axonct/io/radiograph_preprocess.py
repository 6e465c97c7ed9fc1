"""Bring a radiograph (or a DRR) to the square, normalised image the models see.

Real radiographs and DRRs go through the same :func:`normalize_view`, so the only remaining gap
between them is appearance: :func:`match_views` maps both onto the training views' grey-value
distribution (Stage I's "matched" input domain), which removes any global processing.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from axonct.presets import check_quantile_table

DEFAULT_PERCENTILES = (0.5, 99.5)


def normalize_view(img: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """Robust min-max to [0, 1]: percentiles rather than extremes, so burnt-in labels, collimator
    edges and hot pixels do not decide the contrast."""
    a = np.asarray(img, dtype=np.float64)
    lo, hi = _robust_range(a, percentiles)
    return _rescale(a, lo, hi)


def to_model_view(
    radiograph_or_array,
    size: int,
    *,
    crop: str = "pad",
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Square, resized and normalised float32 ``[size, size]`` image in [0, 1].

    ``crop="pad"`` keeps the whole field of view (padding with the background level, the low
    percentile); ``crop="center"`` cuts the long side.  The normalisation range is taken from the
    resized image content, never from the padding, so a DRR rendered at ``size`` and a large real
    radiograph are normalised alike.
    """
    if crop not in ("pad", "center"):
        raise ValueError(f"crop must be 'pad' or 'center', not {crop!r}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be positive, not {size}")
    a = _image(radiograph_or_array, np.float64)
    h, w = a.shape
    if crop == "center":
        s = min(h, w)
        r0, c0 = (h - s) // 2, (w - s) // 2
        a = _resize(a[r0:r0 + s, c0:c0 + s], (size, size))
        lo, hi = _robust_range(a, percentiles)
        return _rescale(a, lo, hi)

    # Resize the content first and pad afterwards, so the percentiles are those of the image at
    # model resolution (like a DRR rendered there) and the padding is exactly the background level.
    s = max(h, w)
    th, tw = max(1, round(h * size / s)), max(1, round(w * size / s))
    a = _resize(a, (th, tw))
    lo, hi = _robust_range(a, percentiles)
    square = np.full((size, size), lo, dtype=np.float64)
    r0, c0 = (size - th) // 2, (size - tw) // 2
    square[r0:r0 + th, c0:c0 + tw] = a
    return _rescale(square, lo, hi)


def frame_window(
    radiograph_or_array,
    center_rc: tuple[float, float],
    image_px_per_view_px: float,
    size: int,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> tuple[np.ndarray, float]:
    """The square window of ``size`` view pixels, each ``image_px_per_view_px`` image pixels wide,
    centred at ``center_rc`` (image pixels), resampled and normalised to [0, 1] float32.

    Where the window leaves the image it is filled with the image's background level (its low
    percentile, dark = no attenuation), and the normalisation range is taken from image content
    only. Returns the view and the fraction of it that the image covers.
    """
    a = _image(radiograph_or_array, np.float32)
    h, w = a.shape
    background = float(np.percentile(a[:: max(1, h // 512), :: max(1, w // 512)], percentiles[0]))
    view, covered = window_image(a, center_rc, image_px_per_view_px, size, background)
    covered = covered > 0.5
    if covered.sum() >= 16:
        lo, hi = _robust_range(view[covered], percentiles)
    else:
        lo, hi = _robust_range(view, percentiles)
    return _rescale(view, lo, hi), float(covered.mean())


def window_image(a: np.ndarray, center_rc: tuple[float, float], image_px_per_view_px: float, size: int,
                 fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The geometry of `frame_window` alone, without normalisation: the window resampled (anti-aliased)
    to ``size`` x ``size`` float64, ``fill`` outside the image, and the fraction of each view pixel the
    image covers. Also carries any image-aligned array (a lung mask) into a framed view."""
    size = int(size)
    k = float(image_px_per_view_px)
    if size < 1 or not np.isfinite(k) or k <= 0:
        raise ValueError(f"bad window: size {size}, {k} image pixels per view pixel")
    a = np.asarray(a, np.float32)
    h, w = a.shape
    n = max(1, int(round(size * k)))
    r0 = int(round(center_rc[0] - n / 2.0))
    c0 = int(round(center_rc[1] - n / 2.0))
    window = np.full((n, n), fill, dtype=np.float32)
    inside = np.zeros((n, n), dtype=np.float32)
    rs, re = max(r0, 0), min(r0 + n, h)
    cs, ce = max(c0, 0), min(c0 + n, w)
    if rs < re and cs < ce:
        window[rs - r0:re - r0, cs - c0:ce - c0] = a[rs:re, cs:ce]
        inside[rs - r0:re - r0, cs - c0:ce - c0] = 1.0
    return _resize(window.astype(np.float64), (size, size)), _resize(inside.astype(np.float64), (size, size))


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


def quantile_table(img: np.ndarray, n: int = 256) -> np.ndarray:
    """``n`` evenly spaced quantiles (0..100 %) of an image: a small stand-in for a reference
    histogram, e.g. one averaged over many DRRs."""
    if n < 2:
        raise ValueError("a quantile table needs at least 2 entries")
    a = np.asarray(img, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ValueError("image has no finite values")
    return np.quantile(a, np.linspace(0.0, 1.0, n)).astype(np.float32)


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


def match_histogram(img: np.ndarray, reference) -> np.ndarray:
    """Monotone CDF mapping of ``img`` onto ``reference``'s grey-value distribution.

    ``reference`` is a reference image (any shape with ndim >= 2) or a 1-D quantile table from
    :func:`quantile_table`.  Equal inputs map to equal outputs and order is kept, so anatomy is
    never rearranged; the output lies in the reference's range.
    """
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim == 1:
        check_quantile_table(ref)
        table = ref
    else:
        table = quantile_table(ref, 1024).astype(np.float64)
    probs = np.linspace(0.0, 1.0, table.size)

    a = np.asarray(img, dtype=np.float64)
    flat = a.ravel()
    # Mid-rank of each value (ties share one rank) -> its position in the source CDF.
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    mid_rank = (upper - counts / 2.0) / flat.size  # in (0, 1)
    if uniq.size == 1:
        mid_rank = np.array([0.5])
    else:
        # Stretch so the extremes of img land on the extremes of the reference.
        lo_r, hi_r = mid_rank[0], mid_rank[-1]
        mid_rank = (mid_rank - lo_r) / (hi_r - lo_r)
    mapped = np.interp(mid_rank, probs, table)
    return mapped[inverse].reshape(a.shape).astype(np.float32)


def _image(radiograph_or_array, dtype) -> np.ndarray:
    a = np.asarray(getattr(radiograph_or_array, "pixels", radiograph_or_array), dtype=dtype)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D [row, col] image, got shape {a.shape}")
    return a


def _robust_range(a: np.ndarray, percentiles) -> tuple[float, float]:
    p_lo, p_hi = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    lo, hi = np.percentile(a, [p_lo, p_hi])
    if hi <= lo:  # mostly flat image: fall back to the full range
        lo, hi = float(a.min()), float(a.max())
    return float(lo), float(hi)


def _rescale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Anti-aliased resize: plain bilinear would alias rib edges when shrinking 2000 px to 128."""
    if a.shape == tuple(shape):
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=tuple(shape), mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].numpy().astype(np.float64)
