"""X-ray realism chain: each effect switchable, seeded, and doing what it claims."""

from __future__ import annotations

import math

import pytest
import torch

from axonct.transforms.grey_values import equalize_views
from axonct.physics.xray_realism import (
    RealismConfig,
    apply_view_transform,
    gaussian_blur,
    random_marker_mask,
    random_view_transform,
    simulate_radiograph,
    view_transform,
)


def _phantom(n=64):
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    body = (x**2 / 0.8 + y**2 / 0.9 < 1).float() * 3.0
    bone = ((x.abs() < 0.08) & (y.abs() < 0.8)).float() * 2.0
    lung = (((x - 0.4) ** 2 + y**2 < 0.09) | ((x + 0.4) ** 2 + y**2 < 0.09)).float() * -2.0
    return body + bone + lung


def test_seeded_and_reproducible():
    img = _phantom()
    cfg = RealismConfig()
    a, b = simulate_radiograph(img, cfg, seed=3), simulate_radiograph(img, cfg, seed=3)
    c = simulate_radiograph(img, cfg, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and torch.isfinite(a).all()


def test_all_off_is_a_monotone_rescale():
    img = _phantom()
    out = simulate_radiograph(img, RealismConfig.off(), seed=0)
    flat_in, flat_out = img.flatten(), out.flatten()
    order = torch.argsort(flat_in)
    assert (flat_out[order].diff() >= -1e-6).all()  # order preserved: bright stays bright


def test_noise_scales_with_photon_count():
    """Quantum noise falls as 1/sqrt(photons): 100x the photons, about 10x less noise."""
    ramp = torch.linspace(0, 1, 64)[None].expand(64, 64)  # sets the display range; noise rides on it

    def noise(photons):
        cfg = RealismConfig().only(beer_lambert=True, noise=True)
        cfg.photons_per_pixel = (photons, photons)
        out = simulate_radiograph(ramp + 2.0, cfg, seed=1)
        return (out - out.mean(0, keepdim=True)).std()

    assert noise(1e3) > 5 * noise(1e5)


def test_inversion_and_collimation():
    img = _phantom()
    base = RealismConfig.off()
    inv = RealismConfig().only(invert=True)
    a = simulate_radiograph(img, base, seed=0)
    b = simulate_radiograph(img, inv, seed=0)
    assert torch.allclose(a + b, torch.ones_like(a), atol=1e-6)
    col = RealismConfig().only(collimation=True)
    col.collimation_probability = 1.0
    col.collimation_max_frac = 0.2
    outs = [simulate_radiograph(img, col, seed=s) for s in range(5)]
    assert any((o[0, :] == 1).all() or (o[:, 0] == 1).all() or (o[-1, :] == 1).all() or (o[:, -1] == 1).all()
               for o in outs)


def test_scatter_lowers_contrast_inside_the_body():
    """Scatter adds a smooth offset to the primary, which flattens differences under dense anatomy."""
    img = _phantom()
    no = RealismConfig().only(beer_lambert=True)
    yes = RealismConfig().only(beer_lambert=True, scatter=True)
    yes.scatter_to_primary = (0.5, 0.5)

    def relative_spine_contrast(out):
        spine, soft, air = out[32, 32], out[20, 20], out[2, 2]
        return (spine - soft) / (soft - air)

    a = simulate_radiograph(img, no, seed=0)
    b = simulate_radiograph(img, yes, seed=0)
    assert torch.isfinite(b).all()
    assert 0 < relative_spine_contrast(b) < 0.9 * relative_spine_contrast(a)


def test_gaussian_blur_preserves_mean_and_smooths():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 32, 32, generator=g)
    y = gaussian_blur(x, 2.0)
    assert abs(float(x.mean() - y.mean())) < 0.02
    assert y.std() < 0.5 * x.std()


# --- clinical CR/DX processing, markers and view geometry ---------------------------------------


def _chest(n=96):
    """Phantom plus a smooth ramp and fine texture, so many grey values and some detail."""
    g = torch.Generator().manual_seed(5)
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    body = (x**2 / 0.8 + y**2 / 0.9 < 1).float() * (3.0 + 0.5 * y)
    lung = (((x - 0.4) ** 2 + y**2 < 0.09) | ((x + 0.4) ** 2 + y**2 < 0.09)).float() * -2.0
    texture = gaussian_blur(torch.rand(1, 1, n, n, generator=g), 1.0)[0, 0] * 0.3
    return body + lung + texture


