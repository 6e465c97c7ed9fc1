"""Turn clean DRR line integrals into images that look like real, processed radiographs.

Clean DRRs are the line integral of attenuation; real detectors see exp(-integral) photons plus
scatter and quantum noise, through a blurry detector, followed by the vendor's processing: log,
dynamic range compression / local equalisation, (multi-frequency) unsharp masking, gamma and LUT
(S-curve or window-level), collimation and burned-in markers/text. Optional in-plane geometric
jitter simulates patient size and positioning. Each effect is switchable, its parameters are drawn
per image, and every random draw comes from one seeded generator, so a sample is reproducible from
its seed. The chain is batched over [B, H, W] and runs on the input's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from axonct.transforms.normalize import robust_unit

Range = tuple[float, float]


@dataclass
class RealismConfig:
    """Ranges are sampled per image (uniformly unless noted); an effect's switch False disables it."""

    # acquisition geometry: OFF by default, the 3D networks need geometrically exact views
    geometric: bool = False  # in-plane rotation/scale/shift of the view (patient size and position)
    rotation_deg: float = 5.0  # rotation uniform in +-rotation_deg (positive: counter-clockwise on screen)
    scale_range: Range = (0.9, 1.1)  # anatomy magnification, log-uniform (<1: small patient in the detector)
    shift_frac: float = 0.05  # shift uniform in +- this fraction of each side
    geometric_unexposed_probability: float = 0.5  # area outside the moved field reads zero flux (white), else air
    # physics
    beer_lambert: bool = True  # exponential attenuation, then detector log
    scatter: bool = True
    scatter_to_primary: Range = (0.05, 0.4)
    scatter_sigma_frac: Range = (0.08, 0.2)  # kernel width as a fraction of the image side
    noise: bool = True
    photons_per_pixel: Range = (3e3, 3e4)  # unattenuated flux; ~1e4 is typical
    detector_blur: bool = True
    blur_sigma_px: Range = (0.3, 1.2)
    # vendor processing (processed domain, [0, 1])
    local_eq: bool = True  # dynamic range compression or CLAHE-like local equalisation
    local_eq_probability: float = 0.2
    local_eq_strength: Range = (0.3, 0.8)  # fraction of the blurred copy removed / local-normalised mix
    local_eq_sigma_frac: Range = (0.05, 0.25)  # width of the very blurred copy, fraction of the side
    local_eq_clahe_probability: float = 0.5  # CLAHE-like local normalisation instead of plain DRC
    unsharp: bool = True  # mild single-band unsharp mask (the image's case unless strong is drawn)
    unsharp_amount: Range = (0.0, 1.0)
    unsharp_sigma_frac: Range = (0.02, 0.06)
    strong_unsharp: bool = True  # vendor multi-frequency edge enhancement (replaces the mild one)
    strong_unsharp_probability: float = 0.25
    strong_unsharp_amount: Range = (0.5, 3.0)  # total amount, split randomly over the bands
    strong_unsharp_sigma_frac: Range = (0.005, 0.15)  # band kernel widths, log-uniform
    strong_unsharp_bands: int = 3
    gamma: bool = True
    gamma_range: Range = (0.6, 1.6)
    lut: bool = True  # random monotone LUT: S-curve or window-level with clipping
    lut_probability: float = 0.3
    lut_sigmoid_probability: float = 0.5  # S-curve, else window-level
    lut_sigmoid_slope: Range = (4.0, 12.0)
    lut_center: Range = (0.4, 0.6)  # S-curve centre / window level
    lut_window_width: Range = (0.7, 1.0)  # window width; values outside clip to 0 or 1
    invert: bool = False  # simulate a MONOCHROME1 image read without inversion
    collimation: bool = True
    collimation_probability: float = 0.3
    collimation_max_frac: float = 0.12
    markers: bool = True  # burned-in saturated side marker (L/R) and text-like blocks near the edges
    marker_probability: float = 0.25
    marker_size_frac: Range = (0.04, 0.09)  # marker letter height, fraction of the image side
    marker_text_probability: float = 0.5  # with a marker, also a line of text along the top/bottom edge
    extra: dict = field(default_factory=dict)

    @classmethod
    def off(cls) -> "RealismConfig":
        return cls(
            geometric=False, beer_lambert=False, scatter=False, noise=False, detector_blur=False,
            local_eq=False, unsharp=False, strong_unsharp=False, gamma=False, lut=False, invert=False,
            collimation=False, markers=False,
        )

    @classmethod
    def clinical(cls) -> "RealismConfig":
        """Strong clinical CR/DX processing at realistic rates (geometry still off)."""
        return cls(
            strong_unsharp_probability=0.5, local_eq_probability=0.4, lut_probability=0.6,
            marker_probability=0.5, collimation_probability=0.4, collimation_max_frac=0.15,
        )

    @classmethod
    def mild(cls) -> "RealismConfig":
        """The chain before clinical processing: physics, mild unsharp, gamma, collimation only."""
        return cls(local_eq=False, strong_unsharp=False, lut=False, markers=False)

    def only(self, **switches: bool) -> "RealismConfig":
        return replace(RealismConfig.off(), **switches)


