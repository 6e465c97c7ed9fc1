"""The square model view of a radiograph (or a DRR): pad or crop to a square, or cut a window at a
centre and scale, resample anti-aliased, and normalise by the image content's percentiles.

Pure array transforms. Choosing *where* the window goes (from the lung fields or the pixel spacing)
is :mod:`axonct.pipeline.framing`'s job, which uses the lung-field network.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from axonct.transforms.normalize import DEFAULT_PERCENTILES, percentile_range, rescale


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
    a = as_image(radiograph_or_array, np.float64)
    h, w = a.shape
    if crop == "center":
        s = min(h, w)
        r0, c0 = (h - s) // 2, (w - s) // 2
        a = resize(a[r0:r0 + s, c0:c0 + s], (size, size))
        lo, hi = percentile_range(a, percentiles)
        return rescale(a, lo, hi)

    # Resize the content first and pad afterwards, so the percentiles are those of the image at
    # model resolution (like a DRR rendered there) and the padding is exactly the background level.
    s = max(h, w)
    th, tw = max(1, round(h * size / s)), max(1, round(w * size / s))
    a = resize(a, (th, tw))
    lo, hi = percentile_range(a, percentiles)
    square = np.full((size, size), lo, dtype=np.float64)
    r0, c0 = (size - th) // 2, (size - tw) // 2
    square[r0:r0 + th, c0:c0 + tw] = a
    return rescale(square, lo, hi)


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
    a = as_image(radiograph_or_array, np.float32)
    h, w = a.shape
    background = float(np.percentile(a[:: max(1, h // 512), :: max(1, w // 512)], percentiles[0]))
    view, covered = window_image(a, center_rc, image_px_per_view_px, size, background)
    covered = covered > 0.5
    if covered.sum() >= 16:
        lo, hi = percentile_range(view[covered], percentiles)
    else:
        lo, hi = percentile_range(view, percentiles)
    return rescale(view, lo, hi), float(covered.mean())


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
    return resize(window.astype(np.float64), (size, size)), resize(inside.astype(np.float64), (size, size))


def as_image(radiograph_or_array, dtype) -> np.ndarray:
    """A :class:`~axonct.io.radiograph.Radiograph`'s pixels or a plain array, as a 2-D array: the
    transforms take either without importing the reader."""
    a = np.asarray(getattr(radiograph_or_array, "pixels", radiograph_or_array), dtype=dtype)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D [row, col] image, got shape {a.shape}")
    return a


def resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Anti-aliased resize: plain bilinear would alias rib edges when shrinking 2000 px to 128."""
    if a.shape == tuple(shape):
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=tuple(shape), mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].numpy().astype(np.float64)