def _highpass_energy(img, sigma=2.0):
    x = img[None, None] if img.dim() == 2 else img[:, None]
    return float((x - gaussian_blur(x, sigma)).pow(2).mean())


def test_presets_and_switches():
    d, c, off = RealismConfig(), RealismConfig.clinical(), RealismConfig.off()
    assert not d.geometric and not c.geometric  # the 3D networks need exact views
    for name in ("local_eq", "strong_unsharp", "lut", "markers"):
        assert getattr(d, name) and getattr(c, name) and not getattr(off, name)
        assert not getattr(RealismConfig.mild(), name)
    assert 0 < d.strong_unsharp_probability < c.strong_unsharp_probability
    assert 0 < d.local_eq_probability < c.local_eq_probability
    assert 0 < d.marker_probability < c.marker_probability
    assert d.collimation_probability < c.collimation_probability
    o = RealismConfig().only(lut=True)
    assert o.lut and not (o.markers or o.local_eq or o.strong_unsharp or o.unsharp or o.geometric)


@pytest.mark.parametrize("make", [RealismConfig, RealismConfig.clinical, RealismConfig.mild])
def test_presets_reproducible_finite_in_range(make):
    imgs = torch.stack([_chest(), _chest().flip(-1), _chest().flip(-2)])
    cfg = make()
    cfg.geometric = True
    a, ta = simulate_radiograph(imgs, cfg, seed=11, return_transform=True)
    b, tb = simulate_radiograph(imgs, cfg, seed=11, return_transform=True)
    c = simulate_radiograph(imgs, cfg, seed=12)
    assert a.shape == imgs.shape and ta.shape == (3, 2, 3)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(a, c)
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1


def test_parameters_are_drawn_per_image():
    img = _chest()[None].expand(3, -1, -1)
    out = simulate_radiograph(img, RealismConfig().only(gamma=True), seed=0)
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])


@pytest.mark.parametrize("effect,probability", [
    ("local_eq", "local_eq_probability"),
    ("strong_unsharp", "strong_unsharp_probability"),
    ("lut", "lut_probability"),
    ("markers", "marker_probability"),
    ("geometric", "geometric_unexposed_probability"),
])
def test_each_new_effect_changes_the_image_only_when_on(effect, probability):
    img = torch.stack([_chest(), _chest().flip(-1)])
    base = simulate_radiograph(img, RealismConfig.off(), seed=2)
    for seed in (2, 3):
        on = RealismConfig().only(**{effect: True})
        if effect != "geometric":
            setattr(on, probability, 1.0)
        out = simulate_radiograph(img, on, seed=seed)
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        assert ((out - base).abs().amax(dim=(1, 2)) > 0.05).all(), effect  # every image changed
    if effect != "geometric":
        never = RealismConfig().only(**{effect: True})
        setattr(never, probability, 0.0)  # drawn but never applied
        assert torch.equal(simulate_radiograph(img, never, seed=2), base)
    assert torch.equal(simulate_radiograph(img, RealismConfig.off(), seed=3), base)  # switch off: absent


def test_strong_unsharp_enhances_edges_beyond_the_mild_one():
    img = _chest()
    sigma_frac = 0.03
    mild = RealismConfig().only(unsharp=True)
    mild.unsharp_amount, mild.unsharp_sigma_frac = (1.0, 1.0), (sigma_frac, sigma_frac)
    strong = RealismConfig().only(strong_unsharp=True)
    strong.strong_unsharp_probability = 1.0
    strong.strong_unsharp_amount, strong.strong_unsharp_sigma_frac = (3.0, 3.0), (sigma_frac, sigma_frac)

    def detail_over_trend(out):  # band the unsharp mask boosts, relative to the coarse image
        o, s = out[None, None], sigma_frac * out.shape[-1]
        return float((o - gaussian_blur(o, s)).std() / gaussian_blur(o, 3 * s).std())

    base = detail_over_trend(simulate_radiograph(img, RealismConfig.off(), seed=0))
    e_mild = detail_over_trend(simulate_radiograph(img, mild, seed=0))
    e_strong = detail_over_trend(simulate_radiograph(img, strong, seed=0))
    assert 1.3 * base < e_mild and 1.3 * e_mild < e_strong


