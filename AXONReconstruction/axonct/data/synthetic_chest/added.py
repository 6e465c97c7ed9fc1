"""Structures the source CT lacks, drawn analytically onto the output cube: breasts and arms down.

Why separate: they are not deformations of the source but shapes placed relative to its landmarks
and to the rendered body's outline, and they only fill air outside that outline, so they are
rendered after the warp, on the output cube (sizes in mm).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from axonct.config import VolumeGrid
from axonct.physics.geometry import rotation_matrix


def soft_inside(dist_out_mm: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a voxel whose centre is ``dist_out_mm`` outside a surface (- inside)."""
    return np.clip(0.5 - dist_out_mm / voxel_mm, 0.0, 1.0)


def to_output(params: dict, points) -> np.ndarray:
    """Source-frame points (mm, (x, y, z)) through the global pose/size only: p = R (s p') + t."""
    af = params["affine"]
    rot = rotation_matrix(torch.tensor(np.radians(af["rotation_deg"]), dtype=torch.float64)).numpy()
    return (np.asarray(points, dtype=np.float64) * np.asarray(af["scale"])) @ rot.T + np.asarray(af["shift_mm"])


def cube_box(grid: VolumeGrid, lo, hi) -> tuple[slice, np.ndarray] | None:
    """Index slice and voxel-centre coordinates (mm) of the cube voxels within [lo, hi] along one axis."""
    n, s = grid.size, grid.spacing_mm
    i0 = max(int(math.floor(lo / s + (n - 1) / 2.0)), 0)
    i1 = min(int(math.ceil(hi / s + (n - 1) / 2.0)), n - 1)
    if i1 < i0:
        return None
    return slice(i0, i1 + 1), (np.arange(i0, i1 + 1) - (n - 1) / 2.0) * s


def fill_outside(hu_box: np.ndarray, frac: np.ndarray, value) -> np.ndarray:
    """Blend ``value`` into a box by ``frac``; callers zero ``frac`` inside the body's outline (the
    first voxel above -200 HU seen from outside), so only air and the skin's partial-volume
    voxels are replaced, never the body's own tissue, lungs or bowel gas. Returns ``frac``."""
    hu_box += (frac * (value - hu_box)).astype(hu_box.dtype)
    return frac


def add_breasts(hu: np.ndarray, body: np.ndarray, params: dict, grid: VolumeGrid, lm: dict) -> None:
    """Two soft-tissue mounds on the anterior chest wall at about the heart's level.

    Each is a hemi-ellipsoid with its front flattened into a dome, y = base - 1.25 depth
    (1 - rho^2)^0.7 with rho the in-plane distance over ``radius_mm``, so it meets the chest wall
    at a gentle angle. Centred (LR) on its lung's centre line (times ``spread``), ``droop_mm``
    below the heart centre, its base plane a quarter of its depth inside the anterior body
    surface found in that column. It fills the air from its front back to the skin (no gap where
    the wall curves away), never anything inside the body's outline.
    """
    b = params["breasts"]
    s = grid.spacing_mm
    n = grid.size
    cz = to_output(params, lm["heart"][0])[2] - b["droop_mm"]
    mid = to_output(params, lm["thorax"][0])[0]
    r, depth = b["radius_mm"], b["depth_mm"]
    for side in ("left", "right"):
        cx = mid + b["spread"] * (to_output(params, lm[f"lung_{side}"][0])[0] - mid)
        zi, xi = (int(round(v / s + (n - 1) / 2.0)) for v in (cz, cx))
        if not (0 <= zi < n and 0 <= xi < n):
            continue
        ys = np.nonzero(hu[zi, :, xi] > -200.0)[0]
        if ys.size == 0:
            continue
        base = (ys[0] - (n - 1) / 2.0) * s + 0.25 * depth  # y of the mound's base plane (inside the body)
        height = 1.25 * depth  # depth in front of the surface plus the part inside
        bz, bx = cube_box(grid, cz - r, cz + r), cube_box(grid, cx - r, cx + r)
        by = cube_box(grid, base - height - s, base + depth)
        if bz is None or by is None or bx is None:
            continue
        zz, yy, xx = bz[1][:, None, None], by[1][None, :, None], bx[1][None, None, :]
        rho2 = ((xx - cx) / r) ** 2 + ((zz - cz) / r) ** 2
        front = base - height * np.clip(1.0 - rho2, 0.0, None) ** 0.7  # y of the front surface
        # from the front surface back to the skin (no air left under the base where the wall curves)
        columns = hu[bz[0], :, bx[0]] > -200.0  # [z, y, x] tissue (the skin's partial voxels are not)
        skin = np.where(columns.any(axis=1), np.argmax(columns, axis=1), n)  # first body voxel per column
        outside = np.arange(n)[by[0]][None, :, None] < skin[:, None, :]
        frac = soft_inside(front - yy, s) * ((rho2 < 1.0) & outside)
        box = (bz[0], by[0], bx[0])
        w = fill_outside(hu[box], frac, b["hu"])
        body[box] |= w > 0


