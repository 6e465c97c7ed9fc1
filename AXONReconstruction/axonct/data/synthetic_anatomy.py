"""Seeded synthetic chests made from one real CT and its label map: the generator of `axon synth`.

Why: the demo weights learn from a single real chest CT. Warping that CT with smooth, anatomically
placed deformations (lungs, heart, diaphragm, spine, ribs, body size), jittering tissue densities
and cutting the field of view like real scanners do gives many varied but plausible training chests,
and held-out synthetic test sets whose seeds provably differ from the training ones.

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

GENERATOR_VERSION = 1
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


@dataclass
class AnatomyConfig:
    """Ranges of the random anatomy; every value is drawn uniformly inside its range.

    The defaults keep cases plausible for an adult chest: rotations of a few degrees (patient
    positioning), body size +-12 % (thin to broad patients), organ changes of ~10-15 % and shifts of
    ~1-2 cm (breathing, cardiac size, diaphragm level), a spine bend of ~1 cm (mild scoliosis /
    kyphosis), and tissue HU shifts of the order of inter-scanner calibration differences.
    """

    # global pose and body size
    max_rotation_deg: tuple[float, float, float] = (3.0, 3.0, 5.0)  # about x (nod), y (tilt), z (axial turn)
    max_shift_mm: tuple[float, float, float] = (8.0, 8.0, 12.0)
    scale_lr: tuple[float, float] = (0.88, 1.12)
    scale_ap: tuple[float, float] = (0.88, 1.15)
    scale_height: tuple[float, float] = (0.93, 1.07)
    # local deformations (fractions are relative size changes, mm are peak displacements)
    lung_scale: tuple[float, float] = (-0.10, 0.12)  # per lung, + = larger
    heart_scale: tuple[float, float] = (-0.12, 0.15)
    heart_shift_mm: tuple[float, float, float] = (8.0, 6.0, 8.0)
    diaphragm_mm: float = 18.0  # per dome, + = higher (expiration)
    spine_lateral_mm: float = 12.0  # C- and S-shaped lateral bend amplitudes
    spine_ap_mm: float = 10.0  # kyphosis change
    rib_spacing: float = 0.06  # craniocaudal stretch of the rib cage
    rib_angle: float = 0.05  # shear of anterior vs posterior rib ends (slope change, ~3 deg)
    min_jacobian: float = 0.4  # the local field is scaled down until det(I + grad u) >= this
    # tissue densities (HU)
    lung_hu: float = 60.0
    lung_hu_per_scale: float = -250.0  # inflated lungs are darker: HU shift per unit of lung scale
    fat_hu: float = 25.0
    soft_hu: float = 15.0
    blood_hu: tuple[float, float] = (-10.0, 50.0)  # native to faintly enhanced blood
    bone_scale: tuple[float, float] = (0.85, 1.2)  # bone HU above 200 scaled (mineral density)
    noise_hu: tuple[float, float] = (3.0, 15.0)
    noise_correlation_vox: float = 0.8  # Gaussian sigma of the noise correlation, in voxels
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
        from axonct.io.ct import read_ct_with_meta
        from axonct.io.sample_data import sample_ct_path, sample_labels_path, sample_structures_path

        self.config = data_cfg
        self.anatomy = anatomy or AnatomyConfig()
        self.ct_path = Path(ct_path) if ct_path else sample_ct_path()
        self.labels_path = Path(labels_path) if labels_path else sample_labels_path()
        self.structures_path = Path(structures_path) if structures_path else sample_structures_path()
        self.structures = read_structures(self.structures_path)
        reader = _header(self.labels_path)
        image, _ = read_ct_with_meta(self.ct_path)
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
        ref = sitk.Image([w] * 3, sitk.sitkUInt8)
        ref.SetSpacing((grid.spacing_mm,) * 3)
        ref.SetOrigin(work.origin_lps)
        lab = sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        self._ct = torch.from_numpy(work.array)[None, None].contiguous()
        lab_np = sitk.GetArrayFromImage(lab)
        self._labels = torch.from_numpy(lab_np.astype(np.float32))[None, None]
        self.blood_ids = sorted(i for i, g in self.structures.values() if g == BLOOD_GROUP)
        self.spine_ids = sorted(i for i, g in self.structures.values() if g == SPINE_GROUP)
        self.ids = {name: self.structures[name][0] for name in REQUIRED}
        self._anatomy_points(lab_np)

    # -- source anatomy landmarks (mm, relative to the cube centre, (x, y, z))
    def _points(self, lab: np.ndarray, names_or_ids) -> np.ndarray:
        ids = [self.structures[n][0] if isinstance(n, str) else int(n) for n in names_or_ids]
        idx = np.argwhere(np.isin(lab, ids))
        if idx.shape[0] < 10:
            raise AxonInputError(self.labels_path, f"has (almost) no voxels of {', '.join(map(str, names_or_ids))} "
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

    # -- parameters
    def draw_params(self, seed: int) -> dict:
        """Every random choice of one case, drawn in a fixed order from ``default_rng(seed)``.

        The order never depends on the config's probabilities, so forcing truncation on or off keeps
        the same anatomy for the same seed.
        """
        a = self.anatomy
        rng = np.random.default_rng(int(seed))
        u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
        sym = lambda m: float(rng.uniform(-m, m))  # noqa: E731
        lung_l, lung_r = u(*a.lung_scale), u(*a.lung_scale)
        p = {
            "seed": int(seed),
            "affine": {
                "rotation_deg": [sym(m) for m in a.max_rotation_deg],
                "scale": [u(*a.scale_lr), u(*a.scale_ap), u(*a.scale_height)],
                "shift_mm": [sym(m) for m in a.max_shift_mm],
            },
            "lungs": {"scale_left": lung_l, "scale_right": lung_r},
            "heart": {"scale": u(*a.heart_scale), "shift_mm": [sym(m) for m in a.heart_shift_mm]},
            "diaphragm": {"left_mm": sym(a.diaphragm_mm), "right_mm": sym(a.diaphragm_mm)},
            "spine": {"lateral_c_mm": sym(a.spine_lateral_mm), "lateral_s_mm": sym(a.spine_lateral_mm / 2),
                      "ap_mm": sym(a.spine_ap_mm)},
            "ribs": {"spacing": sym(a.rib_spacing), "angle": sym(a.rib_angle)},
        }
        lung_hu = a.lung_hu_per_scale * (lung_l + lung_r) / 2 + sym(a.lung_hu)
        p["hu"] = {"lung": float(lung_hu), "fat": sym(a.fat_hu), "soft": sym(a.soft_hu), "blood": u(*a.blood_hu),
                   "bone_scale": u(*a.bone_scale), "noise_hu": u(*a.noise_hu),
                   "noise_seed": int(rng.integers(0, 2**31 - 1))}
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
        p["lungs"] = {"scale_left": 0.0, "scale_right": 0.0}
        p["heart"] = {"scale": 0.0, "shift_mm": [0.0] * 3}
        p["diaphragm"] = {"left_mm": 0.0, "right_mm": 0.0}
        p["spine"] = {"lateral_c_mm": 0.0, "lateral_s_mm": 0.0, "ap_mm": 0.0}
        p["ribs"] = {"spacing": 0.0, "angle": 0.0}
        p["hu"].update(lung=0.0, fat=0.0, soft=0.0, blood=0.0, bone_scale=1.0, noise_hu=0.0)
        p["fov"]["apply"] = False
        p["z_extent"]["apply"] = False
        return p

    # -- deformation
    def _local_displacement(self, q: np.ndarray, p: dict) -> np.ndarray:
        """Backward displacement u(q) in the source frame (sample the source at q + u(q)).

        Sum of structure-centred Gaussian bumps: a bump ``-a (q - c) w`` makes the structure around
        c about (1 + a) times larger, ``-d w`` moves it by d. Widths are the structures' own extents
        (or wider), so the field is smooth on the scale of organs and never tears them.
        """
        lm = self.landmarks
        u = np.zeros_like(q)
        for side in ("left", "right"):
            c, sd = lm[f"lung_{side}"]
            a = p["lungs"][f"scale_{side}"]
            u -= a * (q - c) * _gauss(q, c, 1.2 * sd)[..., None]
        c, sd = lm["heart"]
        w = _gauss(q, c, 1.5 * sd)[..., None]
        u -= p["heart"]["scale"] * (q - c) * w
        u -= np.asarray(p["heart"]["shift_mm"]) * _gauss(q, c, (50.0, 50.0, 50.0))[..., None]
        for side in ("left", "right"):
            dome = lm[f"dome_{side}"]
            u[..., 2] -= p["diaphragm"][f"{side}_mm"] * _gauss(q, dome, (60.0, 80.0, 45.0))
        (sc, (z0, z1)) = lm["spine"]
        length = max(z1 - z0, 100.0)
        t = (q[..., 2] - z0) / length
        ws = _gauss(q[..., :2], sc[:2], (90.0, 90.0))
        sp = p["spine"]
        u[..., 0] -= (sp["lateral_c_mm"] * np.sin(np.pi * t) + sp["lateral_s_mm"] * np.sin(2 * np.pi * t)) * ws
        u[..., 1] -= sp["ap_mm"] * np.sin(np.pi * t) * ws
        c, sd = lm["thorax"]
        wt = _gauss(q, c, 1.5 * sd)
        u[..., 2] -= (p["ribs"]["spacing"] * (q[..., 2] - c[2]) + p["ribs"]["angle"] * (sc[1] - q[..., 1])) * wt
        return u

    def sampling_map(self, params: dict, points: int | None = None) -> tuple[np.ndarray, float]:
        """Source positions (mm) of a regular grid of output positions, [G, G, G, 3] (x, y, z).

        Output p -> undo the global pose/size (p' = R^T (p - t) / s) -> add the local field u(p').
        The local field is scaled down (recorded as ``deformation_scale``) if anywhere
        det(I + grad u) would fall below ``min_jacobian``: the map stays invertible.
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
                if det.min() >= self.anatomy.min_jacobian:
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
        sgrid = dense.permute(0, 2, 3, 4, 1).contiguous()
        with torch.no_grad():
            unit = F.grid_sample(self._ct, sgrid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
            lab = F.grid_sample(self._labels, sgrid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
        unit = unit.numpy()
        labels = lab.numpy().astype(np.uint8)
        hu = unit * (grid.hu_max - grid.hu_min) + grid.hu_min
        hu = self._tissue_hu(hu, labels, params["hu"])
        body = unit > 0.004  # anything above ~-1014 HU: bed removal leaves exact air outside the body
        if params["hu"]["noise_hu"] > 0:
            hu += self._noise(params["hu"], n) * body
        keep = self._fov_keep(body, labels, params)
        hu[~keep] = grid.hu_min
        labels[~keep] = 0
        out = hu_to_unit(hu, grid).astype(np.float32)
        return SyntheticChest(out, labels, params, int(params["seed"]), self.config, self.center_lps)

    def generate(self, seed: int) -> SyntheticChest:
        return self.render(self.draw_params(seed))

    def reference(self) -> SyntheticChest:
        """The undeformed source on the model cube (for comparisons)."""
        return self.render(self.identity_params())

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