@pytest.mark.parametrize("clahe", [0.0, 1.0])
def test_local_equalisation_flattens_large_scales_and_keeps_detail(clahe):
    n = 96
    y, x = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    checker = ((torch.arange(n)[:, None] // 4 + torch.arange(n)[None] // 4) % 2).float()
    img = 3.0 * x + 0.3 * checker  # a large gradient with fine detail riding on it

    def detail_over_trend(out):
        o = out[None, None]
        return float((o - gaussian_blur(o, 3.0)).std() / gaussian_blur(o, 8.0).std())

    cfg = RealismConfig().only(local_eq=True)
    cfg.local_eq_probability, cfg.local_eq_clahe_probability = 1.0, clahe
    cfg.local_eq_strength = (0.8, 0.8)
    before = detail_over_trend(simulate_radiograph(img, RealismConfig.off(), seed=0))
    after = detail_over_trend(simulate_radiograph(img, cfg, seed=0))
    assert after > 1.5 * before


def test_monotone_lut_is_invisible_after_rank_equalisation():
    img = torch.stack([_chest(), _chest().flip(-1)])
    cfg = RealismConfig().only(lut=True, gamma=True)
    cfg.lut_probability, cfg.lut_sigmoid_probability = 1.0, 1.0
    cfg.lut_sigmoid_slope = (12.0, 12.0)  # a strong S-curve
    plain = simulate_radiograph(img, RealismConfig.off(), seed=0)
    curved = simulate_radiograph(img, cfg, seed=0)
    assert (curved - plain).abs().max() > 0.1
    # equal up to float32 rounding of near-equal values into ties (one rank at most)
    diff = (equalize_views(curved) - equalize_views(plain)).abs()
    assert float(diff.max()) <= 1.01 / img[0].numel() and float(diff.mean()) < 1e-6


def test_window_level_lut_is_monotone_and_clips():
    img = _chest()
    cfg = RealismConfig().only(lut=True)
    cfg.lut_probability, cfg.lut_sigmoid_probability = 1.0, 0.0
    cfg.lut_window_width = (0.7, 0.7)
    plain = simulate_radiograph(img, RealismConfig.off(), seed=0).flatten()
    win = simulate_radiograph(img, cfg, seed=0).flatten()
    order = torch.argsort(plain)
    assert (win[order].diff() >= 0).all()
    saturated = lambda v: float(((v == 0) | (v == 1)).float().mean())  # noqa: E731
    assert saturated(win) > saturated(plain) + 0.02


def test_markers_are_saturated_small_and_near_the_edges():
    n = 128
    img = _chest(n)
    base = simulate_radiograph(img, RealismConfig.off(), seed=0)
    cfg = RealismConfig().only(markers=True)
    cfg.marker_probability, cfg.marker_text_probability = 1.0, 1.0
    for seed in range(6):
        out = simulate_radiograph(img, cfg, seed=seed)
        marked = out != base
        assert marked.any()
        assert (out[marked] == 1).all()  # burned in, saturated
        assert marked.float().mean() < 0.05
        rows, cols = torch.nonzero(marked, as_tuple=True)
        to_edge = torch.stack([rows, cols, n - 1 - rows, n - 1 - cols]).amin(0)
        assert int(to_edge.max()) <= 0.2 * n


def test_markers_stay_inside_the_exposed_field():
    cfg = RealismConfig()
    cfg.marker_probability, cfg.marker_text_probability = 1.0, 1.0
    field = torch.tensor([[10, 20, 15, 5]] * 4)
    mask = random_marker_mask(4, 100, 120, torch.Generator().manual_seed(0), cfg, field=field)
    assert mask.flatten(1).any(1).all()
    assert not mask[:, :10].any() and not mask[:, 100 - 20:].any()
    assert not mask[:, :, :15].any() and not mask[:, :, 120 - 5:].any()


def _blob(h, w, row, col, sigma=2.0):
    y, x = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.exp(-((y - row) ** 2 + (x - col) ** 2) / (2 * sigma**2))


def _centroid(img):
    y, x = torch.meshgrid(torch.arange(img.shape[-2]).float(), torch.arange(img.shape[-1]).float(), indexing="ij")
    return float((img * y).sum() / img.sum()), float((img * x).sum() / img.sum())


def test_known_view_transform_moves_points_where_expected():
    n = 128
    c = (n - 1) / 2
    img = _blob(n, n, 40.0, 90.0)[None]

    def moved(rot, scale, shift, size=None, src=img):
        theta = view_transform(torch.tensor([rot]), torch.tensor([scale]), torch.tensor([shift]), size)
        return _centroid(apply_view_transform(src, theta)[0])

    r, q = moved(0.0, 0.6, (0.0, 0.0))
    assert abs(r - (c + 0.6 * (40 - c))) < 0.3 and abs(q - (c + 0.6 * (90 - c))) < 0.3
    r, q = moved(0.0, 1.0, (0.1, -0.05))  # +x right by 10 % of the width, up by 5 % of the height
    assert abs(r - (40 - 0.05 * n)) < 0.3 and abs(q - (90 + 0.1 * n)) < 0.3
    r, q = moved(90.0, 1.0, (0.0, 0.0))  # counter-clockwise on screen: right of centre goes up
    assert abs(r - (c - (90 - c))) < 0.3 and abs(q - (c + (40 - c))) < 0.3
    h, w = 96, 128  # non-square: rotation keeps pixel distances
    r, q = moved(90.0, 1.0, (0.0, 0.0), (h, w), _blob(h, w, (h - 1) / 2, (w - 1) / 2 + 20)[None])
    assert abs(r - ((h - 1) / 2 - 20)) < 0.3 and abs(q - (w - 1) / 2) < 0.3


def test_view_transform_keeps_image_and_mask_aligned():
    n = 128
    y, x = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    mask = ((y - 45) ** 2 + (x - 75) ** 2 < 20**2)[None].expand(6, -1, -1)
    gen = torch.Generator().manual_seed(0)
    theta = random_view_transform(6, gen, 8.0, (0.55, 1.3), 0.15)
    img_t = apply_view_transform(mask.float(), theta, fill=0.0)
    mask_t = apply_view_transform(mask, theta, mode="nearest")
    assert mask_t.dtype == torch.bool and mask_t.shape == mask.shape
    for i in range(6):
        area = int(mask_t[i].sum())
        assert area > 0.2 * math.pi * 20**2
        assert int(((img_t[i] > 0.5) ^ mask_t[i]).sum()) < 0.05 * area
        (r1, c1), (r2, c2) = _centroid(img_t[i]), _centroid(mask_t[i].float())
        assert abs(r1 - r2) < 1.0 and abs(c1 - c2) < 1.0
    # large ranges really occur: scales across 0.55..1.3, shifts of more than 10 % of the side
    thetas = random_view_transform(200, gen, 8.0, (0.55, 1.3), 0.15)
    scale = 1 / thetas[:, :, :2].det().sqrt()
    assert scale.min() < 0.6 and scale.max() > 1.2
    assert (thetas[:, :, 2].abs() > 0.2).any()


def test_simulated_geometry_returns_the_transform_for_the_mask():
    n = 96
    y, x = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    disc = (y - 40) ** 2 + (x - 52) ** 2 < 18**2
    li = torch.stack([disc.float() * 3.0] * 3)
    cfg = RealismConfig().only(geometric=True)
    cfg.rotation_deg, cfg.scale_range, cfg.shift_frac = 8.0, (0.55, 1.3), 0.15
    cfg.geometric_unexposed_probability = 0.0
    out, theta = simulate_radiograph(li, cfg, seed=4, return_transform=True)
    mask = apply_view_transform(disc[None].expand(3, -1, -1), theta, mode="nearest")
    for i in range(3):
        assert int(((out[i] > 0.5) ^ mask[i]).sum()) < 0.05 * int(mask[i].sum())
    _, ident = simulate_radiograph(li, RealismConfig(), seed=4, return_transform=True)
    assert torch.allclose(ident, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(3, 2, 3))
    # outside the moved field: zero flux (white) when unexposed
    cfg.geometric_unexposed_probability, cfg.scale_range = 1.0, (0.6, 0.6)
    out, theta = simulate_radiograph(li, cfg, seed=4, return_transform=True)
    inside = apply_view_transform(torch.ones(3, n, n), theta) > 0.5
    assert (out[~inside] == 1).all() and (~inside).float().mean() > 0.3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chain_runs_on_the_input_device():
    img = torch.stack([_chest(), _chest().flip(-1)]).cuda()
    cfg = RealismConfig.clinical()
    cfg.geometric = True
    out, theta = simulate_radiograph(img, cfg, seed=1, return_transform=True)
    assert out.is_cuda and theta.is_cuda
    ref = simulate_radiograph(img.cpu(), cfg, seed=1)
    assert (out.cpu() - ref).abs().mean() < 1e-3
