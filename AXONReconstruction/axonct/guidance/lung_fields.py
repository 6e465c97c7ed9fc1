"""Lung-field agreement: where a radiograph shows lung, the reconstruction must have air behind it,
and nowhere else.

The lung fields of each input view come from the lung-field network (`models.lung_fields`). Two uses:

* a check: the reconstruction's enclosed air, projected like the lung labels that trained the
  network (`project_lung_fields`), is compared with the input's lung fields (Dice per view), and the
  report warns when they disagree;
* a guidance term applied after the consistency correction at each guided step: along rays inside
  a lung field, at least ``min_air_fraction`` of the body path must be air; along rays outside the
  (dilated) fields, at most ``max_air_fraction``. Air is a soft indicator of the voxel value, so
  the correction mostly moves voxels that are nearly air (lung-like tissue) and leaves bone and
  solid tissue alone. Fractions of the body path, not millimetres, keep it free of units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

LOW_DICE = 0.6
"""Below this the report and the panel warn: the reconstruction's lungs are not where the image's are."""


@dataclass
class LungGuidanceConfig:
    strength: float = 1.0
    air_hu: float = -400.0  # the soft air indicator's midpoint
    softness_hu: float = 150.0  # its width
    min_air_fraction: float = 0.15  # of the body path, along rays well inside a lung field (behind the
    # heart and the domes the lung is thin: ~10 mm of 250 is the least a field pixel shows)
    max_air_fraction: float = 0.03  # along rays well outside
    margin_px: int = 2  # erosion/dilation of the fields (consistency-resolution pixels): edges are unsure
    step_hu: float = 120.0  # the largest change of one voxel per guided step, at strength 1
    iterations: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


class LungFieldGuidance:
    """The lung-field constraint on unit volumes (B, S, S, S) through a consistency projector."""

    def __init__(self, field_probs: np.ndarray, projector, grid, cfg: LungGuidanceConfig | None = None):
        """``field_probs``: (V, p, p) lung-field probabilities of the present views at the projector's
        detector size (area-averaged to it)."""
        self.cfg = cfg or LungGuidanceConfig()
        self.projector = projector
        self.range = float(grid.hu_max - grid.hu_min)
        self.threshold = (self.cfg.air_hu - grid.hu_min) / self.range
        self.tau = self.cfg.softness_hu / self.range
        fields = torch.as_tensor(np.asarray(field_probs, np.float32)) > 0.5
        m = self.cfg.margin_px
        f = fields.float()[None]
        eroded = 1.0 - F.max_pool2d(1.0 - f, 2 * m + 1, stride=1, padding=m) if m else f
        dilated = F.max_pool2d(f, 2 * m + 1, stride=1, padding=m) if m else f
        self.inside = eroded[0]
        self.outside = 1.0 - dilated[0]

    def to(self, device) -> "LungFieldGuidance":
        self.inside, self.outside = self.inside.to(device), self.outside.to(device)
        return self

    def _air(self, u: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((self.threshold - u) / self.tau)

    def air_fractions(self, u: torch.Tensor, interior: torch.Tensor) -> torch.Tensor:
        """Air share of the body path per ray, (B, V, p, p)."""
        body = self.projector.forward(interior)
        return self.projector.forward(self._air(u) * interior) / body.clamp_min(1e-6)

    @staticmethod
    def interior(support: torch.Tensor) -> torch.Tensor:
        """The body less its outer voxel layer: air just outside the skin is not lung."""
        return -F.max_pool3d(-support[:, None], 3, stride=1, padding=1)[:, 0]

    def violation(self, u: torch.Tensor, support: torch.Tensor) -> float:
        """Mean shortfall/excess of the air fraction over the constrained rays (0 = satisfied)."""
        self.to(u.device)
        frac = self.air_fractions(u, self.interior(support))
        need = F.relu(self.cfg.min_air_fraction - frac) * self.inside
        extra = F.relu(frac - self.cfg.max_air_fraction) * self.outside
        n = (self.inside.sum() + self.outside.sum()).clamp_min(1.0)
        return float((need.sum() + extra.sum()) / (n * u.shape[0]))

    def correct(self, u: torch.Tensor, support: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """A few normalised gradient steps on the squared violation, inside the body's interior."""
        step = self.cfg.step_hu / self.range * self.cfg.strength * float(weight)
        if step <= 0:
            return u
        self.to(u.device)
        interior = self.interior(support)
        body = self.projector.forward(interior).clamp_min(1e-6)
        for _ in range(self.cfg.iterations):
            a = self._air(u)
            frac = self.projector.forward(a * interior) / body
            d_frac = (-F.relu(self.cfg.min_air_fraction - frac) * self.inside
                      + F.relu(frac - self.cfg.max_air_fraction) * self.outside)
            if float(d_frac.abs().max()) <= 0:
                break
            g_air = self.projector.adjoint(d_frac / body) * interior
            g = g_air * (-a * (1 - a) / self.tau)
            peak = g.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            u = (u - step * g / peak).clamp(0.0, 1.0)
        return u


def projected_lung_air(hu: np.ndarray, data) -> np.ndarray:
    """A reconstruction's enclosed lung air (`anatomy.body_and_air`) projected onto its views the way
    the lung labels that trained the network were: bool [V, P, P]. ``hu``: the volume on ``data.grid``."""
    from axonct.anatomy import body_and_air
    from axonct.models.lung_fields import project_lung_fields

    _, air = body_and_air(np.asarray(hu, np.float32))
    return project_lung_fields(air, data)


def lung_field_agreement(hu: np.ndarray, data, field_probs: np.ndarray, view_mask) -> dict:
    """Dice per present view between the input's lung fields and the reconstruction's enclosed air
    projected the way the lung labels that trained the network were. ``hu``: the volume on
    ``data.grid``; ``field_probs``: (2, P, P)."""
    from axonct.config import VIEWS
    from axonct.metrics import dice

    projected = projected_lung_air(hu, data)
    out = {}
    for i, name in enumerate(VIEWS):
        if float(view_mask[i]) > 0:
            out[name] = round(dice(projected[i], np.asarray(field_probs[i]) > 0.5), 4)
    low = [k for k, v in out.items() if v < LOW_DICE]
    return {"dice": out, "low": low, "threshold": LOW_DICE}
