"""Template fitting: deform the one training CT until its DRRs match the input radiograph(s).

A classical baseline (what "just warp the CT we have" achieves, which the learned pipeline must
beat) and an optional starting volume for the diffusion stages. Two stages, both optimised with
Adam through the differentiable Joseph projector (`axonct.physics.drr.project`):

A. affine: rotation, translation and anisotropic scale of the template about the isocentre;
B. a coarse smooth deformation: a cubic B-spline displacement field on a small control grid,
   applied in the patient frame after the affine, with smoothness, magnitude and folding penalties.

The input views are robust-normalised radiographs, related to DRR line integrals only through an
unknown monotone map, so every comparison first fits a per-view quadratic intensity map (closed-form
least squares, differentiable) from the DRR to the view and scores the residual relative to the
view's variance. The work is done on a downsampled cube (``work_size``^3) with views area-averaged to
match and blurred images first (capture range); the final warp is applied once at the full grid.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from axonct.config import DataConfig, VolumeGrid
from axonct.physics.drr import project, unit_to_attenuation
from axonct.errors import AxonInputError
from axonct.physics.geometry import ViewGeometry, rotation_matrix, view_geometry
from axonct.physics.xray_realism import gaussian_blur

ProgressFn = Callable[[str, int, int], None]

AFFINE_SIGMAS = (3.0, 1.5, 0.75)
"""Blur (work pixels) of both images per affine level: coarse first for capture range."""
DEFORM_SIGMAS = (1.5, 0.5)
"""Blur per deformation level; the deformation only refines what the affine found."""
AFFINE_ITERS, DEFORM_ITERS = 120, 80  # default iterations of the two stages (one progress step each)
PRIOR_WEIGHT = 0.01
"""Pull of the affine parameters towards identity: keeps parameters a single view cannot see
(depth scale and shift with a frontal view only) near the template instead of drifting."""
GRAD_WEIGHT = 0.2
"""Smoothness: mean squared displacement gradient (strain) of the B-spline field."""
MAG_WEIGHT = 0.05
"""Magnitude: mean squared control displacement (normalised units)."""
FOLD_WEIGHT = 10.0
"""Folding: squared shortfall of det(I + grad u) below FOLD_MIN_DET."""
FOLD_MIN_DET = 0.3


@dataclass
class TemplateFit:
    """The warped template and how well it explains the views."""

    unit: np.ndarray  # (S, S, S) float32 in [0, 1] on data_cfg.grid
    affine_params: dict  # rotation_deg (x, y, z), translation_mm (x, y, z), scale (x, y, z)
    loss_history: list = field(default_factory=list)
    view_residuals: dict = field(default_factory=dict)  # view -> {"before": nrmse, "after": nrmse}
    seconds: float = 0.0
    deformation: dict = field(default_factory=dict)  # max displacement (mm), min Jacobian det
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary for reports (the volume itself only by shape and range)."""
        return {
            "volume_shape": list(self.unit.shape),
            "volume_range": [float(self.unit.min()), float(self.unit.max())],
            "affine_params": self.affine_params,
            "deformation": self.deformation,
            "view_residuals": self.view_residuals,
            "loss_first": self.loss_history[0] if self.loss_history else None,
            "loss_last": self.loss_history[-1] if self.loss_history else None,
            "iterations": len(self.loss_history),
            "seconds": round(float(self.seconds), 3),
            "settings": self.settings,
        }


# ---------------------------------------------------------------------------- the template
_TEMPLATE_CACHE: dict[tuple, np.ndarray] = {}


