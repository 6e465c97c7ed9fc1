"""The smooth map from an output chest back into the source: pose, organs, spine, rib cage, fat.

Why separate: this is the anatomy's variation itself (lungs, heart, domes, spine, ribs, habitus),
built from smooth, structure-placed terms and guarded against folds; the generator only samples the
source through the map this module returns.

Frames: millimetres relative to the cube's centre, points as (x, y, z) = LPS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from axonct.config import VolumeGrid
from axonct.physics.geometry import rotation_matrix

if TYPE_CHECKING:
    from axonct.data.synthetic_anatomy import AnatomyConfig

HEART_AXES = (1.0, 0.55, 0.4)  # heart growth per axis (x, y, z): cardiomegaly widens the heart most


def _gauss(p: np.ndarray, c, sigma) -> np.ndarray:
    return np.exp(-0.5 * (((p - np.asarray(c)) / np.asarray(sigma)) ** 2).sum(-1))


def _flat_bump(p: np.ndarray, c, radii, sigma: float = 1.15) -> np.ndarray:
    """Flat-topped weight exp(-rho^4 / (2 sigma^4)), rho = |(p - c) / radii|: ~1 inside the
    ellipsoid ``radii`` (0.79 on its surface), ~0 beyond 1.8 radii. A bump ``-a (p - c) w`` then
    scales a whole structure, boundary included, by ~1 / (1 - a) (a Gaussian mostly moves its core)."""
    rho2 = (((p - np.asarray(c)) / np.asarray(radii)) ** 2).sum(-1)
    return np.exp(-0.5 * rho2**2 / sigma**4)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def jacobian_determinant(points_mm: np.ndarray, spacing_mm: float) -> np.ndarray:
    """det(d q / d p) of a map sampled on a regular [z, y, x, 3] grid of step ``spacing_mm``."""
    q = np.asarray(points_mm, dtype=np.float64)
    # d/dx, d/dy, d/dz along array axes 2, 1, 0
    cols = [np.gradient(q, spacing_mm, axis=ax) for ax in (2, 1, 0)]
    jac = np.stack(cols, axis=-1)  # [..., component, derivative]
    return np.linalg.det(jac)


def breathing_displacement(q: np.ndarray, p: dict, lm: dict) -> np.ndarray | None:
    """Lung size (flat-topped bumps on each lung) and dome heights (Gaussian bumps); None if zero."""
    u = None
    for side in ("left", "right"):
        c, sd = lm[f"lung_{side}"]
        a = p["lungs"][f"scale_{side}"]
        if a:
            d = -a * (q - c) * _flat_bump(q, c, 2.0 * sd)[..., None]
            u = d if u is None else u + d
    for side in ("left", "right"):
        if p["diaphragm"][f"{side}_mm"]:
            u = np.zeros_like(q) if u is None else u
            u[..., 2] -= p["diaphragm"][f"{side}_mm"] * _gauss(q, lm[f"dome_{side}"], (60.0, 80.0, 50.0))
    return u


def cage_coordinates(q: np.ndarray, cg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised radius rho (1 on the rib cage's outer surface; a superellipse of exponent 3, a
    rounded box, in each axial plane) and the in-plane offsets from the cage's centre (mm)."""
    z = q[..., 2]
    dx = q[..., 0] - np.interp(z, cg["z"], cg["cx"])
    dy = q[..., 1] - np.interp(z, cg["z"], cg["cy"])
    rx, ry = np.interp(z, cg["z"], cg["rx"]), np.interp(z, cg["z"], cg["ry"])
    return (np.abs(dx / rx) ** 3 + np.abs(dy / ry) ** 3) ** (1.0 / 3.0), dx, dy


def fat_displacement(q: np.ndarray, g: float, cage: dict) -> np.ndarray:
    """Radial (x, y) displacement that makes the tissue outside the rib cage (1 + g) times thicker.

    In each axial plane the cage is rho = 1 (see ``cage_coordinates``). The source radius sampled
    is rho - g / (1 + g) * h(rho), h a smooth ramp that rises with slope 1 from rho = 1.05 to 1.55
    and is flat beyond (softplus corners, 4 % wide): the cage and what it holds do not move, the
    shell stretches by 1 + g, anything further out (arms, shoulders) is only shifted with it. The
    radial slope 1 - g / (1 + g) h' never folds (g > -1).
    """
    rho, dx, dy = cage_coordinates(q, cage)
    tau = 0.04
    h = tau * (_softplus((rho - 1.05) / tau) - _softplus((rho - 1.55) / tau))
    f = -(g / (1.0 + g)) * h / np.maximum(rho, 1e-6)
    return np.stack([f * dx, f * dy], axis=-1)


def _breathing_and_heart(q: np.ndarray, p: dict, lm: dict) -> np.ndarray:
    """Breathing terms with the heart carried as a block, then its own growth and shift."""
    c, sd = lm["heart"]
    u = breathing_displacement(q, p, lm)
    if u is not None:  # the heart rides on the lungs and domes as a whole: it moves, it keeps its size
        w = _flat_bump(q, c, 3.0 * sd, sigma=1.0)[..., None]
        u += w * (breathing_displacement(np.asarray(c, dtype=q.dtype)[None], p, lm)[0] - u)
    else:
        u = np.zeros_like(q)
    if p["heart"]["scale"]:
        w = _flat_bump(q, c, np.array([2.5, 2.2, 2.2]) * sd)[..., None]
        u -= p["heart"]["scale"] * np.asarray(HEART_AXES) * (q - c) * w
    if any(p["heart"]["shift_mm"]):
        u -= np.asarray(p["heart"]["shift_mm"]) * _gauss(q, c, (50.0, 50.0, 50.0))[..., None]
    return u


