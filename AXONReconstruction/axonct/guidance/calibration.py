"""Per-view calibration between the DRR of a volume estimate and an observed radiograph.

A real radiograph went through processing we do not know: a detector log or none, a contrast
curve, a window, and a slightly different magnification and position. Forcing the volume to
reproduce those would put them into the anatomy, so before enforcing consistency each input view
gets a small fitted model

    observed(p) ~= f(warp(L)(p)),   warp(L)(p) = L(c + (p - c - shift) / scale)

i.e. the predicted line-integral image L is magnified by ``scale`` about the image centre c, moved
by ``shift`` = (dy, dx) pixels, and mapped through a monotone intensity curve f:

- ``affine``: f(L) = a L + b. A log-domain image (the detector's -log transmission, as in
  ``xray_realism.simulate_radiograph``), linearly windowed: the simplest, preferred on ties.
- ``gamma``: f(L) = a (L / l_ref)^g + b, g in [0.3, 3]. A log-domain image through a power
  contrast curve (LUT). ``l_ref`` (a high percentile of L) only keeps a, b well scaled.
- ``log``: f(L) = a (1 - exp(-k L)) + b, k > 0. An intensity-domain image: the detector signal is
  the transmission exp(-k L) (k absorbs the effective energy / units), never log-transformed,
  displayed bright = attenuating. It saturates in dense regions where the log-domain models do not.

Pixels whose observation is clipped (at the image's 0 or 1) are censored: they only say the truth
is beyond the clip, so the fit penalises a prediction only on the wrong side of it, and the
inverse gives them no weight. A validity mask removes collimated borders and other junk.

A view rendered in the model's own projection geometry (a DRR written by `axon drr`) has no unknown
magnification or position: its geometry is pinned (scale 1, no shift) and only f is fitted. Left
free, the fit would match the view to the network's estimate, so a body the network drew a few per
cent too wide would be kept by the correction instead of removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MODELS = ("affine", "gamma", "log")
SCALE_RANGE = (0.9, 1.1)
SHIFT_FRACTION = 0.08  # |shift| <= this fraction of the image side
GAMMA_RANGE = (0.3, 3.0)
KAPPA_RANGE = (0.02, 20.0)  # k * l_ref, the dimensionless curvature of the transmission model
CLIP_EPS = 1e-3  # observed values within this of 0 or 1 count as clipped
AFFINE_TIE = (0.05, 2e-3)  # affine wins if its rmse <= best * (1 + rel) + abs
SEARCH_SIDE = 32  # the coarse geometry search runs at most at this resolution (then refined at full)


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def _basis(model: str, L: torch.Tensor, theta: float, l_ref: float) -> torch.Tensor:
    """phi(L) with f = a phi + b; theta is g (gamma) or kappa = k l_ref (log)."""
    if model == "affine":
        return L
    if model == "gamma":
        return (L.clamp_min(0) / l_ref) ** theta
    if model == "log":
        return 1.0 - torch.exp(-(theta / l_ref) * L.clamp_min(0))
    raise ValueError(f"unknown intensity model {model!r}; choose from {MODELS}")


def _warp(img: torch.Tensor, scale, shift, padding: str = "zeros") -> torch.Tensor:
    """Batch warp of (N, 1, H, W): out(p) = img(c + (p - c - shift) / scale), bilinear.

    ``scale`` (N,) and ``shift`` (N, 2) as (dy, dx) in pixels of this image.
    """
    n, _, h, w = img.shape
    scale = torch.as_tensor(scale, dtype=img.dtype, device=img.device).reshape(-1)
    shift = torch.as_tensor(shift, dtype=img.dtype, device=img.device).reshape(-1, 2)
    ys = torch.arange(h, dtype=img.dtype, device=img.device) - (h - 1) / 2.0
    xs = torch.arange(w, dtype=img.dtype, device=img.device) - (w - 1) / 2.0
    sy = (ys[None, :, None] - shift[:, 0, None, None]) / scale[:, None, None]  # source offsets from c
    sx = (xs[None, None, :] - shift[:, 1, None, None]) / scale[:, None, None]
    sy, sx = torch.broadcast_tensors(sy, sx)
    grid = torch.stack([2.0 * sx / w, 2.0 * sy / h], dim=-1)  # align_corners=False: centre offset -> [-1, 1]
    if img.shape[0] != grid.shape[0]:
        img = img.expand(grid.shape[0], -1, -1, -1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def border_mask(observed, eps: float = CLIP_EPS) -> np.ndarray:
    """1 inside, 0 on uniform black or white border bands (collimation, padding) of an image."""
    a = np.asarray(observed.detach().cpu() if isinstance(observed, torch.Tensor) else observed, np.float64)
    m = np.ones(a.shape, np.float32)
    flat = lambda v: np.all(v <= a.min() + eps) or np.all(v >= a.max() - eps)  # noqa: E731
    h, w = a.shape
    top = next((i for i in range(h) if not flat(a[i])), h)
    bottom = next((i for i in range(h) if not flat(a[h - 1 - i])), h)
    left = next((j for j in range(w) if not flat(a[:, j])), w)
    right = next((j for j in range(w) if not flat(a[:, w - 1 - j])), w)
    m[:top] = 0
    m[h - bottom:] = 0
    m[:, :left] = 0
    m[:, w - right:] = 0
    return m


@dataclass
class ViewCalibration:
    """Fitted geometry + intensity map for one view (see the module docstring for the model)."""

    model: str
    params: dict  # a, b and g (gamma) or k (log); l_ref
    shift_px: tuple[float, float]  # (dy, dx) in pixels of the fitted image
    scale: float
    residual_rmse: float
    image_shape: tuple[int, int] = (0, 0)
    candidates: dict = field(default_factory=dict)  # model -> rmse of every model tried

    # ------------------------------------------------------------------ intensity map
    def _theta(self) -> float:
        p = self.params
        return {"affine": 0.0, "gamma": p.get("g", 1.0), "log": p.get("k", 0.0) * p["l_ref"]}[self.model]

    def intensity(self, L):
        """f(L) without the geometric warp (torch or numpy, any shape)."""
        t = _as_tensor(L)
        out = self.params["a"] * _basis(self.model, t.to(torch.float64) if not t.is_floating_point() else t,
                                        self._theta(), self.params["l_ref"]) + self.params["b"]
        return out if isinstance(L, torch.Tensor) else out.numpy()

    def inverse_intensity(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, valid) with f(L) = image where f is invertible; valid is 0 where it is not."""
        img = _as_tensor(image).to(torch.float64)
        a, b = self.params["a"], self.params["b"]
        t = (img - b) / a  # normalised response phi(L)
        valid = torch.ones_like(img)
        if self.model == "affine":
            L = t
        elif self.model == "gamma":
            L = self.params["l_ref"] * t.clamp_min(0) ** (1.0 / self.params["g"])
        else:
            sat = t >= 1.0 - 1e-6  # beyond the transmission model's range: infinitely dense
            L = -torch.log1p(-t.clamp(0.0, 1.0 - 1e-6)) / self.params["k"]
            valid = torch.where(sat, torch.zeros_like(valid), valid)
        # below f(0) is air plus noise: the nearest feasible line integral is 0
        L = L.clamp_min(0)
        # clipped observations are censored: the low clip only when it hides a positive L
        l_at_low = float(self.inverse_scalar(CLIP_EPS))
        l_tol = 0.01 * self.params["l_ref"]
        low = img <= CLIP_EPS
        lo_bad = low & (l_at_low > l_tol)
        hi_bad = img >= 1.0 - CLIP_EPS
        valid = torch.where(lo_bad | hi_bad, torch.zeros_like(valid), valid)
        return L, valid

    def inverse_scalar(self, value: float) -> float:
        t = (value - self.params["b"]) / self.params["a"]
        if self.model == "affine":
            return t
        if self.model == "gamma":
            return self.params["l_ref"] * max(t, 0.0) ** (1.0 / self.params["g"])
        return -math.log1p(-min(max(t, 0.0), 1.0 - 1e-6)) / self.params["k"]

    # ------------------------------------------------------------------ full model
    def warp(self, L, padding: str = "border"):
        """The predicted image moved into the observed image's frame (geometry only)."""
        t = _as_tensor(L)
        lead, (h, w) = t.shape[:-2], t.shape[-2:]
        flat = t.reshape(-1, 1, h, w)
        flat = flat if flat.is_floating_point() else flat.to(torch.float64)
        n = flat.shape[0]
        out = _warp(flat, torch.full((n,), self.scale), torch.tensor(self.shift_px).expand(n, 2), padding)
        out = out.reshape(*lead, h, w)
        return out if isinstance(L, torch.Tensor) else out.numpy()

    def apply(self, L):
        """Predicted observed image f(warp(L)) for line integrals L (..., H, W), torch (differentiable) or numpy."""
        return self.intensity(self.warp(L))

    def target_line_integrals(self, observed, mask=None):
        """The observation in line-integral units on the projector's pixel grid, and its weight.

        Inverse intensity map, then inverse warp. Weight is 0 where that is undefined: outside
        the warped field, censored (clipped) or saturated values, and where ``mask`` is 0.
        """
        obs = _as_tensor(observed).to(torch.float64)
        if obs.dim() != 2:
            raise ValueError(f"observed must be a 2-D image, got shape {tuple(obs.shape)}")
        L, valid = self.inverse_intensity(obs)
        if mask is not None:
            m = _as_tensor(mask).to(torch.float64)
            if m.shape != obs.shape:
                raise ValueError(f"mask shape {tuple(m.shape)} != observed shape {tuple(obs.shape)}")
            valid = valid * (m > 0)
        # inverse warp: q -> c + scale (q - c) + shift, i.e. a warp with 1/scale and -shift/scale
        inv_scale = torch.tensor([1.0 / self.scale], dtype=torch.float64)
        inv_shift = -torch.tensor(self.shift_px, dtype=torch.float64)[None] / self.scale
        both = torch.stack([L * valid, valid])[:, None]  # zero the invalid L so it cannot leak in
        back = _warp(both, inv_scale.expand(2), inv_shift.expand(2, 2), "zeros")[:, 0]
        weight = (back[1] >= 1.0 - 1e-6).to(torch.float64)
        target = torch.where(weight > 0, back[0], torch.zeros_like(back[0]))
        if isinstance(observed, torch.Tensor):
            return target.to(observed.dtype if observed.is_floating_point() else torch.float32), weight.to(target.dtype)
        return target.numpy().astype(np.float32), weight.numpy().astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "params": {k: float(v) for k, v in self.params.items()},
            "shift_px": [float(s) for s in self.shift_px],
            "scale": float(self.scale),
            "residual_rmse": float(self.residual_rmse),
            "image_shape": list(self.image_shape),
            "candidates_rmse": {k: float(v) for k, v in self.candidates.items()},
        }


