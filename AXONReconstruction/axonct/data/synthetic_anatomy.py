"""Seeded synthetic chests made from one real CT and its label map: the generator of `axon synth`.

Why: the demo weights learn from a single real chest CT. Warping that CT with smooth, anatomically
placed deformations (body habitus from child-like to large adult, breathing state, heart size,
scoliosis, ribs), adding cheap analytic structures the source lacks (breasts, arms down beside the
chest), jittering tissue densities and cutting the field of view like real scanners do gives many
varied but plausible training chests, and held-out synthetic test sets whose seeds provably differ
from the training ones.

Every case is a pure function of (source CT, label map, DataConfig, AnatomyConfig, case seed):
all randomness comes from ``numpy.random.default_rng(case_seed)``.

Frames: everything is in millimetres relative to the model cube's centre, axes (x, y, z) = LPS
(+x patient-left, +y posterior, +z superior); cubes are indexed [z, y, x] like the rest of AXON.
Note: every synthetic chest still derives from ONE patient, so synthetic test sets measure
robustness to anatomical variation, not generalisation to new patients.

Writing sets of chests as a cache is `synthetic_cache`; the gallery is `tools.gallery`; the command
is `app.synth_command`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from axonct.config import DataConfig
from axonct.io.ct_preprocess import ModelVolume, hu_to_unit
from axonct.data.synthetic_chest import added, tissue
from axonct.data.synthetic_chest.deformation import HEART_AXES, jacobian_determinant, sampling_map  # noqa: F401
from axonct.data.synthetic_chest.landmarks import anatomy_landmarks, cage_profile
from axonct.data.synthetic_chest.params import draw_params, identity_params
from axonct.data.synthetic_chest.source import (  # noqa: F401  (the label groups are part of this module's API)
    BLOOD_GROUP,
    HEART,
    HUMERUS,
    LUNG_LEFT,
    LUNG_RIGHT,
    REQUIRED,
    RIB_GROUP,
    SPINE_GROUP,
    label_ids,
    load_source,
    read_structures,
)

GENERATOR_VERSION = 2  # 2: habitus, breathing, cardiomegaly, scoliosis, breasts, arms down
SEED_SCHEME = "case_seed = SeedSequence([0x5EED, set_seed, index]).generate_state(2, uint32) -> 63-bit int"
"""How a case's generator seed is derived: distinct (set seed, index) pairs give independent,
practically never-colliding seeds; caches record them so overlap can be checked exactly."""
_SEED_DOMAIN = 0x5EED


@dataclass
class AnatomyConfig:
    """Ranges of the random anatomy; every value is drawn uniformly inside its range.

    The defaults span child-like to large adult chests while keeping each case plausible: rotations
    of a few degrees (patient positioning), a body size of 0.72-1.12 with independent proportions
    and a barrel-to-flat chest shape, subcutaneous fat from thin to obese, a breathing state from
    full expiration to deep inspiration (lungs, domes, ribs and lung density together), hearts from
    small to cardiomegaly (cardiothoracic ratio up to ~0.6), mild spine bends plus occasional
    scoliosis up to ~25 mm, breasts and arms down beside the chest with a probability, and tissue
    HU shifts of the order of inter-scanner calibration differences. Fields with "probability"
    switch a feature on; their draws are always made, so switching never changes the other draws.
    """

    # global pose and body habitus
    max_rotation_deg: tuple[float, float, float] = (3.0, 3.0, 5.0)  # about x (nod), y (tilt), z (axial turn)
    max_shift_mm: tuple[float, float, float] = (8.0, 8.0, 12.0)
    body_size: tuple[float, float] = (0.72, 1.12)  # common scale of LR, AP and height (small to large)
    scale_lr: tuple[float, float] = (0.9, 1.1)  # independent LR proportion, times body_size
    scale_ap: tuple[float, float] = (0.88, 1.12)  # independent AP proportion, times body_size
    scale_height: tuple[float, float] = (0.88, 1.1)  # independent height proportion, times body_size
    chest_shape: tuple[float, float] = (-0.12, 0.18)  # thorax AP grows by this, LR shrinks by half: + barrel, - flat
    fat_shell: tuple[float, float] = (-0.25, 0.7)  # relative thickness change of the tissue outside the rib cage
    child_probability: float = 0.12  # child-like proportions (larger heart, shorter thorax, smaller body)
    child_degree: tuple[float, float] = (0.4, 1.0)  # how child-like a child case is (scales the next three)
    child_heart_scale: float = 0.15  # heart scale added at child degree 1
    child_height: float = 0.15  # relative height (thorax length) reduction at child degree 1
    child_size: float = 0.15  # relative body size reduction at child degree 1
    # breathing: -1 full expiration .. +1 deep inspiration moves lungs, domes, ribs and lung HU together
    breath: tuple[float, float] = (-1.0, 1.0)  # breathing state
    breath_lung_scale: float = 0.10  # scale of both lungs at breath +1 (-this at -1)
    breath_diaphragm_mm: float = 25.0  # descent of both domes at breath +1 (rise at -1)
    breath_rib_spacing: float = 0.03  # craniocaudal rib cage stretch at breath +1
    breath_lung_hu: float = -50.0  # lung HU shift at breath +1 (more air per tissue: darker)
    # local deformations (fractions are relative size changes, mm are peak displacements)
    lung_scale: tuple[float, float] = (-0.04, 0.04)  # per lung on top of breathing, + = larger
    heart_scale: tuple[float, float] = (-0.15, 0.38)  # + = larger (LR most); the top gives a CTR of ~0.6
    heart_shift_mm: tuple[float, float, float] = (8.0, 6.0, 8.0)
    diaphragm_mm: float = 8.0  # per dome on top of breathing, + = higher
    spine_lateral_mm: float = 8.0  # mild C- and S-shaped lateral bend amplitudes of every chest
    scoliosis_probability: float = 0.25  # a scoliotic spine: lateral bend replaced by a larger C/S curve
    scoliosis_mm: tuple[float, float] = (10.0, 25.0)  # scoliosis C-curve amplitude (random side, +-half as S)
    spine_ap_mm: float = 10.0  # kyphosis change
    rib_spacing: float = 0.06  # craniocaudal stretch of the rib cage
    rib_angle: float = 0.05  # shear of anterior vs posterior rib ends (slope change, ~3 deg)
    min_jacobian: float = 0.3  # the local field is scaled down until det(I + grad u) >= this (no folds)
    max_jacobian: float = 1.9  # ... and <= this (no tissue squeezed to a sliver)
    # tissue densities (HU)
    lung_hu: float = 30.0  # lung HU jitter on top of breathing
    lung_hu_per_scale: float = -250.0  # inflated lungs are darker: HU shift per unit of per-lung scale
    fat_hu: float = 25.0
    soft_hu: float = 15.0
    blood_hu: tuple[float, float] = (-10.0, 50.0)  # native to faintly enhanced blood
    bone_scale: tuple[float, float] = (0.85, 1.2)  # bone HU above 200 scaled (mineral density)
    noise_hu: tuple[float, float] = (3.0, 15.0)
    noise_correlation_vox: float = 0.8  # Gaussian sigma of the noise correlation, in voxels
    # added structures (analytic shapes on the output cube, sizes in mm at body size 1)
    breast_probability: float = 0.35  # two breasts on the anterior chest wall (never in a child case)
    breast_radius_mm: tuple[float, float] = (45.0, 75.0)  # LR and craniocaudal half-size of a breast
    breast_depth_mm: tuple[float, float] = (25.0, 70.0)  # anterior projection from the chest wall
    breast_hu: tuple[float, float] = (-100.0, -20.0)  # fat / glandular tissue mix
    breast_droop_mm: tuple[float, float] = (0.0, 30.0)  # caudal offset of the breasts from the heart level
    breast_spread: tuple[float, float] = (0.85, 1.15)  # lateral offset relative to the lung centres
    arms_probability: float = 0.3  # arms down beside the chest (else up and out of the field, like the source)
    arm_radius_mm: tuple[float, float] = (38.0, 58.0)  # upper-arm soft tissue radius
    arm_gap_mm: tuple[float, float] = (-20.0, 10.0)  # skin gap between an upper arm and the chest wall (- pressed in)
    arm_abduction_deg: tuple[float, float] = (0.0, 12.0)  # arm axis tilt away from the body
    arm_shoulder_mm: tuple[float, float] = (-30.0, 10.0)  # top of the humerus relative to the lung apex
    arm_y_mm: tuple[float, float] = (-10.0, 25.0)  # arm axis AP offset from the lung centres (+ posterior)
    arm_hu: tuple[float, float] = (-40.0, 45.0)  # muscle / fat mix
    humerus_radius_mm: tuple[float, float] = (9.0, 13.0)  # shaft radius (head twice that)
    humerus_length_mm: tuple[float, float] = (270.0, 330.0)  # shoulder to elbow
    humerus_cortex_hu: tuple[float, float] = (900.0, 1400.0)  # cortical bone (scaled like all bone)
    humerus_marrow_hu: tuple[float, float] = (0.0, 200.0)  # medullary cavity
    # field of view / truncation
    fov_probability: float = 0.3  # circular reconstruction FOV that cuts the body sides/arms
    fov_radius_fraction: tuple[float, float] = (0.82, 1.02)  # of half the body's LR width
    fov_center_jitter_mm: float = 10.0
    z_extent_probability: float = 0.3  # scan limited to the lungs plus a margin
    z_margin_mm: tuple[float, float] = (5.0, 40.0)
    work_margin: float = 1.25  # working cube / model cube: anatomy shifted in from outside is real

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "AnatomyConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


@dataclass
class SyntheticChest:
    """One synthetic case on the model cube: ``unit`` in [0, 1], ``labels`` on the same voxels."""

    unit: np.ndarray  # float32 [S, S, S]
    labels: np.ndarray  # uint8 [S, S, S]
    params: dict
    seed: int
    config: DataConfig
    center_lps: tuple[float, float, float]
    lung_ids: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # label ids of the (left, right) lung lobes

    def lung_side_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """(left, right) lungs, all lobes, as bool [S, S, S] (patient left = +x, the last axis)."""
        if not (self.lung_ids[0] and self.lung_ids[1]):
            raise ValueError("this chest does not know its lung label ids")
        return np.isin(self.labels, self.lung_ids[0]), np.isin(self.labels, self.lung_ids[1])

    def lung_mask(self) -> np.ndarray:
        """Both lungs, all lobes, as bool [S, S, S]."""
        if not (self.lung_ids[0] and self.lung_ids[1]):
            raise ValueError("this chest does not know its lung label ids")
        return np.isin(self.labels, self.lung_ids[0] + self.lung_ids[1])

    def model_volume(self) -> ModelVolume:
        return ModelVolume(self.unit, self.center_lps, self.config.grid)

    def render_drr(self) -> np.ndarray:
        """Clean line integrals (V, P, P), exactly what `axon prepare` stores."""
        from axonct.physics.drr import drr_from_unit_volume

        with torch.no_grad():
            d = drr_from_unit_volume(torch.from_numpy(self.unit), self.config.grid, self.config.geometry,
                                     self.config.views)
        return d.numpy().astype(np.float32)


def case_seed(set_seed: int, index: int) -> int:
    """The generator seed of case ``index`` of the set ``set_seed`` (see SEED_SCHEME)."""
    if int(set_seed) < 0 or int(index) < 0:
        raise ValueError("set seed and index must be non-negative integers")
    a, b = np.random.SeedSequence([_SEED_DOMAIN, int(set_seed), int(index)]).generate_state(2, np.uint32)
    return ((int(a) << 32) | int(b)) & (2**63 - 1)


class SyntheticChestGenerator:
    """Holds the source CT and labels on a working cube; ``generate(seed)`` makes one chest.

    Loading (reading, body mask, two resamplings) is done once; a case then costs one
    ``grid_sample`` for the CT, one for the labels, and cheap per-voxel HU work. The jobs live in
    `synthetic_chest`: loading (``source``), landmarks, random draws (``params``), the warp
    (``deformation``), added breasts and arms (``added``) and densities, noise and cuts (``tissue``).
    """

    def __init__(self, data_cfg: DataConfig, anatomy: AnatomyConfig | None = None,
                 ct_path: str | Path | None = None, labels_path: str | Path | None = None,
                 structures_path: str | Path | None = None):
        """A CT given without ``labels_path`` is labelled from its HU (`auto_labels`); the
        sample CT (no ``ct_path``) comes with its full label map."""
        self.config = data_cfg
        self.anatomy = anatomy or AnatomyConfig()
        src = load_source(data_cfg, self.anatomy.work_margin, ct_path, labels_path, structures_path)
        self.ct_path, self.labels_path, self.structures = src.ct_path, src.labels_path, src.structures
        self.center_lps, self.work_grid, self.slab_z = src.center_lps, src.work_grid, src.slab_z
        self._ct = torch.from_numpy(src.unit)[None, None].contiguous()
        self._labels = torch.from_numpy(src.labels.astype(np.float32))[None, None]
        ids = label_ids(self.structures)
        self.blood_ids, self.spine_ids, self.rib_ids = ids.blood, ids.spine, ids.ribs
        self.ids, self.lung_ids, self.humerus_ids = ids.ids, ids.lungs, ids.humerus
        self.landmarks = anatomy_landmarks(src.labels, self.structures, self.spine_ids, self.work_grid,
                                           self.labels_path or self.ct_path)
        self.cage = cage_profile(src.labels, self.landmarks, self.rib_ids, self.lung_ids, self.work_grid)

    # -- parameters
    def draw_params(self, seed: int) -> dict:
        """Every random choice of one case (see `synthetic_chest.params.draw_params`)."""
        return draw_params(self.anatomy, seed)

    def identity_params(self) -> dict:
        """Parameters that reproduce the source CT on the model cube (no change, no noise, no cut)."""
        return identity_params(self.anatomy)

    def sampling_map(self, params: dict, points: int | None = None) -> tuple[np.ndarray, float]:
        """Source positions (mm) of a regular grid of output positions, [G, G, G, 3] (x, y, z), and
        the grid step (see `synthetic_chest.deformation.sampling_map`); the local field is scaled
        down, recorded as ``deformation_scale``, where it would fold or squeeze tissue."""
        return sampling_map(params, self.config.grid, self.anatomy, self.landmarks, self.cage, points)

    # -- rendering
    def _warped_source(self, params: dict) -> tuple[np.ndarray, np.ndarray]:
        """(unit, labels) of the source sampled through the case's map on the model cube."""
        n = self.config.grid.size
        q, _ = self.sampling_map(params)
        half_work = self.work_grid.fov_mm / 2.0
        coarse = torch.from_numpy((q / half_work).astype(np.float32)).permute(3, 0, 1, 2)[None]
        dense = F.interpolate(coarse, size=(n, n, n), mode="trilinear", align_corners=True)
        z_lo, z_hi = self.slab_z  # beyond the scanned slab: its end slices continue (neck, abdomen)
        dense[:, 2].clamp_(z_lo / half_work, z_hi / half_work)
        sgrid = dense.permute(0, 2, 3, 4, 1).contiguous()
        with torch.no_grad():
            unit = F.grid_sample(self._ct, sgrid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
            lab = F.grid_sample(self._labels, sgrid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
        return unit.numpy(), lab.numpy().astype(np.uint8)

    def render(self, params: dict) -> SyntheticChest:
        """The chest described by ``params`` (a pure function of them)."""
        grid = self.config.grid
        unit, labels = self._warped_source(params)
        hu = unit * (grid.hu_max - grid.hu_min) + grid.hu_min
        hu = tissue.tissue_hu(hu, labels, params["hu"], self.blood_ids)
        body = unit > 0.004  # anything above ~-1014 HU: bed removal leaves exact air outside the body
        if params.get("breasts", {}).get("apply"):
            added.add_breasts(hu, body, params, grid, self.landmarks)
        if params.get("arms", {}).get("apply"):
            added.add_arms(hu, labels, body, params, grid, self.landmarks, self.humerus_ids)
        if params["hu"]["noise_hu"] > 0:
            hu += tissue.correlated_noise(params["hu"], grid.size, self.anatomy.noise_correlation_vox) * body
        keep = tissue.fov_keep(body, labels, params, grid, [self.ids[nm] for nm in LUNG_LEFT + LUNG_RIGHT])
        hu[~keep] = grid.hu_min
        labels[~keep] = 0
        out = hu_to_unit(hu, grid).astype(np.float32)
        return SyntheticChest(out, labels, params, int(params["seed"]), self.config, self.center_lps, self.lung_ids)

    def generate(self, seed: int) -> SyntheticChest:
        return self.render(self.draw_params(seed))

    def reference(self) -> SyntheticChest:
        """The undeformed source on the model cube (for comparisons)."""
        return self.render(self.identity_params())
