"""Cone-beam view geometry in the model frame (millimetres, LPS axes, origin at the isocenter).

A view is a point source and a flat detector. Views are parameterised by a gantry angle about the
superior (z) axis: 0 deg is the PA frontal view (source posterior, detector anterior), 90 deg is the
left-lateral view (source at the patient's right, detector at the left). The detector's column axis
is chosen so images come out in the display conventions of `axonct.config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from axonct.config import ProjectionGeometry

VIEW_ANGLES_DEG = {"frontal": 0.0, "lateral": 90.0}


@dataclass(frozen=True)
class ViewGeometry:
    name: str
    angle_deg: float
    source: np.ndarray  # (3,) mm
    detector_center: np.ndarray  # (3,) mm
    u: np.ndarray  # unit vector along increasing column
    v: np.ndarray  # unit vector along increasing row (downwards = inferior)
    pixels: int
    pixel_spacing_mm: float

    def pixel_centers(self) -> np.ndarray:
        """(rows, cols, 3) physical positions of the detector pixel centres."""
        c = (np.arange(self.pixels) - (self.pixels - 1) / 2.0) * self.pixel_spacing_mm
        rows = c[:, None, None] * self.v[None, None, :]
        cols = c[None, :, None] * self.u[None, None, :]
        return self.detector_center[None, None, :] + rows + cols

    def project(self, points: np.ndarray) -> np.ndarray:
        """Detector (row, col) coordinates (fractional pixels) of 3D points (..., 3)."""
        points = np.asarray(points, dtype=np.float64)
        normal = self.detector_center - self.source
        dist = np.linalg.norm(normal)
        normal = normal / dist
        rel = points - self.source
        depth = rel @ normal
        hit = self.source + rel * (dist / depth)[..., None]
        off = hit - self.detector_center
        half = (self.pixels - 1) / 2.0
        row = off @ self.v / self.pixel_spacing_mm + half
        col = off @ self.u / self.pixel_spacing_mm + half
        return np.stack([row, col], axis=-1)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "angle_deg": self.angle_deg,
            "source_mm": self.source.tolist(),
            "detector_center_mm": self.detector_center.tolist(),
            "column_direction": self.u.tolist(),
            "row_direction": self.v.tolist(),
            "pixels": self.pixels,
            "pixel_spacing_mm": self.pixel_spacing_mm,
            "frame": "model frame: millimetres, LPS axes, origin at the volume centre (isocenter)",
        }


def view_at_angle(angle_deg: float, geometry: ProjectionGeometry, name: str | None = None) -> ViewGeometry:
    a = math.radians(angle_deg)
    source_dir = np.array([-math.sin(a), math.cos(a), 0.0])
    u = np.array([math.cos(a), math.sin(a), 0.0])
    v = np.array([0.0, 0.0, -1.0])
    source = source_dir * geometry.source_to_isocenter_mm
    detector_center = -source_dir * (geometry.source_to_detector_mm - geometry.source_to_isocenter_mm)
    return ViewGeometry(
        name=name or f"angle{angle_deg:g}",
        angle_deg=float(angle_deg),
        source=source,
        detector_center=detector_center,
        u=u,
        v=v,
        pixels=geometry.detector_pixels,
        pixel_spacing_mm=geometry.pixel_spacing_mm,
    )


def view_geometry(view: str, geometry: ProjectionGeometry) -> ViewGeometry:
    if view not in VIEW_ANGLES_DEG:
        raise ValueError(f"unknown view {view!r}; expected one of {sorted(VIEW_ANGLES_DEG)}")
    return view_at_angle(VIEW_ANGLES_DEG[view], geometry, name=view)


def rotation_matrix(angles_rad: torch.Tensor) -> torch.Tensor:
    """R = Rz Ry Rx for rotations (radians) about the x, y and z axes, in the angles' dtype and
    differentiable in them: the one pose convention of augmentation, synthetic anatomy and the
    template fit."""
    cx, cy, cz = torch.cos(angles_rad)
    sx, sy, sz = torch.sin(angles_rad)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx]).view(3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy]).view(3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one]).view(3, 3)
    return rz @ ry @ rx