# ---------------------------------------------------------------------- fitting
def _closed_form(phi: torch.Tensor, obs: torch.Tensor, w: torch.Tensor):
    """Weighted least squares obs ~ a phi + b along the last dim; returns a, b, mse (batched)."""
    sw = w.sum(-1).clamp_min(1e-12)
    mp = (w * phi).sum(-1) / sw
    mo = (w * obs).sum(-1) / sw
    dp = phi - mp[..., None]
    do = obs - mo[..., None]
    var = (w * dp * dp).sum(-1)
    a = (w * dp * do).sum(-1) / var.clamp_min(1e-12)
    b = mo - a * mp
    mse = (w * (obs - a[..., None] * phi - b[..., None]) ** 2).sum(-1) / sw
    return a, b, mse


def _theta_grid(model: str) -> list[float]:
    if model == "affine":
        return [0.0]
    lo, hi = GAMMA_RANGE if model == "gamma" else KAPPA_RANGE
    return list(np.geomspace(lo, hi, 9))


def _coarse_search(obs, L, w, models, l_ref, pinned: bool = False):
    """Grid search on scale x shift (and the model's curvature) with closed-form a, b, at <= 32 px;
    ``pinned``: scale 1 and no shift only."""
    h, w_ = obs.shape
    factor = max(1, int(math.ceil(max(h, w_) / SEARCH_SIDE)))
    pool = (lambda x: F.avg_pool2d(x[None, None], factor)[0, 0]) if factor > 1 else (lambda x: x)
    o, l, m = (pool(x).float() for x in (obs, L, w))
    if pinned:
        scales, dys, dxs = np.ones(1), np.zeros(1), np.zeros(1)
    else:
        span_y, span_x = SHIFT_FRACTION * h / factor, SHIFT_FRACTION * w_ / factor
        scales = np.linspace(*SCALE_RANGE, 5)
        dys, dxs = np.linspace(-span_y, span_y, 11), np.linspace(-span_x, span_x, 11)
    sg, yg, xg = np.meshgrid(scales, dys, dxs, indexing="ij")
    sc = torch.from_numpy(sg.ravel()).float()
    sh = torch.from_numpy(np.stack([yg.ravel(), xg.ravel()], -1)).float()
    both = _warp(torch.stack([l, torch.ones_like(l)])[:, None].repeat_interleave(len(sc), 0),
                 sc.repeat(2), sh.repeat(2, 1), "zeros")[:, 0]
    warped, cover = both[: len(sc)].flatten(1), both[len(sc):].flatten(1)
    weight = m.flatten()[None] * (cover >= 1.0 - 1e-6)
    ob = o.flatten()[None]
    best = {}
    for model in models:
        for theta in _theta_grid(model):
            a, b, mse = _closed_form(_basis(model, warped, theta, l_ref), ob, weight)
            i = int(torch.argmin(mse))
            if model not in best or float(mse[i]) < best[model][0]:
                best[model] = (float(mse[i]), float(a[i]), float(b[i]), theta, float(sc[i]),
                               (float(sh[i, 0]) * factor, float(sh[i, 1]) * factor))
    return best


