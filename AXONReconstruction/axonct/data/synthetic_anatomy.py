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

import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from axonct.config import DataConfig
from axonct.io.ct_preprocess import ModelVolume, _bbox_center_lps, body_mask, ct_to_model, hu_to_unit
from axonct.errors import AxonInputError
from axonct.physics.geometry import rotation_matrix

GENERATOR_VERSION = 2  # 2: habitus, breathing, cardiomegaly, scoliosis, breasts, arms down
SEED_SCHEME = "case_seed = SeedSequence([0x5EED, set_seed, index]).generate_state(2, uint32) -> 63-bit int"
"""How a case's generator seed is derived: distinct (set seed, index) pairs give independent,
practically never-colliding seeds; caches record them so overlap can be checked exactly."""
_SEED_DOMAIN = 0x5EED

# Label groups, by TotalSegmentator-like structure names in structures.csv.
LUNG_LEFT = ("lung_upper_lobe_left", "lung_lower_lobe_left")
LUNG_RIGHT = ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right")
HEART = ("heart",)
REQUIRED = LUNG_LEFT + LUNG_RIGHT + HEART
BLOOD_GROUP = "cardiac"
SPINE_GROUP = "vertebrae"
RIB_GROUP = "ribs"  # ribs, sternum and costal cartilages: the rib cage the fat shell is measured from
HUMERUS = {"left": "humerus_left", "right": "humerus_right"}  # labels given to the bone of added arms
HEART_AXES = (1.0, 0.55, 0.4)  # heart growth per axis (x, y, z): cardiomegaly widens the heart most


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


# ----------------------------------------------------------------------------- inputs


def _header(path: Path) -> sitk.ImageFileReader:
    if not path.exists():
        raise AxonInputError(path, "does not exist")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise AxonInputError(path, f"cannot be read as an image ({exc})") from None
    return reader


def read_structures(path: str | Path) -> dict[str, tuple[int, str]]:
    """structure name -> (label id, group) from a TotalSegmentator-like CSV."""
    path = Path(path)
    if not path.exists():
        raise AxonInputError(path, "does not exist")
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
        out = {r["structure"].strip(): (int(r["id"]), (r.get("group") or "").strip()) for r in rows}
    except (KeyError, ValueError, TypeError) as exc:
        raise AxonInputError(path, f"is not a structures table with columns group,structure,id ({exc})") from None
    missing = [n for n in REQUIRED if n not in out]
    if missing:
        raise AxonInputError(path, f"lacks the structures {', '.join(missing)}")
    return out


def _check_same_geometry(labels_path: Path, reader: sitk.ImageFileReader, ct: sitk.Image, ct_path: Path) -> None:
    problems = []
    if tuple(reader.GetSize()) != tuple(ct.GetSize()):
        problems.append(f"size {reader.GetSize()} vs {ct.GetSize()}")
    if not np.allclose(reader.GetSpacing(), ct.GetSpacing(), rtol=1e-4, atol=1e-4):
        problems.append(f"spacing {reader.GetSpacing()} vs {ct.GetSpacing()}")
    if not np.allclose(reader.GetOrigin(), ct.GetOrigin(), rtol=0, atol=1e-2):
        problems.append(f"origin {reader.GetOrigin()} vs {ct.GetOrigin()}")
    if not np.allclose(reader.GetDirection(), ct.GetDirection(), atol=1e-4):
        problems.append("a different direction")
    if problems:
        raise AxonInputError(labels_path, f"label map geometry differs from the CT {ct_path}: " + "; ".join(problems))


# ----------------------------------------------------------------------------- generator


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


