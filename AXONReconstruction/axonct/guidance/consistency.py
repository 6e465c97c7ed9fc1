"""Agreement with the input radiographs at sampling time, through the samplers' guidance hook.

X-ray-to-CT networks are conditioned on the radiographs but nothing checks that their output,
projected again, gives those radiographs back. Here every sampling step can correct the network's
clean estimate x0_hat towards agreement, in the linear line-integral domain of a sparse cone-beam
operator A (exact adjoint, milliseconds at 64^3):

* Bridge stage (Stage I): one steepest-descent step on ||W (A u - L)||^2 from u = x0_hat, with the
  exact line-search length (so the step is normalised by the residual and needs no tuning of units),
  scaled by sqrt(delta_t / max delta), the bridge posterior's own uncertainty at that step, and
  faded linearly to zero over the last steps, so the network's last steps clean up what the
  correction leaves.
* Prior/ControlNet stage (Stage II): a few conjugate-gradient steps on
  ||W (A u - L)||^2 + gamma ||u - u_hat||^2 started at u_hat, the network's estimate; the sampler
  then re-noises the corrected estimate to the next timestep (DDIM), so no gradient ever flows
  through the network. The correction fades to zero over the last steps.
* Both corrections stay inside the estimate's dilated body (`ViewConsistency.support`).

L are the observed views mapped into line-integral units by a per-view calibration fitted against
the DRR of the current estimate (intensity curve, small shift and scale; fitted at the start of
each stage, or every few steps with `recalibrate_every`),
so a real radiograph's processing is absorbed by the calibration instead of being forced into the
volume. W is the calibration's validity weight (zero for a missing lateral view, outside the
warped field or on clipped pixels).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from axonct.guidance.calibration import fit_view_calibration
from axonct.config import ProjectionGeometry, VIEWS, VolumeGrid
from axonct.physics.geometry import view_geometry
from axonct.physics.sparse_projector import SparseProjector, downsample_view_image, resampled_view

SUPPORT_HU = -900.0  # voxels denser than this (or next to one) may be corrected


@dataclass
class ConsistencyConfig:
    """Strength 1 is a full line-search step (Stage I) / full CG correction (Stage II) per step."""

    strength: float = 1.0
    view_pixels: int = 64  # detector size the comparison runs at (inputs are area-averaged to it)
    cg_iterations: int = 3
    gamma: float = 0.05  # pull towards the network's estimate, relative to ||W A||^2
    fade_fraction: float = 0.25  # Stage II correction fades linearly to zero over this last fraction
    recalibrate_every: int = 0  # refit the calibration every N guided steps; 0 = once at the start of each stage

    def __post_init__(self):
        if not 0.0 <= self.strength <= 4.0:
            raise ValueError(f"consistency strength must be in [0, 4], got {self.strength}")
        if self.cg_iterations < 1:
            raise ValueError("cg_iterations must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)


class ViewConsistency:
    """The projector, the observed views and their calibration for one reconstruction.

    Works on unit volumes u in [0, 1] of shape (B, S, S, S) on ``grid`` (the diffusion grid).
    """

    def __init__(self, views: np.ndarray, view_mask: np.ndarray, grid: VolumeGrid,
                 geometry: ProjectionGeometry, cfg: ConsistencyConfig | None = None,
                 projector: SparseProjector | None = None, pinned=(False, False)):
        """``pinned[i]``: view i is in the model's own projection geometry (`calibration`)."""
        self.cfg = cfg or ConsistencyConfig()
        self.present = [i for i in range(len(VIEWS)) if float(view_mask[i]) > 0]
        self.pinned = [bool(pinned[i]) for i in self.present]
        if not self.present:
            raise ValueError("consistency needs at least one input view")
        self.names = [VIEWS[i] for i in self.present]
        pixels = min(int(self.cfg.view_pixels), int(geometry.detector_pixels))
        geoms = [resampled_view(view_geometry(VIEWS[i], geometry), pixels) for i in self.present]
        self.grid = grid
        self.projector = projector or SparseProjector.cached(grid, geoms)
        obs = [downsample_view_image(np.asarray(views[i], np.float32), pixels) for i in self.present]
        self.observed = [np.asarray(o, np.float32) for o in obs]
        self.targets: torch.Tensor | None = None  # (V, p, p) line integrals
        self.weights: torch.Tensor | None = None  # (V, p, p)
        self.calibrations: list = []
        self.calls = 0  # guided steps in the current stage
        self.stage: str | None = None
        self._norm2: float | None = None
        self.history: list[dict] = []
        self.device = self.projector.device
        self.on_calibrate = None  # optional callback(stage): the calibration at the start of a stage pass
        self.lung_fields = None  # optional `lung_fields.LungFieldGuidance`, applied after each correction

    def restart(self, on_calibrate=None) -> "ViewConsistency":
        """A new batch of samples: the next guided step of any stage recalibrates (and reports to
        ``on_calibrate(stage)``, if given), as at the start of a run."""
        self.stage, self.calls = None, 0
        self.on_calibrate = on_calibrate
        return self

    def to(self, device: torch.device | str) -> "ViewConsistency":
        """Move the projector and the calibrated targets to ``device`` (the guided volume's device),
        so a CUDA reconstruction corrects on the GPU instead of mixing devices."""
        device = torch.device(device)
        if device != self.device:
            self.projector = self.projector.to(device)
            if self.lung_fields is not None:
                self.lung_fields.projector = self.projector
                self.lung_fields.to(device)
            if self.targets is not None:
                self.targets, self.weights = self.targets.to(device), self.weights.to(device)
            self.device = device
        return self

    # ------------------------------------------------------------------ pieces
    def project(self, u: torch.Tensor) -> torch.Tensor:
        return self.projector.forward(u)

    def calibrate(self, u: torch.Tensor) -> None:
        """Fit each view's calibration against the DRR of the batch-mean estimate."""
        pred = self.project(u.mean(0, keepdim=True))[0].cpu().numpy()
        self.calibrations = [fit_view_calibration(obs, pred[k], pinned=self.pinned[k])
                             for k, obs in enumerate(self.observed)]
        tw = [c.target_line_integrals(obs) for c, obs in zip(self.calibrations, self.observed)]
        self.targets = torch.stack([torch.as_tensor(np.asarray(t, np.float32)) for t, _ in tw]).to(self.device)
        self.weights = torch.stack([torch.as_tensor(np.asarray(w, np.float32)) for _, w in tw]).to(self.device)
        self._norm2 = None

    def _due(self) -> bool:
        every = self.cfg.recalibrate_every
        return self.targets is None or self.calls == 0 or (every > 0 and self.calls % every == 0)

    def weighted_residual(self, u: torch.Tensor) -> torch.Tensor:
        """W (A u - L), (B, V, p, p)."""
        return self.weights * (self.project(u) - self.targets)

    def normal(self, u: torch.Tensor) -> torch.Tensor:
        """A^T W^2 A u: the normal operator of ||W (A u - L)||^2."""
        return self.projector.adjoint(self.weights * self.weights * self.project(u))

    def operator_norm2(self, shape) -> float:
        """||W A||^2 by a few power iterations (cached until the next recalibration)."""
        if self._norm2 is None:
            gen = torch.Generator(device=self.device).manual_seed(0)
            v = torch.rand((1, *shape[1:]), generator=gen, device=self.device)
            lam = 1.0
            for _ in range(8):
                w = self.normal(v)
                lam = float(w.norm()) / max(float(v.norm()), 1e-12)
                v = w / max(float(w.norm()), 1e-12)
            self._norm2 = max(lam, 1e-12)
        return self._norm2

    def relative_residual(self, u: torch.Tensor, r: torch.Tensor | None = None) -> list[float]:
        """Per-view ||W (A u - L)|| / ||W L||, batch-mean (``r``: that residual, if already computed)."""
        r = self.weighted_residual(u) if r is None else r
        ref = (self.weights * self.targets)[None]
        num = r.flatten(2).norm(dim=-1).mean(0)
        den = ref.flatten(2).norm(dim=-1).mean(0).clamp_min(1e-12)
        return [float(x) for x in (num / den)]

    def report(self, unit_volume: np.ndarray | torch.Tensor | None = None) -> dict:
        """Calibration per view and the calibrated residual of a final volume (if given)."""
        out = {"config": self.cfg.to_dict(), "views": {}}
        res = None
        if unit_volume is not None and self.targets is not None:
            u = torch.as_tensor(np.asarray(unit_volume, np.float32)) if not torch.is_tensor(unit_volume) \
                else unit_volume.float()
            u = _to_grid(u.to(self.device), self.grid.size)
            res = self.relative_residual(u[None])
        for k, name in enumerate(self.names):
            entry = {"calibration": self.calibrations[k].to_dict() if self.calibrations else None}
            if res is not None:
                entry["relative_residual"] = round(res[k], 5)
            out["views"][name] = entry
        out["steps"] = self.history
        return out

    # ------------------------------------------------------------------ the two guidances
    def _prepare(self, x0_hat: torch.Tensor, stage: str) -> torch.Tensor:
        if stage != self.stage:  # a new stage (or sample): its estimate is a new reference
            self.stage, self.calls = stage, 0
        u = ((x0_hat.detach().float() + 1.0) * 0.5).clamp(0.0, 1.0)
        u = u[:, 0] if u.dim() == 5 else u
        self.to(u.device)
        if self._due():
            self.calibrate(u)
            if self.calls == 0 and self.on_calibrate is not None:  # recalibrations within a stage are not reported
                self.on_calibrate(stage)
        self.calls += 1
        return u

    @staticmethod
    def _back(u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        u = u.clamp(0.0, 1.0) * 2.0 - 1.0
        return (u[:, None] if like.dim() == 5 else u).to(like.dtype)

    def bridge_guidance(self, scheduler) -> "callable":
        """Guidance for `BrownianBridgeScheduler.sample` (Stage I)."""
        delta = scheduler.delta.double()
        delta_max = float(delta.max())

        def guide(x0_hat: torch.Tensor, step_index: int, num_steps: int, t: int) -> torch.Tensor:
            fade = fade_weight(step_index, num_steps, self.cfg.fade_fraction)
            if self.cfg.strength <= 0 or fade <= 0:
                return x0_hat
            with torch.autocast(x0_hat.device.type, enabled=False), torch.no_grad():
                u = self._prepare(x0_hat, "coarse")
                r = self.weighted_residual(u)
                g = self.support(u) * self.projector.adjoint(self.weights * r)
                ag = self.weights * self.project(g)
                gg = g.flatten(1).pow(2).sum(1)
                alpha = gg / ag.flatten(1).pow(2).sum(1).clamp_min(1e-20)
                scale = self.cfg.strength * math.sqrt(max(float(delta[int(t)]), 0.0) / delta_max) * fade
                u_new = u - (scale * alpha).view(-1, 1, 1, 1) * g
                self.history.append({"stage": "coarse", "step": step_index, "t": int(t),
                                     "scale": round(scale, 4),
                                     "relative_residual": [round(v, 5) for v in self.relative_residual(u, r)]})
                return self._back(self._lung_fields(u_new, fade), x0_hat)

        return guide

    def _lung_fields(self, u: torch.Tensor, weight: float) -> torch.Tensor:
        """The lung-field constraint after the consistency step (when the input's fields are known)."""
        if self.lung_fields is None:
            return u
        u = self.lung_fields.correct(u.clamp(0.0, 1.0), self.support(u), weight)
        self.history[-1]["lung_field_violation"] = round(self.lung_fields.violation(u, self.support(u)), 5)
        return u

    def support(self, u: torch.Tensor) -> torch.Tensor:
        """Where corrections may go: the estimate's non-air voxels, dilated by one voxel. Two views
        cannot tell depth, so an unrestricted correction smears every residual along its ray into
        the air around the body; the support keeps it inside the anatomy the network placed."""
        from axonct.io.ct_preprocess import hu_to_unit

        thr = float(hu_to_unit(np.float32(SUPPORT_HU), self.grid))
        body = (u > thr).float()[:, None]
        return torch.nn.functional.max_pool3d(body, 3, stride=1, padding=1)[:, 0]

    def cg_guidance(self) -> "callable":
        """Guidance for `ddim_sample` (Stage II): CG on the data term plus a pull to the estimate."""

        def guide(x0_hat: torch.Tensor, step_index: int, num_steps: int, t: int) -> torch.Tensor:
            fade = fade_weight(step_index, num_steps, self.cfg.fade_fraction) * self.cfg.strength
            if fade <= 0:
                return x0_hat
            with torch.autocast(x0_hat.device.type, enabled=False), torch.no_grad():
                u_hat = self._prepare(x0_hat, "fine")
                gamma = self.cfg.gamma * self.operator_norm2(u_hat.shape)
                s = self.support(u_hat)
                # min over d of ||W (A (u_hat + S d) - L)||^2 + gamma ||S d||^2, from d = 0
                r = self.weighted_residual(u_hat)
                rhs = -s * self.projector.adjoint(self.weights * r)
                d = conjugate_gradient(lambda v: s * self.normal(s * v) + gamma * s * v, rhs,
                                       torch.zeros_like(u_hat), self.cfg.cg_iterations)
                u_new = u_hat + fade * s * d
                self.history.append({"stage": "fine", "step": step_index, "t": int(t), "scale": round(fade, 4),
                                     "relative_residual": [round(v, 5) for v in self.relative_residual(u_hat, r)]})
                return self._back(self._lung_fields(u_new, fade), x0_hat)

        return guide


def fade_weight(step_index: int, num_steps: int, fade_fraction: float) -> float:
    """1 until the last ``fade_fraction`` of the steps, then linearly down to 0 at the last step."""
    if num_steps <= 1 or fade_fraction <= 0:
        return 1.0
    start = (1.0 - fade_fraction) * (num_steps - 1)
    if step_index <= start:
        return 1.0
    return max(0.0, 1.0 - (step_index - start) / max((num_steps - 1) - start, 1e-9))


def conjugate_gradient(apply, rhs: torch.Tensor, x: torch.Tensor, iterations: int) -> torch.Tensor:
    """Batched CG for a symmetric positive definite operator, each batch item on its own."""
    b = x.shape[0]
    r = rhs - apply(x)
    p = r.clone()
    rr = r.flatten(1).pow(2).sum(1)
    for _ in range(iterations):
        ap = apply(p)
        pap = (p * ap).flatten(1).sum(1).clamp_min(1e-30)
        alpha = rr / pap
        x = x + alpha.view(b, 1, 1, 1) * p
        r = r - alpha.view(b, 1, 1, 1) * ap
        rr_new = r.flatten(1).pow(2).sum(1)
        p = r + (rr_new / rr.clamp_min(1e-30)).view(b, 1, 1, 1) * p
        rr = rr_new
    return x


def _to_grid(u: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average a finer unit volume onto the consistency grid (e.g. the SR output)."""
    if u.shape[-1] == size:
        return u
    factor = u.shape[-1] // size
    if factor * size != u.shape[-1]:
        raise ValueError(f"volume of size {u.shape[-1]} is not a multiple of the {size}^3 grid")
    return torch.nn.functional.avg_pool3d(u[None, None], factor)[0, 0]