def _arm_axis(hu: np.ndarray, params: dict, grid: VolumeGrid, lm: dict, sign: float, side: str):
    """(top, yc, base) of one arm: the top of its soft tissue (z), its axis' AP position and its
    lateral distance at the shoulder (mm, outwards positive), keeping ``gap_mm`` to the body's
    lateral edge along the upper arm; None if its AP band misses the cube."""
    a = params["arms"]
    n, s = grid.size, grid.spacing_mm
    r, length = a["radius_mm"], a["humerus_length_mm"]
    tan = math.tan(math.radians(a["abduction_deg"]))
    coords = (np.arange(n) - (n - 1) / 2.0) * s
    c = lm[f"lung_{side}"][0]
    top = to_output(params, (c[0], c[1], lm["lung_z"][1]))[2] + a["shoulder_mm"]
    yc = to_output(params, c)[1] + a["y_mm"]
    band = cube_box(grid, yc - r, yc + r)
    if band is None:
        return None
    # lateral body edge per slice within the arm's AP band, below the shoulder
    lateral = (hu[:, band[0], :] > -200.0).any(axis=1)  # [z, x]
    xs = sign * coords
    edge = np.where(lateral, xs[None, :], -np.inf).max(axis=1)  # [z] most lateral body (+outwards)
    below = (coords <= top - 0.35 * length) & (coords >= top - length)  # the upper arm
    need = edge + a["gap_mm"] + r - tan * (top - coords)
    need = need[below & np.isfinite(need)]
    base = float(need.max()) if need.size else float(sign * c[0] * params["affine"]["scale"][0] + r)
    return top, yc, base


def _lateral_of_body(hu: np.ndarray, bz, by, bx, sign: float, n: int) -> np.ndarray:
    """[z, y, x] of the box: voxels lateral to the body's outline in their row (on the arm's side)."""
    rows = hu[bz[0], by[0], :] > -200.0  # [z, y, x]: only lateral to the body's outline in each row
    if sign > 0:
        edge_x = np.where(rows.any(axis=2), n - 1 - np.argmax(rows[..., ::-1], axis=2), -1)
        return np.arange(n)[bx[0]][None, None, :] > edge_x[..., None]
    edge_x = np.where(rows.any(axis=2), np.argmax(rows, axis=2), n)
    return np.arange(n)[bx[0]][None, None, :] < edge_x[..., None]


def _humerus(a: dict, d_axis, zz, yy, xx, sign: float, base: float, top: float, yc: float, cortex: float,
             s: float):
    """(bone fraction, arm HU) of the box: a shaft capsule and a head of twice its radius, each
    with a cortex (the outer 40 % of the shaft's radius, the outer 20 % of the head's)."""
    rb, length = a["humerus_radius_mm"], a["humerus_length_mm"]
    head_r = 2.0 * rb
    zb = np.clip(zz, top - length, top - head_r)  # the shaft, as a capsule
    d_shaft = np.sqrt(d_axis**2 + (zz - zb) ** 2)
    d_head = np.sqrt((xx - sign * base) ** 2 + (yy - yc) ** 2 + (zz - (top - head_r)) ** 2)
    shaft, head = soft_inside(d_shaft - rb, s), soft_inside(d_head - head_r, s)
    bone = np.maximum(shaft, head)
    ring = np.where(head > shaft, soft_inside(0.8 * head_r - d_head, s), soft_inside(0.6 * rb - d_shaft, s))
    bone_hu = a["marrow_hu"] + (cortex - a["marrow_hu"]) * ring
    return bone, a["hu"] + bone * (bone_hu - a["hu"])


def add_arms(hu: np.ndarray, labels: np.ndarray, body: np.ndarray, params: dict, grid: VolumeGrid, lm: dict,
             humerus_ids: dict[str, int]) -> None:
    """Arms hanging beside the chest: soft-tissue cylinders with a humerus core.

    Each arm's axis starts ``shoulder_mm`` from its lung's apex level (a rounded top), leans
    ``abduction_deg`` outwards going down and keeps ``gap_mm`` of air (negative: pressed into the
    soft tissue) to the body along the upper arm below the shoulder, the body's lateral edge being
    measured in the rendered cube. The humerus (shaft with a cortex, a head of twice its radius)
    runs ``humerus_length_mm`` from the top; its voxels get the humerus labels. Only air lateral
    to the body's outline is filled, so at the shoulder and flank the arm merges with the body
    (never entering a lung); an arm beyond the cube's side is simply not there.
    """
    a = params["arms"]
    n, s = grid.size, grid.spacing_mm
    half = (n - 1) / 2.0 * s
    r = a["radius_mm"]
    tan = math.tan(math.radians(a["abduction_deg"]))
    bone_scale = params["hu"].get("bone_scale", 1.0)
    cortex = 200.0 + (a["cortex_hu"] - 200.0) * bone_scale
    for sign, side in ((1.0, "left"), (-1.0, "right")):
        axis = _arm_axis(hu, params, grid, lm, sign, side)
        if axis is None:
            continue
        top, yc, base = axis
        reach = base + tan * (top + half) + r + s  # the axis drifts out going down
        lo, hi = (base - r - s, reach) if sign > 0 else (-reach, -(base - r - s))
        bx = cube_box(grid, lo, hi)
        by = cube_box(grid, yc - r - s, yc + r + s)
        bz = cube_box(grid, -half - s, top + r + s)
        if bx is None or by is None or bz is None:
            continue
        zz, yy, xx = bz[1][:, None, None], by[1][None, :, None], bx[1][None, None, :]
        drop = np.maximum(top - zz, 0.0)
        ax = sign * (base + tan * drop)
        d_axis = np.sqrt((xx - ax) ** 2 + (yy - yc) ** 2)
        d_soft = np.sqrt(d_axis**2 + np.maximum(zz - top, 0.0) ** 2)  # hemispherical top
        soft = soft_inside(d_soft - r, s) * _lateral_of_body(hu, bz, by, bx, sign, n)
        if not soft.any():
            continue
        bone, value = _humerus(a, d_axis, zz, yy, xx, sign, base, top, yc, cortex, s)
        box = (bz[0], by[0], bx[0])
        w = fill_outside(hu[box], soft, value)
        body[box] |= w > 0
        if humerus_ids.get(side):
            lab = labels[box]
            lab[(w > 0.5) & (bone > 0.5)] = humerus_ids[side]