def _residuals(obs, L, w, model, l_ref, a, b, theta, scale, shift):
    """Weighted residuals with censoring: clipped observations only penalise the wrong side."""
    warped, cover = _warp(torch.stack([L, torch.ones_like(L)])[:, None], torch.tensor([scale, scale]),
                          torch.tensor([shift, shift]), "zeros")[:, 0]
    pred = a * _basis(model, warped, theta, l_ref) + b
    r = obs - pred
    r = torch.where(obs <= CLIP_EPS, torch.clamp(r, max=0.0), r)  # truth <= clip: only pred > obs is wrong
    r = torch.where(obs >= 1.0 - CLIP_EPS, torch.clamp(r, min=0.0), r)
    ww = w * (cover >= 1.0 - 1e-6)
    return r, ww


def _refine(obs, L, w, model, l_ref, start, pinned: bool = False):
    """Bounded least squares on (a, b, curvature, scale, dy, dx) from the coarse optimum; a
    ``pinned`` geometry keeps scale and shift out of the unknowns."""
    from scipy.optimize import least_squares

    _, a, b, theta, scale, shift = start
    h, w_ = obs.shape
    sy, sx = SHIFT_FRACTION * h, SHIFT_FRACTION * w_
    has_theta = model != "affine"
    lo_t, hi_t = (GAMMA_RANGE if model == "gamma" else KAPPA_RANGE) if has_theta else (1.0, 1.0)
    # the geometry's unknowns (scale, dy, dx): start, bounds and finite-difference steps; none when pinned
    geo_x0, geo_lo, geo_hi, geo_steps = ([], [], [], []) if pinned else (
        [scale, shift[0], shift[1]], [SCALE_RANGE[0], -sy, -sx], [SCALE_RANGE[1], sy, sx], [1e-3, 0.05, 0.05])
    x0 = [a, b] + ([math.log(theta)] if has_theta else []) + geo_x0
    lower = [-np.inf, -np.inf] + ([math.log(lo_t)] if has_theta else []) + geo_lo
    upper = [np.inf, np.inf] + ([math.log(hi_t)] if has_theta else []) + geo_hi
    x0 = np.clip(x0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)

    def unpack(x):
        th = math.exp(x[2]) if has_theta else 0.0
        s, dy, dx = (1.0, 0.0, 0.0) if pinned else x[-3:]
        return x[0], x[1], th, float(s), (float(dy), float(dx))

    # The weights of the starting geometry are kept fixed during the refinement so that the
    # objective cannot improve by pushing pixels out of the field.
    _, w_fixed = _residuals(obs, L, w, model, l_ref, *unpack(x0))
    sq = torch.sqrt(w_fixed)

    def fun(x):
        r, _ = _residuals(obs, L, w, model, l_ref, *unpack(x))
        return (sq * r).flatten().numpy()

    steps = np.array([1e-4, 1e-4] + ([1e-3] if has_theta else []) + geo_steps)
    res = least_squares(fun, x0, bounds=(lower, upper), x_scale=np.maximum(np.abs(x0), steps * 20),
                        diff_step=steps / np.maximum(np.abs(x0), 1e-3), max_nfev=200, method="trf")
    a, b, th, s, sh = unpack(res.x)
    r, ww = _residuals(obs, L, w, model, l_ref, a, b, th, s, sh)
    rmse = float(torch.sqrt((ww * r * r).sum() / ww.sum().clamp_min(1e-12)))
    return rmse, a, b, th, s, sh