def _spine_bend(u: np.ndarray, q: np.ndarray, p: dict, lm: dict, cage: dict) -> None:
    """Lateral (C and S) and AP bends of the spine, added to ``u`` in place."""
    (sc, (z0, z1)) = lm["spine"]
    sp = p["spine"]
    if sp["lateral_c_mm"] or sp["lateral_s_mm"] or sp["ap_mm"]:
        length = max(z1 - z0, 100.0)
        t = (q[..., 2] - z0) / length
        # the spine moves fully, the rib cage with its lungs and mediastinum 60 % as one block
        # (flat inside the cage, so lungs never slide across ribs), the body wall fades out
        rho, _, _ = cage_coordinates(q, cage)
        ws = 0.4 * _gauss(q[..., :2], sc[:2], (40.0, 40.0)) + 0.6 * np.exp(-0.5 * (rho / 1.15) ** 4)
        u[..., 0] -= (sp["lateral_c_mm"] * np.sin(np.pi * t) + sp["lateral_s_mm"] * np.sin(2 * np.pi * t)) * ws
        u[..., 1] -= sp["ap_mm"] * np.sin(np.pi * t) * ws


def _thorax_and_habitus(u: np.ndarray, q: np.ndarray, p: dict, lm: dict, cage: dict) -> None:
    """Rib spacing and slope, chest shape and the fat shell, added to ``u`` in place."""
    sc = lm["spine"][0]
    c, sd = lm["thorax"]
    if p["ribs"]["spacing"] or p["ribs"]["angle"]:
        wt = _gauss(q, c, 1.5 * sd)
        u[..., 2] -= (p["ribs"]["spacing"] * (q[..., 2] - c[2]) + p["ribs"]["angle"] * (sc[1] - q[..., 1])) * wt
    hab = p.get("habitus", {})
    k = hab.get("chest_shape", 0.0)
    if k:  # AP x (1 + k), LR x (1 - k / 2) over the thorax's height, fading into neck and abdomen
        wz = np.exp(-0.5 * ((q[..., 2] - c[2]) / (1.6 * sd[2])) ** 2)
        u[..., 0] += 0.5 * k * (q[..., 0] - c[0]) * wz
        u[..., 1] -= k * (q[..., 1] - c[1]) * wz
    g = hab.get("fat_shell", 0.0)
    if g:
        u[..., :2] += fat_displacement(q, g, cage)


def local_displacement(q: np.ndarray, p: dict, lm: dict, cage: dict) -> np.ndarray:
    """Backward displacement u(q) in the source frame (sample the source at q + u(q)).

    A sum of structure-placed terms, each smooth on the scale of organs so nothing tears:
    flat-topped bumps ``-a (q - c) w`` make a lung or the heart about 1 / (1 - a) times larger,
    boundary included (neighbours are pushed aside); Gaussian bumps ``-d w`` move the heart and the
    diaphragm domes; the heart is carried by the breathing terms as a block (moved, not resized);
    the spine bends laterally and in AP, dragging the rib cage with its contents partly with it;
    the thorax is stretched craniocaudally, sheared (rib slope) and made deeper or flatter
    (chest shape); and everything outside the rib cage is stretched or squeezed radially (fat).
    Zero amplitudes add exactly nothing.
    """
    u = _breathing_and_heart(q, p, lm)
    _spine_bend(u, q, p, lm, cage)
    _thorax_and_habitus(u, q, p, lm, cage)
    return u


def _guarded_scale(pp: np.ndarray, u: np.ndarray, step: float, af: dict, anatomy: "AnatomyConfig") -> float:
    """The largest of 1, 0.8, 0.8^2, ... (12 tries) keeping det(I + grad u) within the anatomy's
    Jacobian bounds: the map stays invertible and never squeezes tissue too thin."""
    scale = 1.0
    det_affine = 1.0 / float(np.prod(af["scale"]))
    for _ in range(12):
        det = jacobian_determinant(pp + scale * u, step) / det_affine
        if det.min() >= anatomy.min_jacobian and det.max() <= anatomy.max_jacobian:
            break
        scale *= 0.8
    return scale


def sampling_map(params: dict, grid: VolumeGrid, anatomy: "AnatomyConfig", lm: dict, cage: dict,
                 points: int | None = None) -> tuple[np.ndarray, float]:
    """Source positions (mm) of a regular grid of output positions, [G, G, G, 3] (x, y, z).

    Output p -> undo the global pose/size (p' = R^T (p - t) / s) -> add the local field u(p').
    The local field is scaled down (recorded as ``deformation_scale``) if anywhere
    det(I + grad u) would fall below ``min_jacobian`` or exceed ``max_jacobian``: the map stays
    invertible and never squeezes tissue too thin.
    Returns the map and the grid step in mm.
    """
    s = grid.spacing_mm
    g = points or max(17, grid.size // 4 + 1)
    half = (grid.size - 1) / 2.0 * s
    axis = np.linspace(-half, half, g)
    step = float(axis[1] - axis[0])
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    pts = np.stack([xx, yy, zz], axis=-1)
    af = params["affine"]
    rot = rotation_matrix(torch.tensor(np.radians(af["rotation_deg"]), dtype=torch.float64)).numpy()
    pp = ((pts - np.asarray(af["shift_mm"])) @ rot) / np.asarray(af["scale"])  # R^T (p - t) / s
    u = local_displacement(pp, params, lm, cage)
    scale = float(params.get("deformation_scale", 1.0))
    if "deformation_scale" not in params:
        scale = _guarded_scale(pp, u, step, af, anatomy)
        params["deformation_scale"] = scale
    return pp + scale * u, step