def default_template(data_cfg: DataConfig) -> np.ndarray:
    """The sample CT (our only training CT) on ``data_cfg.grid``; prepared once per process."""
    g = data_cfg.grid
    key = (g.size, float(g.fov_mm), float(g.hu_min), float(g.hu_max), bool(data_cfg.remove_bed))
    if key not in _TEMPLATE_CACHE:
        import SimpleITK as sitk

        from axonct.io.ct_preprocess import ct_to_model
        from axonct.io.sample_data import sample_ct_path

        image = sitk.ReadImage(str(sample_ct_path()))
        _TEMPLATE_CACHE[key] = ct_to_model(image, g, remove_bed=data_cfg.remove_bed).array
    return _TEMPLATE_CACHE[key]


# ---------------------------------------------------------------------------- transforms
def _pullback(rot: torch.Tensor, shift: torch.Tensor, log_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of the forward map p = R diag(s) q + t (normalised coords, x/y/z order): q = A p + b."""
    a = torch.diag(torch.exp(-log_scale)) @ rotation_matrix(rot).T
    return a, -(a @ shift)


def _identity_points(n: int) -> torch.Tensor:
    """(n, n, n, 3) voxel-centre coordinates in [-1, 1], x/y/z order as `F.grid_sample` wants."""
    return F.affine_grid(torch.eye(3, 4)[None], (1, 1, n, n, n), align_corners=False)[0]


def _bspline(t: torch.Tensor) -> torch.Tensor:
    a = t.abs()
    return torch.where(a < 1, 2.0 / 3.0 - a**2 + a**3 / 2, torch.where(a < 2, (2 - a).clamp_min(0) ** 3 / 6, 0 * a))


def _bspline_d(t: torch.Tensor) -> torch.Tensor:
    a = t.abs()
    d = torch.where(a < 1, -2 * a + 1.5 * a**2, torch.where(a < 2, -0.5 * (2 - a).clamp_min(0) ** 2, 0 * a))
    return d * torch.sign(t)


def _basis(n: int, k: int, derivative: bool = False) -> torch.Tensor:
    """(n, k) cubic B-spline weights of k control points for n voxel centres on [-1, 1].

    Control points sit at -1-h, -1, ..., 1+h (h = 2/(k-3)), so four weights are active everywhere in
    the cube and they sum to one (a constant field is representable exactly).
    """
    h = 2.0 / (k - 3)
    x = (torch.arange(n, dtype=torch.float32) * 2 + 1) / n - 1
    c = -1 - h + torch.arange(k, dtype=torch.float32) * h
    t = (x[:, None] - c[None]) / h
    return _bspline_d(t) / h if derivative else _bspline(t)


def _field(ctrl: torch.Tensor, bz: torch.Tensor, by: torch.Tensor, bx: torch.Tensor) -> torch.Tensor:
    """(3, K, K, K) control displacements -> (Z, Y, X, 3) field, separable tensor-product B-spline."""
    t = torch.einsum("xk,cijk->cijx", bx, ctrl)
    t = torch.einsum("yj,cijx->ciyx", by, t)
    return torch.einsum("zi,ciyx->zyxc", bz, t)


def _jacobian(ctrl: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n, n, 3, 3) gradient of the displacement field, [..., component, d/dx|d/dy|d/dz]."""
    k = ctrl.shape[-1]
    b, db = _basis(n, k), _basis(n, k, derivative=True)
    cols = [_field(ctrl, b, b, db), _field(ctrl, b, db, b), _field(ctrl, db, b, b)]
    return torch.stack(cols, dim=-1)


def _warp(template: torch.Tensor, a: torch.Tensor, b: torch.Tensor, points: torch.Tensor,
          disp: torch.Tensor | None = None) -> torch.Tensor:
    """Template sampled at q = A (p + u(p)) + b; outside the cube is air (0)."""
    p = points if disp is None else points + disp
    q = p @ a.T + b
    return F.grid_sample(template[None, None], q[None], mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0, 0]


def affine_warp(unit, rotation_deg=(0.0, 0.0, 0.0), translation_mm=(0.0, 0.0, 0.0), scale=(1.0, 1.0, 1.0),
                fov_mm: float = 320.0) -> np.ndarray:
    """Move a unit cube by the forward affine the fit reports (about the isocentre, LPS x/y/z).

    A point q of the input goes to R diag(scale) q + t with R = Rz Ry Rx; outside is air. Tests and
    callers use it to produce (or re-apply) a known pose in the same convention as ``affine_params``.
    """
    cube = torch.as_tensor(np.asarray(unit, np.float32))
    rot = torch.tensor([math.radians(v) for v in rotation_deg], dtype=torch.float32)
    shift = torch.tensor(translation_mm, dtype=torch.float32) / (fov_mm / 2)
    a, b = _pullback(rot, shift, torch.log(torch.tensor(scale, dtype=torch.float32)))
    with torch.no_grad():
        return _warp(cube, a, b, _identity_points(cube.shape[-1])).clamp(0, 1).numpy()


# ---------------------------------------------------------------------------- similarity
def _intensity_fit(drr: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view, least-squares quadratic map of the DRR onto the observed view.

    Returns the residual (V, P, P) and the observed variance (V,). Quadratic, not affine, because the
    radiograph went through a Beer-Lambert log with scatter and a gamma: both bend the relation.
    """
    v = drr.shape[0]
    d = drr.reshape(v, -1)
    d = d / d.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-6)
    y = obs.reshape(v, -1)
    x = torch.stack([torch.ones_like(d), d, d * d], dim=-1)  # (V, N, 3)
    xtx = x.transpose(1, 2) @ x + 1e-6 * torch.eye(3)
    w = torch.linalg.solve(xtx, x.transpose(1, 2) @ y[..., None])
    r = y - (x @ w)[..., 0]
    return r.reshape(drr.shape), y.var(dim=1).clamp_min(1e-8)


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    return gaussian_blur(img[:, None], sigma)[:, 0] if sigma > 0 else img


def _view_nrmse(drr: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    r, var = _intensity_fit(drr, obs)
    return torch.sqrt(r.pow(2).flatten(1).mean(1) / var)


# ---------------------------------------------------------------------------- the fit
def _check_inputs(views, view_mask, data_cfg: DataConfig, template_unit, work_size: int, control_points: int):
    p, s = data_cfg.geometry.detector_pixels, data_cfg.grid.size
    views = np.asarray(views.detach().cpu() if torch.is_tensor(views) else views, dtype=np.float32)
    mask = np.asarray(view_mask.detach().cpu() if torch.is_tensor(view_mask) else view_mask, dtype=np.float32)
    if views.shape != (2, p, p):
        raise AxonInputError(None, f"views must have shape (2, {p}, {p}) (frontal, lateral), got {views.shape}")
    if mask.shape != (2,):
        raise AxonInputError(None, f"view_mask must have shape (2,), got {mask.shape}")
    if not np.all(np.isin(mask, (0.0, 1.0))):
        raise AxonInputError(None, f"view_mask must hold 0 or 1 per view, got {mask.tolist()}")
    if mask.sum() == 0:
        raise AxonInputError(None, "no view present (view_mask is all zero): nothing to fit to")
    present = [i for i in range(2) if mask[i] > 0]
    if not np.all(np.isfinite(views[present])):
        raise AxonInputError(None, "views contain NaN or infinite values")
    for i in present:
        if float(views[i].std()) < 1e-6:
            raise AxonInputError(None, f"the {data_cfg.views[i] if i < len(data_cfg.views) else i} view is flat")
    if template_unit is None:
        template = default_template(data_cfg)
    else:
        template = np.asarray(template_unit, dtype=np.float32)
        if template.shape != (s, s, s):
            raise AxonInputError(None, f"template_unit must be a ({s}, {s}, {s}) cube on the data grid, "
                                       f"got {template.shape}")
        if not np.all(np.isfinite(template)):
            raise AxonInputError(None, "template_unit contains NaN or infinite values")
    if int(work_size) < 8:
        raise ValueError(f"work_size must be at least 8, got {work_size}")
    if int(control_points) < 4:
        raise ValueError(f"control_points must be at least 4 (cubic B-spline), got {control_points}")
    return views, mask, present, np.clip(template, 0.0, 1.0)


@dataclass
class _WorkProblem:
    """The fit on the downsampled work grid: template, observed views (blurred per level), the
    projector's views, and which pose directions the present views can see."""

    names: list[str]
    grid: VolumeGrid  # the work grid
    views: list[ViewGeometry]  # the work-size views present
    full: torch.Tensor  # the template at the full grid
    small: torch.Tensor  # the template at the work grid
    obs_full: torch.Tensor  # (V, P, P) present views at full size
    obs_blur: dict  # sigma -> (V, wp, wp) blurred work-size views
    points: torch.Tensor  # (ws, ws, ws, 3) identity sampling points
    half: float  # half the cube's field of view (mm): normalised -> mm
    seen: torch.Tensor  # (3,) 1 where shift/scale/displacement along an axis is visible
    seen_rot: torch.Tensor  # (3,) 1 where rotation about an axis is visible
    ws: int
    wp: int

    def render(self, vol: torch.Tensor) -> torch.Tensor:
        att = unit_to_attenuation(vol, self.grid)
        return torch.stack([project(att, self.grid, v) for v in self.views])

    def data_loss(self, vol: torch.Tensor, sigma: float) -> torch.Tensor:
        r, var = _intensity_fit(_blur(self.render(vol), sigma), self.obs_blur[sigma])
        return (r.pow(2).flatten(1).mean(1) / var).mean()


def _work_problem(views_np, present, template, data_cfg: DataConfig, work_size: int, names) -> _WorkProblem:
    """Template and views brought to the work size (area-averaged), and the visible directions."""
    grid, geom = data_cfg.grid, data_cfg.geometry
    ws = min(int(work_size), grid.size)
    wp = max(8, int(round(geom.detector_pixels * ws / grid.size)))
    wgrid = dataclasses.replace(grid, size=ws)
    wgeom = dataclasses.replace(geom, detector_pixels=wp)
    wviews = [view_geometry(n, wgeom) for n in names]

    full = torch.from_numpy(np.ascontiguousarray(template))
    small = F.adaptive_avg_pool3d(full[None, None], ws)[0, 0] if ws != grid.size else full
    obs_full = torch.from_numpy(views_np[present])
    obs = F.adaptive_avg_pool2d(obs_full[:, None], wp)[:, 0] if wp != geom.detector_pixels else obs_full
    obs_blur = {s: _blur(obs, s) for s in set(AFFINE_SIGMAS) | set(DEFORM_SIGMAS)}

    # With a single view, shift/scale/displacement along its beam and rotations out of its image
    # plane are (nearly) invisible: they are held at the template's pose instead of drifting.
    beams = {int(np.argmax(np.abs(v.detector_center - v.source))) for v in wviews}
    seen = torch.ones(3)
    seen_rot = torch.ones(3)
    if len(beams) == 1:
        beam = beams.pop()
        seen[beam] = 0.0
        seen_rot = torch.zeros(3)
        seen_rot[beam] = 1.0
    return _WorkProblem(names, wgrid, wviews, full, small, obs_full, obs_blur, _identity_points(ws),
                        grid.fov_mm / 2.0, seen, seen_rot, ws, wp)


def _starting_pose(w: _WorkProblem, seed: int, init_candidates: int) -> tuple[torch.Tensor, ...]:
    """(rot, shift, log_scale), requiring grad: the best of identity and seeded random poses,
    scored at the coarsest level."""
    gen = torch.Generator().manual_seed(int(seed))
    best = None
    with torch.no_grad():
        for k in range(max(1, int(init_candidates))):
            if k == 0:
                cand = (torch.zeros(3), torch.zeros(3), torch.zeros(3))
            else:
                cand = (torch.zeros(3), (torch.rand(3, generator=gen) * 2 - 1) * (15.0 / w.half) * w.seen,
                        (torch.rand(3, generator=gen) * 2 - 1) * 0.06 * w.seen)
            a, b = _pullback(*cand)
            score = float(w.data_loss(_warp(w.small, a, b, w.points), AFFINE_SIGMAS[0]))
            if best is None or score < best[0]:
                best = (score, cand)
    return tuple(c.clone().requires_grad_(True) for c in best[1])


def _fit_affine(w: _WorkProblem, rot, shift, log_scale, iters: int, history: list, progress: ProgressFn) -> None:
    """Stage A: Adam on the pose (decaying rates, coarse-to-fine blur) with a pull to identity."""

    def prior() -> torch.Tensor:
        return PRIOR_WEIGHT * (rot.pow(2).sum() + shift.pow(2).sum() + log_scale.pow(2).sum())

    opt = torch.optim.Adam([{"params": [rot], "lr": 0.01}, {"params": [shift], "lr": 0.01},
                            {"params": [log_scale], "lr": 0.006}])
    base_lr = [g["lr"] for g in opt.param_groups]
    for it in range(iters):
        level = min(len(AFFINE_SIGMAS) - 1, it * len(AFFINE_SIGMAS) // max(1, iters))
        frac = it / max(1, iters)
        for g, lr in zip(opt.param_groups, base_lr):
            g["lr"] = lr * (1.0 - 0.8 * frac)
        opt.zero_grad()
        a, b = _pullback(rot * w.seen_rot, shift * w.seen, log_scale * w.seen)
        loss = w.data_loss(_warp(w.small, a, b, w.points), AFFINE_SIGMAS[level]) + prior()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
        progress("template_affine", it, iters)


def _fit_deformation(w: _WorkProblem, a_fix, b_fix, k: int, iters: int, history: list,
                     progress: ProgressFn) -> torch.Tensor:
    """Stage B: the B-spline control displacements (3, k, k, k) after the fixed affine, with
    smoothness, magnitude and folding penalties."""
    ctrl = torch.zeros(3, k, k, k, requires_grad=True)
    basis = _basis(w.ws, k)
    jac_n = min(w.ws, 24)

    def regulariser(c: torch.Tensor) -> torch.Tensor:
        jac = _jacobian(c, jac_n)
        det = torch.linalg.det(torch.eye(3) + jac)
        return (GRAD_WEIGHT * jac.pow(2).sum((-1, -2)).mean() + MAG_WEIGHT * c.pow(2).mean()
                + FOLD_WEIGHT * F.relu(FOLD_MIN_DET - det).pow(2).mean())

    if iters > 0:
        opt_b = torch.optim.Adam([ctrl], lr=0.004)
        for it in range(iters):
            level = min(len(DEFORM_SIGMAS) - 1, it * len(DEFORM_SIGMAS) // iters)
            for g in opt_b.param_groups:
                g["lr"] = 0.004 * (1.0 - 0.7 * it / iters)
            opt_b.zero_grad()
            disp = _field(ctrl * w.seen[:, None, None, None], basis, basis, basis)
            loss = w.data_loss(_warp(w.small, a_fix, b_fix, w.points, disp), DEFORM_SIGMAS[level]) + regulariser(ctrl)
            loss.backward()
            opt_b.step()
            history.append(float(loss.detach()))
            progress("template_deform", it, iters)
    return ctrl


@torch.no_grad()
def _final_warp(w: _WorkProblem, data_cfg: DataConfig, ctrl: torch.Tensor, a_fix, b_fix, deformed: bool) -> dict:
    """The warp applied once at the full grid, its deformation statistics and the views' residuals
    before and after."""
    grid, geom = data_cfg.grid, data_cfg.geometry
    k = ctrl.shape[-1]
    c = ctrl.detach() * w.seen[:, None, None, None]
    fb = _basis(grid.size, k)
    disp_full = _field(c, fb, fb, fb) if deformed else None
    unit = _warp(w.full, a_fix, b_fix, _identity_points(grid.size), disp_full).clamp(0, 1)
    det = torch.linalg.det(torch.eye(3) + _jacobian(c, min(grid.size, 48)))
    max_disp_mm = float(disp_full.norm(dim=-1).max()) * w.half if disp_full is not None else 0.0
    full_views = [view_geometry(n, geom) for n in w.names]

    def full_nrmse(vol):
        att = unit_to_attenuation(vol, grid)
        return _view_nrmse(torch.stack([project(att, grid, v) for v in full_views]), w.obs_full)

    return {"unit": unit, "det": det, "max_disp_mm": max_disp_mm, "before": full_nrmse(w.full),
            "after": full_nrmse(unit)}


def fit_template(
    views,
    view_mask,
    data_cfg: DataConfig,
    template_unit=None,
    work_size: int = 64,
    affine_iters: int = AFFINE_ITERS,
    deform_iters: int = DEFORM_ITERS,
    seed: int = 0,
    progress: ProgressFn | None = None,
    control_points: int = 6,
    init_candidates: int = 8,
) -> TemplateFit:
    """Warp ``template_unit`` (default: the sample CT) so its DRRs match ``views`` where ``view_mask`` is 1.

    ``views``: (2, P, P) model views in [0, 1] (frontal, lateral); ``view_mask``: (2,), 0 = missing.
    ``seed`` draws the random starting poses tried before stage A (the best one is kept), so the
    result is a pure function of the inputs and the seed. ``progress(stage, step, total)`` is called
    once per iteration like the pipeline's progress callback.
    """
    t0 = time.time()
    views_np, mask, present, template = _check_inputs(views, view_mask, data_cfg, template_unit, work_size,
                                                      control_points)
    progress = progress or (lambda stage, step, total: None)
    names = [data_cfg.views[i] if i < len(data_cfg.views) else ("frontal", "lateral")[i] for i in range(2)]
    names = [names[i] for i in present]
    w = _work_problem(views_np, present, template, data_cfg, work_size, names)
    rot, shift, log_scale = _starting_pose(w, seed, init_candidates)
    history: list[float] = []
    n_a, n_b, k = int(affine_iters), int(deform_iters), int(control_points)
    _fit_affine(w, rot, shift, log_scale, n_a, history, progress)
    a_fix, b_fix = (t.detach() for t in _pullback(rot * w.seen_rot, shift * w.seen, log_scale * w.seen))
    ctrl = _fit_deformation(w, a_fix, b_fix, k, n_b, history, progress)
    final = _final_warp(w, data_cfg, ctrl, a_fix, b_fix, n_b > 0)
    with torch.no_grad():
        rot, shift, log_scale = rot * w.seen_rot, shift * w.seen, log_scale * w.seen
    params = {
        "rotation_deg": [math.degrees(v) for v in rot.detach().tolist()],
        "translation_mm": [v * w.half for v in shift.detach().tolist()],
        "scale": [math.exp(v) for v in log_scale.detach().tolist()],
    }
    before, after = final["before"], final["after"]
    return TemplateFit(
        unit=final["unit"].numpy().astype(np.float32),
        affine_params=params,
        loss_history=history,
        view_residuals={n: {"before": float(before[i]), "after": float(after[i])} for i, n in enumerate(names)},
        seconds=time.time() - t0,
        deformation={"max_displacement_mm": final["max_disp_mm"], "min_jacobian_det": float(final["det"].min()),
                     "control_points": k},
        settings={"work_size": w.ws, "work_pixels": w.wp, "affine_iters": n_a, "deform_iters": n_b, "seed": int(seed),
                  "init_candidates": int(init_candidates), "views": names},
    )