def fit_view_calibration(observed, predicted_L, mask=None, models: Sequence[str] = MODELS,
                         pinned: bool = False) -> ViewCalibration:
    """Fit geometry (scale, shift) and a monotone intensity map from the DRR L to the observed view.

    ``observed``: (H, W) in [0, 1]; ``predicted_L``: (H, W) line integrals on the same pixel grid
    (use `sparse_projector.downsample_view_image` to match resolutions first). ``mask``: weights
    in [0, 1] (0 = ignore); None detects uniform collimation / padding borders. ``pinned``: the
    view is in the model's own geometry, so scale stays 1 and shift 0.
    """
    obs = _as_tensor(observed).detach().cpu().to(torch.float64)
    L = _as_tensor(predicted_L).detach().cpu().to(torch.float64)
    if obs.dim() != 2 or L.dim() != 2:
        raise ValueError(f"observed and predicted_L must be 2-D images, got {tuple(obs.shape)} and {tuple(L.shape)}")
    if obs.shape != L.shape:
        raise ValueError(f"observed {tuple(obs.shape)} and predicted_L {tuple(L.shape)} differ in shape; "
                         "resample one of them (downsample_view_image / resampled_view) first")
    models = tuple(models)
    if not models or any(m not in MODELS for m in models):
        raise ValueError(f"models must be a non-empty subset of {MODELS}, got {models}")
    w = torch.from_numpy(border_mask(obs.numpy())).to(torch.float64) if mask is None else \
        _as_tensor(mask).detach().cpu().to(torch.float64)
    if w.shape != obs.shape:
        raise ValueError(f"mask shape {tuple(w.shape)} != observed shape {tuple(obs.shape)}")
    if not torch.isfinite(obs).all() or not torch.isfinite(L).all():
        raise ValueError("observed and predicted_L must be finite")
    w = w.clamp(0, 1)
    if float(w.sum()) < 16:
        raise ValueError("the mask leaves fewer than 16 pixels to calibrate on")
    l_ref = float(torch.quantile(L[w > 0].flatten()[:1_000_000], 0.99))
    if not l_ref > 0:
        raise ValueError("predicted_L is zero on the valid region: nothing to calibrate against")

    coarse = _coarse_search(obs, L, w, models, l_ref, pinned)
    fits = {m: _refine(obs, L, w, m, l_ref, coarse[m], pinned) for m in models}
    rmse = {m: f[0] for m, f in fits.items()}
    best = min(rmse, key=rmse.get)
    if "affine" in rmse and rmse["affine"] <= rmse[best] * (1 + AFFINE_TIE[0]) + AFFINE_TIE[1]:
        best = "affine"
    r, a, b, th, s, sh = fits[best]
    params = {"a": a, "b": b, "l_ref": l_ref}
    if best == "gamma":
        params["g"] = th
    elif best == "log":
        params["k"] = th / l_ref
    return ViewCalibration(best, params, sh, s, r, tuple(obs.shape), rmse)


def fit_calibrations(views, view_mask, predicted, masks=None, models: Sequence[str] = MODELS
                     ) -> list[ViewCalibration | None]:
    """One calibration per view of a (V, P, P) stack; views whose mask entry is 0 give None."""
    v = _as_tensor(views)
    p = _as_tensor(predicted)
    vm = _as_tensor(view_mask).reshape(-1)
    if v.dim() != 3 or v.shape != p.shape:
        raise ValueError(f"views {tuple(v.shape)} and predicted {tuple(p.shape)} must both be (V, P, P)")
    if vm.numel() != v.shape[0]:
        raise ValueError(f"view_mask has {vm.numel()} entries for {v.shape[0]} views")
    out: list[ViewCalibration | None] = []
    for i in range(v.shape[0]):
        if float(vm[i]) <= 0:
            out.append(None)
            continue
        out.append(fit_view_calibration(v[i], p[i], None if masks is None else masks[i], models))
    return out
