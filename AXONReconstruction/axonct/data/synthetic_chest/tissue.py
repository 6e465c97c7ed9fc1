"""Densities, noise and the scanner's field of view of a rendered synthetic chest.

Why separate: after the warp, a case is made plausible as a scan, not as anatomy: tissue HU shifted
like inter-scanner calibration differs, correlated quantum noise inside the body, and the body cut by
a reconstruction circle or a slab limited to the lungs, as real scanners cut it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from axonct.config import VolumeGrid


def tissue_hu(hu: np.ndarray, labels: np.ndarray, h: dict, blood_ids: list[int]) -> np.ndarray:
    """Per-tissue HU shifts as a smooth, monotone remapping of HU plus a blood term from labels.

    Anchors: air (-1024) fixed, lung parenchyma (-850), the lung/soft boundary (-400) fixed, fat
    (-100), soft tissue (40), bone (>200, scaled). Monotone, so no tissue swaps order.
    """
    xs = [-1024.0, -850.0, -400.0, -100.0, 40.0, 200.0]
    ys = [0.0, h["lung"], 0.0, h["fat"], h["soft"], h["soft"]]
    delta = np.interp(hu, xs, ys).astype(np.float32)
    delta += np.where(hu > 200.0, (hu - 200.0) * (h["bone_scale"] - 1.0), 0.0).astype(np.float32)
    if h["blood"] and blood_ids:
        blood = torch.from_numpy(np.isin(labels, blood_ids).astype(np.float32))[None, None]
        blood = F.avg_pool3d(blood, 3, stride=1, padding=1, count_include_pad=False)[0, 0].numpy()
        soft = np.clip((hu + 100.0) / 100.0, 0, 1) * np.clip((300.0 - hu) / 100.0, 0, 1)
        delta += h["blood"] * blood * soft
    return hu + delta


def _pad_for(shape, r) -> tuple:
    """F.pad amounts (x, y, z order) for a 1D kernel along the axis marked -1 in ``shape``."""
    axis = shape.index(-1)  # 2 = z, 3 = y, 4 = x
    pads = [0] * 6
    pads[2 * (4 - axis)] = pads[2 * (4 - axis) + 1] = r
    return tuple(pads)


def correlated_noise(h: dict, n: int, sigma: float) -> np.ndarray:
    """Gaussian noise with standard deviation ``noise_hu``, correlated over ``sigma`` voxels."""
    rng = np.random.default_rng(h["noise_seed"])
    white = torch.from_numpy(rng.standard_normal((n, n, n), dtype=np.float32))[None, None]
    if sigma > 0:
        r = max(1, int(math.ceil(2 * sigma)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
        k = k / k.norm()  # unit energy: the smoothed noise keeps unit variance
        for shape in ((1, 1, -1, 1, 1), (1, 1, 1, -1, 1), (1, 1, 1, 1, -1)):
            white = F.conv3d(F.pad(white, _pad_for(shape, r), mode="replicate"), k.reshape(shape))
    return white[0, 0].numpy() * float(h["noise_hu"])


def _fov_circle(body: np.ndarray, fov: dict, coords: np.ndarray) -> np.ndarray:
    """[y, x] inside the reconstruction circle, centred on the body's extent (plus a jitter);
    records its radius and centre in ``fov``."""
    cols = np.nonzero(body.any(axis=(0, 1)))[0]
    rows = np.nonzero(body.any(axis=(0, 2)))[0]
    cx = (coords[cols[0]] + coords[cols[-1]]) / 2 + fov["center_offset_mm"][0]
    cy = (coords[rows[0]] + coords[rows[-1]]) / 2 + fov["center_offset_mm"][1]
    radius = fov["radius_fraction"] * (coords[cols[-1]] - coords[cols[0]]) / 2
    inside = (coords[None, :] - cx) ** 2 + (coords[:, None] - cy) ** 2 <= radius**2  # [y, x]
    fov["radius_mm"] = float(radius)
    fov["center_mm"] = [float(cx), float(cy)]
    return inside


def fov_keep(body: np.ndarray, labels: np.ndarray, p: dict, grid: VolumeGrid, lung_ids) -> np.ndarray:
    """Voxels that survive the scan's field of view (circle in-plane, slab in z); records the cut
    actually made in ``p["fov"]`` and ``p["z_extent"]``."""
    n, s = grid.size, grid.spacing_mm
    keep = np.ones(body.shape, dtype=bool)
    coords = (np.arange(n) - (n - 1) / 2.0) * s
    if p["fov"]["apply"] and body.any():
        keep &= _fov_circle(body, p["fov"], coords)[None]
    if p["z_extent"]["apply"]:
        zs = np.nonzero(np.isin(labels, lung_ids).any(axis=(1, 2)))[0]
        if zs.size:
            lo = coords[zs[0]] - p["z_extent"]["margin_bottom_mm"]
            hi = coords[zs[-1]] + p["z_extent"]["margin_top_mm"]
            keep &= ((coords >= lo) & (coords <= hi))[:, None, None]
            p["z_extent"]["range_mm"] = [float(lo), float(hi)]
    return keep
