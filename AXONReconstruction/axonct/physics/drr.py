"""Differentiable cone-beam DRR renderer (Joseph's method) in plain torch.

Each ray is sampled where it crosses the volume planes perpendicular to the view's dominant axis;
the sample is a bilinear interpolation inside that plane, weighted by the path length between
planes. That is the exact line integral of the volume's piecewise-bilinear interpolant, needs only
one 2D `grid_sample` over all planes (fast on CPU), and is differentiable in the volume, so the same
operator serves training data, reprojection checks and guidance.

Validated against DiffDRR 0.6.1 (see Testing/engine/test_drr.py and scripts/validate_drr_against_diffdrr.py).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from axonct.config import ProjectionGeometry, VolumeGrid
from axonct.physics.geometry import ViewGeometry, view_geometry

MU_WATER_PER_MM = 0.02  # linear attenuation of water at ~60 keV effective energy


def hu_to_attenuation(hu: torch.Tensor, bone_weight: float = 1.0) -> torch.Tensor:
    """Linear attenuation (1/mm) from HU with a two-slope density mapping (soft tissue / bone).

    Bone (HU > 350) can be emphasised with ``bone_weight`` to mimic a lower effective energy.
    """
    density = torch.clamp(torch.minimum(0.001029 * hu + 1.03, 0.0005886 * hu + 1.03), min=0.0)
    if bone_weight != 1.0:
        density = torch.where(hu > 350.0, density * bone_weight, density)
    return density * MU_WATER_PER_MM


def unit_to_attenuation(unit: torch.Tensor, grid: VolumeGrid, bone_weight: float = 1.0) -> torch.Tensor:
    """Attenuation from a model-normalised volume in [0, 1]."""
    hu = unit * (grid.hu_max - grid.hu_min) + grid.hu_min
    return hu_to_attenuation(hu, bone_weight)


@lru_cache(maxsize=32)
def _plane_sampling(view_key: tuple, grid_key: tuple):
    """Per-plane sampling grids for one view on one volume grid (cached: geometry is fixed)."""
    (angle, source, det_center, u, v, pixels, pitch) = view_key
    size, fov = grid_key
    view = ViewGeometry("", angle, np.array(source), np.array(det_center), np.array(u), np.array(v), pixels, pitch)
    pix = view.pixel_centers()  # (P, P, 3)
    src = view.source
    d = pix - src
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    axis = int(np.argmax(np.abs(view.detector_center - view.source)))
    spacing = fov / size
    half = fov / 2.0
    plane_pos = (np.arange(size) + 0.5) * spacing - half  # voxel-centre coordinates along the axis
    da = d[..., axis]
    t = (plane_pos[:, None, None] - src[axis]) / da[None]  # (N, P, P)
    pts = src[None, None, None, :] + t[..., None] * d[None]  # (N, P, P, 3)
    others = [a for a in (0, 1, 2) if a != axis]
    # grid_sample's 2D grid is (x -> last dim, y -> second to last); the plane image is laid out
    # as (dim of others[1], dim of others[0]) where axes are x=0, y=1, z=2 and array order is z,y,x.
    gx = pts[..., others[0]] / half
    gy = pts[..., others[1]] / half
    sample_grid = np.stack([gx, gy], axis=-1).astype(np.float32)
    weight = (spacing / np.abs(da)).astype(np.float32)  # (P, P) path length per plane
    return axis, sample_grid, weight


def _view_key(view: ViewGeometry) -> tuple:
    return (
        float(view.angle_deg),
        tuple(map(float, view.source)),
        tuple(map(float, view.detector_center)),
        tuple(map(float, view.u)),
        tuple(map(float, view.v)),
        int(view.pixels),
        float(view.pixel_spacing_mm),
    )


def _planes(volume: torch.Tensor, axis: int) -> torch.Tensor:
    """(B, Z, Y, X) -> (N_planes, B, H, W) with W along the lower remaining axis."""
    if axis == 0:  # planes along x: image (z, y)
        return volume.permute(3, 0, 1, 2)
    if axis == 1:  # planes along y: image (z, x)
        return volume.permute(2, 0, 1, 3)
    return volume.permute(1, 0, 2, 3)  # planes along z: image (y, x)


def project(volume: torch.Tensor, grid: VolumeGrid, view: ViewGeometry, chunk_planes: int = 64) -> torch.Tensor:
    """Line integrals of an attenuation volume (1/mm) through one view.

    ``volume``: (Z, Y, X) or (B, Z, Y, X) on the cube `grid`. Returns (P, P) or (B, P, P).
    """
    squeeze = volume.dim() == 3
    vol = volume[None] if squeeze else volume
    if vol.dim() != 4 or tuple(vol.shape[1:]) != (grid.size,) * 3:
        raise ValueError(f"volume shape {tuple(volume.shape)} does not match the {grid.size}^3 grid")
    axis, sample_grid, weight = _plane_sampling(_view_key(view), (grid.size, float(grid.fov_mm)))
    planes = _planes(vol, axis)
    g = torch.from_numpy(sample_grid).to(device=vol.device, dtype=vol.dtype)
    out = None
    for start in range(0, grid.size, chunk_planes):
        stop = min(grid.size, start + chunk_planes)
        s = F.grid_sample(planes[start:stop], g[start:stop], mode="bilinear", padding_mode="zeros", align_corners=False)
        part = s.sum(dim=0)
        out = part if out is None else out + part
    out = out * torch.from_numpy(weight).to(device=vol.device, dtype=vol.dtype)
    return out[0] if squeeze else out


def render_views(
    volume: torch.Tensor,
    grid: VolumeGrid,
    geometry: ProjectionGeometry,
    views: Sequence[str | ViewGeometry] = ("frontal", "lateral"),
) -> torch.Tensor:
    """Stacked line-integral images, (V, P, P) or (B, V, P, P)."""
    geoms = [view_geometry(v, geometry) if isinstance(v, str) else v for v in views]
    imgs = [project(volume, grid, g) for g in geoms]
    return torch.stack(imgs, dim=-3)


def drr_from_unit_volume(
    unit: torch.Tensor,
    grid: VolumeGrid,
    geometry: ProjectionGeometry,
    views: Sequence[str | ViewGeometry] = ("frontal", "lateral"),
    bone_weight: float = 1.0,
) -> torch.Tensor:
    """Clean DRRs (line integrals, no exponential) of a model-normalised CT cube."""
    return render_views(unit_to_attenuation(unit, grid, bone_weight), grid, geometry, views)
