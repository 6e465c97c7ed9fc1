"""Plain dataclass configs for the model grid and the projection geometry.

Conventions (used everywhere in the engine):
- Model volumes are cubes indexed ``[z, y, x]`` (SimpleITK/numpy order) on an identity-direction
  LPS grid: +x towards the patient's left, +y posterior, +z superior.
- The cube is centred on the isocenter; the model frame has its origin there, in millimetres.
- Intensities: HU clipped to ``[hu_min, hu_max]`` and mapped linearly to ``[0, 1]``
  (X2CT convention: HU+1024 in [0, 2500]).
- Radiographs (DRR or real) are ``[row, col]`` arrays, row 0 at the top (superior),
  bright = attenuating (lungs dark, bone bright).
  Frontal (PA): patient's right on the image left (radiological display), so col grows to patient-left.
  Lateral: anterior on the image left, posterior (spine) on the image right.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class VolumeGrid:
    """The cube the models work on."""

    size: int = 128
    fov_mm: float = 320.0
    hu_min: float = -1024.0
    hu_max: float = 1476.0

    @property
    def spacing_mm(self) -> float:
        return self.fov_mm / self.size


@dataclass
class ProjectionGeometry:
    """Cone-beam geometry shared by the frontal and the lateral view (X2CT defaults)."""

    source_to_isocenter_mm: float = 541.0
    source_to_detector_mm: float = 949.0
    detector_size_mm: float = 500.0
    detector_pixels: int = 128

    @property
    def pixel_spacing_mm(self) -> float:
        return self.detector_size_mm / self.detector_pixels

    @property
    def magnification(self) -> float:
        return self.source_to_detector_mm / self.source_to_isocenter_mm


VIEWS = ("frontal", "lateral")

CHEST_ROOM = ProjectionGeometry(source_to_isocenter_mm=1650.0, source_to_detector_mm=1800.0,
                                detector_size_mm=500.0, detector_pixels=128)
"""A chest-room PA/lateral geometry: 458 mm of the isocentre plane on a 500 mm detector."""


@dataclass
class DataConfig:
    """What the data path needs: the grid, the geometry and the CT preprocessing options."""

    grid: VolumeGrid = field(default_factory=VolumeGrid)
    geometry: ProjectionGeometry = field(default_factory=ProjectionGeometry)
    views: tuple[str, ...] = VIEWS
    remove_bed: bool = True

    def diffusion_grid(self, sr_factor: int = 2) -> VolumeGrid:
        """The coarser grid the diffusion stages work on (same field of view)."""
        if self.grid.size % sr_factor:
            raise ValueError(f"grid size {self.grid.size} is not divisible by the SR factor {sr_factor}")
        return dataclasses.replace(self.grid, size=self.grid.size // sr_factor)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        return cls(
            grid=VolumeGrid(**d.get("grid", {})),
            geometry=ProjectionGeometry(**d.get("geometry", {})),
            views=tuple(d.get("views", VIEWS)),
            remove_bed=bool(d.get("remove_bed", True)),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def data_preset(name: str) -> DataConfig:
    """Data presets matching the model presets; the cube is the FINAL (super-resolved) grid.

    Diffusion runs at half that size (``DataConfig.diffusion_grid``): tiny 32^3 -> 64^3 with 64^2
    views (tests), cpu 64^3 -> 128^3 with 128^2 views (CPU demo), paper 128^3 -> 256^3 with 128^2 views.

    ``cpu-wide`` holds a whole adult chest with its sides and back, as a PA film shows it: a 440 mm
    cube (the training patients' chests are 335-430 mm wide, 250-315 mm deep) and a chest-room
    geometry (source 1800 mm from the detector, isocentre 150 mm in front of it: magnification 1.09,
    against X2CT's 1.75 that shows a 500 mm detector only 285 mm of the patient). The other presets
    keep X2CT's 320 mm cube and geometry; the bundled weights are ``cpu``'s until weights trained on
    ``cpu-wide`` beat them (`scripts/retrain_all_patients.sh`).
    """
    presets = {
        "tiny": DataConfig(VolumeGrid(size=64, fov_mm=320.0), ProjectionGeometry(detector_pixels=64)),
        "cpu": DataConfig(VolumeGrid(size=128, fov_mm=320.0), ProjectionGeometry(detector_pixels=128)),
        "cpu-wide": DataConfig(VolumeGrid(size=128, fov_mm=440.0), CHEST_ROOM),
        "paper": DataConfig(VolumeGrid(size=256, fov_mm=320.0), ProjectionGeometry(detector_pixels=128)),
    }
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
    return presets[name]