def _soft_inside(dist_out_mm: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a voxel whose centre is ``dist_out_mm`` outside a surface (- inside)."""
    return np.clip(0.5 - dist_out_mm / voxel_mm, 0.0, 1.0)


def jacobian_determinant(points_mm: np.ndarray, spacing_mm: float) -> np.ndarray:
    """det(d q / d p) of a map sampled on a regular [z, y, x, 3] grid of step ``spacing_mm``."""
    q = np.asarray(points_mm, dtype=np.float64)
    # d/dx, d/dy, d/dz along array axes 2, 1, 0
    cols = [np.gradient(q, spacing_mm, axis=ax) for ax in (2, 1, 0)]
    jac = np.stack(cols, axis=-1)  # [..., component, derivative]
    return np.linalg.det(jac)


class SyntheticChestGenerator:
    """Holds the source CT and labels on a working cube; ``generate(seed)`` makes one chest.

    Loading (reading, body mask, two resamplings) is done once; a case then costs one
    ``grid_sample`` for the CT, one for the labels, and cheap per-voxel HU work.
    """

    def __init__(self, data_cfg: DataConfig, anatomy: AnatomyConfig | None = None,
                 ct_path: str | Path | None = None, labels_path: str | Path | None = None,
                 structures_path: str | Path | None = None):
        """A CT given without ``labels_path`` is labelled from its HU (`auto_labels`); the
        sample CT (no ``ct_path``) comes with its full label map."""
        from axonct.io.ct import read_ct_with_meta
        from axonct.io.sample_data import sample_ct_path, sample_labels_path, sample_structures_path

        self.config = data_cfg
        self.anatomy = anatomy or AnatomyConfig()
        self.ct_path = Path(ct_path) if ct_path else sample_ct_path()
        auto = ct_path is not None and labels_path is None
        if structures_path is not None and auto:
            raise AxonInputError(structures_path, "names the labels of a label map; give the map with --labels")
        self.labels_path = None if auto else (Path(labels_path) if labels_path else sample_labels_path())
        image, _ = read_ct_with_meta(self.ct_path)
        labels = None
        if not auto:
            self.structures = read_structures(Path(structures_path) if structures_path else sample_structures_path())
            reader = _header(self.labels_path)
            _check_same_geometry(self.labels_path, reader, image, self.ct_path)
            labels = sitk.ReadImage(str(self.labels_path))
            if labels.GetNumberOfComponentsPerPixel() != 1 or labels.GetDimension() != 3:
                raise AxonInputError(self.labels_path, "is not a 3D scalar label map")
            labels = sitk.Cast(labels, sitk.sitkUInt8) if labels.GetPixelID() != sitk.sitkUInt8 else labels

        grid = data_cfg.grid
        hu = sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, grid.hu_min, grid.hu_max)
        self.center_lps = _bbox_center_lps(body_mask(hu))  # the same centre `axon prepare` uses
        w = int(math.ceil(grid.size * self.anatomy.work_margin / 2.0)) * 2
        self.work_grid = dataclasses.replace(grid, size=w, fov_mm=w * grid.spacing_mm)
        work = ct_to_model(image, self.work_grid, remove_bed=data_cfg.remove_bed, center_lps=self.center_lps)
        if auto:
            from axonct.data.auto_labels import NoLungsError, auto_label_map

            try:
                lab_np, self.structures = auto_label_map(work.array * (grid.hu_max - grid.hu_min) + grid.hu_min,
                                                         grid.spacing_mm)
            except NoLungsError as exc:
                raise AxonInputError(self.ct_path, f"cannot be labelled from its HU: {exc}; give a label map "
                                                   "with --labels") from None
        else:
            ref = sitk.Image([w] * 3, sitk.sitkUInt8)
            ref.SetSpacing((grid.spacing_mm,) * 3)
            ref.SetOrigin(work.origin_lps)
            lab_np = sitk.GetArrayFromImage(sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                          sitk.sitkUInt8))
        self._ct = torch.from_numpy(work.array)[None, None].contiguous()
        self._labels = torch.from_numpy(lab_np.astype(np.float32))[None, None]
        self.blood_ids = sorted(i for i, g in self.structures.values() if g == BLOOD_GROUP)
        self.spine_ids = sorted(i for i, g in self.structures.values() if g == SPINE_GROUP)
        self.rib_ids = sorted(i for i, g in self.structures.values() if g == RIB_GROUP)
        self.ids = {name: self.structures[name][0] for name in REQUIRED}
        self.lung_ids = (tuple(self.ids[n] for n in LUNG_LEFT), tuple(self.ids[n] for n in LUNG_RIGHT))
        self.humerus_ids = {side: self.structures[name][0] if name in self.structures else 0
                            for side, name in HUMERUS.items()}
        # the scanned slab (z, mm): sampling beyond it repeats its end slices, so a shrunken body
        # continues into the neck and abdomen instead of ending in air inside the cube
        zs = np.nonzero((work.array > 0.004).any(axis=(1, 2)))[0]
        coords = (np.arange(w) - (w - 1) / 2.0) * grid.spacing_mm
        self.slab_z = (float(coords[zs[0]]), float(coords[zs[-1]])) if zs.size else (-math.inf, math.inf)
        self._anatomy_points(lab_np)
        self._cage_profile(lab_np)

    # -- source anatomy landmarks (mm, relative to the cube centre, (x, y, z))
    def _points(self, lab: np.ndarray, names_or_ids) -> np.ndarray:
        ids = [self.structures[n][0] if isinstance(n, str) else int(n) for n in names_or_ids]
        idx = np.argwhere(np.isin(lab, ids))
        if idx.shape[0] < 10:
            raise AxonInputError(self.labels_path or self.ct_path, f"has (almost) no voxels of {', '.join(map(str, names_or_ids))} "
                                                   "inside the model cube")
        s = self.work_grid.spacing_mm
        return (idx[:, ::-1] - (self.work_grid.size - 1) / 2.0) * s  # (x, y, z)

    def _anatomy_points(self, lab: np.ndarray) -> None:
        """Centres and extents that place the deformation bumps on the structures they move."""
        lm = {}
        for key, names in (("lung_left", LUNG_LEFT), ("lung_right", LUNG_RIGHT), ("heart", HEART),
                           ("lower_left", ("lung_lower_lobe_left",)), ("lower_right", ("lung_lower_lobe_right",))):
            p = self._points(lab, names)
            lm[key] = (p.mean(0), p.std(0))
        lungs = self._points(lab, LUNG_LEFT + LUNG_RIGHT)
        lm["thorax"] = (lungs.mean(0), lungs.std(0))
        lm["lung_z"] = (float(lungs[:, 2].min()), float(lungs[:, 2].max()))
        for side in ("left", "right"):
            p = self._points(lab, (f"lung_lower_lobe_{side}",))
            c, sd = p.mean(0), p.std(0)
            central = p[np.abs(p[:, 0] - c[0]) < sd[0]]  # dome apex: the base under the lobe's middle
            lm[f"dome_{side}"] = np.array([c[0], c[1], float(np.percentile(central[:, 2], 8))])
        spine = self._points(lab, self.spine_ids) if self.spine_ids else lungs
        lm["spine"] = (spine.mean(0), (float(spine[:, 2].min()), float(spine[:, 2].max())))
        self.landmarks = lm

    def _cage_profile(self, lab: np.ndarray) -> None:
        """The rib cage's outer extent per height (mm): centre and half-widths in x and y.

        Measured on the ribs (or, without rib labels, the lungs plus 15 mm) over the lungs' height,
        held constant above and below it, kept at least 85 % of its widest (the narrow upper ring
        would count the shoulders as fat) and smoothed over ~4 cm; the fat shell is what lies outside.
        """
        n, s = self.work_grid.size, self.work_grid.spacing_mm
        coords = (np.arange(n) - (n - 1) / 2.0) * s
        ids = self.rib_ids or list(self.lung_ids[0] + self.lung_ids[1])
        margin = 0.0 if self.rib_ids else 15.0
        cage = np.isin(lab, ids)
        z0, z1 = self.landmarks["lung_z"]
        rows = []
        for k in np.nonzero((coords >= z0) & (coords <= z1))[0]:
            xs = np.nonzero(cage[k].any(axis=0))[0]
            ys = np.nonzero(cage[k].any(axis=1))[0]
            if xs.size >= 2 and ys.size >= 2:
                rows.append((coords[k], coords[xs[0]], coords[xs[-1]], coords[ys[0]], coords[ys[-1]]))
        if len(rows) < 3:
            c, sd = self.landmarks["thorax"]
            rows = [(z, c[0] - 2 * sd[0], c[0] + 2 * sd[0], c[1] - 2 * sd[1], c[1] + 2 * sd[1]) for z in (z0, z1)]
        r = np.asarray(rows, dtype=np.float64)
        zq = coords
        prof = np.stack([np.interp(zq, r[:, 0], r[:, j]) for j in range(1, 5)])  # constant beyond the ends
        taps = np.arange(-int(60.0 // s), int(60.0 // s) + 1) * s
        k = np.exp(-0.5 * (taps / 20.0) ** 2)
        k /= k.sum()
        pad = len(k) // 2
        prof = np.stack([np.convolve(np.pad(p, pad, mode="edge"), k, mode="valid") for p in prof])
        x0, x1, y0, y1 = prof
        rx, ry = (x1 - x0) / 2 + margin, (y1 - y0) / 2 + margin
        self.cage = {"z": zq, "cx": (x0 + x1) / 2, "cy": (y0 + y1) / 2,
                     "rx": np.maximum(rx, 0.85 * rx.max()), "ry": np.maximum(ry, 0.85 * ry.max())}

    # -- parameters
    def draw_params(self, seed: int) -> dict:
        """Every random choice of one case, drawn in a fixed order from ``default_rng(seed)``.

        The order never depends on the config's probabilities or ranges, so forcing a feature on or
        off (truncation, child, scoliosis, breasts, arms) keeps every other draw of the same seed.
        The deformation entries hold the effective amplitudes: ``breath`` and ``habitus.child_degree``
        record drivers whose contributions are already included in ``lungs``, ``diaphragm``, ``ribs``,
        ``hu.lung``, ``heart`` and ``affine.scale``.
        """
        a = self.anatomy
        rng = np.random.default_rng(int(seed))
        u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
        sym = lambda m: float(rng.uniform(-m, m))  # noqa: E731
        # pose and habitus
        rotation = [sym(m) for m in a.max_rotation_deg]
        shift = [sym(m) for m in a.max_shift_mm]
        size = u(*a.body_size)
        prop = [u(*a.scale_lr), u(*a.scale_ap), u(*a.scale_height)]
        chest_shape, fat_shell = u(*a.chest_shape), u(*a.fat_shell)
        child_draw, child_degree = float(rng.uniform()), u(*a.child_degree)
        child = child_draw < a.child_probability
        t = child_degree if child else 0.0
        size *= 1.0 - a.child_size * t
        scale = [size * prop[0], size * prop[1], size * prop[2] * (1.0 - a.child_height * t)]
        girth = size * (prop[0] + prop[1]) / 2  # sizes of the added structures follow the body
        # breathing
        breath = u(*a.breath)
        lung_l, lung_r = u(*a.lung_scale), u(*a.lung_scale)
        dome_l, dome_r = sym(a.diaphragm_mm), sym(a.diaphragm_mm)
        # heart, spine, ribs
        heart = u(*a.heart_scale) + a.child_heart_scale * t
        heart_shift = [sym(m) for m in a.heart_shift_mm]
        lat_c, lat_s, spine_ap = sym(a.spine_lateral_mm), sym(a.spine_lateral_mm / 2), sym(a.spine_ap_mm)
        scol_draw, scol_mm = float(rng.uniform()), u(*a.scoliosis_mm)
        scol_side, scol_s = (1.0 if rng.uniform() < 0.5 else -1.0), sym(0.5)
        scoliosis = scol_draw < a.scoliosis_probability
        if scoliosis:
            lat_c, lat_s = scol_side * scol_mm, scol_s * scol_mm
        rib_spacing, rib_angle = sym(a.rib_spacing) + a.breath_rib_spacing * breath, sym(a.rib_angle)
        p = {
            "seed": int(seed),
            "affine": {"rotation_deg": rotation, "scale": scale, "shift_mm": shift},
            "habitus": {"body_size": size, "child": bool(child), "child_degree": t,
                        "chest_shape": chest_shape, "fat_shell": fat_shell},
            "breath": {"state": breath},
            "lungs": {"scale_left": a.breath_lung_scale * breath + lung_l,
                      "scale_right": a.breath_lung_scale * breath + lung_r},
            "heart": {"scale": heart, "shift_mm": heart_shift},
            "diaphragm": {"left_mm": dome_l - a.breath_diaphragm_mm * breath,
                          "right_mm": dome_r - a.breath_diaphragm_mm * breath},
            "spine": {"lateral_c_mm": lat_c, "lateral_s_mm": lat_s, "ap_mm": spine_ap, "scoliosis": bool(scoliosis)},
            "ribs": {"spacing": rib_spacing, "angle": rib_angle},
        }
        lung_hu = a.breath_lung_hu * breath + a.lung_hu_per_scale * (lung_l + lung_r) / 2 + sym(a.lung_hu)
        p["hu"] = {"lung": float(lung_hu), "fat": sym(a.fat_hu), "soft": sym(a.soft_hu), "blood": u(*a.blood_hu),
                   "bone_scale": u(*a.bone_scale), "noise_hu": u(*a.noise_hu),
                   "noise_seed": int(rng.integers(0, 2**31 - 1))}
        breast_draw = float(rng.uniform())
        p["breasts"] = {"apply": breast_draw < a.breast_probability and not child,
                        "radius_mm": girth * u(*a.breast_radius_mm), "depth_mm": girth * u(*a.breast_depth_mm),
                        "hu": u(*a.breast_hu), "droop_mm": size * u(*a.breast_droop_mm),
                        "spread": u(*a.breast_spread)}
        arms_draw = float(rng.uniform())
        p["arms"] = {"apply": arms_draw < a.arms_probability, "radius_mm": girth * u(*a.arm_radius_mm),
                     "gap_mm": u(*a.arm_gap_mm), "abduction_deg": u(*a.arm_abduction_deg),
                     "shoulder_mm": size * u(*a.arm_shoulder_mm), "y_mm": size * u(*a.arm_y_mm),
                     "hu": u(*a.arm_hu), "humerus_radius_mm": girth * u(*a.humerus_radius_mm),
                     "humerus_length_mm": scale[2] * u(*a.humerus_length_mm),
                     "cortex_hu": u(*a.humerus_cortex_hu), "marrow_hu": u(*a.humerus_marrow_hu)}
        if p["breasts"]["apply"]:  # the cube is centred on the body's extent, breasts included
            p["affine"]["shift_mm"][1] += 0.5 * p["breasts"]["depth_mm"]
        fov_draw, z_draw = float(rng.uniform()), float(rng.uniform())
        p["fov"] = {"apply": fov_draw < a.fov_probability, "radius_fraction": u(*a.fov_radius_fraction),
                    "center_offset_mm": [sym(a.fov_center_jitter_mm), sym(a.fov_center_jitter_mm)]}
        p["z_extent"] = {"apply": z_draw < a.z_extent_probability, "margin_top_mm": u(*a.z_margin_mm),
                         "margin_bottom_mm": u(*a.z_margin_mm)}
        return p

    def identity_params(self) -> dict:
        """Parameters that reproduce the source CT on the model cube (no change, no noise, no cut)."""
        p = self.draw_params(0)
        p["affine"] = {"rotation_deg": [0.0] * 3, "scale": [1.0] * 3, "shift_mm": [0.0] * 3}
        p["habitus"] = {"body_size": 1.0, "child": False, "child_degree": 0.0, "chest_shape": 0.0, "fat_shell": 0.0}
        p["breath"] = {"state": 0.0}
        p["lungs"] = {"scale_left": 0.0, "scale_right": 0.0}
        p["heart"] = {"scale": 0.0, "shift_mm": [0.0] * 3}
        p["diaphragm"] = {"left_mm": 0.0, "right_mm": 0.0}
        p["spine"] = {"lateral_c_mm": 0.0, "lateral_s_mm": 0.0, "ap_mm": 0.0, "scoliosis": False}
        p["ribs"] = {"spacing": 0.0, "angle": 0.0}
        p["hu"].update(lung=0.0, fat=0.0, soft=0.0, blood=0.0, bone_scale=1.0, noise_hu=0.0)
        p["breasts"]["apply"] = False
        p["arms"]["apply"] = False
        p["fov"]["apply"] = False
        p["z_extent"]["apply"] = False
        return p

    # -- deformation
    def _local_displacement(self, q: np.ndarray, p: dict) -> np.ndarray:
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
        lm = self.landmarks
        c, sd = lm["heart"]
        u = self._breathing_displacement(q, p)
        if u is not None:  # the heart rides on the lungs and domes as a whole: it moves, it keeps its size
            w = _flat_bump(q, c, 3.0 * sd, sigma=1.0)[..., None]
            u += w * (self._breathing_displacement(np.asarray(c, dtype=q.dtype)[None], p)[0] - u)
        else:
            u = np.zeros_like(q)
        if p["heart"]["scale"]:
            w = _flat_bump(q, c, np.array([2.5, 2.2, 2.2]) * sd)[..., None]
            u -= p["heart"]["scale"] * np.asarray(HEART_AXES) * (q - c) * w
        if any(p["heart"]["shift_mm"]):
            u -= np.asarray(p["heart"]["shift_mm"]) * _gauss(q, c, (50.0, 50.0, 50.0))[..., None]
        (sc, (z0, z1)) = lm["spine"]
        sp = p["spine"]
        if sp["lateral_c_mm"] or sp["lateral_s_mm"] or sp["ap_mm"]:
            length = max(z1 - z0, 100.0)
            t = (q[..., 2] - z0) / length
            # the spine moves fully, the rib cage with its lungs and mediastinum 60 % as one block
            # (flat inside the cage, so lungs never slide across ribs), the body wall fades out
            rho, _, _ = self._cage_coordinates(q)
            ws = 0.4 * _gauss(q[..., :2], sc[:2], (40.0, 40.0)) + 0.6 * np.exp(-0.5 * (rho / 1.15) ** 4)
            u[..., 0] -= (sp["lateral_c_mm"] * np.sin(np.pi * t) + sp["lateral_s_mm"] * np.sin(2 * np.pi * t)) * ws
            u[..., 1] -= sp["ap_mm"] * np.sin(np.pi * t) * ws
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
            u[..., :2] += self._fat_displacement(q, g)
        return u

    def _breathing_displacement(self, q: np.ndarray, p: dict) -> np.ndarray | None:
        """Lung size (flat-topped bumps on each lung) and dome heights (Gaussian bumps); None if zero."""
        lm = self.landmarks
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

    def _cage_coordinates(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised radius rho (1 on the rib cage's outer surface; a superellipse of exponent 3, a
        rounded box, in each axial plane) and the in-plane offsets from the cage's centre (mm)."""
        cg = self.cage
        z = q[..., 2]
        dx = q[..., 0] - np.interp(z, cg["z"], cg["cx"])
        dy = q[..., 1] - np.interp(z, cg["z"], cg["cy"])
        rx, ry = np.interp(z, cg["z"], cg["rx"]), np.interp(z, cg["z"], cg["ry"])
        return (np.abs(dx / rx) ** 3 + np.abs(dy / ry) ** 3) ** (1.0 / 3.0), dx, dy

    def _fat_displacement(self, q: np.ndarray, g: float) -> np.ndarray:
        """Radial (x, y) displacement that makes the tissue outside the rib cage (1 + g) times thicker.

        In each axial plane the cage is rho = 1 (see ``_cage_coordinates``). The source radius sampled
        is rho - g / (1 + g) * h(rho), h a smooth ramp that rises with slope 1 from rho = 1.05 to 1.55
        and is flat beyond (softplus corners, 4 % wide): the cage and what it holds do not move, the
        shell stretches by 1 + g, anything further out (arms, shoulders) is only shifted with it. The
        radial slope 1 - g / (1 + g) h' never folds (g > -1).
        """
        rho, dx, dy = self._cage_coordinates(q)
        tau = 0.04
        h = tau * (_softplus((rho - 1.05) / tau) - _softplus((rho - 1.55) / tau))
        f = -(g / (1.0 + g)) * h / np.maximum(rho, 1e-6)
        return np.stack([f * dx, f * dy], axis=-1)

    def sampling_map(self, params: dict, points: int | None = None) -> tuple[np.ndarray, float]:
        """Source positions (mm) of a regular grid of output positions, [G, G, G, 3] (x, y, z).

        Output p -> undo the global pose/size (p' = R^T (p - t) / s) -> add the local field u(p').
        The local field is scaled down (recorded as ``deformation_scale``) if anywhere
        det(I + grad u) would fall below ``min_jacobian`` or exceed ``max_jacobian``: the map stays
        invertible and never squeezes tissue too thin.
        Returns the map and the grid step in mm.
        """
        grid = self.config.grid
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
        u = self._local_displacement(pp, params)
        scale = float(params.get("deformation_scale", 1.0))
        if "deformation_scale" not in params:
            det_affine = 1.0 / float(np.prod(af["scale"]))
            for _ in range(12):
                det = jacobian_determinant(pp + scale * u, step) / det_affine
                if det.min() >= self.anatomy.min_jacobian and det.max() <= self.anatomy.max_jacobian:
                    break
                scale *= 0.8
            params["deformation_scale"] = scale
        return pp + scale * u, step

    # -- rendering
    def render(self, params: dict) -> SyntheticChest:
        """The chest described by ``params`` (a pure function of them)."""
        grid = self.config.grid
        n = grid.size
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
        unit = unit.numpy()
        labels = lab.numpy().astype(np.uint8)
        hu = unit * (grid.hu_max - grid.hu_min) + grid.hu_min
        hu = self._tissue_hu(hu, labels, params["hu"])
        body = unit > 0.004  # anything above ~-1014 HU: bed removal leaves exact air outside the body
        if params.get("breasts", {}).get("apply"):
            self._add_breasts(hu, body, params)
        if params.get("arms", {}).get("apply"):
            self._add_arms(hu, labels, body, params)
        if params["hu"]["noise_hu"] > 0:
            hu += self._noise(params["hu"], n) * body
        keep = self._fov_keep(body, labels, params)
        hu[~keep] = grid.hu_min
        labels[~keep] = 0
        out = hu_to_unit(hu, grid).astype(np.float32)
        return SyntheticChest(out, labels, params, int(params["seed"]), self.config, self.center_lps, self.lung_ids)

    def generate(self, seed: int) -> SyntheticChest:
        return self.render(self.draw_params(seed))

    def reference(self) -> SyntheticChest:
        """The undeformed source on the model cube (for comparisons)."""
        return self.render(self.identity_params())

    # -- added structures (analytic, on the output cube, filling air only)
    def _to_output(self, params: dict, points) -> np.ndarray:
        """Source-frame points (mm, (x, y, z)) through the global pose/size only: p = R (s p') + t."""
        af = params["affine"]
        rot = rotation_matrix(torch.tensor(np.radians(af["rotation_deg"]), dtype=torch.float64)).numpy()
        return (np.asarray(points, dtype=np.float64) * np.asarray(af["scale"])) @ rot.T + np.asarray(af["shift_mm"])

    def _box(self, lo, hi) -> tuple[slice, np.ndarray] | None:
        """Index slice and voxel-centre coordinates (mm) of the cube voxels within [lo, hi] along one axis."""
        n, s = self.config.grid.size, self.config.grid.spacing_mm
        i0 = max(int(math.floor(lo / s + (n - 1) / 2.0)), 0)
        i1 = min(int(math.ceil(hi / s + (n - 1) / 2.0)), n - 1)
        if i1 < i0:
            return None
        return slice(i0, i1 + 1), (np.arange(i0, i1 + 1) - (n - 1) / 2.0) * s

    @staticmethod
    def _fill_outside(hu_box: np.ndarray, frac: np.ndarray, value) -> np.ndarray:
        """Blend ``value`` into a box by ``frac``; callers zero ``frac`` inside the body's outline (the
        first voxel above -200 HU seen from outside), so only air and the skin's partial-volume
        voxels are replaced, never the body's own tissue, lungs or bowel gas. Returns ``frac``."""
        hu_box += (frac * (value - hu_box)).astype(hu_box.dtype)
        return frac

    def _add_breasts(self, hu: np.ndarray, body: np.ndarray, params: dict) -> None:
        """Two soft-tissue mounds on the anterior chest wall at about the heart's level.

        Each is a hemi-ellipsoid with its front flattened into a dome, y = base - 1.25 depth
        (1 - rho^2)^0.7 with rho the in-plane distance over ``radius_mm``, so it meets the chest wall
        at a gentle angle. Centred (LR) on its lung's centre line (times ``spread``), ``droop_mm``
        below the heart centre, its base plane a quarter of its depth inside the anterior body
        surface found in that column. It fills the air from its front back to the skin (no gap where
        the wall curves away), never anything inside the body's outline.
        """
        b = params["breasts"]
        s = self.config.grid.spacing_mm
        n = self.config.grid.size
        lm = self.landmarks
        cz = self._to_output(params, lm["heart"][0])[2] - b["droop_mm"]
        mid = self._to_output(params, lm["thorax"][0])[0]
        r, depth = b["radius_mm"], b["depth_mm"]
        for side in ("left", "right"):
            cx = mid + b["spread"] * (self._to_output(params, lm[f"lung_{side}"][0])[0] - mid)
            zi, xi = (int(round(v / s + (n - 1) / 2.0)) for v in (cz, cx))
            if not (0 <= zi < n and 0 <= xi < n):
                continue
            ys = np.nonzero(hu[zi, :, xi] > -200.0)[0]
            if ys.size == 0:
                continue
            base = (ys[0] - (n - 1) / 2.0) * s + 0.25 * depth  # y of the mound's base plane (inside the body)
            height = 1.25 * depth  # depth in front of the surface plus the part inside
            bz, bx = self._box(cz - r, cz + r), self._box(cx - r, cx + r)
            by = self._box(base - height - s, base + depth)
            if bz is None or by is None or bx is None:
                continue
            zz, yy, xx = bz[1][:, None, None], by[1][None, :, None], bx[1][None, None, :]
            rho2 = ((xx - cx) / r) ** 2 + ((zz - cz) / r) ** 2
            front = base - height * np.clip(1.0 - rho2, 0.0, None) ** 0.7  # y of the front surface
            # from the front surface back to the skin (no air left under the base where the wall curves)
            columns = hu[bz[0], :, bx[0]] > -200.0  # [z, y, x] tissue (the skin's partial voxels are not)
            skin = np.where(columns.any(axis=1), np.argmax(columns, axis=1), n)  # first body voxel per column
            outside = np.arange(n)[by[0]][None, :, None] < skin[:, None, :]
            frac = _soft_inside(front - yy, s) * ((rho2 < 1.0) & outside)
            box = (bz[0], by[0], bx[0])
            w = self._fill_outside(hu[box], frac, b["hu"])
            body[box] |= w > 0

    def _add_arms(self, hu: np.ndarray, labels: np.ndarray, body: np.ndarray, params: dict) -> None:
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
        grid = self.config.grid
        n, s = grid.size, grid.spacing_mm
        half = (n - 1) / 2.0 * s
        lm = self.landmarks
        r, rb, length = a["radius_mm"], a["humerus_radius_mm"], a["humerus_length_mm"]
        tan = math.tan(math.radians(a["abduction_deg"]))
        coords = (np.arange(n) - (n - 1) / 2.0) * s
        bone_scale = params["hu"].get("bone_scale", 1.0)
        cortex = 200.0 + (a["cortex_hu"] - 200.0) * bone_scale
        for sign, side in ((1.0, "left"), (-1.0, "right")):
            c = lm[f"lung_{side}"][0]
            top = self._to_output(params, (c[0], c[1], lm["lung_z"][1]))[2] + a["shoulder_mm"]
            yc = self._to_output(params, c)[1] + a["y_mm"]
            band = self._box(yc - r, yc + r)
            if band is None:
                continue
            # lateral body edge per slice within the arm's AP band, below the shoulder
            lateral = (hu[:, band[0], :] > -200.0).any(axis=1)  # [z, x]
            xs = sign * coords
            edge = np.where(lateral, xs[None, :], -np.inf).max(axis=1)  # [z] most lateral body (+outwards)
            below = (coords <= top - 0.35 * length) & (coords >= top - length)  # the upper arm
            need = edge + a["gap_mm"] + r - tan * (top - coords)
            need = need[below & np.isfinite(need)]
            base = float(need.max()) if need.size else float(sign * c[0] * params["affine"]["scale"][0] + r)
            reach = base + tan * (top + half) + r + s  # the axis drifts out going down
            lo, hi = (base - r - s, reach) if sign > 0 else (-reach, -(base - r - s))
            bx = self._box(lo, hi)
            by = self._box(yc - r - s, yc + r + s)
            bz = self._box(-half - s, top + r + s)
            if bx is None or by is None or bz is None:
                continue
            zz, yy, xx = bz[1][:, None, None], by[1][None, :, None], bx[1][None, None, :]
            drop = np.maximum(top - zz, 0.0)
            ax = sign * (base + tan * drop)
            d_axis = np.sqrt((xx - ax) ** 2 + (yy - yc) ** 2)
            d_soft = np.sqrt(d_axis**2 + np.maximum(zz - top, 0.0) ** 2)  # hemispherical top
            rows = hu[bz[0], by[0], :] > -200.0  # [z, y, x]: only lateral to the body's outline in each row
            if sign > 0:
                edge_x = np.where(rows.any(axis=2), n - 1 - np.argmax(rows[..., ::-1], axis=2), -1)
                outside = np.arange(n)[bx[0]][None, None, :] > edge_x[..., None]
            else:
                edge_x = np.where(rows.any(axis=2), np.argmax(rows, axis=2), n)
                outside = np.arange(n)[bx[0]][None, None, :] < edge_x[..., None]
            soft = _soft_inside(d_soft - r, s) * outside
            if not soft.any():
                continue
            head_r = 2.0 * rb
            zb = np.clip(zz, top - length, top - head_r)  # the shaft, as a capsule
            d_shaft = np.sqrt(d_axis**2 + (zz - zb) ** 2)
            d_head = np.sqrt((xx - sign * base) ** 2 + (yy - yc) ** 2 + (zz - (top - head_r)) ** 2)
            shaft, head = _soft_inside(d_shaft - rb, s), _soft_inside(d_head - head_r, s)
            bone = np.maximum(shaft, head)
            # cortex: the outer 40 % of the shaft's radius, the outer 20 % of the head's
            ring = np.where(head > shaft, _soft_inside(0.8 * head_r - d_head, s), _soft_inside(0.6 * rb - d_shaft, s))
            bone_hu = a["marrow_hu"] + (cortex - a["marrow_hu"]) * ring
            value = a["hu"] + bone * (bone_hu - a["hu"])
            box = (bz[0], by[0], bx[0])
            w = self._fill_outside(hu[box], soft, value)
            body[box] |= w > 0
            if self.humerus_ids.get(side):
                lab = labels[box]
                lab[(w > 0.5) & (bone > 0.5)] = self.humerus_ids[side]

    def _tissue_hu(self, hu: np.ndarray, labels: np.ndarray, h: dict) -> np.ndarray:
        """Per-tissue HU shifts as a smooth, monotone remapping of HU plus a blood term from labels.

        Anchors: air (-1024) fixed, lung parenchyma (-850), the lung/soft boundary (-400) fixed, fat
        (-100), soft tissue (40), bone (>200, scaled). Monotone, so no tissue swaps order.
        """
        xs = [-1024.0, -850.0, -400.0, -100.0, 40.0, 200.0]
        ys = [0.0, h["lung"], 0.0, h["fat"], h["soft"], h["soft"]]
        delta = np.interp(hu, xs, ys).astype(np.float32)
        delta += np.where(hu > 200.0, (hu - 200.0) * (h["bone_scale"] - 1.0), 0.0).astype(np.float32)
        if h["blood"] and self.blood_ids:
            blood = torch.from_numpy(np.isin(labels, self.blood_ids).astype(np.float32))[None, None]
            blood = F.avg_pool3d(blood, 3, stride=1, padding=1, count_include_pad=False)[0, 0].numpy()
            soft = np.clip((hu + 100.0) / 100.0, 0, 1) * np.clip((300.0 - hu) / 100.0, 0, 1)
            delta += h["blood"] * blood * soft
        return hu + delta

    def _noise(self, h: dict, n: int) -> np.ndarray:
        """Slightly correlated Gaussian noise with standard deviation ``noise_hu``."""
        rng = np.random.default_rng(h["noise_seed"])
        white = torch.from_numpy(rng.standard_normal((n, n, n), dtype=np.float32))[None, None]
        sigma = self.anatomy.noise_correlation_vox
        if sigma > 0:
            r = max(1, int(math.ceil(2 * sigma)))
            k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
            k = k / k.norm()  # unit energy: the smoothed noise keeps unit variance
            for shape in ((1, 1, -1, 1, 1), (1, 1, 1, -1, 1), (1, 1, 1, 1, -1)):
                white = F.conv3d(F.pad(white, _pad_for(shape, r), mode="replicate"), k.reshape(shape))
        return white[0, 0].numpy() * float(h["noise_hu"])

    def _fov_keep(self, body: np.ndarray, labels: np.ndarray, p: dict) -> np.ndarray:
        """Voxels that survive the scan's field of view (circle in-plane, slab in z)."""
        grid = self.config.grid
        n, s = grid.size, grid.spacing_mm
        keep = np.ones(body.shape, dtype=bool)
        coords = (np.arange(n) - (n - 1) / 2.0) * s
        if p["fov"]["apply"] and body.any():
            cols = np.nonzero(body.any(axis=(0, 1)))[0]
            rows = np.nonzero(body.any(axis=(0, 2)))[0]
            cx = (coords[cols[0]] + coords[cols[-1]]) / 2 + p["fov"]["center_offset_mm"][0]
            cy = (coords[rows[0]] + coords[rows[-1]]) / 2 + p["fov"]["center_offset_mm"][1]
            radius = p["fov"]["radius_fraction"] * (coords[cols[-1]] - coords[cols[0]]) / 2
            inside = (coords[None, :] - cx) ** 2 + (coords[:, None] - cy) ** 2 <= radius**2  # [y, x]
            keep &= inside[None]
            p["fov"]["radius_mm"] = float(radius)
            p["fov"]["center_mm"] = [float(cx), float(cy)]
        if p["z_extent"]["apply"]:
            lung_ids = [self.ids[nm] for nm in LUNG_LEFT + LUNG_RIGHT]
            zs = np.nonzero(np.isin(labels, lung_ids).any(axis=(1, 2)))[0]
            if zs.size:
                lo = coords[zs[0]] - p["z_extent"]["margin_bottom_mm"]
                hi = coords[zs[-1]] + p["z_extent"]["margin_top_mm"]
                keep &= ((coords >= lo) & (coords <= hi))[:, None, None]
                p["z_extent"]["range_mm"] = [float(lo), float(hi)]
        return keep


def _pad_for(shape, r) -> tuple:
    """F.pad amounts (x, y, z order) for a 1D kernel along the axis marked -1 in ``shape``."""
    axis = shape.index(-1)  # 2 = z, 3 = y, 4 = x
    pads = [0] * 6
    pads[2 * (4 - axis)] = pads[2 * (4 - axis) + 1] = r
    return tuple(pads)