def _uniform(r: Range, gen: torch.Generator) -> float:
    lo, hi = r
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _uniform_b(r: Range, shape, gen: torch.Generator) -> torch.Tensor:
    lo, hi = r
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def _log_uniform_b(r: Range, shape, gen: torch.Generator) -> torch.Tensor:
    lo, hi = math.log(r[0]), math.log(r[1])
    return torch.exp(lo + (hi - lo) * torch.rand(shape, generator=gen))


def _per_image(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] parameter -> [B, 1, 1, 1] on the image's device and dtype."""
    return v.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def gaussian_blur(img: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding; sigma (px) is a number or one per
    image ([B] tensor)."""
    b, c, h, w = img.shape
    if torch.is_tensor(sigma) and sigma.numel() > 1:
        sig = sigma.detach().reshape(-1).to(device=img.device, dtype=img.dtype).clamp_min(1e-3)
        smax = float(sig.max())
    else:
        smax = float(sigma)
        if smax <= 0:
            return img
        sig = None
    radius = max(1, int(math.ceil(3 * smax)))
    radius = min(radius, w - 1, h - 1)
    x = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    if sig is None:
        k = torch.exp(-0.5 * (x / smax) ** 2)
        k = (k / k.sum()).view(1, 1, 1, -1)
        groups, out = 1, img.reshape(b * c, 1, h, w)
    else:
        k = torch.exp(-0.5 * (x[None] / sig[:, None]) ** 2)
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0).view(b * c, 1, 1, -1)
        groups, out = b * c, img.reshape(1, b * c, h, w)
    out = F.pad(out, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, k, groups=groups)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    out = F.conv2d(out, k.transpose(-1, -2), groups=groups)
    return out.reshape(b, c, h, w)


def _broad_blur(img: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur for wide kernels (per-image sigma in px, [B]): pre-filter, pool by an integer
    factor k <= sigma / 3, blur the rest at low resolution, upsample bilinearly. The pre-filter, box
    and linear interpolation add about k^2 / 2 of variance, which the low-resolution blur leaves out."""
    h, w = img.shape[-2:]
    k = int(min(float(sigma.min()) / 3, min(h, w) / 16))
    if k < 2:
        return gaussian_blur(img, sigma)
    small = F.avg_pool2d(gaussian_blur(img, 0.5 * k), k, stride=k, ceil_mode=True, count_include_pad=False)
    rest = (sigma.to(torch.float32) ** 2 - 0.5 * k * k).clamp_min(0.25 * k * k).sqrt() / k
    small = gaussian_blur(small, rest)
    return F.interpolate(small, scale_factor=k, mode="bilinear", align_corners=False)[..., :h, :w]


# ---------------------------------------------------------------------------------------------
# 2D view geometry (shared with mask augmentation: apply the same theta to images and labels)


def view_transform(rotation_deg: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                   size: tuple[int, int] | None = None) -> torch.Tensor:
    """affine_grid theta [B, 2, 3] that rotates (degrees, counter-clockwise on screen), scales
    (about the image centre, >1 enlarges) and then shifts (fractions of width/height, +x right,
    +y down) the image content. rotation_deg, scale: [B]; shift: [B, 2]; size (H, W) for non-square
    images (default square)."""
    rot = torch.as_tensor(rotation_deg, dtype=torch.float32).reshape(-1)
    s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    t = torch.as_tensor(shift, dtype=torch.float32).reshape(-1, 2)
    h, w = size if size is not None else (1, 1)
    a = torch.deg2rad(rot)
    cos, sin = torch.cos(a), torch.sin(a)
    # output -> input map in normalised coordinates: D^-1 (sR)^-1 D, D = diag(W, H) / 2
    theta = torch.zeros(rot.shape[0], 2, 3)
    theta[:, 0, 0] = cos / s
    theta[:, 0, 1] = -sin * (h / w) / s
    theta[:, 1, 0] = sin * (w / h) / s
    theta[:, 1, 1] = cos / s
    theta[:, :, 2] = -(theta[:, :, :2] @ (2 * t)[..., None])[..., 0]
    return theta


def random_view_transform(batch: int, gen: torch.Generator, rotation_deg: float, scale_range: Range,
                          shift_frac: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Random per-image theta [B, 2, 3] (CPU): rotation uniform in +-rotation_deg, scale log-uniform
    in scale_range, shift uniform in +-shift_frac of each side."""
    rot = _uniform_b((-rotation_deg, rotation_deg), batch, gen)
    scale = _log_uniform_b(scale_range, batch, gen)
    shift = _uniform_b((-shift_frac, shift_frac), (batch, 2), gen)
    return view_transform(rot, scale, shift, size)


def apply_view_transform(images: torch.Tensor, theta: torch.Tensor, fill: float = 0.0,
                         mode: str = "bilinear") -> torch.Tensor:
    """Warp [B, H, W] or [B, C, H, W] (or [H, W] with a [1, 2, 3] theta) by theta; pixels from outside
    the image take ``fill``. Use mode="bilinear" for images and "nearest" for label masks (bool or
    integer masks come back in their dtype)."""
    dim, dtype = images.dim(), images.dtype
    x = images
    if dim == 2:
        x = x[None]
    if x.dim() == 3:
        x = x[:, None]
    x = x.float()
    theta = theta.to(device=x.device, dtype=x.dtype).reshape(-1, 2, 3).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x - fill, grid, mode=mode, padding_mode="zeros", align_corners=False) + fill
    if dim == 3:
        out = out[:, 0]
    elif dim == 2:
        out = out[0, 0]
    if dtype == torch.bool:
        return out > 0.5
    if not dtype.is_floating_point:
        return out.round().to(dtype)
    return out.to(dtype)


# ---------------------------------------------------------------------------------------------
# burned-in markers

_GLYPHS = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
}


def _bitmap(rows) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r] for r in rows])


def _scaled(bits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(bits[None, None].float(), size=(height, width), mode="nearest")[0, 0] > 0.5


def _paste(mask: torch.Tensor, glyph: torch.Tensor, y0: int, x0: int) -> None:
    h, w = mask.shape
    gh, gw = glyph.shape
    ya, xa, yb, xb = max(0, y0), max(0, x0), min(h, y0 + gh), min(w, x0 + gw)
    if ya < yb and xa < xb:
        mask[ya:yb, xa:xb] |= glyph[ya - y0:yb - y0, xa - x0:xb - x0]


def random_marker_mask(batch: int, height: int, width: int, gen: torch.Generator, cfg: RealismConfig,
                       field: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [B, H, W] (CPU) of burned-in markers: with cfg.marker_probability an L/R letter near a
    random corner and, with cfg.marker_text_probability, a line of letter-like blocks along the top
    or bottom edge; sized relative to the image. ``field`` [B, 4] (top, bottom, left, right border
    widths in px) keeps them inside the exposed field."""
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    side = min(height, width)
    for b in range(batch):
        u = torch.rand(12, generator=gen).tolist()
        if u[0] >= cfg.marker_probability:
            continue
        top, bottom, left, right = (int(v) for v in field[b]) if field is not None else (0, 0, 0, 0)
        lo, hi = cfg.marker_size_frac
        gh = max(5, round((lo + (hi - lo) * u[1]) * side))
        glyph = _scaled(_bitmap(_GLYPHS["L" if u[2] < 0.5 else "R"]), gh, max(3, round(gh * 5 / 7)))
        my, mx = round((0.02 + 0.06 * u[3]) * side), round((0.02 + 0.06 * u[4]) * side)
        at_top, at_left = u[5] < 0.5, u[6] < 0.5
        y0 = top + my if at_top else height - bottom - my - glyph.shape[0]
        x0 = left + mx if at_left else width - right - mx - glyph.shape[1]
        _paste(mask[b], glyph, y0, x0)
        if u[7] < cfg.marker_text_probability:
            n = 3 + int(u[8] * 10)
            ch = max(4, round(gh * (0.5 + 0.3 * u[9])))
            bits = torch.rand(n, 7, 5, generator=gen) < 0.5
            line = torch.cat([torch.cat([c, torch.zeros(7, 1, dtype=torch.bool)], 1) for c in bits], 1)[:, :-1]
            cw = ch * 6 / 7  # per character incl. spacing
            text = _scaled(line, ch, max(1, round(cw * n - ch / 7)))
            text = text[:, : max(1, int(0.7 * (width - left - right)))]
            ty = top + my if not at_top else height - bottom - my - ch  # edge opposite to the letter
            span = max(0, width - left - right - 2 * mx - text.shape[1])
            tx = left + mx + int(u[10] * span)
            _paste(mask[b], text, ty, tx)
    return mask


# ---------------------------------------------------------------------------------------------


def _geometric_jitter(x: torch.Tensor, cfg: RealismConfig, gen: torch.Generator):
    """(x, theta, white): the view moved in-plane (air enters from outside), its transform, and
    where the moved field leaves the detector unexposed (reads white) rather than seeing air."""
    bsz, _, h, w = x.shape
    dev = x.device
    theta = view_transform(torch.zeros(bsz), torch.ones(bsz), torch.zeros(bsz, 2)).to(dev)
    white = torch.zeros(bsz, 1, h, w, dtype=torch.bool, device=dev)  # reads as unexposed (1)
    if cfg.geometric:
        theta = random_view_transform(bsz, gen, cfg.rotation_deg, cfg.scale_range, cfg.shift_frac,
                                      size=(h, w)).to(dev)
        unexposed = torch.rand(bsz, generator=gen) < cfg.geometric_unexposed_probability
        x = apply_view_transform(x, theta, fill=0.0)  # outside the field: no attenuation (air)
        inside = apply_view_transform(torch.ones_like(x), theta, fill=0.0) > 0.5
        white = ~inside & unexposed.to(dev).view(-1, 1, 1, 1)
    return x, theta, white


def _acquisition(x: torch.Tensor, cfg: RealismConfig, gen: torch.Generator) -> torch.Tensor:
    """Line integrals -> detector: exp(-x) photons with scatter, quantum noise and detector blur,
    then the detector's log (or, without Beer-Lambert, noise and blur on the integrals)."""
    bsz, side, dev = x.shape[0], x.shape[-1], x.device
    if cfg.beer_lambert:
        intensity = torch.exp(-x)
        if cfg.scatter:
            spr = _per_image(_uniform_b(cfg.scatter_to_primary, bsz, gen), x)
            sig = _uniform_b(cfg.scatter_sigma_frac, bsz, gen) * side
            # scatter is a broad blur of the primary, scaled so that the scatter-to-primary ratio
            # holds under the body (where it matters most)
            intensity = intensity + spr * _broad_blur(intensity, sig)
        if cfg.noise:
            photons = _per_image(_uniform_b(cfg.photons_per_pixel, bsz, gen), x)
            counts = torch.poisson((intensity * photons).cpu(), generator=gen).to(dev)
            intensity = counts.clamp_min(0.5) / photons
        if cfg.detector_blur:
            intensity = gaussian_blur(intensity, _uniform_b(cfg.blur_sigma_px, bsz, gen))
        return -torch.log(intensity.clamp_min(1e-6))
    if cfg.noise:
        x = x + torch.randn(x.shape, generator=gen).to(dev) * 0.01 * x.amax()
    if cfg.detector_blur:
        x = gaussian_blur(x, _uniform_b(cfg.blur_sigma_px, bsz, gen))
    return x


def _local_equalisation(x: torch.Tensor, cfg: RealismConfig, gen: torch.Generator) -> torch.Tensor:
    """Dynamic range compression or CLAHE-like local normalisation on some images (drawn always)."""
    bsz, side = x.shape[0], x.shape[-1]
    on = _per_image(torch.rand(bsz, generator=gen) < cfg.local_eq_probability, x).bool()
    strength = _per_image(_uniform_b(cfg.local_eq_strength, bsz, gen), x)
    sig = _uniform_b(cfg.local_eq_sigma_frac, bsz, gen) * side
    clahe = _per_image(torch.rand(bsz, generator=gen) < cfg.local_eq_clahe_probability, x).bool()
    if bool(on.any()):
        mean = _broad_blur(x, sig)
        drc = x - strength * mean  # dynamic range compression: keep detail, flatten large scales
        sd = (_broad_blur(x * x, sig) - mean**2).clamp_min(0).sqrt()
        local = robust_unit((x - mean) / (sd + 0.1))  # the 0.1 bounds the gain like a clip limit
        eq = torch.where(clahe, (1 - strength) * x + strength * local, drc)
        x = torch.where(on, robust_unit(eq), x)
    return x


def _unsharp_bands(cfg: RealismConfig, gen: torch.Generator, bsz: int, side: int):
    """(amounts [B, bands], sigmas [B, bands] px, strong [B]): the vendor's multi-frequency edge
    enhancement where drawn, else the mild single-band mask in band 0."""
    bands = max(1, int(cfg.strong_unsharp_bands))
    amounts = torch.zeros(bsz, bands)
    sigmas = torch.ones(bsz, bands)
    strong = torch.zeros(bsz, dtype=torch.bool)
    if cfg.strong_unsharp:
        strong = torch.rand(bsz, generator=gen) < cfg.strong_unsharp_probability
        total = _uniform_b(cfg.strong_unsharp_amount, bsz, gen)
        split = torch.rand(bsz, bands, generator=gen) + 0.1
        split = split / split.sum(1, keepdim=True)
        s_sig = _log_uniform_b(cfg.strong_unsharp_sigma_frac, (bsz, bands), gen) * side
        amounts = torch.where(strong[:, None], total[:, None] * split, amounts)
        sigmas = torch.where(strong[:, None], s_sig, sigmas)
    if cfg.unsharp:
        m_amount = _uniform_b(cfg.unsharp_amount, bsz, gen)
        m_sig = _uniform_b(cfg.unsharp_sigma_frac, bsz, gen) * side
        amounts[:, 0] = torch.where(strong, amounts[:, 0], m_amount)
        sigmas[:, 0] = torch.where(strong, sigmas[:, 0], m_sig)
    return amounts, sigmas, strong


def _unsharp(x: torch.Tensor, cfg: RealismConfig, gen: torch.Generator) -> torch.Tensor:
    """Unsharp masking with the drawn bands: mild clips as before, strong is rescaled to the
    display range as the vendor's processing does."""
    amounts, sigmas, strong = _unsharp_bands(cfg, gen, x.shape[0], x.shape[-1])
    if bool((amounts > 0).any()):
        y = x
        for k in range(amounts.shape[1]):
            if bool((amounts[:, k] > 0).any()):
                y = y + _per_image(amounts[:, k], x) * (x - _broad_blur(x, sigmas[:, k]))
        x = torch.where(_per_image(strong, x).bool(), robust_unit(y), y.clamp(0, 1))
    return x


def _lut(x: torch.Tensor, cfg: RealismConfig, gen: torch.Generator) -> torch.Tensor:
    """A random monotone LUT on some images: an S-curve or a window-level that clips."""
    bsz = x.shape[0]
    on = _per_image(torch.rand(bsz, generator=gen) < cfg.lut_probability, x).bool()
    sigm = _per_image(torch.rand(bsz, generator=gen) < cfg.lut_sigmoid_probability, x).bool()
    slope = _per_image(_uniform_b(cfg.lut_sigmoid_slope, bsz, gen), x)
    center = _per_image(_uniform_b(cfg.lut_center, bsz, gen), x)
    width = _per_image(_uniform_b(cfg.lut_window_width, bsz, gen), x)
    if bool(on.any()):
        s0, s1 = torch.sigmoid(-slope * center), torch.sigmoid(slope * (1 - center))
        s_curve = (torch.sigmoid(slope * (x - center)) - s0) / (s1 - s0)
        window = ((x - center + width / 2) / width).clamp(0, 1)
        x = torch.where(on, torch.where(sigm, s_curve, window), x).clamp(0, 1)
    return x


def _collimation(x: torch.Tensor, cfg: RealismConfig, gen: torch.Generator):
    """(x, borders [B, 4] px: top, bottom, left, right): collimated borders, unexposed, read white."""
    bsz, _, h, w = x.shape
    dev = x.device
    on = torch.rand(bsz, generator=gen) < cfg.collimation_probability
    frac = _uniform_b((0.0, cfg.collimation_max_frac), (bsz, 4), gen)
    borders = (frac * torch.tensor([h, h, w, w])).long() * on[:, None]
    if bool(on.any()):
        t, b_, l_, r_ = (borders[:, i].to(dev).view(-1, 1, 1, 1) for i in range(4))
        ys = torch.arange(h, device=dev).view(1, 1, -1, 1)
        xs = torch.arange(w, device=dev).view(1, 1, 1, -1)
        mask = (ys < t) | (ys >= h - b_) | (xs < l_) | (xs >= w - r_)
        x = torch.where(mask, torch.ones_like(x), x)  # unexposed collimated border reads as white
    return x, borders


def simulate_radiograph(line_integral: torch.Tensor, cfg: RealismConfig, seed: int | None = None,
                        return_transform: bool = False):
    """Realistic image in [0, 1] (bright = attenuating) from line integrals (H, W) or (B, H, W).

    With return_transform, also returns the view transform theta [B, 2, 3] (identity unless
    cfg.geometric) so a label mask can follow: ``apply_view_transform(mask, theta, mode="nearest")``.
    The stages run in a fixed order from one generator: geometry, acquisition, local
    equalisation, unsharp masking, gamma, LUT, collimation, markers, inversion.
    """
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    squeeze = line_integral.dim() == 2
    x = (line_integral[None] if squeeze else line_integral).unsqueeze(1).float()
    bsz, _, h, w = x.shape
    x, theta, white = _geometric_jitter(x, cfg, gen)
    x = robust_unit(_acquisition(x, cfg, gen))
    if cfg.local_eq:
        x = _local_equalisation(x, cfg, gen)
    x = _unsharp(x, cfg, gen)
    if cfg.gamma:
        x = x.clamp_min(0) ** _per_image(_uniform_b(cfg.gamma_range, bsz, gen), x)
    if cfg.lut:
        x = _lut(x, cfg, gen)
    x = torch.where(white, torch.ones_like(x), x)
    borders = torch.zeros(bsz, 4, dtype=torch.long)  # top, bottom, left, right (px)
    if cfg.collimation:
        x, borders = _collimation(x, cfg, gen)
    if cfg.markers:
        marks = random_marker_mask(bsz, h, w, gen, cfg, field=borders).to(x.device)[:, None]
        x = torch.where(marks, torch.ones_like(x), x)  # burned-in, saturated
    if cfg.invert:
        x = 1.0 - x
    x = x[:, 0]
    out = x[0] if squeeze else x
    return (out, theta) if return_transform else out
